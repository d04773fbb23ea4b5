"""Event-time window benchmark: keyed tumbling windows, aflow vs single-shot NumPy.

Data (drawn once from a seeded RNG, not timed): 20,000,000 rows (``--quick``: 2,000,000)
of ``ts`` int64 nanoseconds (one row per millisecond plus up to 5 ms of jitter: sorted-ish),
``key`` int32 (1,000 keys, uniform) and ``value`` float32.

Query: per 60-second tumbling window and key, ``count``, ``mean`` and ``max`` of ``value``.

- aflow: ``from_array(rows, 65_536) | window(60 s, on="ts", key="key", value="value",
  stats=..., allowed_lateness=10 ms) | collect()``: windows close as the watermark passes
  them; memory holds the open windows' per-key partials, not rows.
- single shot: the whole array at once: window id ``ts // size``, one code per (window,
  key), ``np.unique(return_inverse=True)``, ``np.bincount`` for count and sum,
  ``np.maximum.at`` for max. The physical limit, and the most memory.

Both results must agree (count and max exactly, mean to 1e-9 relative), else exit 1.
Prints the best of ``--reps`` times, rows/s, the throughput ratio aflow / single shot
(target >= 0.5) and the peak memory each allocated beyond the input (``tracemalloc``, in a
separate untimed run).

    python benchmarks/bench_windows.py           # full size (about half a minute)
    python benchmarks/bench_windows.py --quick   # a tenth of the rows
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import aflow as af

KEYS = 1000
SIZE = 60_000_000_000  # 60 s in ns
LATENESS = 10_000_000  # 10 ms
BATCH = 65_536
ROW = np.dtype([("ts", "<i8"), ("key", "<i4"), ("value", "<f4")])


def make_rows(n: int) -> np.ndarray[Any, np.dtype[np.void]]:
    rng = np.random.default_rng(7)
    rows = np.empty(n, ROW)
    rows["ts"] = np.arange(n, dtype=np.int64) * 1_000_000 + rng.integers(0, 5_000_000, n)
    rows["key"] = rng.integers(0, KEYS, n, dtype=np.int32)
    rows["value"] = rng.normal(20, 5, n).astype(np.float32)
    return rows


def single_shot(rows: np.ndarray[Any, np.dtype[np.void]]) -> dict[str, np.ndarray[Any, Any]]:
    win = rows["ts"] // SIZE
    code = (win - win.min()) * KEYS + rows["key"]
    uniq, inv = np.unique(code, return_inverse=True)
    count = np.bincount(inv)
    mean = np.bincount(inv, weights=rows["value"]) / count
    vmax = np.full(len(uniq), -np.inf, np.float32)
    np.maximum.at(vmax, inv, rows["value"])
    start = (uniq // KEYS + win.min()) * SIZE
    return {"window_start": start, "key": uniq % KEYS, "count": count, "mean": mean, "max": vmax}


def with_aflow(rows: np.ndarray[Any, np.dtype[np.void]]) -> dict[str, np.ndarray[Any, Any]]:
    flow = af.from_array(rows, BATCH) | af.window(
        SIZE,
        on="ts",
        key="key",
        value="value",
        stats=("count", "mean", "max"),
        allowed_lateness=LATENESS,
    )
    out = af.run(flow | af.collect("array")).value
    return {name: out[name] for name in ("window_start", "key", "count", "mean", "max")}


def check(got: dict[str, Any], want: dict[str, Any]) -> bool:
    same = all(np.array_equal(got[c], want[c]) for c in ("window_start", "key", "count", "max"))
    return same and bool(np.allclose(got["mean"], want["mean"], rtol=1e-9, atol=0))


def best_time(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def peak_mb(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000,000 rows instead of 20M")
    parser.add_argument("--reps", type=int, default=3, help="rounds; the best time counts")
    args = parser.parse_args()
    n = 2_000_000 if args.quick else 20_000_000
    rows = make_rows(n)
    print(f"{n:,} rows ({rows.nbytes / 2**20:.0f} MB), {KEYS} keys, 60 s tumbling windows")
    t_np, want = best_time(lambda: single_shot(rows), args.reps)
    t_af, got = best_time(lambda: with_aflow(rows), args.reps)
    ok = check(got, want)
    m_np, m_af = peak_mb(lambda: single_shot(rows)), peak_mb(lambda: with_aflow(rows))
    print(f"{'':<14} {'seconds':>8} {'Mrows/s':>8} {'peak MB':>8}")
    print(f"{'single shot':<14} {t_np:8.3f} {n / t_np / 1e6:8.1f} {m_np:8.1f}")
    print(f"{'aflow':<14} {t_af:8.3f} {n / t_af / 1e6:8.1f} {m_af:8.1f}")
    print(f"windows x keys: {len(want['count']):,}; results {'equal' if ok else 'MISMATCH'}")
    print(f"aflow throughput / single shot: {t_np / t_af:.2f}x (target >= 0.5x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Keyed aggregate benchmark: aflow's streaming ``to_aggregate`` vs a single-shot NumPy groupby.

What is measured (wall time with ``time.perf_counter``, best of ``--reps`` rounds, default 3;
each round runs both implementations once, so load elsewhere hits them alike):

* Data: 20,000,000 rows (``--quick``: 2,000,000) of ``[("sensor", "i4"), ("value", "f4")]``,
  sensors uniform over 1,000 keys, values normal (mean 20, sd 10), drawn once from a seeded
  RNG before timing.
* aflow: ``from_array(rows, batch_size=65_536) | to_aggregate("sensor", "value",
  ("count", "sum", "min", "max", "mean", "std"))`` through ``flow.run()``. Batches are views
  of the structured array (strided columns).
* Single-shot NumPy: the fastest groupby we could write over the whole data, given the two
  columns as contiguous arrays (extracted before timing, in its favour) and *told* that keys
  are small non-negative integers: ``np.bincount`` for count, sum and sum of squares;
  ``np.minimum.at`` / ``np.maximum.at`` for min and max (in NumPy >= 1.25 they beat a sort
  plus ``reduceat`` by far: that variant is timed too, once, for reference). Its variance is the
  textbook ``sumsq/n - mean**2``, cheaper and less stable than aflow's merge of per-batch
  moments.

Both must agree (count, min, max exactly; sum, mean, std to rtol 1e-6), else the script
prints ``RESULT MISMATCH`` and exits with status 1. Throughput ratio = NumPy time / aflow
time (target: >= 0.8). Peak memory: extra bytes allocated during one more run of each
under ``tracemalloc`` (NumPy reports its buffers to it), beyond the input data.

Run: ``python benchmarks/bench_sinks.py`` (under a minute) or ``--quick``.
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

SEED = 20240601
KEYS = 1_000
BATCH = 65_536
STATS = ("count", "sum", "min", "max", "mean", "std")
ROW = np.dtype([("sensor", "i4"), ("value", "f4")])


def make_rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    rows = np.empty(n, ROW)
    rows["sensor"] = rng.integers(0, KEYS, n, dtype=np.int32)
    rows["value"] = rng.normal(20.0, 10.0, n).astype(np.float32)
    return rows


def run_aflow(rows: np.ndarray) -> np.ndarray:
    flow = af.from_array(rows, batch_size=BATCH) | af.to_aggregate("sensor", "value", STATS)
    return af.run(flow).value


def run_numpy(sensor: np.ndarray, value: np.ndarray) -> np.ndarray:
    idx = sensor.astype(np.intp)  # once, instead of a cast inside each of the five calls
    count = np.bincount(idx, minlength=KEYS)
    total = np.bincount(idx, weights=value, minlength=KEYS)
    sumsq = np.bincount(idx, weights=np.square(value, dtype=np.float64), minlength=KEYS)
    lo = np.full(KEYS, np.inf, value.dtype)
    hi = np.full(KEYS, -np.inf, value.dtype)
    np.minimum.at(lo, idx, value)
    np.maximum.at(hi, idx, value)
    return _table(count, total, sumsq, lo, hi)


def run_numpy_sorted(sensor: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The same, with min and max by a stable sort and ``reduceat`` (for reference)."""
    order = np.argsort(sensor, kind="stable")
    keys, vals = sensor[order], value[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    count = np.diff(np.r_[starts, len(keys)])
    total = np.add.reduceat(vals, starts, dtype=np.float64)
    sumsq = np.add.reduceat(np.square(vals, dtype=np.float64), starts)
    lo, hi = np.minimum.reduceat(vals, starts), np.maximum.reduceat(vals, starts)
    return _table(count, total, sumsq, lo, hi)


def _table(count: Any, total: Any, sumsq: Any, lo: Any, hi: Any) -> np.ndarray:
    mean = total / count
    std = np.sqrt(np.maximum(sumsq / count - mean * mean, 0.0))
    fields = [("count", "i8"), ("sum", "f8"), ("min", "f4"), ("max", "f4")]
    out = np.empty(KEYS, [*fields, ("mean", "f8"), ("std", "f8")])
    for name, col in zip(out.dtype.names or (), (count, total, lo, hi, mean, std), strict=True):
        out[name] = col
    return out


def check(name: str, got: np.ndarray, want: np.ndarray) -> bool:
    same = all(np.array_equal(got[f], want[f]) for f in ("count", "min", "max")) and all(
        np.allclose(got[f], want[f], rtol=1e-6) for f in ("sum", "mean", "std")
    )
    if not same:
        print(f"RESULT MISMATCH: {name}")
    return same


def best_of(reps: int, fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x less data (smoke run)")
    parser.add_argument("--reps", type=int, default=3, help="rounds; the best is kept")
    args = parser.parse_args()
    n = 2_000_000 if args.quick else 20_000_000
    rows = make_rows(n)
    sensor, value = rows["sensor"].copy(), rows["value"].copy()
    fns: dict[str, Callable[[], Any]] = {
        "aflow to_aggregate": lambda: run_aflow(rows),
        "numpy bincount + ufunc.at": lambda: run_numpy(sensor, value),
        "numpy sort + reduceat": lambda: run_numpy_sorted(sensor, value),
    }
    want = run_numpy(sensor, value)
    ok = check("aflow", run_aflow(rows), want)
    t0 = time.perf_counter()  # the slow variant runs once: it is only a reference
    ok &= check("numpy sort + reduceat", run_numpy_sorted(sensor, value), want)
    sort_time = time.perf_counter() - t0
    times = best_of(args.reps, {k: v for k, v in fns.items() if "sort" not in k})
    times["numpy sort + reduceat"] = sort_time
    print(f"keyed aggregate: {n:,} rows, {KEYS:,} keys, stats {', '.join(STATS)}")
    print(f"input data: {rows.nbytes / 2**20:,.0f} MiB; batches of {BATCH:,} rows\n")
    print(f"{'implementation':28} {'seconds':>8} {'Mrows/s':>8} {'peak extra MiB':>15}")
    for name, fn in fns.items():
        mib = "-" if "sort" in name else f"{peak_bytes(fn) / 2**20:.1f}"
        print(f"{name:28} {times[name]:8.3f} {n / times[name] / 1e6:8.1f} {mib:>15}")
    ratio = times["numpy bincount + ufunc.at"] / times["aflow to_aggregate"]
    verdict = "met" if ratio >= 0.8 else "NOT met"
    print(f"\naflow throughput / single-shot NumPy: {ratio:.2f}x (target >= 0.8x: {verdict})")
    layouts(rows, args.reps)
    keyed_quantiles(rows[: n // 4], args.reps)
    sys.exit(0 if ok else 1)


def layouts(rows: np.ndarray, reps: int) -> None:
    """The same aggregate on a packed record dtype (misaligned float64 field) and an
    aligned one: the target is <= 1.2x between them."""
    packed = np.zeros(len(rows), [("sensor", "<i4"), ("value", "<f8")])
    aligned = np.zeros(len(rows), [("sensor", "<i8"), ("value", "<f8")])
    for table in (packed, aligned):
        table["sensor"], table["value"] = rows["sensor"], rows["value"]
    times = best_of(
        reps, {"packed": lambda: run_aflow(packed), "aligned": lambda: run_aflow(aligned)}
    )
    ratio = times["packed"] / times["aligned"]
    print(
        f"\npacked <i4,<f8 records: {times['packed']:.3f} s; aligned <i8,<f8: "
        f"{times['aligned']:.3f} s; {ratio:.2f}x (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})"
    )


def keyed_quantiles(rows: np.ndarray, reps: int) -> None:
    """p50/p99 per key: the sketch and the exact mode of to_aggregate, against a NumPy
    program that sorts once by (key, value) and picks the nearest ranks."""
    stats = ("count", "p50", "p99")

    def flow(exact: bool) -> np.ndarray:
        sink = af.to_aggregate("sensor", "value", stats, exact=exact)
        return af.run(af.from_array(rows, BATCH) | sink).value

    def numpy_sorted() -> np.ndarray:
        order = np.lexsort((rows["value"], rows["sensor"]))
        _, starts, counts = np.unique(rows["sensor"][order], return_index=True, return_counts=True)
        ranks = np.maximum(np.ceil(np.array([0.5, 0.99])[None, :] * counts[:, None]) - 1, 0)
        return rows["value"][order][starts[:, None] + ranks.astype(np.int64)]

    times = best_of(
        reps, {"sketch": lambda: flow(False), "exact": lambda: flow(True), "numpy": numpy_sorted}
    )
    want = numpy_sorted()
    exact = flow(True)
    same = np.array_equal(np.stack([exact["p50"], exact["p99"]], 1), want)
    print(f"\nkeyed p50/p99 over {len(rows):,} rows, {KEYS:,} keys (exact equals NumPy: {same})")
    for name in ("sketch", "exact", "numpy"):
        label = {
            "sketch": "aflow to_aggregate, sketch 1%",
            "exact": "aflow to_aggregate, exact",
            "numpy": "numpy lexsort + nearest rank",
        }[name]
        print(
            f"{label:32} {times[name]:8.3f} s {len(rows) / times[name] / 1e6:8.1f} Mrows/s "
            f"{times['numpy'] / times[name]:6.2f}x numpy"
        )


if __name__ == "__main__":
    main()

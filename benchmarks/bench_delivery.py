"""Delivery benchmark: the cost of checkpointing on a file -> decode -> aggregate pipeline.

What is measured (wall time with ``time.perf_counter``, best of ``--reps`` rounds, default 3;
each round runs both variants once, so load elsewhere hits them alike):

* Data: a CSV file of 12,000,000 lines (``--quick``: 1,200,000) ``sensor,value`` (sensors
  uniform over 1,000 keys, values normal, from a seeded RNG), written once before timing.
* Pipeline: ``read_blocks(file) | decode_csv(dtype) | broadcast(to_aggregate("sensor",
  "value", ...), to_npy(out))``: a keyed aggregate, and every row written to a ``.npy`` file.
* Off: ``run()`` without a checkpoint. On: ``run(checkpoint=<a SQLite file>,
  commit_interval=1.0)``: every second a barrier crosses the pipeline, the file sink flushes
  and syncs, the aggregate's state is pickled, and both go into the store in one transaction
  (a fresh checkpoint file per round, so every run reads the whole file).

Both must give the same aggregate, else the script exits with status 1. Cost = on time /
off time - 1 (target: < 10 %).

Run: ``python benchmarks/bench_delivery.py`` (under a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import aflow as af

SEED = 20240615
KEYS = 1_000
ROW = np.dtype([("sensor", "i4"), ("value", "f8")])
STATS = ("count", "sum", "min", "max", "mean")


def write_csv(path: Path, n: int) -> None:
    rng = np.random.default_rng(SEED)
    sensors = rng.integers(0, KEYS, n)
    values = np.round(rng.normal(20.0, 10.0, n), 3)
    with path.open("w") as f:
        step = 500_000
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            f.write(
                "".join(f"{s},{v}\n" for s, v in zip(sensors[lo:hi], values[lo:hi], strict=True))
            )


def run_once(src: Path, out: Path, checkpoint: Path | None) -> tuple[float, Any, int]:
    flow = (
        af.read_blocks(src)
        | af.decode_csv(ROW, threads=0)
        | af.broadcast(af.to_aggregate("sensor", "value", STATS), af.to_npy(out))
    )
    t0 = time.perf_counter()
    if checkpoint is None:
        result = af.run(flow)
    else:
        result = af.run(flow, checkpoint=checkpoint, commit_interval=1.0)
    elapsed = time.perf_counter() - t0
    aggregate, summary = result.value
    rows = int(summary.rows) if hasattr(summary, "rows") else 0
    return elapsed, aggregate, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x less data")
    parser.add_argument("--reps", type=int, default=3, help="rounds; the best counts")
    args = parser.parse_args(argv)
    n = 1_200_000 if args.quick else 12_000_000
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "data.csv"
        write_csv(src, n)
        size = src.stat().st_size
        best = {"off": float("inf"), "on": float("inf")}
        results: dict[str, Any] = {}
        commits = 0
        for r in range(args.reps):
            for variant in ("off", "on"):
                cp = d / f"cp{r}.db" if variant == "on" else None
                elapsed, agg, _ = run_once(src, d / f"out-{variant}.npy", cp)
                best[variant] = min(best[variant], elapsed)
                results[variant] = agg
                if cp is not None:
                    stored = af.SqliteStore(cp).load()
                    commits = stored.epoch if stored is not None else 0
        if not np.array_equal(results["off"], results["on"]):
            print("RESULT MISMATCH: the aggregate with checkpoints differs")
            return 1
        print(f"{n:,} lines, {size / 1e6:.1f} MB: file -> decode_csv -> aggregate + npy file")
        print(f"{'checkpoint':<28}{'best s':>10}{'Mrows/s':>10}{'MB/s':>10}")
        for variant, label in (("off", "off"), ("on", "on, commit every 1 s")):
            t = best[variant]
            print(f"{label:<28}{t:>10.3f}{n / t / 1e6:>10.2f}{size / t / 1e6:>10.1f}")
        ratio = best["on"] / best["off"]
        print(
            f"on / off = {ratio:.3f} (cost {100 * (ratio - 1):+.1f} %, target < 10 %); "
            f"epochs in the last 'on' run: {commits}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

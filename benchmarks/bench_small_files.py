"""Many small files: aflow's ``read_lines`` / ``read_csv`` over a ``**`` glob vs a plain loop.

2,000 files of 20 lines each (``ts,sensor,value``) in nested folders. Side by side, best
and median of ``--reps`` rounds, with the load average (a shared machine):

- plain: a synchronous loop, ``glob.glob(..., recursive=True)``, ``open().read()`` and
  ``splitlines()`` (lines), or ``np.loadtxt`` of all bytes joined (CSV rows);
- aflow: ``read_lines("root/**/*.csv") | collect()`` and ``read_csv(...)`` the same way.

The target (issue 11) is aflow within 2x of the plain loop.

    python benchmarks/bench_small_files.py           # 2,000 files
    python benchmarks/bench_small_files.py --files 500 --reps 2
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

import aflow as af

DTYPE = np.dtype([("ts", "<i8"), ("sensor", "<i4"), ("value", "<f4")])


def make(root: Path, files: int, lines: int) -> None:
    for i in range(files):
        folder = root / f"d{i % 20}" / f"e{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{i * lines + j},{j % 10},{j * 0.5}\n" for j in range(lines))
        (folder / f"f{i}.csv").write_text(text)


def plain_lines(pattern: str) -> int:
    n = 0
    for path in sorted(glob.glob(pattern, recursive=True)):
        with open(path) as f:
            n += len(f.read().splitlines())
    return n


def plain_csv(pattern: str) -> int:
    blobs = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        with open(path, "rb") as f:
            blobs.append(f.read())
    rows = np.loadtxt(io.BytesIO(b"".join(blobs)), dtype=DTYPE, delimiter=",")
    return len(rows)


async def aflow_lines(pattern: str) -> int:
    result = await (af.read_lines(pattern) | af.collect()).run()
    return len(result.value)


async def aflow_csv(pattern: str) -> int:
    result = await (af.read_csv(pattern, DTYPE) | af.collect()).run()
    return len(result.value)


def timed(fn: object, reps: int) -> tuple[float, float, int]:
    """Best and median seconds of ``reps`` calls, and the last result."""
    times, n = [], 0
    for _ in range(reps):
        t = time.perf_counter()
        n = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    times.sort()
    return times[0], times[len(times) // 2], n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aflow-small-") as tmp:
        root = Path(tmp)
        make(root, args.files, args.lines)
        pattern = str(root / "**" / "*.csv")
        print(f"{args.files:,} files of {args.lines} lines, best / median of {args.reps}")
        print(f"{'workload':<10} {'plain s':>15} {'aflow s':>15} {'aflow/plain':>15}   load")
        for name, plain, flow in (
            ("lines", plain_lines, aflow_lines),
            ("csv rows", plain_csv, aflow_csv),
        ):
            p_best, p_med, n_plain = timed(lambda p=plain: p(pattern), args.reps)
            f_best, f_med, n_flow = timed(lambda f=flow: anyio.run(f, pattern), args.reps)
            assert n_plain == n_flow == args.files * args.lines, (n_plain, n_flow)
            load = os.getloadavg()[0]
            print(
                f"{name:<10} {p_best:>7.3f} {p_med:>7.3f} {f_best:>7.3f} {f_med:>7.3f} "
                f"{f_best / p_best:>6.2f}x {f_med / p_med:>6.2f}x   {load:.2f}"
            )


if __name__ == "__main__":
    main()

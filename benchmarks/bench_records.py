"""Binary records: 20,000,000 records ``<i8 ts, <i4 sensor, <f4 value`` (320 MB, four
files) -> per-sensor count, sum, min, max.

Implementations, each in its own subprocess, runs interleaved:

- single shot (the reference): ``np.fromfile`` of each file, concatenated, then the
  aggregate over all rows at once;
- hand-written pipeline: plain generators over the same 1 MiB reads of whole records
  (``np.frombuffer``, no copy), the same aggregate per block;
- hand-written async loop: ``anyio`` with each 2 MiB read in a worker thread
  (``to_thread.run_sync(os.pread)``), the same aggregate per block: what any source pays
  that does not block its event loop on a read (the floor for aflow's design);
- aflow: ``read_records(paths, dtype) | to_aggregate("sensor", "value", stats)``.

The aggregate is the same code everywhere (``aflow.kernels.keyed.KeyedStats``), so the
figures compare the framework's cost per batch. Results must agree exactly (values are
multiples of 1/8).

    python benchmarks/bench_records.py            # 20,000,000 records, 3 runs each
    python benchmarks/bench_records.py --quick    # 2,000,000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _runs import interleaved, load, peak_rss, report

READING = np.dtype([("ts", "<i8"), ("sensor", "<i4"), ("value", "<f4")])
STATS = ("count", "sum", "min", "max")
MiB = 1 << 20


def make_files(folder: Path, rows: int) -> list[str]:
    paths = [folder / f"part-{k}.bin" for k in range(4)]
    if not paths[-1].exists():
        rng = np.random.default_rng(11)
        for k, path in enumerate(paths):
            n = rows // 4
            rec = np.empty(n, READING)
            rec["ts"] = np.arange(k * n, (k + 1) * n)
            rec["sensor"] = rng.integers(0, 1000, n)
            rec["value"] = np.round(rng.normal(20, 5, n) * 8) / 8
            rec.tofile(path)
    return [str(p) for p in paths]


def summary(result: np.ndarray) -> list[list[float]]:
    return [[int(x[0]), *(float(v) for v in list(x)[1:])] for x in result]


def single_shot(paths: list[str]) -> list[list[float]]:
    from aflow.kernels.keyed import KeyedStats

    data = np.concatenate([np.fromfile(p, READING) for p in paths])
    stats = KeyedStats(STATS)
    stats.update(data["sensor"], data["value"])
    return summary(stats.result("sensor"))


def blocks(paths: list[str]) -> Iterator[np.ndarray]:
    size = MiB // READING.itemsize * READING.itemsize
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(size):
                yield np.frombuffer(chunk, READING)


def generators(paths: list[str]) -> list[list[float]]:
    from aflow.kernels.keyed import KeyedStats

    stats = KeyedStats(STATS)
    for batch in blocks(paths):
        stats.update(batch["sensor"], batch["value"])
    return summary(stats.result("sensor"))


def async_loop(paths: list[str]) -> list[list[float]]:
    import os

    import anyio

    from aflow.kernels.keyed import KeyedStats

    stats = KeyedStats(STATS)
    size = 2 * MiB // READING.itemsize * READING.itemsize

    async def main() -> None:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while chunk := await anyio.to_thread.run_sync(os.pread, fd, size, offset):
                    offset += len(chunk)
                    batch = np.frombuffer(chunk, READING)
                    stats.update(batch["sensor"], batch["value"])
            finally:
                os.close(fd)

    anyio.run(main)
    return summary(stats.result("sensor"))


def aflow_flow(paths: list[str]) -> list[list[float]]:
    import aflow as af

    flow = af.read_records(paths, READING) | af.to_aggregate("sensor", "value", STATS)
    return summary(af.run(flow).value)


IMPLEMENTATIONS = {
    "single shot: np.fromfile + aggregate": single_shot,
    "generators: 1 MiB reads, same kernel": generators,
    "anyio loop: 2 MiB reads in a thread, same": async_loop,
    "aflow read_records | to_aggregate": aflow_flow,
}


def child(name: str, paths: list[str]) -> None:
    import anyio  # imports are not timed
    import anyio._backends._asyncio  # noqa: F401 - anyio imports it at the first run (20 ms)

    import aflow.kernels.keyed  # noqa: F401

    started = time.perf_counter()
    result = IMPLEMENTATIONS[name](paths)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "result": result, "rss": peak_rss()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--paths", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.paths)
        return
    rows = 2_000_000 if args.quick else 20_000_000
    folder = Path(tempfile.gettempdir()) / f"aflow-bench-records-{rows}"
    folder.mkdir(exist_ok=True)
    paths = make_files(folder, rows)
    names = list(IMPLEMENTATIONS)
    print(f"{rows:,} records, 4 files; {args.reps} runs each; {load()}")
    runs = interleaved(__file__, names, ["--paths", *paths], args.reps)
    ratios = report(runs, rows, names[0], lambda a, b: a == b)
    aflow = ratios[names[3]]
    pipeline, floor = aflow / ratios[names[1]], aflow / ratios[names[2]]
    print(f"after: {load()}")
    print(f"  aflow / single shot = {aflow:.2f} (target >= 0.8)")
    print(f"  aflow / generators  = {pipeline:.2f} (target >= 0.9)")
    print(f"  aflow / anyio loop  = {floor:.2f} (the same reads in a worker thread)")


if __name__ == "__main__":
    main()

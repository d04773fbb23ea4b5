"""Sensor CSV: 5,000,000 lines ``ts,sensor,value`` -> per-sensor count, sum, min, max,
as one file (~150 MB) and as four files of a quarter each.

Implementations, each in its own subprocess, runs interleaved:

- single shot (the reference): ``pyarrow.csv.read_csv`` of each whole file (pyarrow's
  threads on every core), then the aggregate over all rows at once;
- hand-written pipeline: plain generators over 1 MiB blocks cut at line ends, each block
  parsed by ``pyarrow.csv`` in a pool of one thread per core, the aggregate per block;
- aflow: ``read_csv(paths, dtype) | to_aggregate("sensor", "value", stats)``.

The aggregate is the same code everywhere (``aflow.kernels.keyed.KeyedStats``), so the figures
compare reading and decoding. Results must agree exactly (all values are multiples of
1/8, sums are exact in any order).

    python benchmarks/bench_csv.py            # 5,000,000 lines, 3 runs each
    python benchmarks/bench_csv.py --quick    # 500,000 lines
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _runs import (
    arrow_numpy,
    interleaved,
    job_imports,
    load,
    memory_verdict,
    peak_rss,
    report,
)

READING = np.dtype([("ts", "<i8"), ("sensor", "<i4"), ("value", "<f4")])
STATS = ("count", "sum", "min", "max")
SENSORS = 1000


def make_files(folder: Path, rows: int) -> tuple[list[str], list[str]]:
    one = folder / "one.csv"
    parts = [folder / f"part-{k}.csv" for k in range(4)]
    if not one.exists():
        rng = np.random.default_rng(7)
        ts = 1_700_000_000_000 + np.arange(rows, dtype=np.int64) * 10
        sensor = rng.integers(0, SENSORS, rows)
        value = np.round(rng.normal(20, 5, rows) * 8) / 8
        text = "".join(
            f"{t},{s},{v}\n"
            for t, s, v in zip(ts.tolist(), sensor.tolist(), value.tolist(), strict=False)
        )
        lines = text.splitlines(keepends=True)
        one.write_text(text)
        q = len(lines) // 4
        for k, path in enumerate(parts):
            path.write_text("".join(lines[k * q : (k + 1) * q if k < 3 else len(lines)]))
    return [str(one)], [str(p) for p in parts]


def summary(stats: Any) -> list[list[float]]:
    r = stats.result("sensor")
    return [[int(x[0]), *(float(v) for v in list(x)[1:])] for x in r]


def arrow_options() -> tuple[Any, Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return (
        pacsv.ReadOptions(column_names=list(READING.names or ())),
        pacsv.ConvertOptions(
            column_types={"ts": pa.int64(), "sensor": pa.int32(), "value": pa.float32()}
        ),
    )


def single_shot(paths: list[str]) -> list[list[float]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from aflow.kernels.keyed import KeyedStats

    read, convert = arrow_options()
    table = pa.concat_tables([pacsv.read_csv(p, read, convert_options=convert) for p in paths])
    stats = KeyedStats(STATS)
    stats.update(
        arrow_numpy(table.column("sensor"), "i4"), arrow_numpy(table.column("value"), "f4")
    )
    return summary(stats)


def blocks(paths: list[str], size: int = 1 << 20) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            rest = b""
            while chunk := f.read(size):
                chunk = rest + chunk
                cut = chunk.rfind(b"\n") + 1
                rest = chunk[cut:]
                yield chunk[:cut]
            if rest:
                yield rest


def generators(paths: list[str]) -> list[list[float]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from aflow.kernels.keyed import KeyedStats

    read, convert = arrow_options()
    read.use_threads = False

    def one(block: bytes) -> tuple[np.ndarray, np.ndarray]:
        t = pacsv.read_csv(pa.py_buffer(block), read, convert_options=convert)
        return arrow_numpy(t.column("sensor"), "i4"), arrow_numpy(t.column("value"), "f4")

    stats = KeyedStats(STATS)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        for sensor, value in pool.map(one, blocks(paths)):
            stats.update(sensor, value)
    return summary(stats)


def aflow_flow(paths: list[str]) -> list[list[float]]:
    import aflow as af

    flow = af.read_csv(paths, READING) | af.to_aggregate("sensor", "value", STATS)
    r = af.run(flow).value
    return [[int(x[0]), *(float(v) for v in list(x)[1:])] for x in r]


IMPLEMENTATIONS = {
    "single shot: pyarrow.csv per file": single_shot,
    "generators: pyarrow per 1 MiB block, pool": generators,
    "aflow read_csv | to_aggregate": aflow_flow,
}


def child(name: str, paths: list[str]) -> None:
    import aflow as af

    job_imports(name, lambda: af.codecs.CsvDecoder(READING))  # not timed

    started = time.perf_counter()
    result = IMPLEMENTATIONS[name](paths)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "result": result, "rss": peak_rss()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=["one", "four"])
    parser.add_argument("--child")
    parser.add_argument("--paths", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.paths)
        return
    rows = 500_000 if args.quick else 5_000_000
    folder = Path(tempfile.gettempdir()) / f"aflow-bench-csv-{rows}"
    folder.mkdir(exist_ok=True)
    one, four = make_files(folder, rows)
    names = list(IMPLEMENTATIONS)
    for label, paths, target in (("one file", one, 0.8), ("four files", four, 0.9)):
        if args.only and not label.startswith(args.only):
            continue
        size = sum(Path(p).stat().st_size for p in paths) / 1e6
        print(f"\n{label}: {rows:,} lines, {size:.0f} MB; {args.reps} runs each; {load()}")
        runs = interleaved(__file__, names, ["--paths", *paths], args.reps)
        ratios = report(runs, rows, names[0], lambda a, b: a == b)
        ratio = ratios["aflow read_csv | to_aggregate"]
        verdict = "PASS" if ratio >= target else "FAIL"
        print(f"after: {load()}; aflow {ratio:.2f}x single shot (target >= {target}): {verdict}")
        rss = {name: max(r["rss"] for r in rs) for name, rs in runs.items()}
        memory_verdict(rss["aflow read_csv | to_aggregate"], rss[names[0]])


if __name__ == "__main__":
    main()

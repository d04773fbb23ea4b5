"""Access logs: 2,000,000 nginx combined lines with a request time, one file (~320 MB)
-> per-status count and mean request time.

Implementations, each in its own subprocess, runs interleaved:

- single shot (the reference): ``pyarrow.csv.read_csv`` of the whole file as
  quote-aware space-separated columns (pyarrow's threads on every core), then the
  aggregate;
- hand-written pipeline: plain generators over 1 MiB blocks cut at line ends, each block
  parsed by ``pyarrow.csv`` in a pool of one thread per core, the same aggregate;
- aflow ``read_log`` with the default pattern (``COMBINED``) and with a user-declared
  ``LogFormat`` of the same shape, into ``to_aggregate``; for information, the default
  columns (strings and timestamps too), and a user-written regex of the same shape
  (Python's ``re``, one line at a time, no array path).

Every result must equal the reference's (counts exactly, means to 1e-9).

    python benchmarks/bench_logs.py            # 2,000,000 lines, 3 runs each
    python benchmarks/bench_logs.py --quick    # 200,000 lines
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
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

FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" $request_time'
)
USER_REGEX = (
    r"(?P<addr>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<request_time>[\d.]+)'
)
STATUSES = np.array([200, 200, 200, 200, 201, 301, 304, 400, 404, 500, 502])


def make_file(path: Path, rows: int) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(5)
    agents = ['"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"', '"curl/8.5.0"']
    with path.open("w") as f:
        for lo in range(0, rows, 100_000):
            n = min(100_000, rows - lo)
            status = STATUSES[rng.integers(0, len(STATUSES), n)]
            ip = rng.integers(1, 255, n)
            item = rng.integers(0, 100_000, n)
            size = rng.integers(0, 50_000, n)
            ms = rng.integers(1, 900, n)
            out = []
            for k in range(n):
                sec = (lo + k) // 100
                stamp = (
                    f"{10 + sec // 86400:02d}/Oct/2024:{sec // 3600 % 24:02d}:"
                    f"{sec // 60 % 60:02d}:{sec % 60:02d} +0000"
                )
                out.append(
                    f'10.0.{ip[k] % 8}.{ip[k]} - - [{stamp}] "GET /api/items/{item[k]}?page=2 '
                    f'HTTP/1.1" {status[k]} {size[k]} "https://example.com/" '
                    f"{agents[k & 1]} {ms[k] // 1000}.{ms[k] % 1000:03d}\n"
                )
            f.write("".join(out))


def summary(status: np.ndarray, seconds: np.ndarray) -> list[list[float]]:
    keys, inverse = np.unique(status, return_inverse=True)
    count = np.bincount(inverse)
    total = np.bincount(inverse, weights=seconds)
    return [[int(k), int(c), float(t / c)] for k, c, t in zip(keys, count, total, strict=True)]


def from_aggregate(result: np.ndarray) -> list[list[float]]:
    return [[int(r["status"]), int(r["count"]), float(r["mean"])] for r in result]


def arrow_options() -> tuple[Any, Any, Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{i}" for i in range(11)]  # "[time" and "zone]" are two fields
    return (
        pacsv.ReadOptions(column_names=names, block_size=1 << 20),
        pacsv.ParseOptions(delimiter=" ", quote_char='"'),
        pacsv.ConvertOptions(
            include_columns=["f6", "f10"], column_types={"f6": pa.int64(), "f10": pa.float64()}
        ),
    )


def single_shot(path: str) -> list[list[float]]:
    import pyarrow.csv as pacsv

    read, parse, convert = arrow_options()
    table = pacsv.read_csv(path, read, parse, convert)
    return summary(arrow_numpy(table.column("f6"), "i8"), arrow_numpy(table.column("f10"), "f8"))


def blocks(path: str, size: int = 1 << 20) -> Any:
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(size):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            yield chunk[:cut]
        if rest:
            yield rest


def generators(path: str) -> list[list[float]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read, parse, convert = arrow_options()
    read.use_threads = False

    def one(block: bytes) -> tuple[np.ndarray, np.ndarray]:
        t = pacsv.read_csv(pa.py_buffer(block), read, parse, convert)
        return arrow_numpy(t.column("f6"), "i8"), arrow_numpy(t.column("f10"), "f8")

    keys = np.zeros(0, np.int64)
    counts = np.zeros(0, np.int64)
    sums = np.zeros(0)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        for status, seconds in pool.map(one, blocks(path)):
            k, inv = np.unique(status, return_inverse=True)
            allk = np.union1d(keys, k)
            c = np.zeros(len(allk), np.int64)
            s = np.zeros(len(allk))
            c[np.searchsorted(allk, keys)] += counts
            s[np.searchsorted(allk, keys)] += sums
            c[np.searchsorted(allk, k)] += np.bincount(inv)
            s[np.searchsorted(allk, k)] += np.bincount(inv, weights=seconds)
            keys, counts, sums = allk, c, s
    return [[int(k), int(c), float(t / c)] for k, c, t in zip(keys, counts, sums, strict=True)]


def aflow_flow(path: str, pattern: Any, columns: dict[str, str] | None) -> list[list[float]]:
    import aflow as af

    flow = af.read_log(path, pattern, columns) | af.to_aggregate(
        "status", "request_time", ("count", "mean")
    )
    return from_aggregate(af.run(flow).value)


def implementations() -> dict[str, Any]:
    import aflow as af

    typed = {"status": "int", "request_time": "float"}
    impls = {
        "single shot: pyarrow.csv, all cores": single_shot,
        "generators: pyarrow per 1 MiB block, pool": generators,
        "aflow read_log (COMBINED)": lambda p: aflow_flow(p, af.codecs.COMBINED, typed),
        "aflow read_log (LogFormat)": lambda p: aflow_flow(p, af.codecs.LogFormat(FORMAT), typed),
        "aflow read_log (COMBINED, default columns)": lambda p: aflow_flow(
            p, af.codecs.COMBINED, {**af.codecs.COMBINED_COLUMNS, **typed}
        ),
        "aflow read_log (user regex, re)": lambda p: aflow_flow(p, USER_REGEX, typed),
    }
    if not hasattr(af.codecs, "LogFormat"):  # an aflow from before it (--before runs)
        del impls["aflow read_log (LogFormat)"]
    return impls


def child(name: str, path: str) -> None:
    import aflow as af

    job_imports(name, lambda: af.codecs.LogDecoder(af.codecs.COMBINED, {"status": "int"}))

    impl = implementations()[name]
    started = time.perf_counter()
    result = impl(path)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "result": result, "rss": peak_rss()}))


def same(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(
        x[:2] == y[:2] and abs(x[2] - y[2]) <= 1e-9 * abs(y[2]) for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="leave out the regex run")
    parser.add_argument("--child")
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path)
        return
    rows = 200_000 if args.quick else 2_000_000
    path = Path(tempfile.gettempdir()) / f"aflow-bench-access-{rows}.log"
    make_file(path, rows)
    names = list(implementations())
    if args.skip_slow:
        names = [n for n in names if "regex" not in n]
    import aflow as af

    engine = af.codecs.LogDecoder(af.codecs.COMBINED, {"status": "int"}).engine
    print(f"{rows:,} lines, {path.stat().st_size / 1e6:.0f} MB; {args.reps} runs each; {load()}")
    print(f"aflow's log engine: {engine} (LogDecoder(engine='auto'))")
    runs = interleaved(__file__, names, ["--path", str(path)], args.reps)
    ratios = report(runs, rows, names[0], same)
    print(f"after: {load()}")
    for name in ("aflow read_log (COMBINED)", "aflow read_log (LogFormat)"):
        if name not in ratios:
            continue
        verdict = "PASS" if ratios[name] >= 0.7 else "FAIL"
        print(f"  {name}: {ratios[name]:.2f}x single shot (target >= 0.7): {verdict}")
    rss = {name: max(r["rss"] for r in rs) for name, rs in runs.items()}
    memory_verdict(rss["aflow read_log (COMBINED)"], rss[names[0]])


if __name__ == "__main__":
    main()

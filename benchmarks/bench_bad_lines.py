"""Bad-lines benchmark: what 1 % bad lines cost each decoder, against clean input.

For CSV (``auto``/pyarrow and numpy engines), JSON lines and the combined access log, one
file of clean lines and one with 1 % bad lines (a non-number, a wrong field count, a
timestamp that matches the pattern but does not convert), the same size, are read with
``on_error="skip"``; the script prints seconds side by side and the ratio (target: <= 3).

    python benchmarks/bench_bad_lines.py            # 200,000 lines per file
    python benchmarks/bench_bad_lines.py --lines 50000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import aflow as af

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f8")])
LOG_LINE = (
    '10.0.0.{i} - - [10/Oct/2000:13:{m:02d}:{s:02d} -0700] "GET /p/{i} HTTP/1.1" 200 {i} '
    '"-" "agent" 0.012\n'
)


def _csv(i: int) -> str:
    return f"{i},{i % 100},{i / 7:.6f}\n"


def _jsonl(i: int) -> str:
    return f'{{"ts": {i}, "sensor": {i % 100}, "value": {i / 7:.6f}}}\n'


def _log(i: int) -> str:
    return LOG_LINE.format(i=i % 250, m=(i // 60) % 60, s=i % 60)


BAD = {
    "csv": ["1,2,oops\n", "1,2\n"],
    "jsonl": ['{"ts": "x", "sensor": 1, "value": 2}\n', "{not json\n"],
    "log": [LOG_LINE.format(i=1, m=1, s=1).replace("10/Oct", "32/Oct"), "garbage\n"],
}


def write(path: Path, make: Callable[[int], str], bad: list[str], lines: int, share: float) -> None:
    every = round(1 / share) if share else 0
    with path.open("w") as f:
        for i in range(lines):
            f.write(bad[i % len(bad)] if every and i % every == every - 1 else make(i))


def timed(flow: af.Flow[Any]) -> tuple[float, int]:
    start = time.perf_counter()
    result = af.run(flow)
    return time.perf_counter() - start, len(result.value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    cases: list[tuple[str, str, Callable[[str], af.Flow[Any]]]] = [
        ("csv auto", "csv", lambda p: af.read_csv(p, READING, on_error="skip")),
        ("csv numpy", "csv", lambda p: af.read_csv(p, READING, engine="numpy", on_error="skip")),
        ("jsonl", "jsonl", lambda p: af.read_jsonl(p, READING, on_error="skip")),
        (
            "log combined",
            "log",
            lambda p: af.read_log(
                p,
                columns={"time": af.codecs.COMBINED_COLUMNS["time"], "status": "int"},
                on_error="skip",
            ),
        ),
    ]
    makers = {"csv": _csv, "jsonl": _jsonl, "log": _log}
    print(f"{args.lines:,} lines per file, on_error='skip'; seconds (best of 3)")
    print(f"{'decoder':<14}{'clean':>9}{'1 % bad':>10}{'ratio':>8}{'rows':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, kind, read in cases:
            clean, dirty = Path(tmp) / f"clean.{kind}", Path(tmp) / f"bad.{kind}"
            if not clean.exists():
                write(clean, makers[kind], BAD[kind], args.lines, 0)
                write(dirty, makers[kind], BAD[kind], args.lines, 0.01)
            t_clean = min(timed(read(str(clean)))[0] for _ in range(3))
            runs = [timed(read(str(dirty))) for _ in range(3)]
            t_bad = min(t for t, _ in runs)
            print(
                f"{label:<14}{t_clean:>9.3f}{t_bad:>10.3f}{t_bad / t_clean:>8.2f}{runs[0][1]:>10,}"
            )


if __name__ == "__main__":
    main()

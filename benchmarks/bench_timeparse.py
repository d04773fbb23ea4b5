"""Timestamp parsing benchmark: syslog-like lines with fractional seconds (``%f``).

Data (seeded, not timed): ``--lines`` (default 200,000) RFC 5424-style lines
``2024-01-01T10:00:00.123456+00:00 host42 app[1234]: message 17``.

Measured, side by side:

- ``decode_log`` of those lines into ``host``, ``pid``, ``msg`` columns, without and with
  the ``time`` column (``timestamp:%Y-%m-%dT%H:%M:%S.%f%z``): lines per second;
- the time column alone: :class:`aflow.codecs._timeparse.FixedFormat` (array arithmetic;
  before ``%f`` was supported, such formats fell back to it) against ``datetime.strptime``
  text by text, which the decoder used for them. The two must agree exactly, else exit 1.

    python benchmarks/bench_timeparse.py
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

import aflow as af
from aflow.codecs._timeparse import FixedFormat

FMT = "%Y-%m-%dT%H:%M:%S.%f%z"
PATTERN = r"(?P<time>\S+) (?P<host>\S+) (?P<app>[^\[]+)\[(?P<pid>\d+)\]: (?P<msg>.*)"


def make_lines(n: int) -> list[str]:
    rng = np.random.default_rng(3)
    start = np.datetime64("2024-01-01T10:00:00", "us")
    stamps = start + np.sort(rng.integers(0, 3_600_000_000, n)).astype("m8[us]")
    texts = np.datetime_as_string(stamps, unit="us").tolist()
    hosts = rng.integers(0, 100, n).tolist()
    pids = rng.integers(100, 9999, n).tolist()
    return [
        f"{t}+00:00 host{h} app[{p}]: message {i}"
        for i, (t, h, p) in enumerate(zip(texts, hosts, pids, strict=True))
    ]


def decode_rate(blob: bytes, columns: dict[str, str], lines: int) -> float:
    flow = af.from_arrays([np.frombuffer(blob, np.uint8)]) | af.decode_log(PATTERN, columns)
    t0 = time.perf_counter()
    out = af.run(flow | af.collect()).value
    elapsed = time.perf_counter() - t0
    assert len(out) == lines
    return lines / elapsed


def strptime_ns(texts: list[str]) -> Any:
    def one(text: str) -> int:
        moment = datetime.strptime(text, FMT).astimezone(UTC).replace(tzinfo=None)
        return int(np.datetime64(moment, "ns").astype(np.int64))

    return np.array([one(t) for t in texts])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    lines = make_lines(args.lines)
    blob = ("\n".join(lines) + "\n").encode()
    base = {"host": "str", "pid": "int", "msg": "str"}
    without = decode_rate(blob, base, len(lines))
    with_time = decode_rate(blob, {**base, "time": f"timestamp:{FMT}"}, len(lines))
    print(f"decode_log, {len(lines):,} syslog-like lines")
    print(f"  without the time column  {without:>12,.0f} lines/s")
    print(f"  with the %f time column  {with_time:>12,.0f} lines/s")
    texts = [line.split(" ", 1)[0] for line in lines]
    t0 = time.perf_counter()
    fast, ok = FixedFormat(FMT).parse(texts)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = strptime_ns(texts)
    slow_s = time.perf_counter() - t0
    print("time column alone")
    print(f"  FixedFormat (arrays)     {len(texts) / fast_s:>12,.0f} texts/s")
    print(f"  strptime, text by text   {len(texts) / slow_s:>12,.0f} texts/s")
    if not ok.all() or not np.array_equal(fast, slow):
        print("MISMATCH between FixedFormat and strptime", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

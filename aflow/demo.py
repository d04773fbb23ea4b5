"""``aflow demo``: five pipelines on data the demo makes, meant to be read.

Run it with ``aflow demo`` (``--rows`` to size it); each numbered function below is one
pipeline, written as you would write it in your own code:

1. Telemetry: 5,000,000 readings ``(ts, sensor, value)`` from 1,000 simulated sensors,
   generated chunk by chunk, batched, converted in worker threads, cleaned (NaN readings
   counted and dropped), then broadcast to per-sensor statistics and an alert counter.
   The result is checked against the single-shot NumPy computation on the same data.
2. Files: the readings written as CSV files (with a few corrupt lines) are read back
   concurrently, decoded in bulk, bad lines set aside with file and line number, and
   aggregated in one-minute event-time windows per sensor.
3. Logs: nginx access logs (with garbage lines) parsed in bulk into status counts and
   latency quantiles.
4. Backpressure: a fast source feeding a deliberately slow consumer under a 1 MB
   ceiling: the source is paused, memory stays bounded.
5. Generators: an infinite Fibonacci generator, re-run twice, stopped by ``take``.

CSV decoding uses aflow's compiled scanner where it was built at install (a C compiler
was found), else pyarrow when it is installed (the ``arrow`` extra), several times faster
than NumPy's reader; the demo says which engine it uses.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

import aflow as af

__all__ = ["main"]

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])
SENSORS = 1000


def readings(rows: int, chunk: int = 100_000, seed: int = 7) -> Iterator[NDArray[Any]]:
    """Synthetic readings in Celsius; about 0.1% are NaN (a sensor glitch)."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        out = np.empty(n, READING)
        out["ts"] = np.arange(start, start + n, dtype="i8") * 1_000_000
        out["sensor"] = rng.integers(0, SENSORS, n)
        out["value"] = rng.normal(20.0, 5.0, n) + out["sensor"] * 0.01
        out["value"][rng.random(n) < 0.001] = np.nan
        yield out


def to_fahrenheit(b: NDArray[Any]) -> NDArray[Any]:
    out = b.copy()
    out["value"] = b["value"] * 1.8 + 32
    return out


def valid(b: NDArray[Any]) -> NDArray[np.bool_]:
    mask: NDArray[np.bool_] = ~np.isnan(b["value"])
    return mask


class SensorStats:
    """Per-sensor count, sum, min and max, merged batch by batch (memory ~ sensors)."""

    def __init__(self) -> None:
        self.count = np.zeros(SENSORS, "i8")
        self.total = np.zeros(SENSORS, "f8")
        self.low = np.full(SENSORS, np.inf)
        self.high = np.full(SENSORS, -np.inf)

    def add(self, b: NDArray[Any]) -> SensorStats:
        s, v = b["sensor"], b["value"].astype("f8")
        self.count += np.bincount(s, minlength=SENSORS)
        self.total += np.bincount(s, weights=v, minlength=SENSORS)
        np.minimum.at(self.low, s, v)
        np.maximum.at(self.high, s, v)
        return self


def single_shot(rows: int) -> SensorStats:
    data = np.concatenate(list(readings(rows)))
    return SensorStats().add(to_fahrenheit(data[valid(data)]))


async def telemetry(rows: int) -> None:
    """1. Generated readings batched, converted in threads, cleaned, then two results at
    once (``broadcast``): per-sensor statistics and a count of alerts."""
    flow = (
        af.from_arrays(lambda: readings(rows), name="sensors")
        | af.batch(65_536)
        | af.map_batches(to_fahrenheit, thread=True, concurrency=2)
        | af.filter_rows(valid)
        | af.broadcast(
            af.reduce(lambda acc, b: acc.add(b), SensorStats()),
            af.map(lambda b: int((b["value"] > 100).sum())) | af.reduce(int.__add__, 0),
        )
    )
    say(f"1. Telemetry: {rows:,} readings from {SENSORS:,} sensors, generated as they flow")
    started = time.perf_counter()
    result = await flow.run()
    seconds = time.perf_counter() - started
    stats, alerts = result.value
    dropped = rows - int(stats.count.sum())
    print(f"   {rows / seconds / 1e6:.1f} M rows/s ({seconds:.2f} s); {dropped:,} NaN dropped")
    print(f"   {alerts:,} readings above 100 F")
    print("   sensor   count      mean F    min F    max F")
    for s in (0, 1, 999):
        mean = stats.total[s] / stats.count[s]
        print(
            f"   {s:>6} {stats.count[s]:>7,} {mean:>11.2f} {stats.low[s]:>8.2f}"
            f" {stats.high[s]:>8.2f}"
        )
    say("   checking against the same computation in one NumPy call ...")
    reference = single_shot(rows)
    same = np.array_equal(reference.count, stats.count) and np.allclose(
        reference.total, stats.total
    )
    print(f"   check against single-shot NumPy: {'identical' if same else 'MISMATCH'}")
    print()
    print(_indent(result.statistics.format()))
    print(
        "   broadcast(2) and the sinks (reduce) pass no items on: broadcast copies each batch"
        "\n   to its branches, the [0] and [1] rows below it, and a sink keeps what it gets."
    )
    if not same:
        raise SystemExit("demo result does not match the single-shot computation")


async def backpressure(rows: int) -> None:
    """4. A fast source, a slow consumer and a ceiling on bytes in flight: the source waits."""

    async def slow_consumer(b: NDArray[Any]) -> None:
        await anyio.sleep(0.01)

    ceiling = 1_000_000
    flow = (
        af.from_arrays(lambda: readings(rows, chunk=4096), name="sensors")
        | af.map_batches(to_fahrenheit)
        | af.buffer(64)
        | af.for_each(slow_consumer, buffer=64)
    )
    say(f"\n4. Backpressure: {rows:,} rows into a consumer that sleeps 10 ms per batch")
    result = await flow.run(max_bytes_in_flight=ceiling)
    stats = result.statistics
    source = stats.stage("sensors")
    print(
        f"   source paused {source.blocked_seconds:.2f} s of {stats.seconds:.2f} s; "
        f"peak in flight {stats.peak_bytes_in_flight / 1e6:.2f} MB "
        f"(ceiling {ceiling / 1e6:.1f} MB, data {rows * READING.itemsize / 1e6:.1f} MB)"
    )


def write_csv_files(folder: Path, rows: int, files: int = 4) -> tuple[int, int]:
    """The readings as CSV files, one per group of sensors (as devices would write them);
    every 50,000th line is corrupt. Returns (corrupt lines, valid readings)."""
    data = np.concatenate(list(readings(rows)))
    bad = 0
    for k in range(files):
        part = data[data["sensor"] % files == k]
        lines = np.char.add(
            np.char.add(part["ts"].astype("U20"), ","),
            np.char.add(np.char.add(part["sensor"].astype("U6"), ","), part["value"].astype("U12")),
        ).tolist()
        for i in range(0, len(lines), 50_000):
            lines[i] = "###corrupt###"
            bad += 1
        (folder / f"sensors-{k}.csv").write_text("\n".join(lines) + "\n")
    return bad, int(np.count_nonzero(~np.isnan(data["value"]))) - bad


async def files(folder: Path, rows: int) -> None:
    """2. CSV files read concurrently, bad lines set aside, one-minute windows per sensor."""
    say(f"\n2. Files: {rows:,} readings in 4 CSV files, read concurrently")
    say(f"   decoding with {csv_engine()}")
    bad_written, good = write_csv_files(folder, rows)
    dead: list[af.FailedItem] = []
    minute = 60_000_000_000  # ts is in nanoseconds
    # The files are read concurrently, so their blocks interleave in event time (a 1 MiB
    # block spans minutes of readings): windows wait 10 minutes for stragglers.
    stats = ("count", "mean", "max")
    flow = (
        af.read_csv(str(folder / "sensors-*.csv"), READING, on_error=af.dead_letter(dead))
        | af.filter_rows(valid)
        | af.window(
            minute, on="ts", key="sensor", value="value", stats=stats, allowed_lateness=10 * minute
        )
        | af.collect("array")
    )
    started = time.perf_counter()
    result = await flow.run()
    seconds = time.perf_counter() - started
    windows = result.value
    print(f"   {rows / seconds / 1e6:.1f} M lines/s ({seconds:.2f} s)")
    print(
        f"   {len(dead)} corrupt lines set aside (of {bad_written} written), e.g. "
        f"{Path(dead[0].error.source or '').name} line {dead[0].error.line}"  # type: ignore[attr-defined]
    )
    late = next(s.errors for s in result.statistics.stages if "window" in s.name)
    counted = int(windows["count"].sum())
    print(
        f"   {len(windows):,} (minute, sensor) windows over {counted:,} readings "
        f"(of {good:,} valid); {late} late rows"
    )
    if len(dead) != bad_written or counted + late != good:
        raise SystemExit("demo: rows went missing between the files and the windows")


LOG_LINE = (
    '10.0.{a}.{b} - - [23/Nov/2026:13:{m:02d}:{s:02d} +0000] "GET /api/{p} HTTP/1.1" '
    '{status} {size} "-" "demo/1.0" {rt:.3f}'
)


def write_logs(folder: Path, lines: int) -> int:
    rng = np.random.default_rng(1)
    status = rng.choice([200, 200, 200, 200, 301, 404, 500], lines)
    rt = rng.lognormal(-4, 1, lines)
    out = []
    garbage = 0
    for i in range(lines):
        if i % 10_000 == 9_999:
            out.append("GET /oops this is not an access log line")
            garbage += 1
            continue
        out.append(
            LOG_LINE.format(
                a=i % 250,
                b=i % 199,
                m=(i // 3600) % 60,
                s=i % 60,
                p=i % 17,
                status=status[i],
                size=100 + i % 900,
                rt=rt[i],
            )
        )
    (folder / "access.log").write_text("\n".join(out) + "\n")
    return garbage


async def logs(folder: Path, lines: int) -> None:
    """3. An access log parsed in bulk into status counts and latency quantiles."""
    say(f"\n3. Logs: {lines:,} nginx access-log lines (some garbage) parsed in bulk")
    garbage = write_logs(folder, lines)
    dead: list[af.FailedItem] = []
    columns = {"status": "int", "request_time": "float"}  # only what the sinks use
    parsed = af.read_log(str(folder / "access.log"), columns=columns, on_error=af.dead_letter(dead))
    flow = parsed | af.broadcast(
        af.to_aggregate(key="status", value="request_time", stats=("count", "mean")),
        af.to_quantiles(value="request_time", q=(0.5, 0.99)),
    )
    started = time.perf_counter()
    result = await flow.run()
    seconds = time.perf_counter() - started
    by_status, (p50, p99) = result.value
    print(f"   {lines / seconds / 1e3:,.0f} k lines/s")
    print("   status   count   mean latency")
    for row in by_status:
        print(f"   {row['status']:>6} {row['count']:>7,} {row['mean'] * 1e3:>10.1f} ms")
    print(f"   latency p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms (sketch, 1% accuracy)")
    print(f"   {len(dead)} garbage lines set aside (of {garbage} written)")


def fib() -> Iterator[int]:
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


async def generators() -> None:
    """5. An infinite generator function is a re-runnable source; ``take`` stops it."""
    flow = af.from_iterable(fib) | af.take(15) | af.collect()
    first, second = (await flow.run()).value, (await flow.run()).value
    print("\n5. Generators: an infinite Fibonacci generator, | take(15), run twice")
    print(f"   {first}")
    print(f"   second run identical: {first == second}")


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def say(text: str) -> None:
    """Print at once (a section's heading shows before its work, even into a pipe)."""
    print(text, flush=True)


def csv_engine() -> str:
    """Which CSV decoder ``read_csv`` picks here, in words."""
    engine = af.codecs.CsvDecoder(READING).engine
    if engine == "native":
        return "aflow's compiled scanner (the fastest engine)"
    if engine == "pyarrow":
        return "pyarrow (built without a C compiler: no compiled scanner)"
    return (
        "NumPy: built without a C compiler and pyarrow is not installed; "
        "`pip install '.[arrow]'` is several times faster"
    )


async def main(rows: int = 5_000_000) -> None:
    """Run the five pipelines on ``rows`` sensor readings (and files and logs in
    proportion), printing a report of each."""
    say(f"aflow demo: five pipelines; CSV decoding with {csv_engine()}\n")
    await telemetry(rows)
    with tempfile.TemporaryDirectory(prefix="aflow-demo-") as tmp:
        await files(Path(tmp), max(rows // 5, 100_000))
        await logs(Path(tmp), max(rows // 25, 20_000))
    await backpressure(500_000)
    await generators()
    print(f"\nThe demo's pipelines are readable source: {__file__}")
    print("(the module aflow.demo; `aflow demo --help` for options)")

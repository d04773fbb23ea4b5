"""``aflow demo``: a sensor pipeline on data it generates, with a short report.

1. Telemetry: 5,000,000 readings ``(ts, sensor, value)`` from 1,000 simulated sensors,
   generated chunk by chunk, batched, converted in worker threads, cleaned (NaN readings
   counted and dropped), then broadcast to per-sensor statistics and an alert counter.
   The result is checked against the single-shot NumPy computation on the same data.
2. Backpressure: the same source feeding a deliberately slow consumer under a 1 MB
   ceiling: the source is paused, memory stays bounded.
3. Generators: an infinite Fibonacci generator, re-run twice, stopped by ``take``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

import aflow as af

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
    started = time.perf_counter()
    result = await flow.run()
    seconds = time.perf_counter() - started
    stats, alerts = result.value
    dropped = rows - int(stats.count.sum())
    print(f"1. Telemetry: {rows:,} readings from {SENSORS:,} sensors")
    print(f"   {rows / seconds / 1e6:.1f} M rows/s ({seconds:.2f} s); {dropped:,} NaN dropped")
    print(f"   {alerts:,} readings above 100 F")
    print("   sensor   count      mean F    min F    max F")
    for s in (0, 1, 999):
        mean = stats.total[s] / stats.count[s]
        print(
            f"   {s:>6} {stats.count[s]:>7,} {mean:>11.2f} {stats.low[s]:>8.2f}"
            f" {stats.high[s]:>8.2f}"
        )
    reference = single_shot(rows)
    same = np.array_equal(reference.count, stats.count) and np.allclose(
        reference.total, stats.total
    )
    print(f"   check against single-shot NumPy: {'identical' if same else 'MISMATCH'}")
    print()
    print(_indent(result.statistics.format()))
    if not same:
        raise SystemExit("demo result does not match the single-shot computation")


async def backpressure(rows: int) -> None:
    async def slow_consumer(b: NDArray[Any]) -> None:
        await anyio.sleep(0.01)

    ceiling = 1_000_000
    flow = (
        af.from_arrays(lambda: readings(rows, chunk=4096), name="sensors")
        | af.map_batches(to_fahrenheit)
        | af.buffer(64)
        | af.for_each(slow_consumer, buffer=64)
    )
    result = await flow.run(max_bytes=ceiling)
    stats = result.statistics
    source = stats.stage("sensors")
    print(f"\n2. Backpressure: {rows:,} rows into a consumer that sleeps 10 ms per batch")
    print(
        f"   source paused {source.blocked_seconds:.2f} s of {stats.seconds:.2f} s; "
        f"peak in flight {stats.peak_bytes_in_flight / 1e6:.2f} MB "
        f"(ceiling {ceiling / 1e6:.1f} MB, data {rows * READING.itemsize / 1e6:.1f} MB)"
    )


def fib() -> Iterator[int]:
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


async def generators() -> None:
    flow = af.from_iterable(fib) | af.take(15) | af.collect()
    first, second = (await flow.run()).value, (await flow.run()).value
    print("\n3. Generators: an infinite Fibonacci generator, | take(15), run twice")
    print(f"   {first}")
    print(f"   second run identical: {first == second}")


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


async def main(rows: int = 5_000_000) -> None:
    await telemetry(rows)
    await backpressure(500_000)
    await generators()

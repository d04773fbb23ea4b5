"""Buffers between tasks (aflow/_core/buffers.py): a slow sink suspends the source, buffers
respect count and byte limits, a closed buffer stops the task feeding it.

The consumer is held (an event, or a turnstile letting a few items through at a time) and
the test reads how far the producer got once every task waits: no timing involved.
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from _helpers import Turnstile, idle, settle

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


async def ident(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


async def test_slow_sink_pauses_a_fast_source() -> None:
    src = CountingSource()
    turnstile = Turnstile()
    consumed = 0

    async def slow(item: int) -> None:
        nonlocal consumed
        await turnstile.through()
        consumed += 1

    flow = (
        af.from_iterable(src, chunk_size=10) | af.map(lambda x: x + 1) | af.for_each(slow, buffer=2)
    )
    async with flow.open() as run:
        for _ in range(10):  # the sink takes 10 items at a time; the source keeps pace
            await settle(lambda: src.produced)
            lead = src.produced - consumed
            # in flight at most: 2 buffered chunks, 1 being sent, 1 in the sink, 1 just pulled
            assert 0 < lead <= 5 * 10
            turnstile.allow(10)
        await settle(lambda: src.produced)
        stats = run.statistics()
        turnstile.open()
        run.stop()
    assert consumed >= 50
    source = stats.stage("from_iterable(CountingSource)")
    assert source.blocked_seconds > 0  # the source waited for room
    assert stats.stage("for_each(slow)").buffer_high_water == 2


async def test_peak_bytes_in_flight_never_pass_the_run_ceiling() -> None:
    data = np.arange(200_000, dtype=np.float64)  # batches of 1,000 rows = 8,000 bytes
    produced: list[int] = []
    held = anyio.Event()

    def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(data), 1000):
            produced.append(start)
            yield data[start : start + 1000]

    async def slow(batch: np.ndarray) -> None:
        await held.wait()

    flow = (
        af.from_arrays(chunks)
        | af.map_batches(lambda b: b * 2, thread=True)
        | af.buffer(16)
        | af.for_each(slow)
    )

    async def run_held(**options: int) -> af.RunResult[int]:
        """Run with the sink held until every buffer is as full as it gets."""
        nonlocal held
        held = anyio.Event()
        async with flow.open(**options) as run:
            await settle(lambda: len(produced))
            held.set()
            return await run.wait()

    ceiling = 64_000
    result = await run_held(max_bytes_in_flight=ceiling, buffer=16)
    assert result.value == 200
    assert 0 < result.statistics.peak_bytes_in_flight <= ceiling
    # without the ceiling, the same buffers would hold up to 3 x 16 batches
    loose = await run_held(buffer=16)
    assert loose.statistics.peak_bytes_in_flight > ceiling


async def test_per_stage_byte_limit_bounds_its_buffer() -> None:
    held = anyio.Event()

    async def slow(batch: np.ndarray) -> None:
        await held.wait()

    flow = (
        af.from_array(np.zeros(100_000), 1000)  # 8,000-byte batches
        | af.buffer(50, buffer_bytes=16_000)
        | af.for_each(slow, buffer=1)
    )
    async with flow.open() as run:
        await settle()
        held.set()
        result = await run.wait()
    assert result.statistics.stage("buffer(50)").buffer_high_water <= 2
    assert result.value == 100


async def test_a_batch_larger_than_the_limit_still_passes_alone() -> None:
    flow = af.from_array(np.zeros(10_000), 5000) | af.buffer(4, buffer_bytes=100) | af.collect()
    result = await flow.run()
    assert len(result.value) == 10_000


async def test_merge_respects_the_byte_ceiling() -> None:
    held = anyio.Event()

    async def slow(batch: np.ndarray) -> None:
        await held.wait()

    def part(n: int) -> af.Flow[np.ndarray]:
        return af.from_array(np.zeros(n * 125), batch_size=125)  # 1000-byte batches

    flow = af.merge(part(50), part(50), part(50)) | af.for_each(slow)
    async with flow.open(max_bytes_in_flight=4000) as run:
        await settle()  # three sources pressing on one shared buffer
        held.set()
        result = await run.wait()
    assert result.value == 150
    assert result.statistics.peak_bytes_in_flight <= 4000


@pytest.mark.virtual_time  # af.timeout(0.2) below takes no real time
@pytest.mark.parametrize(
    "make",
    [
        lambda: af.from_iterable(idle) | af.map(ident) | af.take(1),
        lambda: af.merge(af.from_iterable(idle), af.from_iterable(idle)) | af.take(2),
        lambda: af.zip(af.from_iterable([1]), af.from_iterable(idle)),
        lambda: af.from_iterable(idle) | af.timeout(0.2, on_timeout="stop"),
        lambda: af.concat(af.from_iterable(idle)) | af.take(1),
    ],
)
async def test_early_end_downstream_stops_an_idle_source(make) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(5):
        result = await make().run()
    assert len(result.value) >= 1

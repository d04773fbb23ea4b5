"""Backpressure: a slow sink suspends the source; buffers respect count and byte limits."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


async def test_slow_sink_pauses_a_fast_source() -> None:
    src = CountingSource()
    consumed = 0

    async def slow(item: int) -> None:
        nonlocal consumed
        await anyio.sleep(0.002)
        consumed += 1

    flow = (
        af.from_iterable(src, chunk_size=10) | af.map(lambda x: x + 1) | af.for_each(slow, buffer=2)
    )
    async with flow.open() as run:
        await anyio.sleep(0.5)
        lead = src.produced - consumed
        stats = run.statistics()
        run.stop()
    # in flight at most: 2 buffered chunks, 1 being sent, 1 in the sink, 1 just pulled
    assert 0 < lead <= 5 * 10
    assert consumed >= 50
    source = stats.stage("from_iterable(CountingSource)")
    assert source.blocked_seconds > 0.2  # the source spent most of its time waiting
    assert stats.stage("for_each(slow)").buffer_high_water == 2


async def test_peak_bytes_in_flight_never_pass_the_run_ceiling() -> None:
    data = np.arange(200_000, dtype=np.float64)  # batches of 1,000 rows = 8,000 bytes
    produced: list[int] = []

    def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(data), 1000):
            produced.append(start)
            yield data[start : start + 1000]

    async def slow(batch: np.ndarray) -> None:
        await anyio.sleep(0.001)

    flow = (
        af.from_arrays(chunks)
        | af.map_batches(lambda b: b * 2, thread=True)
        | af.buffer(16)
        | af.for_each(slow)
    )
    ceiling = 64_000
    result = await flow.run(max_bytes_in_flight=ceiling, buffer=16)
    assert result.value == 200
    assert 0 < result.statistics.peak_bytes_in_flight <= ceiling
    # without the ceiling, the same buffers would hold up to 3 x 16 batches
    loose = await flow.run(buffer=16)
    assert loose.statistics.peak_bytes_in_flight > ceiling


async def test_per_stage_byte_limit_bounds_its_buffer() -> None:
    async def slow(batch: np.ndarray) -> None:
        await anyio.sleep(0.002)

    flow = (
        af.from_array(np.zeros(100_000), 1000)  # 8,000-byte batches
        | af.buffer(50, buffer_bytes=16_000)
        | af.for_each(slow, buffer=1)
    )
    result = await flow.run()
    assert result.statistics.stage("buffer(50)").buffer_high_water <= 2
    assert result.value == 100


async def test_a_batch_larger_than_the_limit_still_passes_alone() -> None:
    flow = af.from_array(np.zeros(10_000), 5000) | af.buffer(4, buffer_bytes=100) | af.collect()
    result = await flow.run()
    assert len(result.value) == 10_000


async def test_broadcast_is_paced_by_the_slowest_branch() -> None:
    src = CountingSource(400)
    fast: list[int] = []
    slow_seen: list[int] = []

    async def slow(x: int) -> None:
        await anyio.sleep(0.001)
        slow_seen.append(x)

    flow = af.from_iterable(src, chunk_size=4) | af.broadcast(
        af.for_each(fast.append), af.for_each(slow, buffer=1)
    )
    async with flow.open() as run:
        await anyio.sleep(0.1)
        # the fast branch can be ahead of the slow one by the buffers between them only
        assert len(fast) - len(slow_seen) <= 4 * 4
        await run.wait()
    assert fast == slow_seen == list(range(400))

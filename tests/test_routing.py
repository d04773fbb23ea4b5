"""Routing sinks (aflow/sinks/routing.py): broadcast to every branch, partition by key."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from _helpers import Turnstile, idle, settle

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


async def test_partition_splits_rows_by_key() -> None:
    data = np.zeros(1000, dtype=[("sensor", "i4"), ("value", "f4")])
    data["sensor"] = np.arange(1000) % 12
    data["value"] = np.arange(1000)
    sinks = [af.collect() for _ in range(12)]
    result = await (af.from_array(data, 128) | af.partition(lambda b: b["sensor"], *sinks)).run()
    for i, part in enumerate(result.value):
        assert (part["sensor"] == i).all()
        np.testing.assert_array_equal(part["value"], data["value"][data["sensor"] == i])


async def test_partition_routes_elements() -> None:
    result = await (
        af.from_iterable(range(10)) | af.partition(lambda x: x % 3, af.collect(), af.collect())
    ).run()
    assert result.value == ([0, 2, 3, 5, 6, 8, 9], [1, 4, 7])


async def test_broadcast_branch_may_stop_early() -> None:
    result = await (
        af.from_iterable(range(100))
        | af.broadcast(af.take(3) | af.collect(), af.reduce(lambda a, x: a + x, 0))
    ).run()
    assert result.value == ([0, 1, 2], sum(range(100)))


async def test_broadcast_is_paced_by_the_slowest_branch() -> None:
    src = CountingSource(400)
    fast: list[int] = []
    slow_seen: list[int] = []
    turnstile = Turnstile()

    async def slow(x: int) -> None:
        await turnstile.through()
        slow_seen.append(x)

    flow = af.from_iterable(src, chunk_size=4) | af.broadcast(
        af.for_each(fast.append), af.for_each(slow, buffer=1)
    )
    async with flow.open() as run:
        for _ in range(10):  # the slow branch takes 10 items at a time
            await settle(lambda: len(fast))
            assert len(fast) < 400  # held back by the slow branch
            # the fast branch can be ahead of the slow one by the buffers between them only
            assert len(fast) - len(slow_seen) <= 4 * 4
            turnstile.allow(10)
        turnstile.open()
        await run.wait()
    assert fast == slow_seen == list(range(400))


async def test_broadcast_branches_that_all_stop_early_end_the_run() -> None:
    flow = af.from_iterable(idle) | af.broadcast(
        af.take(1) | af.collect(), af.take(1) | af.collect()
    )
    with anyio.fail_after(5):
        assert (await flow.run()).value == ([1], [1])

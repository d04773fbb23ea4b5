"""The runtime's tasks (aflow/_core/segments.py): a task that never waits still lets others in."""

from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel
import pytest

import aflow as af
import aflow.abc

pytestmark = pytest.mark.anyio


async def ident(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


async def test_a_heavily_filtered_source_lets_stop_and_timeouts_through() -> None:
    # Real time on purpose: the task never waits, so a virtual clock would never move; it
    # must yield every CHECKPOINT_INTERVAL of real time for the deadline to be seen at all.
    flow = af.from_iterable(itertools.count) | af.filter(lambda x: x < 0) | af.map(ident)
    with anyio.move_on_after(0.3) as scope:
        await flow.run()
    assert scope.cancelled_caught


class _TwoProducers(af.abc.Source):
    """A user source emitting from two tasks of its own task group: when the flow wants no
    more, each task gets ``Closed`` and the group raises them together."""

    name = "two_producers"

    async def produce(self, out: af.abc.Outlet, ctx: af.abc.Context) -> None:
        async def count(start: int) -> None:
            for i in range(start, start + 1_000_000, 2):
                await out.emit([i])
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(count, 0)
            tg.start_soon(count, 1)


async def test_closed_raised_in_a_sources_own_task_group_ends_it_quietly() -> None:
    """``Closed`` arriving as an exception group of Closed (one per producing task) ends the
    source like a bare ``Closed``: the run completes with what was taken."""
    with anyio.fail_after(10):
        result = await (af.Flow(_TwoProducers()) | af.take(5) | af.collect()).run()
    assert len(result.value) == 5

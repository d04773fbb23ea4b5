"""The runtime's tasks (aflow/_core/segments.py): a task that never waits still lets others in."""

from __future__ import annotations

import itertools

import anyio
import pytest

import aflow as af

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

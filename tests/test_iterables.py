"""Sources over Python objects (aflow/sources/iterables.py): iterables, generators, arrays."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest
from _helpers import settle

import aflow as af

pytestmark = pytest.mark.anyio


async def test_generator_object_runs_once_then_says_why() -> None:
    flow = af.from_iterable(x for x in range(3)) | af.collect()
    assert (await flow.run()).value == [0, 1, 2]
    with pytest.raises(af.SourceReusedError, match="generator function"):
        await flow.run()


async def test_from_array_slices_views_without_copying() -> None:
    data = np.arange(10_000, dtype=np.float64)
    seen: list[np.ndarray] = []
    await (af.from_array(data, 4096) | af.for_each(seen.append)).run()
    assert [len(b) for b in seen] == [4096, 4096, 1808]
    assert all(np.shares_memory(b, data) for b in seen)


async def test_batches_carry_provenance() -> None:
    flow = af.from_array(np.arange(10), 4, name="readings") | af.map_batches(lambda b: b + 1)
    async with flow.open() as run:
        provs = [str(b.provenance) async for b in run.envelopes()]
    assert provs == ["readings rows 0..4", "readings rows 4..8", "readings rows 8..10"]


async def test_an_item_read_before_a_stop_is_delivered() -> None:
    send, receive = anyio.create_memory_object_stream[str](1)
    consumed: list[str] = []

    async def source() -> AsyncIterator[str]:
        async for x in receive:
            consumed.append(x)
            yield x

    async with (af.from_iterable(source) | af.collect()).open() as run:
        await settle()  # the source waits for its first item
        send.send_nowait("a")
        await anyio.lowlevel.checkpoint()
        run.stop()
        result = await run.wait()
    send.close()
    receive.close()
    assert consumed == result.value == ["a"]

"""Flow control in time (aflow/stages/time.py): throttle and timeout, on a virtual clock
(both backends), so the waits take no real time and the spacing is exact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

import aflow as af

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_throttle_spaces_items_on_a_virtual_clock() -> None:
    times: list[float] = []

    def stamp(x: int) -> None:
        times.append(anyio.current_time())

    await (af.from_iterable(range(11)) | af.throttle(10) | af.for_each(stamp)).run()
    gaps = np.diff(times)
    assert gaps == pytest.approx([0.1] * 10)


async def test_throttle_charges_batches_by_rows() -> None:
    times: list[float] = []
    flow = (
        af.from_array(np.zeros(300), 100)
        | af.throttle(1000)
        | af.for_each(lambda b: times.append(anyio.current_time()))
    )
    await flow.run()
    assert np.diff(times) == pytest.approx([0.1, 0.1])


async def test_timeout_raises_when_the_source_goes_quiet() -> None:
    async def quiet() -> AsyncIterator[int]:
        yield 1
        await anyio.sleep(10)
        yield 2

    with pytest.raises(af.StageTimeoutError, match="no item for 2 s"):
        await (af.from_iterable(quiet) | af.timeout(2) | af.collect()).run()
    flow = af.from_iterable(quiet) | af.timeout(2, on_timeout="stop") | af.collect()
    assert (await flow.run()).value == [1]

"""Element-wise stages (aflow/stages/element.py): map, filter, flat_map, take, skip, scan."""

from __future__ import annotations

import numpy as np
import pytest

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


async def test_element_steps() -> None:
    flow = (
        af.from_iterable(range(20))
        | af.skip(2)
        | af.flat_map(lambda x: [x] * (x % 3))
        | af.take_while(lambda x: x < 15)
        | af.scan(lambda acc, x: acc + x, 0)
    )
    expected, acc = [], 0
    for x in range(2, 20):
        for y in [x] * (x % 3):
            if y >= 15:
                break
            acc += y
            expected.append(acc)
        else:
            continue
        break
    assert (await flow.run()).value == expected


async def test_take_while_stops_an_infinite_source() -> None:
    src = CountingSource()
    result = await (af.from_iterable(src) | af.take_while(lambda x: x < 1000)).run()
    assert result.value == list(range(1000))
    assert src.closed == 1


async def test_take_and_skip_count_rows_of_batches() -> None:
    flow = af.from_array(np.arange(100), 30) | af.skip(25) | af.take(50)
    np.testing.assert_array_equal((await flow.run()).value, np.arange(25, 75))


async def test_take_zero_never_pulls_from_the_source() -> None:
    src = CountingSource()
    assert (await (af.from_iterable(src) | af.take(0)).run()).value == []
    assert src.produced == 0


async def test_map_on_batches_keeps_the_envelope() -> None:
    flow = af.from_array(np.arange(6), 3, name="s") | af.map(lambda b: b * 2)
    async with flow.open() as run:
        got = [(b.data.tolist(), str(b.provenance)) async for b in run.envelopes()]
    assert got == [([0, 2, 4], "s rows 0..3"), ([6, 8, 10], "s rows 3..6")]

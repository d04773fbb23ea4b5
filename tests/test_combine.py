"""Sources made of other flows (aflow/sources/combine.py): merge, concat, zip, repeat."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


@pytest.mark.virtual_time
async def test_merge_reads_sources_concurrently() -> None:
    async def ticks(name: str, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await anyio.sleep(0.05)
            yield f"{name}{i}"

    started = anyio.current_time()
    flow = af.merge(
        af.from_iterable(lambda: ticks("a", 6)), af.from_iterable(lambda: ticks("b", 6))
    )
    result = await flow.run()
    assert sorted(result.value) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)])
    assert anyio.current_time() - started < 0.5  # one after the other would take 0.6 s


async def test_concat_runs_sub_flows_in_order_and_take_stops_it() -> None:
    src = CountingSource()
    flow = af.concat(af.from_iterable([1, 2]), af.from_iterable(src)) | af.take(5)
    assert (await flow.run()).value == [1, 2, 0, 1, 2]
    assert src.closed == 1


async def test_zip_pairs_items_and_stops_with_the_shortest() -> None:
    nums = CountingSource()
    flow = af.zip(af.from_iterable("abc"), af.from_iterable(nums))
    assert (await flow.run()).value == [("a", 0), ("b", 1), ("c", 2)]
    assert nums.closed == 1


async def test_repeat_gives_epochs_and_shuffle_after_it_reorders_each_epoch() -> None:
    epochs = af.repeat(af.from_array(np.arange(1000), 100), 3) | af.shuffle(500, seed=3)
    rows = (await epochs.run()).value
    assert len(rows) == 3000
    assert np.bincount(rows).tolist() == [3] * 1000


async def test_repeat_adds_up_statistics_instead_of_new_records() -> None:
    flow = af.repeat(af.from_iterable([1, 2, 3]) | af.map(lambda x: x), times=50)
    result = await (flow | af.discard()).run()
    assert result.value == 150
    assert len(result.statistics.stages) < 10
    assert result.statistics.stage("map(lambda)").items_in == 150


async def test_zip_of_nothing_and_repeat_of_nothing() -> None:
    with pytest.raises(ValueError, match="at least one"):
        af.zip()
    with anyio.fail_after(5):
        assert (await af.repeat(af.from_iterable([])).run()).value == []

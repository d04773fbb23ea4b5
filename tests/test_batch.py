"""Batch stages (aflow/stages/batch.py): map_batches and filter_rows, vectorized."""

from __future__ import annotations

import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


async def test_filter_rows_and_map_batches_are_vectorized() -> None:
    data = np.arange(10_000, dtype="f8")
    flow = (
        af.from_array(data, 1024)
        | af.map_batches(lambda b: b * 1.8 + 32)
        | af.filter_rows(lambda b: b > 5000)
        | af.reduce(lambda acc, b: acc + b.sum(), 0.0)
    )
    converted = data * 1.8 + 32
    assert (await flow.run()).value == pytest.approx(converted[converted > 5000].sum())


async def test_filter_rows_rejects_a_non_mask() -> None:
    flow = af.from_array(np.arange(10), 5) | af.filter_rows(lambda b: b * 2)
    with pytest.raises(TypeError, match="boolean mask"):
        await flow.run()


@pytest.mark.parametrize("policy", ["raise", "skip"])
async def test_batch_stages_give_the_same_shapes_with_any_policy(policy: str) -> None:
    arrays = [np.arange(3.0), np.arange(4.0)]
    flow = af.from_iterable(arrays) | af.map_batches(lambda a: a * 2, on_error=policy)  # type: ignore[arg-type]
    np.testing.assert_array_equal((await flow.run()).value, [0, 2, 4, 0, 2, 4, 6])
    rows = af.from_iterable(arrays) | af.filter_rows(lambda a: a > 0, on_error=policy)  # type: ignore[arg-type]
    np.testing.assert_array_equal((await (rows | af.batch(100)).run()).value, [1, 2, 1, 2, 3])

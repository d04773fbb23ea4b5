"""Loading stages (aflow/stages/loading.py): bounded shuffle and sampling."""

from __future__ import annotations

import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


async def test_shuffle_is_a_bounded_permutation() -> None:
    data = np.arange(10_000)
    result = await (af.from_array(data, 500) | af.shuffle(1000, seed=7)).run()
    shuffled = result.value
    assert sorted(shuffled.tolist()) == data.tolist()
    assert not np.array_equal(shuffled, data)
    # bounded buffer: no row can come out more than buffer_size + batch rows early
    position = np.empty_like(data)
    position[shuffled] = np.arange(len(shuffled))
    assert (data - position).max() <= 1000 + 500
    again = await (af.from_array(data, 500) | af.shuffle(1000, seed=7)).run()
    np.testing.assert_array_equal(again.value, shuffled)


async def test_shuffle_elements() -> None:
    result = await (af.from_iterable(range(1000)) | af.shuffle(100, seed=1)).run()
    assert sorted(result.value) == list(range(1000))
    assert result.value != list(range(1000))


async def test_sample_keeps_about_the_fraction() -> None:
    result = await (af.from_array(np.arange(100_000), 4096) | af.sample(0.1, seed=0)).run()
    assert 9_000 < len(result.value) < 11_000
    assert np.all(np.diff(result.value) > 0)  # order is kept


async def test_shuffle_two_dimensional_rows() -> None:
    data = np.arange(3000, dtype="f4").reshape(1000, 3)
    result = await (af.from_array(data, 100) | af.shuffle(256, seed=0)).run()
    assert result.value.shape == (1000, 3)
    np.testing.assert_array_equal(np.sort(result.value[:, 0]), data[:, 0])
    assert (result.value[:, 1] == result.value[:, 0] + 1).all()  # rows stay whole

"""Loading stages (aflow/stages/loading.py): bounded shuffle and sampling."""

from __future__ import annotations

from typing import Any

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


def displacement(order: np.ndarray[Any, Any], buffer: int) -> tuple[float, float]:
    """Mean |output position - input position| and the share moved beyond ``buffer``."""
    moved = np.abs(np.arange(len(order)) - order)
    return float(moved.mean()), float((moved > buffer).mean())


def per_row_reservoir(n: int, size: int, seed: int) -> np.ndarray[Any, Any]:
    """The documented semantics, one row at a time in plain Python."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, size, n - size).tolist()
    held, out = list(range(size)), []
    for row, j in zip(range(size, n), picks, strict=True):
        out.append(held[j])
        held[j] = row
    return np.array(out + [held[i] for i in rng.permutation(size).tolist()])


@pytest.mark.parametrize("batch", [65_536, 10_000, 1000])
def test_shuffle_is_per_row_whatever_the_batch_size(batch: int) -> None:
    n, size = 200_000, 10_000
    got = af.run(af.from_array(np.arange(n), batch) | af.shuffle(size, seed=4)).value
    assert sorted(got.tolist()) == list(range(n))
    mean, beyond = displacement(got, size)
    ref_mean, ref_beyond = displacement(per_row_reservoir(n, size, seed=9), size)
    # A per-row reservoir: ~7,150 mean displacement, ~13 % beyond the buffer (a block
    # shuffle, as batches as large as the buffer gave before: 3,533 and 1.3 %).
    assert mean == pytest.approx(ref_mean, rel=0.03)
    assert beyond == pytest.approx(ref_beyond, rel=0.05)


def test_shuffle_matches_the_per_row_reservoir_exactly_given_the_same_picks() -> None:
    # One batch, slots picked twice: a row may pass straight through, as one at a time.
    n, size, seed = 5000, 100, 3
    got = af.run(af.from_array(np.arange(n), n) | af.shuffle(size, seed=seed)).value
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, size, n - size).tolist()
    held, want = list(range(size)), []
    for row, j in zip(range(size, n), picks, strict=True):
        want.append(held[j])
        held[j] = row
    assert got[: n - size].tolist() == want
    assert sorted(got[n - size :].tolist()) == sorted(held)


async def _epochs(flow: af.Flow[Any]) -> list[list[int]]:
    got = (await flow.run()).value
    return [got[i : i + 100].tolist() for i in range(0, len(got), 100)]


@pytest.mark.anyio
async def test_shuffle_inside_repeat_reshuffles_each_epoch_reproducibly() -> None:
    epochs = af.repeat(af.from_array(np.arange(100), 10) | af.shuffle(50, seed=1), 3)
    first = await _epochs(epochs)
    assert all(sorted(e) == list(range(100)) for e in first)
    assert first[0] != first[1] != first[2] != first[0]
    assert await _epochs(epochs) == first  # the flow is re-runnable: same orders again
    single = (await (af.from_array(np.arange(100), 10) | af.shuffle(50, seed=1)).run()).value
    assert first[0] == single.tolist()  # epoch 0 is the flow run on its own
    same = af.repeat(
        af.from_array(np.arange(100), 10) | af.shuffle(50, seed=1, reshuffle_each_epoch=False),
        3,
    )
    assert await _epochs(same) == [first[0]] * 3

"""Augmentation stages: vectorized, seeded per epoch and batch, fields kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aflow as af
from aflow.abc import Batch, Context, Outlet, Source


def records(n: int = 16) -> np.ndarray[Any, Any]:
    rows = np.empty(n, [("x", np.uint8, (4, 6, 3)), ("y", np.int32)])
    rows["x"] = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    rows["y"] = np.arange(n)
    return rows


async def through(stage: af.Stage[Any, Any], data: Any) -> Any:
    return (await (af.from_array(data, batch_size=8) | stage | af.collect()).run()).value


@pytest.mark.anyio
async def test_flip_mirrors_some_samples_and_keeps_labels() -> None:
    rows = records()
    out = await through(af.random_flip(p=0.5, seed=1), rows)
    assert out["y"].tolist() == rows["y"].tolist()
    flipped = [bool(np.array_equal(x, rows["x"][0][:, ::-1])) for x in out["x"]]
    kept = [bool(np.array_equal(x, rows["x"][0])) for x in out["x"]]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(rows)
    vertical = await through(af.random_flip(direction="vertical", p=1.0), rows)
    assert np.array_equal(vertical["x"][3], rows["x"][3][::-1])


@pytest.mark.anyio
async def test_crop_cuts_windows_of_the_samples() -> None:
    rows = records()
    out = await through(af.random_crop((2, 3), seed=4, concurrency=2), rows)
    assert out.dtype == np.dtype([("x", np.uint8, (2, 3, 3)), ("y", np.int32)])
    full = rows["x"][0]
    windows = {full[t : t + 2, c : c + 3].tobytes() for t in range(3) for c in range(4)}
    assert all(x.tobytes() in windows for x in out["x"])
    assert len({x.tobytes() for x in out["x"]}) > 1
    padded = await through(af.random_crop((4, 6), padding=2, seed=0), rows["x"])
    assert padded.shape == (16, 4, 6, 3)


@pytest.mark.anyio
async def test_noise_and_normalize_make_float32() -> None:
    rows = records()
    noisy = await through(af.add_noise(2.0, clip=(0, 255), seed=3, thread=False), rows)
    assert noisy.dtype["x"].base == np.float32
    diff = noisy["x"] - rows["x"]
    assert 1.0 < float(diff[noisy["x"] < 250].std()) < 3.0
    norm = await through(af.normalize([0.5, 0.5, 0.5], 0.25, scale=1 / 255), rows["x"])
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm, (rows["x"] / 255 - 0.5) / 0.25, rtol=1e-5)


def make_npy_folder(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            np.save(root / c / f"{i}.npy", np.full((4, 4, 1), i, np.uint8))
    return root


@pytest.mark.anyio
async def test_dataset_augmentation_changes_per_epoch_and_repeats_per_run(tmp_path: Path) -> None:
    root = make_npy_folder(tmp_path)

    async def run(concurrency: int) -> Any:
        flow = af.read_dataset(root, batch_size=4, epochs=2, shuffle=False) | af.add_noise(
            1.0, seed=5, concurrency=concurrency
        )
        return (await (flow | af.collect()).run()).value

    first = await run(1)
    assert not np.array_equal(first["x"][:20], first["x"][20:])  # epochs differ
    np.testing.assert_array_equal(await run(3), first)  # and repeat, whatever the threads


class _Batches(Source):
    """Batches of ``size`` samples without provenance."""

    def __init__(self, data: np.ndarray[Any, Any], size: int) -> None:
        self.data = data
        self.rows = size

    async def produce(self, out: Outlet, ctx: Context) -> None:
        for i in range(0, len(self.data), self.rows):
            await out.emit(Batch(self.data[i : i + self.rows]))


def images(n: int = 12) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8)


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_the_same_flow_run_twice_gives_the_same_augmentation(concurrency: int) -> None:
    """Batches without provenance are numbered per run, in input order, whatever the
    threads do: two runs of one flow object agree, with one thread or three."""
    data = images(48)
    flow = (
        af.Flow(_Batches(data, 4))
        | af.random_flip(p=0.5, seed=1, concurrency=concurrency)
        | af.random_crop((3, 4), seed=2, concurrency=concurrency)
        | af.add_noise(1.0, seed=3, concurrency=concurrency)
        | af.collect()
    )
    first: Any = (await flow.run()).value
    assert first.shape == (48, 3, 4, 3)
    second = (await flow.run()).value
    np.testing.assert_array_equal(first, second)
    single = (
        af.Flow(_Batches(data, 4))
        | af.random_flip(p=0.5, seed=1, thread=False)
        | af.random_crop((3, 4), seed=2, thread=False)
        | af.add_noise(1.0, seed=3, thread=False)
        | af.collect()
    )
    np.testing.assert_array_equal((await single.run()).value, first)


@pytest.mark.anyio
@pytest.mark.parametrize("thread", [False, True])
async def test_augmenting_elements_equals_augmenting_batches_of_one(thread: bool) -> None:
    """An element is one (height, width, channels) sample, not a batch of rows: each
    augmentation on elements equals it on batches of one sample (same seeds)."""
    data = images()
    red = np.zeros((1, 2, 3, 3), np.uint8)
    red[..., 0] = 255
    [flipped] = (
        await (af.from_iterable([red[0]]) | af.random_flip(p=1.0) | af.collect()).run()
    ).value
    np.testing.assert_array_equal(flipped, red[0])  # still red: mirrored left-right only
    stages: list[Callable[[], af.Stage[Any, Any]]] = [
        lambda: af.random_flip(p=0.5, seed=1, thread=thread),
        lambda: af.random_flip(direction="vertical", p=0.5, seed=1, thread=thread),
        lambda: af.random_crop((3, 4), padding=1, seed=2, thread=thread),
        lambda: af.add_noise(2.0, clip=(0, 255), seed=3, thread=thread),
        lambda: af.normalize([0.5, 0.4, 0.3], 0.25, scale=1 / 255, thread=thread),
    ]
    for make in stages:
        elements = (await (af.from_iterable(list(data)) | make() | af.collect()).run()).value
        batches = (await (af.Flow(_Batches(data, 1)) | make() | af.collect()).run()).value
        assert len(elements) == len(batches) == len(data)
        for e, b in zip(elements, batches, strict=True):
            assert e.shape == b.shape
            np.testing.assert_array_equal(e, b)

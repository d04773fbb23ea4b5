"""Augmentation stages: vectorized, seeded per epoch and batch, fields kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aflow as af


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

"""An image classifier trained with mini-batch SGD in NumPy, fed by ``af.read_dataset``.

The script first writes a folder of small PNG images in class subfolders (``stripes``,
``rings``, ``blobs``: noisy patterns, each drawn at a random place and colour), then trains
a softmax regression on them through one flow per epoch kind::

    af.read_dataset(root, split="train", image_size=(S, S), epochs=E, seed=...)
    | af.random_flip(seed=...)                  # vectorized, in a worker thread
    | af.normalize(0.5, 0.25, scale=1 / 255)    # uint8 pixels -> float32

and prints the validation accuracy (files split off by a stable hash of their path) after
every epoch. Labels come from the folder names; ``list_dataset`` gives the class table.

Run ``python examples/image_classifier.py --images 1500 --epochs 5``. The script exits with
an error if the final validation accuracy is not well above chance.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray
from PIL import Image

import aflow as af

SIZE = 16  # pixels per side fed to the model
CLASSES = ("blobs", "rings", "stripes")


def draw(kind: str, rng: np.random.Generator, side: int = 24) -> NDArray[np.uint8]:
    """One noisy ``side`` x ``side`` RGB picture of a pattern of class ``kind``."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    cy, cx = rng.uniform(side * 0.3, side * 0.7, 2)
    r = np.hypot(yy - cy, xx - cx)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        level = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 1.2) > 0
    elif kind == "rings":
        level = np.sin(r * 1.3) > 0
    else:
        level = r < rng.uniform(side * 0.2, side * 0.35)
    colour = rng.uniform(120, 255, 3)
    pixels = level[..., None] * colour + rng.normal(40, 25, (side, side, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_folder(root: Path, images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c, kind in enumerate(CLASSES):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(c, images, len(CLASSES)):
            Image.fromarray(draw(kind, rng)).save(root / kind / f"{i:05d}.png")


def softmax(z: NDArray[np.float32]) -> NDArray[np.float32]:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def features(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Pixels plus the magnitudes of the images' 2-D Fourier transform (shift-invariant)."""
    grey = x.mean(axis=3)
    spectrum = np.abs(np.fft.rfft2(grey)).reshape(len(x), -1) / SIZE
    return np.concatenate([x.reshape(len(x), -1), spectrum], axis=1).astype(np.float32)


async def accuracy(root: Path, w: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    flow = af.read_dataset(
        root, split="validation", image_size=(SIZE, SIZE), shuffle=False, batch_size=256
    ) | af.normalize(0.5, 0.25, scale=1 / 255)
    right = total = 0
    async with flow.open() as run:
        async for batch in run:
            guess = (features(batch["x"]) @ w + b).argmax(axis=1)
            right += int(np.count_nonzero(guess == batch["y"]))
            total += len(batch)
    return right / total


async def train(root: Path, epochs: int, batch_size: int, lr: float) -> dict[str, Any]:
    table = await anyio.to_thread.run_sync(af.list_dataset, root)
    n_features = SIZE * SIZE * 3 + SIZE * (SIZE // 2 + 1)
    w = np.zeros((n_features, len(table.classes)), np.float32)
    b = np.zeros(len(table.classes), np.float32)
    loader = (
        af.read_dataset(
            table, split="train", image_size=(SIZE, SIZE), batch_size=batch_size, seed=1
        )
        | af.random_flip(seed=2)
        | af.normalize(0.5, 0.25, scale=1 / 255)
    )
    history = []
    for epoch in range(epochs):  # one run per epoch, so validation runs in between
        seen = 0
        async with loader.open() as run:
            async for batch in run:
                x = features(batch["x"])
                p = softmax(x @ w + b)
                p[np.arange(len(batch)), batch["y"]] -= 1  # gradient of cross-entropy
                w -= lr * (x.T @ p) / len(batch)
                b -= lr * p.mean(axis=0)
                seen += len(batch)
            stats = run.statistics()
        acc = await accuracy(root, w, b)
        history.append(acc)
        print(f"epoch {epoch + 1}: {seen:,} training images, validation accuracy {acc:.3f}")
    return {"classes": table.classes, "history": history, "stats": stats, "table": table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="images in the folder")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        t0 = time.perf_counter()
        make_folder(root, args.images)
        print(f"wrote {args.images:,} PNG images in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        result = anyio.run(train, root, args.epochs, args.batch_size, args.lr)
        elapsed = time.perf_counter() - t0
    table, stats = result["table"], result["stats"]
    train_n = len(table.split("train"))
    print(
        f"classes: {', '.join(result['classes'])} ({train_n:,} train, "
        f"{len(table) - train_n:,} validation images)"
    )
    print(f"last epoch's run: {stats.format().splitlines()[-1]}")
    print(f"time: {elapsed:.2f} s")
    final = result["history"][-1]
    if final < 0.6:
        raise SystemExit(f"FAILED: validation accuracy {final:.3f} (chance is 0.333)")
    print(f"learned: final validation accuracy {final:.3f} (chance is 0.333)")


if __name__ == "__main__":
    main()

"""How much memory does loading a dataset take? A list-based loader against aflow.

The script writes a folder of PNG images in class subfolders, then measures two loaders on
it, each in a subprocess of its own (a process's peak resident memory only ever grows):

* ``list``: the usual first version: decode every image into a list, stack them into one
  array, then cut mini-batches from it;
* ``aflow``: ``af.read_dataset(root, batch_size=64, image_size=...)``: a few batches
  decoded at a time in worker threads, with backpressure.

Both compute the same per-channel mean over every image, and each prints its process's peak
resident memory; aflow's figure comes from the run's own statistics
(``RunStatistics.peak_rss_bytes``).

Run ``python examples/dataset_memory.py --images 4000 --side 96``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import numpy as np
from PIL import Image

import aflow as af
from aflow.codecs.images import ImageDecoder
from aflow.stats import resident_memory


def make_folder(root: Path, images: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)


def list_loader(root: Path, side: int) -> np.ndarray:
    table = af.list_dataset(root)
    decode = ImageDecoder((side, side))
    images = [decode((root / p).read_bytes()) for p in table.paths]  # everything in memory
    data = np.stack(images)
    total = np.zeros(3)
    for start in range(0, len(data), 64):
        total += data[start : start + 64].sum(axis=(0, 1, 2))
    return total / (len(data) * side * side)


async def aflow_loader(root: Path, side: int) -> tuple[np.ndarray, int | None]:
    total = np.zeros(3)
    n = 0
    async with af.read_dataset(root, batch_size=64, image_size=(side, side)).open() as run:
        async for batch in run:
            total += batch["x"].sum(axis=(0, 1, 2))
            n += len(batch)
        peak = run.statistics().peak_rss_bytes
    return total / (n * side * side), peak


def measure(mode: str, root: Path, side: int) -> None:
    if mode == "list":
        mean = list_loader(root, side)
        peak = resident_memory()[1]
    else:
        mean, peak = anyio.run(aflow_loader, root, side)
    assert peak is not None
    print(f"{mode} {peak} {' '.join(f'{m:.3f}' for m in mean)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--side", type=int, default=96, help="pixels per image side")
    parser.add_argument("--measure", choices=("list", "aflow"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.measure, args.root, args.side)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_folder(root, args.images, args.side)
        size = args.images * args.side * args.side * 3
        print(f"{args.images:,} images of {args.side}x{args.side}x3: {size / 1e6:.1f} MB decoded")
        peaks, means = {}, {}
        for mode in ("list", "aflow"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    mode,
                    "--root",
                    str(root),
                    "--side",
                    str(args.side),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            peaks[mode], means[mode] = int(out[1]), out[2:]
            print(f"{mode:>6} loader: peak resident memory {peaks[mode] / 1e6:7.1f} MB")
    if means["list"] != means["aflow"]:
        raise SystemExit(f"FAILED: the loaders disagree: {means}")
    print(
        f"same per-channel means {means['aflow']}; aflow used "
        f"{(peaks['list'] - peaks['aflow']) / 1e6:.1f} MB less at peak"
    )


if __name__ == "__main__":
    main()

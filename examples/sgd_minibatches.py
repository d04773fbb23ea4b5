"""Mini-batch SGD on a stream far larger than what is held in memory.

A generator function makes a synthetic linear-regression dataset chunk by chunk (seeded, so
every epoch sees the same rows); the dataset is never materialized. The loader is one flow::

    af.repeat(af.from_arrays(dataset), times=epochs)  # epochs: re-runs the generator
    | af.shuffle(buffer_size, seed=...)               # bounded shuffle buffer, new order per epoch
    | af.rebatch(batch_size)                          # mini-batches of exactly batch_size rows

and the training loop pulls mini-batches with ``async with flow.open() as run: async for batch
in run:``, so backpressure keeps only a few chunks in flight while NumPy updates the weights.
Rows are records (a structured dtype with an ``x`` feature vector and a ``y`` target), so
features and target stay together through shuffle and rebatch.

Run ``python examples/sgd_minibatches.py --rows 2000000 --epochs 2``. The script exits with
an error if the learned weights are not close to the true ones.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

import aflow as af

FEATURES = 8
NOISE = 0.1  # standard deviation of the target noise
CHUNK_ROWS = 16_384  # rows the generator makes at a time (~590 kB)
SEED = 7

ROW = np.dtype([("x", np.float32, (FEATURES,)), ("y", np.float32)])

_truth = np.random.default_rng(SEED)
TRUE_W = _truth.uniform(-2.0, 2.0, FEATURES).astype(np.float32)
TRUE_B = np.float32(0.5)


def make_rows(rng: np.random.Generator, n: int) -> NDArray[Any]:
    """``n`` records with ``y = x @ TRUE_W + TRUE_B + noise``."""
    rows = np.empty(n, dtype=ROW)
    rows["x"] = rng.standard_normal((n, FEATURES), dtype=np.float32)
    noise = NOISE * rng.standard_normal(n, dtype=np.float32)
    rows["y"] = rows["x"] @ TRUE_W + TRUE_B + noise
    return rows


def synthetic_chunks(rows: int, seed: int = SEED) -> Iterator[NDArray[Any]]:
    """The dataset, one chunk of at most CHUNK_ROWS records at a time (never all at once)."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        yield make_rows(rng, min(CHUNK_ROWS, rows - start))


def mse(w: NDArray[np.float32], b: np.float32, rows: NDArray[Any]) -> float:
    err = rows["x"] @ w + b - rows["y"]
    return float(np.mean(err * err))


async def train(
    rows: int, epochs: int, batch_size: int, shuffle_buffer: int, lr: float
) -> dict[str, Any]:
    def dataset() -> Iterator[NDArray[Any]]:  # a generator *function*: re-run every epoch
        return synthetic_chunks(rows)

    loader = (
        af.repeat(af.from_arrays(dataset, name="synthetic"), times=epochs)
        | af.shuffle(shuffle_buffer, seed=SEED + 1)
        | af.rebatch(batch_size)
    )
    held_out = make_rows(np.random.default_rng(SEED + 2), 10_000)

    w = np.zeros(FEATURES, dtype=np.float32)
    b = np.float32(0.0)
    seen = steps = 0
    next_report = rows
    async with loader.open() as run:
        async for batch in run:
            x, y = batch["x"], batch["y"]
            err = x @ w + b - y  # gradient of the mean squared error / 2
            w -= lr * (x.T @ err) / len(y)
            b -= lr * err.mean()
            seen += len(y)
            steps += 1
            if seen >= next_report:
                print(
                    f"  after {seen:>10,} rows ({seen / rows:.1f} epochs): "
                    f"held-out MSE {mse(w, b, held_out):.5f}"
                )
                next_report += rows
        stats = run.statistics()
    return {
        "w": w,
        "b": b,
        "seen": seen,
        "steps": steps,
        "loss": mse(w, b, held_out),
        "stats": stats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shuffle-buffer", type=int, default=65_536, help="rows held")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.epochs < 1:
        parser.error("--rows and --epochs must be at least 1")

    print(
        f"training y = x @ w + b ({FEATURES} features) on {args.rows:,} rows x "
        f"{args.epochs} epochs, mini-batches of {args.batch_size}, "
        f"shuffle buffer {args.shuffle_buffer:,} rows"
    )
    t0 = time.perf_counter()
    result = anyio.run(train, args.rows, args.epochs, args.batch_size, args.shuffle_buffer, args.lr)
    elapsed = time.perf_counter() - t0
    w, b, stats = result["w"], result["b"], result["stats"]

    streamed = result["seen"] * ROW.itemsize
    shuffle_bytes = min(args.shuffle_buffer, args.rows * args.epochs) * ROW.itemsize
    np.set_printoptions(precision=3, suppress=True, floatmode="fixed", sign=" ")
    print(f"epochs: {args.epochs}, rows seen: {result['seen']:,}, SGD steps: {result['steps']:,}")
    print(f"final held-out MSE: {result['loss']:.5f} (noise floor {NOISE**2:.5f})")
    print(f"true    w: {TRUE_W}  b: {TRUE_B:.3f}")
    print(f"learned w: {w}  b: {b:.3f}")
    print(
        f"memory: {streamed / 1e6:.1f} MB streamed; held at most "
        f"{shuffle_bytes / 1e6:.1f} MB in the shuffle buffer + "
        f"peak bytes in flight {stats.peak_bytes_in_flight / 1e6:.2f} MB "
        f"({stats.peak_bytes_in_flight:,} bytes)"
    )
    print(f"time: {elapsed:.2f} s ({result['seen'] / elapsed / 1e6:.2f} M rows/s)")

    # The run must have delivered every row of every epoch, and the model must have converged.
    if result["seen"] != args.rows * args.epochs:
        raise SystemExit(
            f"FAILED: saw {result['seen']:,} rows, expected {args.rows * args.epochs:,}"
        )
    w_err = float(np.max(np.abs(w - TRUE_W)))
    b_err = abs(float(b - TRUE_B))
    if not (w_err < 0.05 and b_err < 0.05 and result["loss"] < 2 * NOISE**2):
        raise SystemExit(
            f"FAILED: did not converge (max |w - w_true| = {w_err:.4f}, "
            f"|b - b_true| = {b_err:.4f}, MSE = {result['loss']:.5f})"
        )
    print(f"converged: max |w - w_true| = {w_err:.4f}, |b - b_true| = {b_err:.4f}")


if __name__ == "__main__":
    main()

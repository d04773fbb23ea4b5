"""Data augmentation as vectorized batch stages: flip, crop, noise, normalization.

Each stage transforms a whole batch of samples with a few NumPy calls (no Python per
sample) in a worker thread by default. Samples are arrays of shape ``(N, height, width,
channels)``: a plain batch of that shape, or the field ``field`` (by default ``"x"``) of
a structured batch such as :func:`aflow.read_dataset` makes; the other fields (the
labels) pass through untouched::

    train = (
        af.read_dataset("images/", split="train", image_size=(36, 36), epochs=10, seed=1)
        | af.random_crop((32, 32), seed=2)
        | af.random_flip(seed=3)
        | af.normalize(mean=0.5, std=0.25, scale=1 / 255)
    )

The random draws of a batch come from a generator seeded with ``(seed, epoch, first
row)`` when the batch's provenance tells its epoch (a dataset's batches do), else with
``(seed, source, first row)`` from its provenance, else with ``(seed, number)``, where
batches without provenance (and the samples of an element flow, each on its own) are
numbered from 0 in input order, afresh every run. So an epoch's augmentation differs from
the last one's yet repeats exactly from run to run, whatever ``concurrency`` and the
threads' timing. An element flow's samples are single arrays of shape ``(height, width,
channels)`` (or records holding ``field``), transformed one by one.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from typing import Any, Literal

import anyio
import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..abc import AsyncOperator, Batch, Context, Inbox, Message, Outlet, Provenance, StageCounters
from ..flow import Stage
from ..policies import ErrorPolicy
from .batch import _BatchFunctionOp
from .concurrency import _ConcurrentOp

__all__ = ["add_noise", "normalize", "random_crop", "random_flip"]

Transform = Callable[[NDArray[Any], "np.random.Generator"], NDArray[Any]]
"""``(samples, rng) -> samples``: the vectorized work of one augmentation stage (the
generator named as a string: ``np.random`` is imported at its first use, 3 MB of RSS)."""


class _AugmentOp(_BatchFunctionOp):
    """Applies a :data:`Transform` to the samples of each batch, or to each sample of an
    element flow, seeded per batch or sample. ``start()`` gives each run a fresh copy, so
    the numbers of batches without provenance restart at 0 every run."""

    def __init__(self, name: str, transform: Transform, field: str, seed: int) -> None:
        on_error: ErrorPolicy = "raise"
        super().__init__(name, on_error)
        self.transform = transform
        self.field = field
        self.seed = seed
        self.numbers = itertools.count()  # batches and elements without provenance

    def start(self) -> _AugmentOp:
        return _AugmentOp(self.name, self.transform, self.field, self.seed)

    def process(self, msg: Message) -> list[Message]:
        return self.apply(msg, self.entropies(msg))

    def apply_batch(self, batch: Batch) -> list[Message]:
        return self.apply(batch, self.entropies(batch))

    def apply_one(self, item: Any) -> list[Any]:
        return [self._one(item, self._entropy(None))]

    def entropies(self, msg: Message) -> list[list[int]]:
        """The seeds of a message's batch or of each of its elements, drawn in input
        order (on the event loop, before the work goes to a thread)."""
        if isinstance(msg, Batch):
            return [self._entropy(msg.provenance)]
        return [self._entropy(None) for _ in msg]

    def apply(self, msg: Message, entropies: list[list[int]]) -> list[Message]:
        """Transform ``msg`` with the seeds of :meth:`entropies` (safe in any thread)."""
        if isinstance(msg, Batch):
            return [msg.with_data(self._samples(msg.data, entropies[0]))]
        out = [self._one(item, e) for item, e in zip(msg, entropies, strict=True)]
        return [out] if out else []

    def _one(self, item: Any, entropy: list[int]) -> Any:
        """One sample (an element) transformed as a batch of one."""
        return self._samples(np.asarray(item)[None], entropy)[0]

    def _samples(self, data: NDArray[Any], entropy: list[int]) -> NDArray[Any]:
        samples = data if data.dtype.names is None else data[self.field]
        if samples.ndim < 3:
            raise ValueError(
                f"{self.name}: samples of shape {samples.shape[1:]}; expected images of "
                "shape (height, width) or (height, width, channels)"
            )
        out = self.transform(samples, np.random.default_rng(entropy))
        return _replace(data, self.field, out)

    def _entropy(self, prov: Provenance | None) -> list[int]:
        if prov is None:
            return [self.seed, 0, next(self.numbers)]
        epoch = getattr(prov, "epoch", None)
        if isinstance(epoch, int):
            return [self.seed, 1, epoch, prov.start]
        return [self.seed, 2, zlib.crc32(prov.source.encode()), prov.start]


class _ThreadedAugment(AsyncOperator):
    """An augmentation in worker threads, ``concurrency`` batches at once, order kept.
    Each run numbers its messages in input order on the event loop before handing them
    to a thread, so the seeds never depend on the threads' timing."""

    handles_barriers = True  # the concurrent stage inside orders barriers with the output

    def __init__(self, op: _AugmentOp, concurrency: int) -> None:
        self.op = op
        self.concurrency = concurrency
        self.name = op.name if "thread" in op.name else f"{op.name}[threads={concurrency}]"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        runner = self.op.start()
        seeds: dict[int, list[list[int]]] = {}  # id of a message in flight: its seeds

        def number(msg: Message) -> list[Message]:
            seeds[id(msg)] = runner.entropies(msg)
            return [msg]

        async def work(
            unit: Message, counters: StageCounters, limiter: anyio.CapacityLimiter
        ) -> list[Message]:
            entropies = seeds.pop(id(unit))
            return await anyio.to_thread.run_sync(runner.apply, unit, entropies, limiter=limiter)

        concurrent = _ConcurrentOp(self.name, work, number, self.concurrency, True, None)
        await concurrent.run(inbox, out, ctx)


def _replace(data: NDArray[Any], field: str, values: NDArray[Any]) -> NDArray[Any]:
    """``data`` with its samples replaced by ``values`` (a new array; ``data`` is kept)."""
    if data.dtype.names is None:
        return values
    names = data.dtype.names
    fields = [
        (n, values.dtype, values.shape[1:]) if n == field else (n, data.dtype[n]) for n in names
    ]
    out = np.empty(len(data), dtype=fields)
    for n in names:
        out[n] = values if n == field else data[n]
    return out


def _stage(
    name: str, transform: Transform, field: str, seed: int, thread: bool, concurrency: int
) -> Stage[Any, Any]:
    op = _AugmentOp(name, transform, field, seed)
    if concurrency < 1:
        raise ValueError(f"{name}: concurrency={concurrency} must be at least 1")
    if thread or concurrency != 1:
        return Stage(_ThreadedAugment(op, concurrency))
    return Stage(op)


def random_flip(
    *,
    direction: Literal["horizontal", "vertical"] = "horizontal",
    p: float = 0.5,
    seed: int = 0,
    field: str = "x",
    thread: bool = True,
    concurrency: int = 1,
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Mirror each sample with probability ``p``, left-right (``"horizontal"``) or
    top-bottom (``"vertical"``). Keeps the dtype and shape.

    Args:
        direction: which way to mirror.
        p: the probability of each sample being mirrored.
        seed: seeds the draws (see the module's documentation).
        field: the field holding the samples, in a structured batch.
        thread: run in a worker thread; ``False`` runs in the task of the stage before.
        concurrency: batches transformed at once, each in a thread (order is kept).
    """
    if not 0.0 <= p <= 1.0 or direction not in ("horizontal", "vertical"):
        raise ValueError(
            f"random_flip(direction={direction!r}, p={p}): direction is 'horizontal' or "
            "'vertical' and p a probability within [0, 1]"
        )
    axis = 2 if direction == "horizontal" else 1

    def flip(x: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
        chosen = rng.random(len(x)) < p
        out = x.copy()
        out[chosen] = np.flip(x[chosen], axis=axis)
        return out

    return _stage(f"random_flip({direction}, p={p:g})", flip, field, seed, thread, concurrency)


def random_crop(
    shape: tuple[int, int],
    *,
    padding: int = 0,
    seed: int = 0,
    field: str = "x",
    thread: bool = True,
    concurrency: int = 1,
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Cut a ``shape`` = ``(height, width)`` window at a random place out of each sample.

    With ``padding``, samples are first padded with that many zeros on every side (the
    classic "pad 4, crop 32" of CIFAR). The output has shape ``(N, height, width, ...)``
    and the samples' dtype; one fancy-indexing gather does the whole batch.

    See :func:`random_flip` for the other arguments.

    Raises:
        ValueError: (when a batch comes) the padded samples are smaller than ``shape``.
    """
    h, w = shape
    if h < 1 or w < 1 or padding < 0:
        raise ValueError(f"random_crop(shape={shape}, padding={padding}): sizes >= 1, padding >= 0")

    def crop(x: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
        if padding:
            pad = [(0, 0), (padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 3)
            x = np.pad(x, pad)
        n, height, width = x.shape[:3]
        if height < h or width < w:
            raise ValueError(
                f"random_crop: samples of {height}x{width} (after padding) are smaller than "
                f"the crop {h}x{w}"
            )
        top = rng.integers(0, height - h + 1, n)
        left = rng.integers(0, width - w + 1, n)
        rows = (top[:, None] + np.arange(h))[:, :, None]
        cols = (left[:, None] + np.arange(w))[:, None, :]
        out: NDArray[Any] = x[np.arange(n)[:, None, None], rows, cols]
        return out

    return _stage(
        f"random_crop({h}x{w}, padding={padding})", crop, field, seed, thread, concurrency
    )


def add_noise(
    std: float,
    *,
    clip: tuple[float, float] | None = None,
    seed: int = 0,
    field: str = "x",
    thread: bool = True,
    concurrency: int = 1,
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Add Gaussian noise of standard deviation ``std`` to every value.

    The output is ``float32`` of the samples' shape, clipped to ``clip = (low, high)``
    when given (e.g. ``(0, 255)`` for pixel values). See :func:`random_flip` for the other
    arguments.
    """
    if std < 0:
        raise ValueError(f"add_noise(std={std}): must be >= 0")

    def noise(x: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
        out = rng.standard_normal(x.shape, dtype=np.float32)
        out *= np.float32(std)
        out += x
        if clip is not None:
            np.clip(out, clip[0], clip[1], out=out)
        return out

    return _stage(f"add_noise(std={std:g})", noise, field, seed, thread, concurrency)


def normalize(
    mean: ArrayLike,
    std: ArrayLike,
    *,
    scale: float = 1.0,
    field: str = "x",
    thread: bool = True,
    concurrency: int = 1,
) -> Stage[NDArray[Any], NDArray[Any]]:
    """``(x * scale - mean) / std`` as ``float32``; ``mean`` and ``std`` are numbers or
    one per channel (the last axis). E.g. ``normalize(0.5, 0.25, scale=1 / 255)`` for
    ``uint8`` pixels. Not random; see :func:`random_flip` for the other arguments.
    """
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if np.any(s == 0):
        raise ValueError(f"normalize(std={std!r}): must not be 0")
    inverse = (np.float32(1) / s).astype(np.float32)
    factor = np.float32(scale)

    def norm(x: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
        out = x.astype(np.float32)
        out *= factor
        out -= m
        out *= inverse
        return out

    return _stage(f"normalize(scale={scale:g})", norm, field, 0, thread, concurrency)

"""Data-loading stages: a bounded shuffle buffer and random row sampling.

Together with :func:`aflow.repeat` (epochs) and :func:`aflow.batch` (mini-batches) they let a
training loop draw random mini-batches from a dataset far larger than memory::

    loader = (
        af.repeat(af.from_arrays(read_chunks), times=epochs)
        | af.shuffle(200_000, seed=0)
        | af.rebatch(256)
    )
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Message, Operator, Processor, SavedAttributes
from ..flow import Stage

__all__ = ["sample", "shuffle"]

T = TypeVar("T")


class _ShuffleRunner(SavedAttributes, Processor):
    """Reservoir-style shuffle: each arriving row takes the place of a random held row.

    Elements and rows are held separately; memory is at most ``size`` of each. The held
    rows and the generator's state are its snapshot at checkpoints.
    """

    saved = ("rng", "elements", "rows", "held", "batch_rows")

    def __init__(self, size: int, seed: int | list[int] | None) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.elements: list[Any] = []
        self.rows: NDArray[Any] | None = None
        self.held = 0
        self.batch_rows = 0

    def process(self, msg: Message) -> list[Message]:
        if isinstance(msg, Batch):
            return self._rows(msg)
        return self._elements(msg)

    def _elements(self, items: list[Any]) -> list[Message]:
        buf, size = self.elements, self.size
        room = size - len(buf)
        buf.extend(items[:room])
        rest = items[room:] if room > 0 else items
        if not rest:
            return []
        picks = self.rng.integers(0, size, len(rest)).tolist()
        out = []
        for j, item in zip(picks, rest, strict=True):
            out.append(buf[j])
            buf[j] = item
        return [out]

    def _rows(self, batch: Batch) -> list[Message]:
        data = batch.data
        self.batch_rows = max(self.batch_rows, len(data))
        if self.rows is None:
            self.rows = np.empty((self.size, *data.shape[1:]), dtype=data.dtype)
        if data.shape[1:] != self.rows.shape[1:]:
            raise ValueError(
                f"shuffle: rows of shape {data.shape[1:]} after rows of shape "
                f"{self.rows.shape[1:]}; every batch must have the same row shape"
            )
        if data.dtype != self.rows.dtype:
            data = data.astype(self.rows.dtype)
        start = 0
        if self.held < self.size:  # still filling
            start = min(self.size - self.held, len(data))
            self.rows[self.held : self.held + start] = data[:start]
            self.held += start
        if start == len(data):
            return []
        rows = self._replace(data[start:])
        return [Batch(rows, batch.reason)]  # shuffled rows have no single provenance

    def _replace(self, incoming: NDArray[Any]) -> NDArray[Any]:
        """Row by row, each incoming row takes a random slot and sends out what was there:
        exactly the per-row reservoir, vectorized. A slot picked twice in one batch sends
        out the row that came in at its first pick (so rows can pass straight through,
        as they do one row at a time)."""
        assert self.rows is not None
        picks = self.rng.integers(0, self.size, len(incoming))
        order = np.argsort(picks, kind="stable")  # by slot, then arrival
        slots = picks[order]
        repeat = np.empty(len(slots), bool)
        repeat[0] = False
        repeat[1:] = slots[1:] == slots[:-1]
        out = np.empty_like(incoming)
        first = order[~repeat]
        out[first] = self.rows[slots[~repeat]]  # what the slot held before this batch
        again = order[repeat]
        out[again] = incoming[order[np.flatnonzero(repeat) - 1]]  # its previous newcomer
        last = np.append(slots[1:] != slots[:-1], True)
        self.rows[slots[last]] = incoming[order[last]]
        return out

    def flush(self) -> list[Message]:
        out: list[Message] = []
        if self.elements:
            order = self.rng.permutation(len(self.elements)).tolist()
            out.append([self.elements[i] for i in order])
            self.elements = []
        if self.rows is not None and self.held:
            rows = self.rows[: self.held][self.rng.permutation(self.held)]
            step = max(1, self.batch_rows)
            out.extend(Batch(rows[i : i + step], "end") for i in range(0, len(rows), step))
            self.rows, self.held = None, 0
        return out


class _ShuffleOp(Operator):
    def __init__(self, size: int, seed: int | None, reshuffle: bool, epoch: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.reshuffle = reshuffle
        self.epoch = epoch
        self.name = f"shuffle({size})"

    def start(self) -> Processor:
        seed: int | list[int] | None = self.seed
        if self.seed is not None and self.epoch:
            seed = [self.seed, self.epoch]
        return _ShuffleRunner(self.size, seed)

    def for_epoch(self, epoch: int) -> _ShuffleOp:
        """This shuffle for epoch ``epoch`` of :func:`aflow.repeat`: seeded by
        ``(seed, epoch)`` so every epoch has its own order (unless ``reshuffle`` is off)."""
        if not self.reshuffle:
            return self
        return _ShuffleOp(self.size, self.seed, self.reshuffle, epoch)


def shuffle(
    buffer_size: int, *, seed: int | None = None, reshuffle_each_epoch: bool = True
) -> Stage[T, T]:
    """Shuffle within a bounded buffer of ``buffer_size`` elements or rows.

    The first ``buffer_size`` rows fill the buffer; then each arriving row replaces a
    randomly chosen held row, which is emitted. That is done row by row in effect,
    whatever the batch size (vectorized per batch: a batch as large as the buffer shuffles
    exactly as its rows would one at a time). At the end the held rows are emitted in
    random order. The larger the buffer, the closer to a full shuffle; memory is
    ``buffer_size`` rows.

    Inside :func:`aflow.repeat` (``repeat(flow | shuffle(n, seed=s))``) every epoch gets
    its own order, seeded by ``(s, epoch)``, as tf.data's ``reshuffle_each_iteration``;
    ``reshuffle_each_epoch=False`` repeats the first epoch's order. After ``repeat`` one
    buffer runs across the epochs (rows of neighbouring epochs mix).

    Args:
        buffer_size: rows (or elements) held.
        seed: seed of the random generator, for reproducible runs.
        reshuffle_each_epoch: a new order in each epoch of an enclosing ``repeat``.
    """
    if buffer_size < 1:
        raise ValueError(f"shuffle({buffer_size}): buffer_size must be at least 1")
    return Stage(_ShuffleOp(buffer_size, seed, reshuffle_each_epoch))


class _SampleRunner(SavedAttributes, Processor):
    saved = ("rng",)

    def __init__(self, fraction: float, seed: int | None) -> None:
        self.fraction = fraction
        self.rng = np.random.default_rng(seed)

    def process(self, msg: Message) -> list[Message]:
        if isinstance(msg, Batch):
            keep = self.rng.random(len(msg.data)) < self.fraction
            rows = msg.data[keep]
            return [msg.with_data(rows)] if len(rows) else []
        keep_list = (self.rng.random(len(msg)) < self.fraction).tolist()
        kept = [item for item, k in zip(msg, keep_list, strict=True) if k]
        return [kept] if kept else []


class _SampleOp(Operator):
    def __init__(self, fraction: float, seed: int | None) -> None:
        self.fraction = fraction
        self.seed = seed
        self.name = f"sample({fraction:g})"

    def start(self) -> Processor:
        return _SampleRunner(self.fraction, self.seed)


def sample(fraction: float, *, seed: int | None = None) -> Stage[T, T]:
    """Keep each element or row independently with probability ``fraction``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"sample({fraction}): fraction must be within [0, 1]")
    return Stage(_SampleOp(fraction, seed))

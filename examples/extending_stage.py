"""A stateful stage: drop rows whose key was seen within the last ``window`` rows.

Feeds retransmit: the same reading arrives twice, a few rows apart. ``dedupe`` keeps the
first row of each key within a sliding window of the last ``window`` keys of input, with
one NumPy pass per batch, and re-packs what survives into batches of exactly ``size``
rows (dropping rows leaves batches ragged). The partial batch it holds at the end of the
input is what ``flush()`` hands on.

Run it: ``python examples/extending_stage.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from numpy.typing import NDArray

import aflow as af
from aflow.abc import Batch, BatchReason, Message, Operator, Processor, Provenance


def first_in_window(keys: NDArray[Any], history: NDArray[Any], window: int) -> NDArray[np.bool_]:
    """Which of ``keys`` did not occur among the ``window`` keys before each of them
    (the tail of ``history``, then the earlier ``keys`` themselves)."""
    both = np.concatenate([history, keys])
    order = np.argsort(both, kind="stable")  # equal keys sit together, in input order
    same = both[order[1:]] == both[order[:-1]]
    previous = np.full(len(both), -window - 1)  # index of the key's previous occurrence
    previous[order[1:][same]] = order[:-1][same]
    mine = np.arange(len(history), len(both))
    return np.asarray(mine - previous[mine] > window)


class DedupeProcessor(Processor):
    """Per-run state: the last ``window`` keys, and the rows held for the next batch."""

    def __init__(self, key: str | None, window: int, size: int) -> None:
        self.key, self.window, self.size = key, window, size
        self.history: NDArray[Any] | None = None
        self.held: list[tuple[NDArray[Any], Provenance | None]] = []
        self.held_rows = 0

    def process(self, msg: Message) -> list[Message]:
        if not isinstance(msg, Batch):
            raise TypeError("dedupe takes array batches; put af.batch(n, dtype=...) before it")
        rows = msg.data
        keys = rows if self.key is None else rows[self.key]
        if self.history is None:
            self.history = keys[:0]
        keep = first_in_window(keys, self.history, self.window)
        self.history = np.concatenate([self.history, keys])[-self.window :]
        if keep.any():
            self.held.append((rows[keep], msg.provenance))
            self.held_rows += int(keep.sum())
        out: list[Message] = []
        while self.held_rows >= self.size:
            out.append(self._cut(self.size, "count"))
        return out

    def flush(self) -> list[Message]:
        """At end of input (or a graceful stop): the rows held, as one short batch."""
        return [self._cut(self.held_rows, "end")] if self.held_rows else []

    def _cut(self, n: int, reason: BatchReason) -> Batch:
        """The first ``n`` held rows as one batch, its provenance spanning theirs."""
        parts: list[NDArray[Any]] = []
        where: Provenance | None = None
        while n:
            rows, prov = self.held[0]
            if len(rows) > n:
                self.held[0] = (rows[n:], prov)
                rows = rows[:n]
            else:
                self.held.pop(0)
            where = prov if not parts else span(where, prov)
            parts.append(rows)
            n -= len(rows)
            self.held_rows -= len(rows)
        return Batch(np.concatenate(parts), reason, where)


def span(a: Provenance | None, b: Provenance | None) -> Provenance | None:
    """Provenance covering ``a`` then ``b``; ``None`` unless both are ranges of the same
    source (the rows' origin is then not one range)."""
    if a is None or b is None or (a.source, a.unit) != (b.source, b.unit):
        return None
    return Provenance(a.source, a.start, b.stop, a.unit, a.offset, b.end_offset)


class DedupeOp(Operator):
    """The description: arguments only. ``start()`` makes fresh state for each run."""

    def __init__(self, key: str | None, window: int, size: int) -> None:
        if window < 1 or size < 1:
            raise ValueError(f"dedupe(window={window}, size={size}): both must be >= 1")
        self.key, self.window, self.size = key, window, size
        self.name = f"dedupe({key or 'row'}, window={window})"

    def start(self) -> Processor:
        return DedupeProcessor(self.key, self.window, self.size)


def dedupe(key: str | None = None, *, window: int, size: int = 1024) -> af.Stage[Any, Any]:
    """Drop rows whose ``key`` field (the row itself when None) occurred among the
    previous ``window`` rows of input; emit the rest in batches of ``size`` rows."""
    return af.Stage(DedupeOp(key, window, size))


def main() -> None:
    reading = np.dtype([("seq", "i8"), ("value", "f8")])
    seq = np.arange(10_000)
    resent = np.sort(np.concatenate([seq, seq[::10]]), kind="stable")  # every 10th twice
    rows = np.zeros(len(resent), reading)
    rows["seq"], rows["value"] = resent, resent * 0.5
    flow = af.from_array(rows, batch_size=700) | dedupe("seq", window=16, size=512)
    result = af.run(flow | af.collect("list"))
    batches = result.value
    unique = np.concatenate(batches)
    assert np.array_equal(unique["seq"], seq), "a duplicate passed or a row was lost"
    print(
        f"{len(rows):,} rows in, {len(unique):,} out in {len(batches)} batches of "
        f"{len(batches[0])} rows (the last, from flush(), {len(batches[-1])})"
    )


if __name__ == "__main__":
    argparse.ArgumentParser(  # no options; --help describes the example without running it
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()

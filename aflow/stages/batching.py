"""Batching: elements into NumPy arrays, arrays into other sizes, and back to elements.

The partial-batch rule lives here and only here: a batch closes when it holds ``size`` rows,
when ``batch_bytes`` would be passed, when ``timeout`` seconds have gone by since its first
row, or at the end of input (or a graceful stop), whichever comes first. Its envelope says
which (``Batch.reason``). Nothing is ever dropped: the rows out equal the rows in.
"""

from __future__ import annotations

import math
import time
from typing import Any, TypeVar

import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..abc import (
    AsyncOperator,
    Batch,
    BatchReason,
    Context,
    Inbox,
    Message,
    Operator,
    Outlet,
    Processor,
    Provenance,
)
from ..flow import Stage
from ..stats import StageCounters

__all__ = ["batch", "rebatch", "unbatch"]

T = TypeVar("T")


class Batcher(Processor):
    """Accumulates rows (from element chunks or array batches) and cuts batches."""

    def __init__(self, size: int, batch_bytes: int | None, dtype: np.dtype[Any] | None) -> None:
        self.size = size
        self.batch_bytes = batch_bytes
        self.dtype = dtype
        self.parts: list[NDArray[Any]] = []
        self.provs: list[Provenance | None] = []
        self.rows = 0

    def _limit(self) -> tuple[int, BatchReason]:
        if self.batch_bytes is None or not self.parts:
            return self.size, "count"
        itemsize = max(1, self.parts[0].dtype.itemsize * _row_width(self.parts[0]))
        by_bytes = max(1, self.batch_bytes // itemsize)
        return (by_bytes, "bytes") if by_bytes < self.size else (self.size, "count")

    def add(self, msg: Message) -> None:
        if isinstance(msg, Batch):
            arr, prov = msg.data, msg.provenance
            if self.dtype is not None and arr.dtype != self.dtype:
                arr = arr.astype(self.dtype)
        else:
            if not msg:
                return
            arr = np.array(msg, dtype=self.dtype)
            prov = None
        if len(arr):
            self.parts.append(arr)
            self.provs.append(prov)
            self.rows += len(arr)

    def cut(self) -> list[Message]:
        """Every full batch now available."""
        limit, reason = self._limit()
        if self.rows < limit:
            return []
        data, prov = self._concat()
        out: list[Message] = []
        start = 0
        while len(data) - start >= limit:
            out.append(Batch(data[start : start + limit], reason, _sub(prov, start, limit)))
            start += limit
        rest = data[start:]
        self.parts = [rest] if len(rest) else []
        self.provs = [_sub(prov, start, len(rest))] if len(rest) else []
        self.rows = len(rest)
        return out

    def process(self, msg: Message) -> list[Message]:
        self.add(msg)
        return self.cut()

    def cut_partial(self, reason: BatchReason) -> list[Message]:
        """The partial batch, if any rows are held."""
        if not self.rows:
            return []
        data, prov = self._concat()
        self.parts, self.provs, self.rows = [], [], 0
        return [Batch(data, reason, prov)]

    def flush(self) -> list[Message]:
        return self.cut_partial("end")

    def on_barrier(self, epoch: int) -> list[Message]:
        """A checkpoint barrier: hand on the partial batch (simpler than snapshotting rows)."""
        return self.cut_partial("checkpoint")

    def _concat(self) -> tuple[NDArray[Any], Provenance | None]:
        parts = self.parts
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        provs = self.provs
        first, last = provs[0], provs[-1]
        if (
            first is not None
            and last is not None
            and all(p is not None and p.source == first.source for p in provs)
        ):
            return data, Provenance(first.source, first.start, last.stop, first.unit)
        return data, None


def _row_width(arr: NDArray[Any]) -> int:
    return int(math.prod(arr.shape[1:])) if arr.ndim > 1 else 1


def _sub(prov: Provenance | None, start: int, rows: int) -> Provenance | None:
    """Provenance of ``rows`` rows from ``start`` (exact for row units, the span otherwise)."""
    if prov is None:
        return None
    if prov.unit == "row":
        return Provenance(prov.source, prov.start + start, prov.start + start + rows, "row")
    return prov


class _BatchOp(Operator):
    def __init__(
        self, size: int, batch_bytes: int | None, dtype: np.dtype[Any] | None, name: str
    ) -> None:
        self.size = size
        self.batch_bytes = batch_bytes
        self.dtype = dtype
        self.name = name

    def start(self) -> Processor:
        return Batcher(self.size, self.batch_bytes, self.dtype)


class _TimedBatchOp(AsyncOperator):
    """Batching with a timeout: needs a task of its own to wake up when time runs out."""

    def __init__(
        self,
        size: int,
        timeout: float,
        batch_bytes: int | None,
        dtype: np.dtype[Any] | None,
        buffer: int | None,
        name: str,
    ) -> None:
        self.size = size
        self.timeout = timeout
        self.batch_bytes = batch_bytes
        self.dtype = dtype
        self.buffer = buffer
        self.name = name

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit, counters = out.emit, out.counters
        batcher = Batcher(self.size, self.batch_bytes, self.dtype)
        deadline = math.inf  # when the partial batch must close
        while True:
            try:
                with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                    msg = await inbox.receive()
            except anyio.EndOfStream:
                break
            if scope.cancelled_caught:
                deadline = math.inf
                for piece in batcher.cut_partial("time"):
                    await emit(piece)
                continue
            was_empty = not batcher.rows
            outs = self._process(batcher, msg, counters)
            if not batcher.rows:
                deadline = math.inf
            elif was_empty or outs:  # the held rows' first one arrived just now
                deadline = anyio.current_time() + self.timeout
            for piece in outs:
                await emit(piece)
        for piece in batcher.cut_partial("end"):
            await emit(piece)

    @staticmethod
    def _process(batcher: Batcher, msg: Message, counters: StageCounters) -> list[Message]:
        t0 = time.perf_counter()
        out = batcher.process(msg)
        counters.busy_seconds += time.perf_counter() - t0
        return out


def batch(
    size: int,
    *,
    timeout: float | None = None,
    batch_bytes: int | None = None,
    dtype: DTypeLike | None = None,
    buffer: int | None = None,
) -> Stage[Any, NDArray[Any]]:
    """Gather items into NumPy array batches.

    Elements become rows (tuples become records when ``dtype`` is structured); incoming
    array batches are re-cut, so ``batch`` also rebatches. A batch closes on the first of:

    * ``size`` rows (``reason == "count"``);
    * ``batch_bytes`` bytes of rows (``"bytes"``);
    * ``timeout`` seconds after its first row arrived (``"time"``);
    * the end of input or a graceful stop (``"end"``).

    Args:
        size: most rows per batch.
        timeout: seconds a partial batch may wait for more rows (runs the stage in a task
            of its own; without it the stage is fused with its neighbours).
        batch_bytes: most bytes per batch.
        dtype: dtype of the arrays (inferred from the data when omitted), e.g.
            ``[("ts", "i8"), ("sensor", "i4"), ("value", "f4")]`` for records.
        buffer: input buffer size (messages) when a ``timeout`` gives the stage a task.
    """
    if size < 1:
        raise ValueError(f"batch({size}): size must be at least 1")
    if batch_bytes is not None and batch_bytes < 1:
        raise ValueError(f"batch(batch_bytes={batch_bytes}): must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"batch(timeout={timeout}): must be > 0 seconds")
    dt = None if dtype is None else np.dtype(dtype)
    name = f"batch({size}{'' if timeout is None else f', timeout={timeout}'})"
    if timeout is None:
        return Stage(_BatchOp(size, batch_bytes, dt, name))
    return Stage(_TimedBatchOp(size, timeout, batch_bytes, dt, buffer, name))


def rebatch(size: int, *, batch_bytes: int | None = None) -> Stage[NDArray[Any], NDArray[Any]]:
    """Re-cut array batches into batches of ``size`` rows (the last may be shorter).

    Rows are sliced and concatenated as arrays: no Python runs per row.
    """
    if size < 1:
        raise ValueError(f"rebatch({size}): size must be at least 1")
    return Stage(_BatchOp(size, batch_bytes, None, f"rebatch({size})"))


class _UnbatchRunner(Processor):
    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    def process(self, msg: Message) -> list[Message]:
        if not isinstance(msg, Batch):
            return [msg]
        rows = msg.data.tolist() if msg.data.dtype.names is None else list(msg.data)
        step = self.chunk
        return [rows[i : i + step] for i in range(0, len(rows), step)]


class _UnbatchOp(Operator):
    name = "unbatch"

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    def start(self) -> Processor:
        return _UnbatchRunner(self.chunk)


def unbatch(chunk_size: int = 256) -> Stage[NDArray[Any], Any]:
    """Turn array batches back into elements: Python scalars, or records (``np.void``)
    for structured arrays. Chunks of plain elements pass through unchanged."""
    return Stage(_UnbatchOp(chunk_size))

"""Batch-wise stages: map_batches and filter_rows, one NumPy call per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Message, callable_name, refuse_async
from ..flow import Stage
from ..policies import ErrorPolicy
from ..stats import StageCounters
from ._function import FunctionOp
from .concurrency import threaded

__all__ = ["filter_rows", "map_batches"]

ArrayFn = Callable[[NDArray[Any]], NDArray[Any]]


def _as_batches(items: list[Any]) -> list[Batch]:
    return [Batch(np.asarray(item), "source") for item in items]


class _BatchFunctionOp(FunctionOp):
    """A batch-wise step: plain elements that are arrays are treated as batches."""

    def process(self, msg: Message) -> list[Message]:
        if isinstance(msg, Batch):
            return self.apply_batch(msg)
        return [out for b in _as_batches(msg) for out in self.apply_batch(b)]

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        if isinstance(msg, Batch):
            return await super().process_guarded(msg, counters)
        outs: list[Message] = []
        for b in _as_batches(msg):
            outs.extend(await super().process_guarded(b, counters))
        return outs

    def apply_chunk(self, items: list[Any]) -> list[Any]:  # pragma: no cover - see process
        raise NotImplementedError


class _MapBatchesOp(_BatchFunctionOp):
    def __init__(self, fn: ArrayFn, on_error: ErrorPolicy, name: str | None) -> None:
        super().__init__(name or f"map_batches({callable_name(fn)})", on_error)
        self.fn = fn

    def apply_batch(self, batch: Batch) -> list[Message]:
        out = self.fn(batch.data)
        if not isinstance(out, np.ndarray):
            raise TypeError(
                f"{self.name}: the function returned {type(out).__name__}, not an ndarray"
            )
        return [batch.with_data(out)]

    def apply_one(self, item: Any) -> list[Any]:
        return [self.fn(np.asarray(item))]


def map_batches(
    fn: ArrayFn,
    *,
    thread: bool = False,
    concurrency: int = 1,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Apply a vectorized function to every batch: ``fn(array) -> array``.

    The output keeps the batch's envelope (reason, provenance). Plain elements that are
    arrays are treated as batches.

    Args:
        fn: a function of one array returning an array (any length: it may drop rows).
        thread: run ``fn`` in worker threads (NumPy releases the GIL, so two cores work).
        concurrency: with ``thread=True``, how many batches may be in threads at once
            (output order is kept).
        on_error: error policy, applied per batch.
        buffer: input buffer size when the stage runs in its own task (``thread=True``).
        name: the stage's name in statistics and errors.
    """
    refuse_async(
        fn,
        "map_batches()",
        "use map(fn, concurrency=n), which awaits it on each batch's array (an array it "
        "returns keeps the batch's envelope)",
    )
    op = _MapBatchesOp(fn, on_error, name)
    if thread or concurrency != 1:
        return threaded(op, concurrency=concurrency, buffer=buffer)
    return Stage(op)


class _FilterRowsOp(_BatchFunctionOp):
    def __init__(self, fn: ArrayFn, on_error: ErrorPolicy, name: str | None) -> None:
        super().__init__(name or f"filter_rows({callable_name(fn)})", on_error)
        self.fn = fn

    def apply_batch(self, batch: Batch) -> list[Message]:
        mask = np.asarray(self.fn(batch.data))
        if mask.dtype != np.bool_ or mask.shape != (len(batch.data),):
            raise TypeError(
                f"{self.name}: the function must return a boolean mask of shape "
                f"({len(batch.data)},), got dtype {mask.dtype} and shape {mask.shape}"
            )
        kept = int(np.count_nonzero(mask))
        if kept == len(mask):
            return [batch]
        return [batch.with_data(batch.data[mask])] if kept else []

    def apply_one(self, item: Any) -> list[Any]:
        arr = np.asarray(item)
        return [arr[np.asarray(self.fn(arr))]]


def filter_rows(
    fn: ArrayFn, *, on_error: ErrorPolicy = "raise", name: str | None = None
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Keep the rows of each batch where the boolean mask ``fn(array)`` is true.

    Example: ``filter_rows(lambda b: b["value"] > 0)``. Batches left empty are dropped.
    """
    refuse_async(
        fn,
        "filter_rows()",
        "select the rows in an async function of your own and use map(fn, concurrency=n), "
        "e.g. `async def keep(b): return b[await mask(b)]`",
    )
    return Stage(_FilterRowsOp(fn, on_error, name))

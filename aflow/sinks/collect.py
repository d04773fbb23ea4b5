"""Basic sinks: collect, reduce, for_each, discard."""

from __future__ import annotations

import pickle
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

import anyio

from .._core.collect import CollectOperator
from ..abc import (
    Batch,
    Context,
    Provenance,
    SavedAttributes,
    SinkOperator,
    SinkWriter,
    StageCounters,
    callable_name,
    is_async_callable,
    refuse_async,
)
from ..flow import Collect, CollectMode, Sink
from ..policies import ErrorPolicy, apply_policy, check_policy

__all__ = ["collect", "discard", "for_each", "reduce"]

T = TypeVar("T")
A = TypeVar("A")

_NOTHING: Any = object()


@overload
def collect(mode: Literal["list"]) -> Collect[Literal["list"]]: ...
@overload
def collect(mode: Literal["array"]) -> Collect[Literal["array"]]: ...
@overload
def collect(mode: Literal["auto"] = "auto") -> Collect[Literal["auto"]]: ...
def collect(mode: CollectMode = "auto") -> Collect[Any]:
    """Gather everything: a list of elements, or one array of all batches' rows.

    Args:
        mode: ``"auto"`` returns one concatenated array when the flow carries array batches
            and a list otherwise; ``"list"`` always returns a list (batches as its items);
            ``"array"`` always returns one array.

    Under mypy, ``Flow[T] | collect("list")`` gives a ``list[T]`` and ``collect("array")``
    an ``NDArray``; ``"auto"`` gives ``list[T]``, or for a ``Flow[NDArray]`` either an
    array or a list of arrays (an empty flow, or arrays as plain elements, give a list).

    Memory grows with the output: meant for results, tests and small flows.
    """
    if mode not in ("auto", "list", "array"):
        raise ValueError(f"collect(mode={mode!r}): use 'auto', 'list' or 'array'")
    return Collect(CollectOperator(mode))


class _ReduceWriter(SinkWriter[Any, Any]):
    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any, name: str) -> None:
        self.fn = fn
        self.acc = initial
        self.name = name

    async def write(self, item: Any) -> None:
        self.acc = item if self.acc is _NOTHING else self.fn(self.acc, item)

    async def write_chunk(self, items: list[Any]) -> None:
        fn = self.fn
        acc = self.acc
        it = iter(items)
        if acc is _NOTHING:
            acc = next(it, _NOTHING)
        for item in it:
            acc = fn(acc, item)
        self.acc = acc

    def snapshot(self) -> Any:
        """The fold so far (pickled: a copy made now)."""
        empty = self.acc is _NOTHING
        return pickle.dumps((empty, None if empty else self.acc), protocol=5)

    def restore(self, state: Any) -> None:
        empty, acc = pickle.loads(state)
        self.acc = _NOTHING if empty else acc

    def result(self) -> Any:
        if self.acc is _NOTHING:
            raise ValueError(f"{self.name}: the flow was empty and no initial value was given")
        return self.acc


class _ReduceOp(SinkOperator[Any, Any]):
    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        self.fn = fn
        self.initial = initial
        self.name = f"reduce({callable_name(fn)})"

    def writer(self, ctx: Context) -> SinkWriter[Any, Any]:
        return _ReduceWriter(self.fn, self.initial, self.name)


def reduce(fn: Callable[[A, T], A], initial: A = _NOTHING) -> Sink[T, A]:
    """Fold the items into one value: ``acc = fn(acc, item)``.

    For a flow of batches ``item`` is a batch's array, so a vectorized fold is one NumPy
    call per batch, e.g. ``reduce(lambda acc, b: acc + b.sum(), 0.0)``.

    Args:
        fn: the folding function.
        initial: the starting value; without it the first item starts the fold and an
            empty flow raises ``ValueError``.
    """
    refuse_async(
        fn,
        "reduce()",
        "await what it needs in a map(fn, concurrency=n) before it, or use for_each(fn), "
        "which awaits an async function on every item",
    )
    return Sink(_ReduceOp(fn, initial))


class _ForEachWriter(SavedAttributes, SinkWriter[Any, int]):
    saved = ("count",)  # the calls themselves are the user's effect: at-least-once

    def __init__(self, op: _ForEachOp) -> None:
        self.fn = op.fn
        self.is_async = op.is_async
        self.on_error = op.on_error
        self.name = op.name
        self.counters: StageCounters | None = None
        self.count = 0

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.counters = counters

    async def _call(self, item: Any) -> None:
        if self.is_async:
            await self.fn(item)
        else:
            self.fn(item)

    async def _guarded(self, item: Any, provenance: Provenance | None = None) -> None:
        """``fn(item)``, a failure handed to the error policy."""
        try:
            await self._call(item)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            assert self.counters is not None

            async def again() -> list[Any]:
                await self._call(item)
                return []

            await apply_policy(
                self.on_error, item, exc, self.name, provenance, self.counters, again=again
            )

    async def write(self, item: Any) -> None:
        self.count += 1
        await self._guarded(item)

    async def write_batch(self, batch: Batch) -> None:
        self.count += 1
        await self._guarded(batch.data, batch.provenance)

    async def write_chunk(self, items: list[Any]) -> None:
        if self.is_async or self.on_error != "raise":
            for item in items:
                await self._guarded(item)
                self.count += 1
        else:
            fn = self.fn
            for item in items:
                fn(item)
            self.count += len(items)

    def result(self) -> int:
        return self.count


class _ForEachOp(SinkOperator[Any, int]):
    def __init__(self, fn: Callable[[Any], Any], buffer: int | None, on_error: ErrorPolicy) -> None:
        self.fn = fn
        self.is_async = is_async_callable(fn)
        self.fused = not self.is_async
        self.buffer = buffer
        self.on_error = check_policy(on_error)
        self.name = f"for_each({callable_name(fn)})"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _ForEachWriter(self)


def for_each(
    fn: Callable[[T], None] | Callable[[T], Awaitable[None]],
    *,
    buffer: int | None = None,
    on_error: ErrorPolicy = "raise",
) -> Sink[T, int]:
    """Call ``fn`` on every item (an element, or a batch's array); the result is the count.

    An async ``fn`` runs in a task of its own behind a buffer of ``buffer`` messages, and
    while it is slow the buffer fills and the upstream stages wait (backpressure).

    Args:
        fn: called with each item; sync or async.
        buffer: messages waiting in front of an async ``fn``.
        on_error: what a call that raises does (see :mod:`aflow.policies`): ``"raise"``
            (fail the run), ``"skip"`` (count it in the sink's ``errors``),
            :func:`~aflow.retry` (call again) or :func:`~aflow.dead_letter` (with the
            batch's provenance).
    """
    refuse_async(fn, "for_each()", "give an async function (no yield)", kinds=("generator",))
    return Sink(_ForEachOp(fn, buffer, on_error))


class _DiscardWriter(SavedAttributes, SinkWriter[Any, int]):
    saved = ("rows",)

    def __init__(self) -> None:
        self.rows = 0

    async def write(self, item: Any) -> None:
        self.rows += 1

    async def write_chunk(self, items: list[Any]) -> None:
        self.rows += len(items)

    async def write_batch(self, batch: Batch) -> None:
        self.rows += len(batch.data)

    def result(self) -> int:
        return self.rows


class _DiscardOp(SinkOperator[Any, int]):
    name = "discard"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _DiscardWriter()


def discard() -> Sink[Any, int]:
    """Drop everything (for flows run for their side effects); the result is the row count."""
    return Sink(_DiscardOp())

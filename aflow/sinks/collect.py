"""Basic sinks: collect, reduce, for_each, discard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

from .._core.collect import CollectOperator
from ..abc import (
    Batch,
    Context,
    SinkOperator,
    SinkWriter,
    callable_name,
    is_async_callable,
    refuse_async,
)
from ..flow import Collect, CollectMode, Sink

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


class _ForEachWriter(SinkWriter[Any, int]):
    def __init__(self, fn: Callable[[Any], Any], is_async: bool) -> None:
        self.fn = fn
        self.is_async = is_async
        self.count = 0

    async def write(self, item: Any) -> None:
        self.count += 1
        if self.is_async:
            await self.fn(item)
        else:
            self.fn(item)

    async def write_chunk(self, items: list[Any]) -> None:
        if self.is_async:
            for item in items:
                await self.fn(item)
                self.count += 1
        else:
            fn = self.fn
            for item in items:
                fn(item)
            self.count += len(items)

    def result(self) -> int:
        return self.count


class _ForEachOp(SinkOperator[Any, int]):
    def __init__(self, fn: Callable[[Any], Any], buffer: int | None) -> None:
        self.fn = fn
        self.is_async = is_async_callable(fn)
        self.fused = not self.is_async
        self.buffer = buffer
        self.name = f"for_each({callable_name(fn)})"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _ForEachWriter(self.fn, self.is_async)


def for_each(
    fn: Callable[[T], None] | Callable[[T], Awaitable[None]], *, buffer: int | None = None
) -> Sink[T, int]:
    """Call ``fn`` on every item (an element, or a batch's array); the result is the count.

    An async ``fn`` runs in a task of its own behind a buffer of ``buffer`` messages, and
    while it is slow the buffer fills and the upstream stages wait (backpressure).
    """
    refuse_async(fn, "for_each()", "give an async function (no yield)", kinds=("generator",))
    return Sink(_ForEachOp(fn, buffer))


class _DiscardWriter(SinkWriter[Any, int]):
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

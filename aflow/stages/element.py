"""Element-wise stages: map, filter, flat_map, take, skip, take_while, scan.

On a flow of batches the "element" is a batch's array: ``map(f)`` calls ``f(array)`` and a
returned array keeps the batch's envelope (reason, provenance). Synchronous functions are
fused with their neighbours into one task and applied to a whole chunk per call.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from itertools import chain
from typing import Any, TypeVar, overload

import numpy as np

from ..abc import (
    Batch,
    Message,
    Operator,
    Processor,
    SavedAttributes,
    callable_name,
    refuse_async,
)
from ..codecs.lines import block_lines, is_line_block, split_block
from ..flow import Stage
from ..policies import ErrorPolicy
from ._function import FunctionOp
from .concurrency import concurrent, concurrent_name

__all__ = ["filter", "flat_map", "map", "scan", "skip", "take", "take_while"]

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")

_map = map
_filter = filter


def _rewrap(batch: Batch, value: Any) -> list[Message]:
    if isinstance(value, np.ndarray):
        return [batch.with_data(value)]
    return [[value]]


class _MapOp(FunctionOp):
    def __init__(self, fn: Callable[[Any], Any], on_error: ErrorPolicy, name: str) -> None:
        super().__init__(name, on_error)
        self.fn = fn

    def apply_chunk(self, items: list[Any]) -> list[Any]:
        return list(_map(self.fn, items))

    def apply_one(self, item: Any) -> list[Any]:
        return [self.fn(item)]

    def apply_batch(self, batch: Batch) -> list[Message]:
        return _rewrap(batch, self.fn(batch.data))

    def shape(self, unit: Message, result: Any) -> list[Message]:
        return _rewrap(unit, result) if isinstance(unit, Batch) else [[result]]


@overload
def map(
    fn: Callable[[T], Coroutine[Any, Any, U]],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    thread: bool = False,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[T, U]: ...
@overload
def map(
    fn: Callable[[T], U],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    thread: bool = False,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[T, U]: ...
@overload
def map(
    fn: Callable[[Any], U],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    thread: bool = False,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[Any, U]: ...
def map(
    fn: Callable[[Any], Any],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    thread: bool = False,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Apply ``fn`` to every item.

    Args:
        fn: a sync or async function of one item (an element, or a batch's array).
        concurrency: for an async ``fn`` (or ``thread=True``), how many calls may run at once.
        ordered: keep input order (a slow item holds back later ones); ``False`` emits each
            result as soon as it is ready, so a slow item never blocks the others.
        thread: run a sync ``fn`` in worker threads (for CPU-heavy NumPy code, which releases
            the GIL; a whole chunk of elements goes to the thread per call).
        on_error: ``"raise"``, ``"skip"``, :func:`~aflow.retry` or :func:`~aflow.dead_letter`.
        buffer: input buffer size (messages) when the stage runs in its own task.
        name: the stage's name in statistics and errors.

    Raises:
        FlowDefinitionError: ``fn`` is an async generator function, or async with
            ``thread=True`` (an async function runs on the event loop, not in threads).
    """
    refuse_async(fn, "map()", "give an async function returning the value", kinds=("generator",))
    if thread:
        refuse_async(
            fn,
            "map(thread=True)",
            "drop thread=True: map awaits an async function on the event loop, "
            "concurrency=n calls at once",
        )
    op = _MapOp(fn, on_error, name or concurrent_name("map", fn, concurrency, thread))
    return concurrent(
        op, fn, concurrency=concurrency, ordered=ordered, thread=thread, buffer=buffer
    )


class _FilterOp(FunctionOp):
    def __init__(self, fn: Callable[[Any], Any], on_error: ErrorPolicy, name: str) -> None:
        super().__init__(name, on_error)
        self.fn = fn

    def apply_chunk(self, items: list[Any]) -> list[Any]:
        return list(_filter(self.fn, items))

    def apply_one(self, item: Any) -> list[Any]:
        return [item] if self.fn(item) else []

    def apply_batch(self, batch: Batch) -> list[Message]:
        return self.shape(batch, self.fn(batch.data))

    def shape(self, unit: Message, result: Any) -> list[Message]:
        return [unit] if result else []


def filter(
    fn: Callable[[T], Any],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[T, T]:
    """Keep the items for which ``fn(item)`` is true.

    On a flow of batches this keeps or drops whole batches; use :func:`~aflow.filter_rows`
    to select rows inside them.

    Args:
        fn: a sync or async predicate of one item (an element, or a batch's array).
        concurrency: for an async ``fn``, how many calls may run at once (a sync ``fn``
            with ``concurrency > 1`` runs in that many worker threads).
        ordered: keep input order; ``False`` passes each item as soon as its predicate is
            known.
        on_error: ``"raise"``, ``"skip"``, :func:`~aflow.retry` or :func:`~aflow.dead_letter`.
        buffer: input buffer size (messages) when the stage runs in its own task.
        name: the stage's name in statistics and errors.
    """
    refuse_async(
        fn, "filter()", "give an async function returning true or false", kinds=("generator",)
    )
    op = _FilterOp(fn, on_error, name or concurrent_name("filter", fn, concurrency, False))
    return concurrent(op, fn, concurrency=concurrency, ordered=ordered, thread=False, buffer=buffer)


class _FlatMapOp(FunctionOp):
    def __init__(
        self, fn: Callable[[Any], Iterable[Any]], on_error: ErrorPolicy, name: str
    ) -> None:
        super().__init__(name, on_error)
        self.fn = fn

    def apply_chunk(self, items: list[Any]) -> list[Any]:
        return list(chain.from_iterable(_map(self.fn, items)))

    def apply_one(self, item: Any) -> list[Any]:
        return list(self.fn(item))

    def apply_batch(self, batch: Batch) -> list[Message]:
        return self.shape(batch, self.fn(batch.data))

    def shape(self, unit: Message, result: Any) -> list[Message]:
        if not isinstance(unit, Batch):
            items = list(result)
            return [items] if items else []
        out: list[Message] = []
        elements: list[Any] = []
        for value in result:
            if isinstance(value, np.ndarray):
                if elements:
                    out.append(elements)
                    elements = []
                out.append(unit.with_data(value))
            else:
                elements.append(value)
        if elements:
            out.append(elements)
        return out


@overload
def flat_map(
    fn: Callable[[T], Coroutine[Any, Any, Iterable[U]]],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], Iterable[U]],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[T, U]: ...
@overload
def flat_map(
    fn: Callable[[Any], Iterable[U]],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[Any, U]: ...
def flat_map(
    fn: Callable[[Any], Any],
    *,
    concurrency: int = 1,
    ordered: bool = True,
    on_error: ErrorPolicy = "raise",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[Any, Any]:
    """Replace every item by the items of the iterable ``fn(item)`` returns (zero or more).

    Args:
        fn: a sync function, or an async one (awaited, then iterated), of one item.
        concurrency: for an async ``fn``, how many calls may run at once (a sync ``fn``
            with ``concurrency > 1`` runs in that many worker threads).
        ordered: keep input order; ``False`` emits each item's results as soon as they
            are ready.
        on_error: ``"raise"``, ``"skip"``, :func:`~aflow.retry` or :func:`~aflow.dead_letter`.
        buffer: input buffer size (messages) when the stage runs in its own task.
        name: the stage's name in statistics and errors.

    Raises:
        FlowDefinitionError: ``fn`` is an async generator function (return a list from an
            async function instead).
    """
    refuse_async(
        fn,
        "flat_map()",
        "give an async function returning a list (or any iterable)",
        kinds=("generator",),
    )
    op = _FlatMapOp(fn, on_error, name or concurrent_name("flat_map", fn, concurrency, False))
    return concurrent(op, fn, concurrency=concurrency, ordered=ordered, thread=False, buffer=buffer)


class _TakeRunner(SavedAttributes, Processor):
    saved = ("left", "done")

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = n <= 0

    def process(self, msg: Message) -> list[Message]:
        left = self.left
        if left <= 0:
            return []
        if isinstance(msg, Batch):
            if is_line_block(msg):  # count lines, not bytes
                lines = block_lines(msg)
                if lines > left:
                    self.left, self.done = 0, True
                    return [split_block(msg, left)[0]]
                self.left -= lines
                self.done = self.left == 0
                return [msg]
            if len(msg.data) >= left:
                self.left, self.done = 0, True
                return [msg.with_data(msg.data[:left])] if left else []
            self.left -= len(msg.data)
            return [msg]
        if len(msg) >= left:
            self.left, self.done = 0, True
            return [msg[:left]]
        self.left -= len(msg)
        return [msg]


class _TakeOp(Operator):
    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"take({n}): n must be >= 0")
        self.n = n
        self.name = f"take({n})"

    def start(self) -> Processor:
        return _TakeRunner(self.n)


def take(n: int) -> Stage[T, T]:
    """Pass the first ``n`` items (rows, on a flow of batches; lines, on blocks of lines
    from files and sockets), then stop the flow upstream.

    Upstream sources are closed as soon as ``n`` items have passed, so ``take`` is how an
    infinite source ends. A sync source reads ahead by up to one chunk (see
    ``from_iterable(chunk_size=)``).
    """
    return Stage(_TakeOp(n))


class _SkipRunner(SavedAttributes, Processor):
    saved = ("left",)

    def __init__(self, n: int) -> None:
        self.left = n

    def process(self, msg: Message) -> list[Message]:
        left = self.left
        if left <= 0:
            return [msg]
        if isinstance(msg, Batch) and is_line_block(msg):  # count lines, not bytes
            lines = block_lines(msg)
            self.left = max(0, left - lines)
            return [] if lines <= left else [split_block(msg, left)[1]]
        size = len(msg.data) if isinstance(msg, Batch) else len(msg)
        self.left = max(0, left - size)
        if size <= left:
            return []
        if isinstance(msg, Batch):
            return [msg.with_data(msg.data[left:])]
        return [msg[left:]]


class _SkipOp(Operator):
    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"skip({n}): n must be >= 0")
        self.n = n
        self.name = f"skip({n})"

    def start(self) -> Processor:
        return _SkipRunner(self.n)


def skip(n: int) -> Stage[T, T]:
    """Drop the first ``n`` items (rows of batches, lines of line blocks), pass the rest."""
    return Stage(_SkipOp(n))


class _TakeWhileRunner(SavedAttributes, Processor):
    saved = ("done",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process(self, msg: Message) -> list[Message]:
        if self.done:
            return []
        if isinstance(msg, Batch):
            if self.fn(msg.data):
                return [msg]
            self.done = True
            return []
        fn = self.fn
        for i, item in enumerate(msg):
            if not fn(item):
                self.done = True
                return [msg[:i]] if i else []
        return [msg]


class _TakeWhileOp(Operator):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.name = f"take_while({callable_name(fn)})"

    def start(self) -> Processor:
        return _TakeWhileRunner(self.fn)


def take_while(fn: Callable[[T], Any]) -> Stage[T, T]:
    """Pass items while ``fn(item)`` is true; at the first false one, stop the flow.

    On a flow of batches ``fn`` gets a whole batch's array and keeps or drops the batch;
    to cut inside a batch, use ``filter_rows`` before it.
    """
    refuse_async(
        fn,
        "take_while()",
        "compute what it tests in a map(fn, concurrency=n) before it "
        "(take_while's predicate is sync)",
    )
    return Stage(_TakeWhileOp(fn))


class _ScanRunner(SavedAttributes, Processor):
    saved = ("acc",)

    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        self.fn = fn
        self.acc = initial

    def process(self, msg: Message) -> list[Message]:
        fn = self.fn
        if isinstance(msg, Batch):
            self.acc = fn(self.acc, msg.data)
            return _rewrap(msg, self.acc)
        out = []
        acc = self.acc
        for item in msg:
            acc = fn(acc, item)
            out.append(acc)
        self.acc = acc
        return [out] if out else []


class _ScanOp(Operator):
    def __init__(self, fn: Callable[[Any, Any], Any], initial: Any) -> None:
        self.fn = fn
        self.initial = initial
        self.name = f"scan({callable_name(fn)})"

    def start(self) -> Processor:
        return _ScanRunner(self.fn, self.initial)


def scan(fn: Callable[[A, T], A], initial: A) -> Stage[T, A]:
    """Emit the running fold ``acc = fn(acc, item)`` after every item (``accumulate``).

    On a flow of batches ``fn`` gets the accumulator and a batch's array; keep it
    vectorized, e.g. ``scan(lambda acc, b: acc + b.sum(), 0.0)``.
    """
    refuse_async(
        fn,
        "scan()",
        "await what it needs in a map(fn, concurrency=n) before it (scan's function is sync)",
    )
    return Stage(_ScanOp(fn, initial))

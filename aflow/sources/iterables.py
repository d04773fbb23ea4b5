"""Sources over Python objects: iterables, generators (sync and async) and arrays."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import (
    Batch,
    BatchReason,
    Context,
    Outlet,
    Provenance,
    Source,
    callable_name,
    refuse_async,
)
from ..errors import SourceReusedError
from ..flow import Flow

__all__ = ["from_array", "from_arrays", "from_iterable"]

T = TypeVar("T")

DEFAULT_CHUNK = 256


class _IterableSource(Source):
    """Emits the items of an iterable: chunks of elements, or one batch per array."""

    def __init__(self, obj: Any, *, chunk_size: int, as_batches: bool, name: str) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: must be at least 1")
        self.obj = obj
        self.chunk_size = chunk_size
        self.as_batches = as_batches
        self.name = name
        self.single_use = _is_iterator(obj)
        self.used = False

    def _open(self) -> Any:
        obj = self.obj
        if self.single_use:
            if self.used:
                raise SourceReusedError(
                    f"{self.name}: the iterator {obj!r} was consumed by an earlier run. Pass "
                    "the generator function (or a zero-argument callable) to get a flow that "
                    "can run many times."
                )
            self.used = True
            return obj
        if callable(obj) and not _is_iterable(obj):
            made = obj()
            if not _is_iterable(made):
                raise TypeError(f"{self.name}: {obj!r}() returned {made!r}, not an iterable")
            return made
        return obj

    async def produce(self, out: Outlet, ctx: Context) -> None:
        obj = self._open()
        if isinstance(obj, np.ndarray) and not self.as_batches:
            await self._produce_array_elements(obj, out)
        elif isinstance(obj, AsyncIterable):
            await self._produce_async(obj, out)
        else:
            await self._produce_sync(iter(obj), out)

    async def _produce_array_elements(self, arr: NDArray[Any], out: Outlet) -> None:
        step = self.chunk_size
        for start in range(0, len(arr), step):
            if out.stopping:
                return
            await out.emit(arr[start : start + step].tolist())

    async def _produce_sync(self, it: Iterator[Any], out: Outlet) -> None:
        try:
            if self.as_batches:
                for batch in _numbered_batches(it, self.name):
                    if out.stopping:
                        return
                    await out.emit(batch)
                return
            step = self.chunk_size
            while not out.stopping:
                chunk = list(islice(it, step))
                if not chunk:
                    return
                await out.emit(chunk)
        finally:
            close = getattr(it, "close", None)
            if close is not None and inspect.isgenerator(it):
                close()

    async def _produce_async(self, iterable: AsyncIterable[Any], out: Outlet) -> None:
        it = aiter(iterable)
        try:
            start = 0
            while not out.stopping:
                pulled = False
                with out.pull_scope():
                    try:
                        item = await anext(it)
                        pulled = True
                    except StopAsyncIteration:
                        return
                if not pulled:  # a stop interrupted the wait: nothing was read
                    return
                if self.as_batches:
                    arr = np.asarray(item)
                    prov = Provenance(self.name, start, start + len(arr))
                    start += len(arr)
                    await out.emit(Batch(arr, "source", prov))
                else:
                    await out.emit([item])
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _numbered_batches(it: Iterator[Any], name: str) -> Iterator[Batch]:
    start = 0
    for item in it:
        arr = np.asarray(item)
        yield Batch(arr, "source", Provenance(name, start, start + len(arr)))
        start += len(arr)


def _is_iterator(obj: Any) -> bool:
    if isinstance(obj, AsyncIterator):
        return True
    return isinstance(obj, Iterator)


def _is_iterable(obj: Any) -> bool:
    return isinstance(obj, Iterable | AsyncIterable)


def _name(kind: str, obj: Any) -> str:
    if callable(obj) and not _is_iterable(obj):
        return f"{kind}({callable_name(obj)})"
    if inspect.isgenerator(obj) or inspect.isasyncgen(obj):
        return f"{kind}({obj.__name__})"
    return f"{kind}({type(obj).__name__})"


def _refuse_coroutine_function(obj: Any, where: str) -> None:
    if callable(obj) and not _is_iterable(obj):
        refuse_async(
            obj,
            where,
            "give an async generator function (async def with yield), an async iterable, "
            "or a function returning an iterable",
            kinds=("coroutine",),
        )


def from_iterable(
    iterable: Iterable[T] | AsyncIterable[T] | Callable[[], Iterable[T] | AsyncIterable[T]],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    name: str | None = None,
) -> Flow[T]:
    """A flow over the elements of an iterable, sync or async, finite or not.

    Args:
        iterable: a list, range, array or other re-iterable; a generator *function* (or any
            zero-argument callable returning an iterable), called afresh on every run; or a
            generator/iterator object, which can run only once (a second run raises
            :class:`~aflow.errors.SourceReusedError`).
        chunk_size: elements pulled from a sync iterable per message (read-ahead: a
            ``take(10)`` downstream may still have pulled ``chunk_size`` elements; use
            ``chunk_size=1`` for generators with costly side effects). Async iterables
            are forwarded element by element so a slow producer never delays earlier
            elements; for throughput, yield lists or arrays (:func:`from_arrays`).
        name: the source's name in statistics and errors.

    Examples:
        >>> import aflow as af
        >>> def naturals():
        ...     n = 0
        ...     while True:
        ...         yield n
        ...         n += 1
        >>> af.run(af.from_iterable(naturals) | af.take(5) | af.collect()).value
        [0, 1, 2, 3, 4]
    """
    _refuse_coroutine_function(iterable, "from_iterable()")
    source = _IterableSource(
        iterable,
        chunk_size=chunk_size,
        as_batches=False,
        name=name or _name("from_iterable", iterable),
    )
    return Flow(source)


def from_arrays(
    arrays: Iterable[Any] | AsyncIterable[Any] | Callable[[], Iterable[Any] | AsyncIterable[Any]],
    *,
    name: str | None = None,
) -> Flow[NDArray[Any]]:
    """A flow of array batches: each item the iterable yields becomes one batch.

    Args:
        arrays: an iterable (sync or async, or a callable making one, as in
            :func:`from_iterable`) of arrays or array-likes.
        name: the source's name; batches carry provenance ``name rows start..stop``.
    """
    _refuse_coroutine_function(arrays, "from_arrays()")
    source = _IterableSource(
        arrays, chunk_size=1, as_batches=True, name=name or _name("from_arrays", arrays)
    )
    return Flow(source)


class _ArraySource(Source):
    def __init__(self, array: NDArray[Any], batch_size: int, name: str) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        self.array = array
        self.batch_size = batch_size
        self.name = name

    def size(self) -> tuple[int, str]:
        return len(self.array), "rows"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        arr, step = self.array, self.batch_size
        for start in range(0, len(arr), step):
            if out.stopping:
                return
            stop = min(start + step, len(arr))
            reason: BatchReason = "count" if stop - start == step else "end"
            await out.emit(Batch(arr[start:stop], reason, Provenance(self.name, start, stop)))


def from_array(
    array: NDArray[Any] | Any, batch_size: int = 65_536, *, name: str | None = None
) -> Flow[NDArray[Any]]:
    """A flow of batches that are views (no copies) of consecutive rows of ``array``.

    Args:
        array: any array-like; a 1-D array of scalars or a structured array of records.
        batch_size: rows per batch; the last batch may be shorter.
        name: the source's name in statistics and errors (``from_array`` by default).
    """
    return Flow(_ArraySource(np.asarray(array), batch_size, name or "from_array"))

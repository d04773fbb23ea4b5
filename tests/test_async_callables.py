"""Async user functions: awaited where a stage can await them (map, filter, flat_map,
for_each, late targets), refused when the stage is built where it cannot (it would call
them without awaiting: every item kept, a coroutine where a value belongs)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import aflow as af
from aflow.abc import async_kind, is_async_callable

pytestmark = pytest.mark.anyio


async def is_even(x: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return x % 2 == 0


async def has_remainder(x: int, k: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return x % k == 0


class Predicate:
    """An async callable object: ``__call__`` is a coroutine function."""

    async def __call__(self, x: int) -> bool:
        await anyio.lowlevel.checkpoint()
        return x % 2 == 0


async def twice(x: Any) -> list[Any]:
    await anyio.lowlevel.checkpoint()
    return [x, x]


async def agen(x: Any) -> AsyncIterator[Any]:
    yield x


# Three spellings of the same async predicate: a function, a partial, a callable object.
ASYNC_PREDICATES = [is_even, functools.partial(has_remainder, k=2), Predicate()]


def test_async_callables_are_recognized() -> None:
    for fn in ASYNC_PREDICATES:
        assert is_async_callable(fn)
        assert async_kind(fn) == "coroutine"
    assert async_kind(agen) == async_kind(functools.partial(agen)) == "generator"
    for fn in (len, lambda x: x, Predicate, functools.partial(max, 1), str.upper, print):
        assert not is_async_callable(fn)


@pytest.mark.parametrize("pred", ASYNC_PREDICATES)
async def test_filter_awaits_an_async_predicate(pred: Callable[[int], Any]) -> None:
    got = await (af.from_iterable(range(10)) | af.filter(pred, concurrency=3)).run()
    assert got.value == [0, 2, 4, 6, 8]


async def test_filter_async_on_batches_keeps_or_drops_whole_batches() -> None:
    async def big(b: Any) -> bool:
        return bool(b.sum() > 10)

    got = await (af.from_array(np.arange(9), 3) | af.filter(big)).run()
    assert got.value.tolist() == [3, 4, 5, 6, 7, 8]  # batch [0, 1, 2] dropped


async def test_filter_async_with_an_error_policy() -> None:
    async def picky(x: int) -> bool:
        if x == 3:
            raise ValueError("three")
        return True

    dead: list[af.FailedItem] = []
    flow = af.from_iterable(range(5)) | af.filter(picky, on_error=af.dead_letter(dead))
    assert (await flow.run()).value == [0, 1, 2, 4]
    assert [d.item for d in dead] == [3]


@pytest.mark.virtual_time
async def test_filter_unordered_passes_items_as_their_predicates_finish() -> None:
    async def slow_first(x: int) -> bool:
        await anyio.sleep(0.2 if x == 0 else 0)
        return True

    flow = af.from_iterable(range(4)) | af.filter(slow_first, concurrency=4, ordered=False)
    assert (await flow.run()).value[-1] == 0


@pytest.mark.parametrize("fn", [twice, functools.partial(twice)])
async def test_flat_map_awaits_an_async_function(fn: Callable[[Any], Any]) -> None:
    got = await (af.from_iterable("abc") | af.flat_map(fn, concurrency=2)).run()
    assert got.value == ["a", "a", "b", "b", "c", "c"]


async def test_flat_map_async_on_batches_keeps_envelopes() -> None:
    async def halves(b: Any) -> list[Any]:
        return [b[: len(b) // 2], b[len(b) // 2 :]]

    async with (af.from_array(np.arange(8), 4) | af.flat_map(halves)).open() as run:
        got = [msg async for msg in run.envelopes()]
    assert [m.data.tolist() for m in got] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(isinstance(m, af.Batch) and m.provenance is not None for m in got)


async def test_map_awaits_partials_and_async_callable_objects() -> None:
    for pred in ASYNC_PREDICATES:
        got = await (af.from_iterable(range(4)) | af.map(pred)).run()
        assert got.value == [True, False, True, False]


async def test_for_each_awaits_an_async_callable_object() -> None:
    seen: list[int] = []

    class Record:
        async def __call__(self, x: int) -> None:
            await anyio.lowlevel.checkpoint()
            seen.append(x)

    for fn in (Record(), functools.partial(Record())):
        seen.clear()
        assert (await (af.from_iterable(range(3)) | af.for_each(fn)).run()).value == 3
        assert seen == [0, 1, 2]


async def test_window_awaits_an_async_callable_late_target() -> None:
    late_rows: list[Any] = []

    class Late:
        async def __call__(self, rows: Any) -> None:
            await anyio.lowlevel.checkpoint()
            late_rows.append(rows["ts"].tolist())

    rows = np.array([(15,), (3,)], [("ts", "i8")])
    flow = af.from_array(rows, 1) | af.window(10, on="ts", late=Late()) | af.collect("list")
    await flow.run()
    assert late_rows == [[3]]


def refused(match: str) -> Any:
    return pytest.raises(af.FlowDefinitionError, match=match)


@pytest.mark.parametrize("fn", ASYNC_PREDICATES)
@pytest.mark.parametrize(
    ("build", "where"),
    [
        (lambda fn: af.map_batches(fn), r"map_batches\(\) got an async function"),
        (lambda fn: af.map_batches(fn, thread=True), r"map_batches\(\)"),
        (lambda fn: af.filter_rows(fn), r"filter_rows\(\) got an async function"),
        (lambda fn: af.scan(fn, 0), r"scan\(\) got an async function"),
        (lambda fn: af.take_while(fn), r"take_while\(\) got an async function"),
        (lambda fn: af.reduce(fn, 0), r"reduce\(\) got an async function"),
        (lambda fn: af.partition(fn, af.collect()), r"partition\(\) got an async function"),
        (lambda fn: af.map(fn, thread=True), r"map\(thread=True\) got an async function"),
    ],
)
def test_stages_that_cannot_await_refuse_async_functions_when_built(
    build: Callable[[Any], Any], where: str, fn: Callable[..., Any]
) -> None:
    with refused(where) as info:
        build(fn)
    assert "concurrency=n" in str(info.value) or "drop thread=True" in str(info.value)


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (lambda: af.map(agen), r"map\(\) got an async generator function"),
        (lambda: af.filter(agen), r"filter\(\) got an async generator function"),
        (lambda: af.flat_map(agen), r"flat_map\(\) got an async generator function"),
        (lambda: af.for_each(agen), r"for_each\(\) got an async generator function"),
        (lambda: af.window(10, on="ts", late=agen), r"window\(late=\) got an async gen"),
        (lambda: af.reorder("ts", horizon=1, late=agen), r"reorder\(late=\) got an async gen"),
        (lambda: af.from_iterable(twice), r"from_iterable\(\) got an async function"),
        (lambda: af.from_arrays(twice), r"from_arrays\(\) got an async function"),
    ],
)
def test_async_generators_and_coroutine_factories_are_refused_when_built(
    build: Callable[[], Any], where: str
) -> None:
    with refused(where):
        build()


async def test_from_iterable_takes_an_async_generator_function() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    assert (await af.from_iterable(numbers).run()).value == [0, 1, 2]

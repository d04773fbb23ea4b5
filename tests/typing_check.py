"""Static type checks: mypy --strict reads this module (``[tool.mypy] files``) and fails on
any ``assert_type`` that does not hold. Nothing here runs: importing the module (as
pytest's doctest collection does) only defines functions.

It pins the types users get at the end of a flow: ``run().value``, ``collect()`` by mode,
``async for`` over ``flow.open()``, and what ``map``, ``filter`` and ``flat_map`` make of
sync and async functions.
"""

from __future__ import annotations

from typing import Any, assert_type

import numpy as np
from numpy.typing import NDArray

import aflow as af


def double(x: int) -> int:
    return 2 * x


async def fetch(x: int) -> str:
    return str(x)


async def is_long(s: str) -> bool:
    return len(s) > 1


async def letters(s: str) -> list[str]:
    return list(s)


def sink_results() -> None:
    ints = af.from_iterable([1, 2, 3])
    assert_type(ints, af.Flow[int])
    assert_type(af.run(ints).value, list[int])
    assert_type(af.run(ints | af.collect()).value, list[int])
    assert_type(af.run(ints | af.collect("list")).value, list[int])
    assert_type(af.run(ints | af.collect("array")).value, NDArray[Any])
    assert_type(af.run(ints | af.for_each(print)).value, int)
    assert_type(af.run(ints | af.discard()).value, int)

    def add(acc: float, x: int) -> float:
        return acc + x

    assert_type(af.run(ints | af.reduce(add, 0.0)).value, float)

    # "auto" on a flow of arrays: one array of the batches' rows, or a list (arrays given
    # as plain elements, or nothing at all); typed code picks a mode to get one type.
    rows = af.from_array(np.arange(3.0))
    assert_type(rows, af.Flow[NDArray[Any]])
    assert_type(af.run(rows).value, NDArray[Any] | list[NDArray[Any]])
    assert_type(af.run(rows | af.collect("array")).value, NDArray[Any])
    assert_type(af.run(rows | af.collect("list")).value, list[NDArray[Any]])
    assert_type(af.run(rows | af.to_quantiles()).value, NDArray[np.float64])


async def stage_types() -> None:
    strs = af.from_iterable([1, 2]) | af.map(fetch, concurrency=4)
    assert_type(strs, af.Flow[str])
    assert_type(af.from_iterable([1]) | af.map(double), af.Flow[int])
    assert_type(af.map(double) | af.map(fetch), af.Stage[int, str])
    assert_type(af.map(double, thread=True), af.Stage[int, int])
    assert_type(strs | af.filter(is_long) | af.flat_map(letters), af.Flow[str])
    assert_type(af.flat_map(letters), af.Stage[str, str])
    assert_type(af.map(double) | af.collect("list"), af.Sink[int, list[int]])

    assert_type((await strs.run()).value, list[str])
    assert_type((await (strs | af.collect()).run()).value, list[str])
    assert_type((await (strs | af.collect("array")).run()).value, NDArray[Any])


async def iterating_a_run() -> None:
    flow = af.from_iterable([1, 2]) | af.map(fetch)
    async with flow.open() as run:
        assert_type(run, af.OutputRun[str])
        async for item in run:
            assert_type(item, str)
        assert_type(run.statistics(), af.RunStatistics)
        assert_type(await run.wait(), af.RunResult[None])

    async with (flow | af.collect("list")).open() as sink_run:
        assert_type(sink_run, af.Run[list[str]])
        assert_type((await sink_run.wait()).value, list[str])

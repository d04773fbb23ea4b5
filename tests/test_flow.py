"""Flows: composition, re-running, iteration, sync entry point, live statistics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


def fib() -> Iterator[int]:
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


def primes() -> Iterator[int]:
    found: list[int] = []
    n = 2
    while True:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
            yield n
        n += 1


async def test_infinite_generators_stop_with_take() -> None:
    flow = af.from_iterable(fib) | af.take(10) | af.collect()
    assert (await flow.run()).value == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
    first = await (af.from_iterable(primes) | af.take(8) | af.collect()).run()
    assert first.value == [2, 3, 5, 7, 11, 13, 17, 19]


async def test_take_closes_the_infinite_source() -> None:
    src = CountingSource()
    result = await (af.from_iterable(src) | af.take(1000) | af.collect()).run()
    assert result.value == list(range(1000))
    assert src.closed == 1
    assert src.produced <= 1000 + 256  # at most one chunk beyond what was needed


async def test_running_a_flow_twice_gives_the_same_result() -> None:
    src = CountingSource(5000)
    flow = (
        af.from_iterable(src)
        | af.map(lambda x: x * 3)
        | af.filter(lambda x: x % 2 == 0)
        | af.batch(128, dtype="i8")
        | af.map_batches(np.sqrt)
        | af.collect()
    )
    first = (await flow.run()).value
    second = (await flow.run()).value
    np.testing.assert_array_equal(first, second)
    assert src.runs == 2
    expected = np.sqrt(np.array([x * 3 for x in range(5000) if x * 3 % 2 == 0]))
    np.testing.assert_allclose(first, expected)


async def test_async_generator_function_is_rerunnable() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(20):
            await anyio.lowlevel.checkpoint()
            yield i

    flow = af.from_iterable(agen) | af.map(lambda x: -x) | af.collect()
    assert (await flow.run()).value == (await flow.run()).value == [-i for i in range(20)]


async def test_flow_without_sink_collects_and_iterates() -> None:
    flow = af.from_iterable(range(10)) | af.map(lambda x: x + 1)
    assert (await flow.run()).value == list(range(1, 11))
    async with flow.open() as run:
        seen = [x async for x in run]
    assert seen == list(range(1, 11))
    with pytest.raises(TypeError, match=r"flow\.open"):
        [x async for x in flow]  # type: ignore[attr-defined]
    sink_flow = flow | af.collect()
    async with sink_flow.open() as run:
        with pytest.raises(af.FlowDefinitionError, match="ends in a sink"):
            [x async for x in run]


async def test_open_yields_items_and_envelopes() -> None:
    flow = af.from_iterable(range(10)) | af.batch(4)
    async with flow.open() as run:
        reasons = [(len(b), b.reason) async for b in run.envelopes()]
    assert reasons == [(4, "count"), (4, "count"), (2, "end")]


async def test_breaking_out_of_open_stops_the_source() -> None:
    src = CountingSource()
    async with (af.from_iterable(src) | af.map(str)).open() as run:
        async for item in run:
            if item == "500":
                break
    assert src.closed == 1
    assert src.produced < 500 + 10 * 256


async def test_stages_compose_into_reusable_fragments() -> None:
    clean = af.filter(lambda x: x is not None) | af.map(lambda x: x * 2)
    sink = af.map(lambda x: x + 1) | af.collect()
    data = [1, None, 2, None, 3]
    assert (await (af.from_iterable(data) | clean | sink).run()).value == [3, 5, 7]
    assert (await (af.from_iterable(data[::-1]) | clean).run()).value == [6, 4, 2]


async def test_composition_mistakes_fail_at_build_time() -> None:
    done = af.from_iterable([1]) | af.collect()
    with pytest.raises(af.FlowDefinitionError, match="already ends in a sink"):
        done | af.map(str)  # type: ignore[operator]
    with pytest.raises(af.FlowDefinitionError, match="must be a stage"):
        af.from_iterable([1]) | (lambda x: x)  # type: ignore[operator]
    with pytest.raises(ValueError, match="on_error"):
        af.map(str, on_error="ignore")  # type: ignore[arg-type]


async def test_statistics_count_every_stage() -> None:
    flow = (
        af.from_iterable(range(1000))
        | af.filter(lambda x: x % 2 == 0)
        | af.batch(100, dtype="i8")
        | af.map_batches(lambda b: b * 2)
        | af.collect()
    )
    result = await flow.run()
    stats = result.statistics
    assert stats.stage("from_iterable(range)").items_out == 1000
    assert stats.stage("filter(lambda)").items_in == 1000
    assert stats.stage("filter(lambda)").items_out == 500
    batch = stats.stage("batch(100)")
    assert (batch.items_out, batch.batches_out, batch.bytes_out) == (500, 5, 500 * 8)
    assert stats.stage("collect").items_in == 500
    assert "map_batches(lambda)" in stats.format()


@pytest.mark.virtual_time
async def test_statistics_are_readable_while_running() -> None:
    src = CountingSource(delay=0.001)
    flow = af.from_iterable(src) | af.buffer(2) | af.discard()
    async with flow.open() as run:
        with anyio.fail_after(5):
            while run.statistics().stage("discard").items_in < 20:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        live = run.statistics()
        run.stop()
        result = await run.wait()
    assert live.stage("discard").items_in >= 20
    assert result.value >= live.stage("discard").items_in
    assert result.statistics.seconds >= live.seconds


def test_run_from_sync_code_on_both_backends() -> None:
    flow = af.from_iterable(range(5)) | af.map(lambda x: x * x) | af.collect()
    assert af.run(flow).value == [0, 1, 4, 9, 16]
    assert af.run(flow, backend="trio").value == [0, 1, 4, 9, 16]


@pytest.mark.anyio
async def test_sync_run_inside_a_running_loop_points_to_await() -> None:
    """Issue 14.7: ``af.run`` in an async function (or a notebook cell) says what to use."""
    flow = af.from_iterable(range(3)) | af.collect()
    with pytest.raises(RuntimeError, match=r"use `await flow.run\(\)` instead"):
        af.run(flow)
    assert (await flow.run()).value == [0, 1, 2]


@pytest.mark.anyio
async def test_a_failing_flow_cancels_the_open_block_at_once() -> None:
    """Issue 14.6: the error of a run is raised while the ``async with flow.open()`` body
    still waits, as a task group would, not when the body leaves the block."""

    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("bad item")
        return x

    body_finished = False
    gate = anyio.Event()  # never set: the body would wait for ever

    async def body() -> None:
        nonlocal body_finished
        async with (af.from_iterable(range(10)) | af.map(boom) | af.discard()).open():
            await gate.wait()
            body_finished = True

    with anyio.fail_after(5), pytest.raises(ValueError, match="bad item"):
        await body()
    assert not body_finished


async def test_a_result_says_how_the_run_ended() -> None:
    """Issue 14.5: a completed run and a stopped one are told apart."""
    whole = await (af.from_iterable(range(10)) | af.take(5) | af.collect()).run()
    assert (whole.value, whole.ended) == ([0, 1, 2, 3, 4], "completed")
    ten = anyio.Event()

    async def numbers() -> AsyncIterator[int]:
        i = 0
        while True:
            if i == 10:
                ten.set()
            yield i
            i += 1
            await anyio.sleep(0.001)

    async with (af.from_iterable(numbers) | af.collect()).open() as run:
        with anyio.fail_after(5):
            await ten.wait()
        assert run.ended == "completed"  # no stop asked for yet
        run.stop()
        partial = await run.wait()
    assert partial.ended == "stopped"
    assert len(partial.value) >= 10
    async with (af.from_iterable(CountingSource(delay=0.001)) | af.collect()).open() as run:
        run.interrupt()
        assert (await run.wait()).ended == "interrupted"


async def test_run_and_open_take_a_monitor() -> None:
    """Issue 14.7: Flow.run/open accept monitor= like af.run; it sees the live run and is
    cancelled when the run ends."""
    seen: list[int] = []
    cancelled = anyio.Event()

    async def monitor(run: af.Run[object]) -> None:
        try:
            while True:
                seen.append(sum(s.items_out for s in run.statistics().stages))
                await anyio.sleep(0.001)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    flow = af.from_iterable(CountingSource(delay=0.001)) | af.take(50)
    with anyio.fail_after(5):
        result = await flow.run(monitor=monitor)
        await cancelled.wait()
    assert len(result.value) == 50
    assert seen
    seen.clear()
    cancelled = anyio.Event()
    with anyio.fail_after(5):
        async with (flow | af.collect()).open(monitor=monitor) as run:
            await run.wait()
        await cancelled.wait()
    assert seen


async def test_a_run_read_to_its_end_is_completed_even_when_stopped_after() -> None:
    """Leaving ``open()`` (which stops the run) after the input ran out, or a stop that
    comes while the last batches are flushed, does not make a whole result "stopped"."""
    async with af.from_iterable(range(10)).open() as run:
        items = [x async for x in run]
    assert items == list(range(10))
    assert run.ended == "completed"
    async with (af.from_iterable(range(10)) | af.collect()).open() as run:
        result = await run.wait()
        run.stop()  # too late to cut anything
    assert (result.ended, run.ended) == ("completed", "completed")


async def test_a_stop_before_the_input_ends_says_stopped() -> None:
    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1
            await anyio.sleep(0.01)

    async with (af.from_iterable(endless) | af.collect()).open() as run:
        await anyio.sleep(0.05)
        run.stop()
        result = await run.wait()
    assert result.ended == "stopped"
    assert len(result.value) > 0

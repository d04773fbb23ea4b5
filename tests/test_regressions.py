"""Regressions found in review: each test reproduces one reported bug."""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


async def ident(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


def boom(x: int) -> int:
    if x == 3:
        raise ZeroDivisionError("three")
    return x


@pytest.mark.parametrize("stage", [af.map(ident, concurrency=2), af.map(lambda x: x, thread=True)])
async def test_error_after_a_concurrent_stage_is_raised_as_itself(stage: af.Stage) -> None:  # type: ignore[type-arg]
    flow = af.from_iterable(range(10)) | stage | af.map(boom) | af.collect()
    with anyio.fail_after(5), pytest.raises(ZeroDivisionError) as info:
        await flow.run()
    assert "map(boom)" in info.value.__notes__[0]


def idle() -> AsyncIterator[int]:
    async def gen() -> AsyncIterator[int]:
        yield 1
        yield 2
        await anyio.sleep_forever()

    return gen()


@pytest.mark.parametrize(
    "make",
    [
        lambda: af.from_iterable(idle) | af.map(ident) | af.take(1),
        lambda: af.merge(af.from_iterable(idle), af.from_iterable(idle)) | af.take(2),
        lambda: af.zip(af.from_iterable([1]), af.from_iterable(idle)),
        lambda: af.from_iterable(idle) | af.timeout(0.2, on_timeout="stop"),
        lambda: af.concat(af.from_iterable(idle)) | af.take(1),
    ],
)
async def test_early_end_downstream_stops_an_idle_source(make) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(5):
        result = await make().run()
    assert len(result.value) >= 1


async def test_broadcast_branches_that_all_stop_early_end_the_run() -> None:
    flow = af.from_iterable(idle) | af.broadcast(
        af.take(1) | af.collect(), af.take(1) | af.collect()
    )
    with anyio.fail_after(5):
        assert (await flow.run()).value == ([1], [1])


async def test_a_heavily_filtered_source_lets_stop_and_timeouts_through() -> None:
    flow = af.from_iterable(itertools.count) | af.filter(lambda x: x < 0) | af.map(ident)
    with anyio.move_on_after(0.3) as scope:
        await flow.run()
    assert scope.cancelled_caught


async def test_an_item_read_before_a_stop_is_delivered() -> None:
    send, receive = anyio.create_memory_object_stream[str](1)
    consumed: list[str] = []

    async def source() -> AsyncIterator[str]:
        async for x in receive:
            consumed.append(x)
            yield x

    async with (af.from_iterable(source) | af.collect()).open() as run:
        await anyio.sleep(0.05)
        send.send_nowait("a")
        await anyio.lowlevel.checkpoint()
        run.stop()
        result = await run.wait()
    send.close()
    receive.close()
    assert consumed == result.value == ["a"]


@pytest.mark.parametrize("policy", ["raise", "skip"])
async def test_batch_stages_give_the_same_shapes_with_any_policy(policy: str) -> None:
    arrays = [np.arange(3.0), np.arange(4.0)]
    flow = af.from_iterable(arrays) | af.map_batches(lambda a: a * 2, on_error=policy)  # type: ignore[arg-type]
    np.testing.assert_array_equal((await flow.run()).value, [0, 2, 4, 0, 2, 4, 6])
    rows = af.from_iterable(arrays) | af.filter_rows(lambda a: a > 0, on_error=policy)  # type: ignore[arg-type]
    np.testing.assert_array_equal((await (rows | af.batch(100)).run()).value, [1, 2, 1, 2, 3])


async def test_thread_map_with_policy_calls_each_item_once_off_the_loop() -> None:
    calls: list[tuple[int, bool]] = []
    main = threading.get_ident()

    def f(x: int) -> int:
        calls.append((x, threading.get_ident() == main))
        return boom(x)

    result = await (af.from_iterable(range(5)) | af.map(f, thread=True, on_error="skip")).run()
    assert result.value == [0, 1, 2, 4]
    assert sorted(x for x, _ in calls) == [0, 1, 2, 3, 4]
    assert not any(on_loop for _, on_loop in calls)


def test_a_thread_flow_runs_on_one_backend_then_the_other() -> None:
    flow = af.from_iterable(range(5)) | af.map(lambda x: x + 1, thread=True, concurrency=2)
    assert af.run(flow).value == af.run(flow, backend="trio").value == [1, 2, 3, 4, 5]


async def test_merge_respects_the_byte_ceiling() -> None:
    async def slow(batch: np.ndarray) -> None:
        await anyio.sleep(0.001)

    def part(n: int) -> af.Flow[np.ndarray]:
        return af.from_array(np.zeros(n * 125), batch_size=125)  # 1000-byte batches

    flow = af.merge(part(50), part(50), part(50)) | af.for_each(slow)
    result = await flow.run(max_bytes_in_flight=4000)
    assert result.value == 150
    assert result.statistics.peak_bytes_in_flight <= 4000


async def test_stage_names_are_unique() -> None:
    flow = af.from_iterable(range(3)) | af.broadcast(
        af.map(lambda x: x) | af.collect(), af.map(ident) | af.collect()
    )
    names = [s.name for s in (await flow.run()).statistics.stages]
    assert len(names) == len(set(names))


async def test_zip_of_nothing_and_repeat_of_nothing() -> None:
    with pytest.raises(ValueError, match="at least one"):
        af.zip()
    with anyio.fail_after(5):
        assert (await af.repeat(af.from_iterable([])).run()).value == []

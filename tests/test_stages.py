"""Stages: element and batch steps, concurrency, threads, time, routing and loading."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.testing import CountingSource, run_virtual

pytestmark = pytest.mark.anyio


async def test_element_steps() -> None:
    flow = (
        af.from_iterable(range(20))
        | af.skip(2)
        | af.flat_map(lambda x: [x] * (x % 3))
        | af.take_while(lambda x: x < 15)
        | af.scan(lambda acc, x: acc + x, 0)
    )
    expected, acc = [], 0
    for x in range(2, 20):
        for y in [x] * (x % 3):
            if y >= 15:
                break
            acc += y
            expected.append(acc)
        else:
            continue
        break
    assert (await flow.run()).value == expected


async def test_take_while_stops_an_infinite_source() -> None:
    src = CountingSource()
    result = await (af.from_iterable(src) | af.take_while(lambda x: x < 1000)).run()
    assert result.value == list(range(1000))
    assert src.closed == 1


async def test_take_and_skip_count_rows_of_batches() -> None:
    flow = af.from_array(np.arange(100), 30) | af.skip(25) | af.take(50)
    np.testing.assert_array_equal((await flow.run()).value, np.arange(25, 75))


async def test_map_on_batches_keeps_the_envelope() -> None:
    flow = af.from_array(np.arange(6), 3, name="s") | af.map(lambda b: b * 2)
    async with flow.open() as run:
        got = [(b.data.tolist(), str(b.provenance)) async for b in run.envelopes()]
    assert got == [([0, 2, 4], "s rows 0..3"), ([6, 8, 10], "s rows 3..6")]


async def test_filter_rows_and_map_batches_are_vectorized() -> None:
    data = np.arange(10_000, dtype="f8")
    flow = (
        af.from_array(data, 1024)
        | af.map_batches(lambda b: b * 1.8 + 32)
        | af.filter_rows(lambda b: b > 5000)
        | af.reduce(lambda acc, b: acc + b.sum(), 0.0)
    )
    converted = data * 1.8 + 32
    assert (await flow.run()).value == pytest.approx(converted[converted > 5000].sum())


async def test_filter_rows_rejects_a_non_mask() -> None:
    flow = af.from_array(np.arange(10), 5) | af.filter_rows(lambda b: b * 2)
    with pytest.raises(TypeError, match="boolean mask"):
        await flow.run()


async def test_ordered_concurrency_keeps_order_and_overlaps_calls() -> None:
    active = peak = 0

    async def fetch(x: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.01 + 0.01 * (x % 4))
        active -= 1
        return x * x

    result = await (af.from_iterable(range(40)) | af.map(fetch, concurrency=8)).run()
    assert result.value == [x * x for x in range(40)]
    assert peak == 8


async def test_unordered_concurrency_has_no_head_of_line_blocking() -> None:
    async def fetch(x: int) -> int:
        await anyio.sleep(1.0 if x == 0 else 0.01)
        return x

    arrivals: list[tuple[int, float]] = []
    started = time.perf_counter()

    def record(x: int) -> None:
        arrivals.append((x, time.perf_counter() - started))

    flow = af.from_iterable(range(20)) | af.map(fetch, concurrency=4, ordered=False)
    await (flow | af.for_each(record)).run()
    early = [x for x, t in arrivals if t < 0.5]
    assert sorted(early) == list(range(1, 20))  # nobody waited for the slow first item
    assert arrivals[-1][0] == 0


async def test_thread_map_runs_in_worker_threads_in_parallel() -> None:
    main = threading.get_ident()
    seen: set[int] = set()
    barrier = threading.Barrier(2, timeout=5)

    def heavy(b: np.ndarray) -> np.ndarray:
        seen.add(threading.get_ident())
        barrier.wait()  # only returns if two calls run at the same time
        return np.sqrt(b)

    flow = af.from_array(np.arange(8.0), 2) | af.map_batches(heavy, thread=True, concurrency=2)
    result = await flow.run()
    np.testing.assert_allclose(result.value, np.sqrt(np.arange(8.0)))
    assert main not in seen
    assert len(seen) >= 2


def test_throttle_spaces_items_on_a_virtual_clock() -> None:
    times: list[float] = []

    def stamp(x: int) -> None:
        times.append(anyio.current_time())

    run_virtual(af.from_iterable(range(11)) | af.throttle(10) | af.for_each(stamp))
    gaps = np.diff(times)
    assert gaps == pytest.approx([0.1] * 10)


def test_throttle_charges_batches_by_rows() -> None:
    times: list[float] = []
    flow = (
        af.from_array(np.zeros(300), 100)
        | af.throttle(1000)
        | af.for_each(lambda b: times.append(anyio.current_time()))
    )
    run_virtual(flow)
    assert np.diff(times) == pytest.approx([0.1, 0.1])


def test_timeout_raises_when_the_source_goes_quiet() -> None:
    async def quiet() -> AsyncIterator[int]:
        yield 1
        await anyio.sleep(10)
        yield 2

    with pytest.raises(af.StageTimeoutError, match="no item for 2 s"):
        run_virtual(af.from_iterable(quiet) | af.timeout(2) | af.collect())
    flow = af.from_iterable(quiet) | af.timeout(2, on_timeout="stop") | af.collect()
    assert run_virtual(flow).value == [1]


async def test_merge_reads_sources_concurrently() -> None:
    async def ticks(name: str, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await anyio.sleep(0.05)
            yield f"{name}{i}"

    started = time.perf_counter()
    flow = af.merge(
        af.from_iterable(lambda: ticks("a", 6)), af.from_iterable(lambda: ticks("b", 6))
    )
    result = await flow.run()
    assert sorted(result.value) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)])
    assert time.perf_counter() - started < 0.5  # one after the other would take 0.6 s


async def test_concat_runs_sub_flows_in_order_and_take_stops_it() -> None:
    src = CountingSource()
    flow = af.concat(af.from_iterable([1, 2]), af.from_iterable(src)) | af.take(5)
    assert (await flow.run()).value == [1, 2, 0, 1, 2]
    assert src.closed == 1


async def test_zip_pairs_items_and_stops_with_the_shortest() -> None:
    nums = CountingSource()
    flow = af.zip(af.from_iterable("abc"), af.from_iterable(nums))
    assert (await flow.run()).value == [("a", 0), ("b", 1), ("c", 2)]
    assert nums.closed == 1


async def test_partition_splits_rows_by_key() -> None:
    data = np.zeros(1000, dtype=[("sensor", "i4"), ("value", "f4")])
    data["sensor"] = np.arange(1000) % 12
    data["value"] = np.arange(1000)
    sinks = [af.collect() for _ in range(12)]
    result = await (af.from_array(data, 128) | af.partition(lambda b: b["sensor"], *sinks)).run()
    for i, part in enumerate(result.value):
        assert (part["sensor"] == i).all()
        np.testing.assert_array_equal(part["value"], data["value"][data["sensor"] == i])


async def test_partition_routes_elements() -> None:
    result = await (
        af.from_iterable(range(10)) | af.partition(lambda x: x % 3, af.collect(), af.collect())
    ).run()
    assert result.value == ([0, 2, 3, 5, 6, 8, 9], [1, 4, 7])


async def test_broadcast_branch_may_stop_early() -> None:
    result = await (
        af.from_iterable(range(100))
        | af.broadcast(af.take(3) | af.collect(), af.reduce(lambda a, x: a + x, 0))
    ).run()
    assert result.value == ([0, 1, 2], sum(range(100)))


async def test_shuffle_is_a_bounded_permutation() -> None:
    data = np.arange(10_000)
    result = await (af.from_array(data, 500) | af.shuffle(1000, seed=7)).run()
    shuffled = result.value
    assert sorted(shuffled.tolist()) == data.tolist()
    assert not np.array_equal(shuffled, data)
    # bounded buffer: no row can come out more than buffer_size + batch rows early
    position = np.empty_like(data)
    position[shuffled] = np.arange(len(shuffled))
    assert (data - position).max() <= 1000 + 500
    again = await (af.from_array(data, 500) | af.shuffle(1000, seed=7)).run()
    np.testing.assert_array_equal(again.value, shuffled)


async def test_shuffle_elements() -> None:
    result = await (af.from_iterable(range(1000)) | af.shuffle(100, seed=1)).run()
    assert sorted(result.value) == list(range(1000))
    assert result.value != list(range(1000))


async def test_repeat_gives_epochs_and_shuffle_after_it_reorders_each_epoch() -> None:
    epochs = af.repeat(af.from_array(np.arange(1000), 100), 3) | af.shuffle(500, seed=3)
    rows = (await epochs.run()).value
    assert len(rows) == 3000
    assert np.bincount(rows).tolist() == [3] * 1000


async def test_sample_keeps_about_the_fraction() -> None:
    result = await (af.from_array(np.arange(100_000), 4096) | af.sample(0.1, seed=0)).run()
    assert 9_000 < len(result.value) < 11_000
    assert np.all(np.diff(result.value) > 0)  # order is kept


async def test_shuffle_two_dimensional_rows() -> None:
    data = np.arange(3000, dtype="f4").reshape(1000, 3)
    result = await (af.from_array(data, 100) | af.shuffle(256, seed=0)).run()
    assert result.value.shape == (1000, 3)
    np.testing.assert_array_equal(np.sort(result.value[:, 0]), data[:, 0])
    assert (result.value[:, 1] == result.value[:, 0] + 1).all()  # rows stay whole


async def test_repeat_adds_up_statistics_instead_of_new_records() -> None:
    flow = af.repeat(af.from_iterable([1, 2, 3]) | af.map(lambda x: x), times=50)
    result = await (flow | af.discard()).run()
    assert result.value == 150
    assert len(result.statistics.stages) < 10
    assert result.statistics.stage("map(lambda)").items_in == 150

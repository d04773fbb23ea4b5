"""Concurrent stages (aflow/stages/concurrency.py): async calls with a concurrency limit,
sync calls in worker threads, ordered or not."""

from __future__ import annotations

import threading

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


@pytest.mark.virtual_time
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


@pytest.mark.virtual_time
async def test_unordered_concurrency_has_no_head_of_line_blocking() -> None:
    async def fetch(x: int) -> int:
        await anyio.sleep(1.0 if x == 0 else 0.01)
        return x

    arrivals: list[tuple[int, float]] = []
    started = anyio.current_time()

    def record(x: int) -> None:
        arrivals.append((x, anyio.current_time() - started))

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


@pytest.mark.parametrize("stage", [af.map(ident, concurrency=2), af.map(lambda x: x, thread=True)])
async def test_error_after_a_concurrent_stage_is_raised_as_itself(stage: af.Stage) -> None:  # type: ignore[type-arg]
    flow = af.from_iterable(range(10)) | stage | af.map(boom) | af.collect()
    with anyio.fail_after(5), pytest.raises(ZeroDivisionError) as info:
        await flow.run()
    assert "map(boom)" in info.value.__notes__[0]


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

"""Flow control in time (aflow/stages/time.py): throttle and timeout, on a virtual clock
(both backends), so the waits take no real time and the spacing is exact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

import aflow as af

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_throttle_spaces_items_on_a_virtual_clock() -> None:
    times: list[float] = []

    def stamp(x: int) -> None:
        times.append(anyio.current_time())

    await (af.from_iterable(range(11)) | af.throttle(10) | af.for_each(stamp)).run()
    gaps = np.diff(times)
    assert gaps == pytest.approx([0.1] * 10)


async def test_throttle_charges_batches_by_rows() -> None:
    times: list[float] = []
    flow = (
        af.from_array(np.zeros(300), 100)
        | af.throttle(1000)
        | af.for_each(lambda b: times.append(anyio.current_time()))
    )
    await flow.run()
    assert np.diff(times) == pytest.approx([0.1, 0.1])


async def test_timeout_raises_when_the_source_goes_quiet() -> None:
    async def quiet() -> AsyncIterator[int]:
        yield 1
        await anyio.sleep(10)
        yield 2

    with pytest.raises(af.StageTimeoutError, match="no item for 2 s"):
        await (af.from_iterable(quiet) | af.timeout(2) | af.collect()).run()
    flow = af.from_iterable(quiet) | af.timeout(2, on_timeout="stop") | af.collect()
    assert (await flow.run()).value == [1]


@pytest.mark.parametrize("rate", [1, 100, 10_000, 100_000])
async def test_throttle_holds_its_rate_from_1_to_100000_per_second(rate: int) -> None:
    """Issue 13.6: ``throttle(rate)`` lets ``n`` items through in ``n / rate`` seconds
    (within 2 %), however fine the rate."""
    n = max(20, rate // 10)
    times: list[float] = []
    flow = (
        af.from_iterable(range(n))
        | af.throttle(rate)
        | af.for_each(lambda x: times.append(anyio.current_time()))
    )
    await flow.run()
    elapsed = times[-1] - times[0]
    assert elapsed == pytest.approx(
        (n - 1) / rate, rel=0.02, abs=af.throttle.__globals__["TIMER_SLACK"]
    )


async def test_a_slow_consumer_sets_the_pace_and_the_throttle_never_bursts_after_it() -> None:
    """After a slow consumer held the throttle back, it does not burst to make up lost time:
    items leave the throttle no faster than its rate, ever."""
    released: list[float] = []

    def stamp(x: int) -> int:  # fused behind the throttle: the time each item leaves it
        released.append(anyio.current_time())
        return x

    async def slow_then_fast(x: int) -> None:
        if x < 5:
            await anyio.sleep(1.0)  # much slower than the throttle

    flow = (
        af.from_iterable(range(40)) | af.throttle(10) | af.map(stamp) | af.for_each(slow_then_fast)
    )
    await flow.run()
    gaps = np.diff(released)
    assert gaps.min() >= 0.1 - 1e-9
    assert released[-1] - released[0] > 5  # the sink held it back for its 5 slow items
    assert gaps[-20:] == pytest.approx([0.1] * 20)  # then the throttle's


def test_throttle_catches_up_wake_ups_later_than_the_timer_slack() -> None:
    """A loaded machine wakes the throttle several milliseconds late, more than a message's
    items are worth at 100,000/s: the items that fell due meanwhile still leave (on the
    following messages too), so the rate holds. A trio clock jumped 4 ms every 5 ms plays
    the late wake-ups."""
    import trio

    from aflow.testing import VirtualClock

    n, rate = 20_000, 100_000
    times: list[float] = []

    async def late_wake_ups() -> None:
        while True:
            await anyio.sleep(0.005)
            trio.lowlevel.current_clock().jump(0.004)  # type: ignore[attr-defined]

    async def main() -> None:
        flow = (
            af.from_iterable(range(n))
            | af.throttle(rate)
            | af.for_each(lambda x: times.append(anyio.current_time()))
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(late_wake_ups)
            await flow.run()
            tg.cancel_scope.cancel()

    VirtualClock(backend="trio").call(main)
    assert times[-1] - times[0] == pytest.approx((n - 1) / rate, rel=0.02)


async def test_an_input_slower_than_the_rate_builds_up_no_burst() -> None:
    """Items that arrive after their turn (the input is slower than the rate) owe the
    schedule nothing: when a large message then comes, its items leave at the rate, not
    all the lateness at once (only a late wake-up of the stage's own timer is caught up)."""

    async def slow_then_many() -> AsyncIterator[list[int]]:
        for i in range(100):  # 500 items/s against a rate of 1,000/s
            await anyio.sleep(0.002)
            yield [i]
        yield list(range(100, 400))

    times: list[float] = []
    flow = (
        af.from_iterable(slow_then_many)
        | af.flat_map(lambda x: x)
        | af.throttle(1000)
        | af.for_each(lambda x: times.append(anyio.current_time()))
    )
    await flow.run()
    assert len(times) == 400
    last = np.array(times[100:])  # the large message's items
    # at most the timer slack (2 ms: two items) leaves early; then one item a millisecond
    assert np.sum(np.diff(last) < 0.0009) <= 2
    assert last[-1] - last[0] == pytest.approx(0.3, abs=0.003)

"""A stage's own worker threads (aflow.stages._threads): results and errors come back,
no more than ``n`` threads run the calls, a cancelled caller waits for its call, and the
threads end with the context."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from aflow.stages._threads import OwnThreads

pytestmark = pytest.mark.anyio


async def test_calls_run_on_at_most_n_threads_of_their_own() -> None:
    seen: set[int] = set()

    def work(x: int) -> int:
        seen.add(threading.get_ident())
        time.sleep(0.001)
        return x * x

    results: list[int] = []
    async with OwnThreads(2, "test") as own:

        async def one(x: int) -> None:
            results.append(await own.run_sync(work, x))

        for _ in range(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, 3)
                tg.start_soon(one, 4)
        threads = [t for t in threading.enumerate() if t.name == "test"]
        assert len(threads) == 2
    assert sorted(results) == [9] * 5 + [16] * 5
    assert len(seen) == 2
    assert threading.get_ident() not in seen
    assert not [t for t in threading.enumerate() if t.name == "test"]  # ended


async def test_an_error_in_the_call_is_raised_in_the_caller() -> None:
    def fail(x: int) -> int:
        raise ValueError(f"bad {x}")

    async with OwnThreads(1, "test") as own:
        with pytest.raises(ValueError, match="bad 7"):
            await own.run_sync(fail, 7)
        assert await own.run_sync(abs, -2) == 2  # the thread goes on


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    started = threading.Event()
    ended: list[bool] = []

    def slow(_: None) -> None:
        started.set()
        time.sleep(0.2)
        ended.append(True)

    async with OwnThreads(1, "test") as own:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(own.run_sync, slow, None)
                await anyio.to_thread.run_sync(started.wait, 5)
                scope.cancel()
        assert scope.cancelled_caught
        assert ended == [True]  # the scope ended only once the call had

"""Helpers for testing flows: counting sources and runs on a virtual clock.

These are part of the public API, for your own tests of flows built with aflow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import anyio
import numpy as np
from numpy.typing import NDArray

from ._core.run import RunResult
from .flow import Flow, SinkFlow

__all__ = ["CountingSource", "VirtualClock", "from_schedule", "run_virtual"]

T = TypeVar("T")


class CountingSource:
    """A re-runnable generator of ``0, 1, 2, ...`` that counts what it produced.

    Pass it to :func:`aflow.from_iterable`; ``produced`` tells how far the source got, which
    is how a test sees backpressure (a paused source stops counting) and early stops.

    Args:
        n: how many numbers to produce (``None``: forever).
        delay: seconds to sleep before each number; makes it an async source.
    """

    def __init__(self, n: int | None = None, *, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.produced = 0
        self.runs = 0
        self.closed = 0

    def __call__(self) -> Iterator[int] | AsyncIterator[int]:
        self.runs += 1
        return self._async() if self.delay else self._sync()

    def _sync(self) -> Iterator[int]:
        i = 0
        try:
            while self.n is None or i < self.n:
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed += 1

    async def _async(self) -> AsyncIterator[int]:
        i = 0
        try:
            while self.n is None or i < self.n:
                await anyio.sleep(self.delay)
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed += 1


class VirtualClock:
    """Runs flows, or any async function, on trio with a clock that jumps ahead whenever
    every task waits: sleeps, timeouts, ``batch(timeout=)``, processing-time windows and
    idle timeouts take no real time and behave deterministically.

    Examples:
        >>> import aflow as af
        >>> from aflow.testing import VirtualClock
        >>> async def slow():
        ...     await anyio.sleep(3600)
        ...     return anyio.current_time()
        >>> VirtualClock().call(slow) >= 3600  # returns at once
        True

    Needs trio (``pip install aflow[trio]``).
    """

    def __init__(self, autojump_threshold: float = 0.0) -> None:
        self.autojump_threshold = autojump_threshold

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` to completion on virtual time; return its result."""
        from trio.testing import MockClock

        async def main() -> T:
            return await fn()

        clock = MockClock(autojump_threshold=self.autojump_threshold)
        return anyio.run(main, backend="trio", backend_options={"clock": clock})

    def run(self, flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
        """``flow.run(**options)`` on virtual time."""
        result: RunResult[Any] = self.call(lambda: flow.run(**options))
        return result


def from_schedule(schedule: Sequence[tuple[float, Any]], *, name: str = "schedule") -> Flow[Any]:
    """A flow that emits each item at its time: ``[(seconds, array), ...]``.

    Times count from the start of the run, in ascending order. Arrays (and lists) become
    array batches. Pair it with :class:`VirtualClock` to test processing-time windows and
    timeouts: the waits then take no real time.
    """
    from .sources.iterables import from_arrays

    async def items() -> AsyncIterator[NDArray[Any]]:
        t0 = anyio.current_time()
        for at, item in schedule:
            await anyio.sleep(max(0.0, t0 + at - anyio.current_time()))
            yield np.asarray(item)

    return from_arrays(items, name=name)


def run_virtual(flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
    """Run ``flow`` on trio with a virtual clock that jumps ahead whenever all tasks wait.

    Timeouts, ``batch(timeout=...)``, ``throttle`` and sleeps then take no real time and
    behave deterministically. Needs trio (``pip install aflow[trio]``). Same as
    ``VirtualClock().run(flow, **options)``.
    """
    return VirtualClock().run(flow, **options)

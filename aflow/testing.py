"""Helpers for testing flows: counting sources and runs on a virtual clock.

These are part of the public API, for your own tests of flows built with aflow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from .flow import Flow, RunResult, SinkFlow

__all__ = ["CountingSource", "run_virtual"]


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


def run_virtual(flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
    """Run ``flow`` on trio with a virtual clock that jumps ahead whenever all tasks wait.

    Timeouts, ``batch(timeout=...)``, ``throttle`` and sleeps then take no real time and
    behave deterministically. Needs trio (``pip install aflow[trio]``).
    """
    from trio.testing import MockClock

    async def main() -> RunResult[Any]:
        return await flow.run(**options)

    return anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )

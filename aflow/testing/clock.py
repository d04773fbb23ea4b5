"""Virtual time for tests: :class:`VirtualClock` runs flows (or any async function) on
a clock that jumps ahead whenever every task waits, on asyncio or trio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import numpy as np
from numpy.typing import NDArray

from .._core.run import RunResult
from ..flow import Flow, SinkFlow
from ..sources.iterables import from_arrays

T = TypeVar("T")


class VirtualClock:
    """Runs flows, or any async function, with a clock that jumps ahead whenever every
    task waits: sleeps, timeouts, ``batch(timeout=)``, processing-time windows and idle
    timeouts take no real time and behave deterministically.

    Examples:
        >>> import aflow as af
        >>> from aflow.testing import VirtualClock
        >>> async def slow():
        ...     await anyio.sleep(3600)
        ...     return anyio.current_time()
        >>> VirtualClock().call(slow) >= 3600  # returns at once
        True
        >>> VirtualClock(backend="asyncio").call(slow) >= 3600
        True

    Args:
        autojump_threshold: real seconds every task must have waited before the clock
            jumps (0: at once). Work in threads or on real sockets is not waited for
            unless this leaves it time to finish.
        backend: ``"trio"`` (a ``trio.testing.MockClock``; needs ``pip install trio``, the
            ``trio`` extra) or ``"asyncio"`` (an event loop whose ``time()`` is virtual).

    With anyio's pytest plugin, return ``(backend, clock.backend_options())`` from the
    ``anyio_backend`` fixture to run async tests on virtual time.
    """

    def __init__(self, autojump_threshold: float = 0.0, *, backend: str = "trio") -> None:
        if backend not in ("trio", "asyncio"):
            raise ValueError(f"backend={backend!r}: choose 'trio' or 'asyncio'")
        self.autojump_threshold = autojump_threshold
        self.backend = backend

    def backend_options(self) -> dict[str, Any]:
        """``backend_options`` for ``anyio.run`` (or the pytest plugin): a fresh clock."""
        if self.backend == "asyncio":
            return {"loop_factory": lambda: _virtual_time_loop(self.autojump_threshold)}
        from trio.testing import MockClock

        return {"clock": MockClock(autojump_threshold=self.autojump_threshold)}

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` to completion on virtual time; return its result."""

        async def main() -> T:
            return await fn()

        return anyio.run(main, backend=self.backend, backend_options=self.backend_options())

    def run(self, flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
        """``flow.run(**options)`` on virtual time."""
        result: RunResult[Any] = self.call(lambda: flow.run(**options))
        return result


def _virtual_time_loop(autojump_threshold: float) -> Any:
    """An asyncio event loop on virtual time, starting at 0: where it would wait for its
    next timer, it waits at most ``autojump_threshold`` real seconds for I/O (a thread's
    result included) and, if none came, moves its clock to that timer instead."""
    loop = asyncio.SelectorEventLoop()
    now = 0.0
    select = loop._selector.select  # type: ignore[attr-defined]

    def jump_instead_of_waiting(timeout: float | None = None) -> Any:
        nonlocal now
        if timeout is None:  # no timer: wait for I/O
            return select(None)
        ready = select(min(timeout, autojump_threshold))
        if not ready:
            now += timeout
        return ready

    loop._selector.select = jump_instead_of_waiting  # type: ignore[attr-defined]
    loop.time = lambda: now  # type: ignore[method-assign]
    return loop


def from_schedule(schedule: Sequence[tuple[float, Any]], *, name: str = "schedule") -> Flow[Any]:
    """A flow that emits each item at its time: ``[(seconds, array), ...]``.

    Times count from the start of the run, in ascending order. Arrays (and lists) become
    array batches. Pair it with :class:`VirtualClock` to test processing-time windows and
    timeouts: the waits then take no real time.
    """

    async def items() -> AsyncIterator[NDArray[Any]]:
        t0 = anyio.current_time()
        for at, item in schedule:
            await anyio.sleep(max(0.0, t0 + at - anyio.current_time()))
            yield np.asarray(item)

    return from_arrays(items, name=name)


def run_virtual(flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
    """Run ``flow`` on trio with a virtual clock that jumps ahead whenever all tasks wait.

    Timeouts, ``batch(timeout=...)``, ``throttle`` and sleeps then take no real time and
    behave deterministically. Needs trio (``pip install trio``, the ``trio`` extra). Same as
    ``VirtualClock().run(flow, **options)``.
    """
    return VirtualClock().run(flow, **options)


# -- a recording sink ----------------------------------------------------------------------

"""Flow control in time: throttle, timeout, and an explicit buffer."""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import anyio

from ..abc import AsyncOperator, Batch, Context, Inbox, Outlet
from ..errors import StageTimeoutError
from ..flow import Stage

__all__ = ["buffer", "throttle", "timeout"]

T = TypeVar("T")


TIMER_SLACK = 0.002
"""Seconds an event loop's timer may fire late. Items falling due within it leave together
on one wake-up, so a throttle keeps its rate at rates finer than the timer (100,000/s)
instead of losing each wake-up's lateness."""

CATCH_UP = 0.05
"""Seconds of late wake-ups a throttle catches up at most (a loaded machine's scheduler
can hold a process back several milliseconds at a time); a longer stall is not made up
with a burst."""


class _ThrottleOp(AsyncOperator):
    def __init__(self, rate: float, burst: int, buffer: int | None) -> None:
        self.rate = rate
        self.burst = burst
        self.buffer = buffer
        self.name = f"throttle({rate:g}/s)"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        schedule = _Schedule(1.0 / self.rate, self.burst)
        async for msg in inbox:
            if isinstance(msg, Batch):
                await schedule.wait(len(msg.data))
                await out.emit(msg)
                continue
            i = 0
            while i < len(msg):
                n = await schedule.take(len(msg) - i)
                await out.emit(msg[i : i + n])
                i += n


class _Schedule:
    """When the next item may leave: an absolute timeline, item ``k`` due ``k`` intervals
    after the first. Time lost to a late wake-up is caught up (up to :data:`CATCH_UP`),
    also when the message at hand had fewer items than fell due meanwhile; time spent
    outside the schedule (an idle input, a slow consumer) is caught up only up to
    :data:`TIMER_SLACK`: after it the timeline starts afresh, with ``burst`` items at once."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst_slack = (burst - 1) * interval
        self.tolerance = max(self.burst_slack, TIMER_SLACK)
        self.next_at = -math.inf
        self.owed = 0.0  # how late the schedule's own last wake-up was, not yet caught up

    async def _due(self) -> tuple[float, float]:
        now = anyio.current_time()
        at = self.next_at
        if at < now - self.tolerance - self.owed:  # late by more than the wake-up owed: idle
            at = now - self.burst_slack - self.owed  # or held back downstream; start afresh
        if at > now:
            await anyio.sleep(at - now)
            now = anyio.current_time()
            self.owed = min(now - at, CATCH_UP)  # a late wake-up: caught up on what follows
        else:
            # waiting for input (or for the consumer) owes nothing: only what a late
            # wake-up left is still caught up, and less as the timeline comes closer
            self.owed = min(self.owed, now - at)
        return at, now

    async def wait(self, cost: int) -> None:
        """Wait for a batch of ``cost`` rows' turn."""
        at, _ = await self._due()
        self.next_at = at + cost * self.interval

    async def take(self, most: int) -> int:
        """Wait for the next item's turn; return how many items (up to ``most``) are due."""
        at, now = await self._due()
        n = min(most, int((now - at) / self.interval) + 1)
        self.next_at = at + n * self.interval
        return n


def throttle(rate: float, *, burst: int = 1, buffer: int | None = None) -> Stage[T, T]:
    """Let at most ``rate`` items (rows, for batches) per second through.

    Elements leave evenly spaced; a batch of ``n`` rows spends ``n`` items' worth of time.
    ``burst`` items may pass at once after a quiet spell. Items are due on an absolute
    timeline: at rates finer than the event loop's timer (about 2 ms, :data:`TIMER_SLACK`),
    or when a loaded machine wakes the stage late (up to :data:`CATCH_UP`), the items that
    fell due meanwhile leave together, so the rate holds from 1 to 100,000 items/s; after
    a quiet input or a slow consumer held the stage back, at most :data:`TIMER_SLACK` is
    caught up.
    """
    if rate <= 0:
        raise ValueError(f"throttle({rate}): rate must be > 0 items per second")
    if burst < 1:
        raise ValueError(f"throttle(burst={burst}): must be at least 1")
    return Stage(_ThrottleOp(rate, burst, buffer))


class _TimeoutOp(AsyncOperator):
    def __init__(self, seconds: float, on_timeout: Literal["raise", "stop"]) -> None:
        self.seconds = seconds
        self.on_timeout = on_timeout
        self.name = f"timeout({seconds:g}s)"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit = out.emit
        while True:
            with anyio.move_on_after(self.seconds) as scope:
                try:
                    msg = await inbox.receive()
                except anyio.EndOfStream:
                    return
            if scope.cancelled_caught:
                if self.on_timeout == "stop":
                    return
                raise StageTimeoutError(
                    f"no item for {self.seconds:g} s; raise the limit or use "
                    "timeout(..., on_timeout='stop') to end the flow instead"
                )
            await emit(msg)


def timeout(seconds: float, *, on_timeout: Literal["raise", "stop"] = "raise") -> Stage[T, T]:
    """Fail (or end the flow) when no item arrives for ``seconds``.

    Args:
        seconds: longest allowed wait for the next item.
        on_timeout: ``"raise"`` raises :class:`~aflow.errors.StageTimeoutError`;
            ``"stop"`` ends the flow there as if the input had ended (held partial batches
            downstream are flushed).
    """
    if seconds <= 0:
        raise ValueError(f"timeout({seconds}): must be > 0 seconds")
    return Stage(_TimeoutOp(seconds, on_timeout))


class _BufferOp(AsyncOperator):
    def __init__(self, size: int, buffer_bytes: int | None) -> None:
        self.buffer = size
        self.buffer_bytes = buffer_bytes
        self.name = f"buffer({size})"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit = out.emit
        async for msg in inbox:
            await emit(msg)


def buffer(size: int, *, buffer_bytes: int | None = None) -> Stage[T, T]:
    """Decouple the stages before and after with a buffer of ``size`` messages.

    Everything before runs in one task, everything after in another, so a burst upstream
    does not wait for the downstream to catch up (until the buffer is full).
    ``buffer_bytes`` also bounds the buffer by the bytes of the arrays in it.
    """
    if size < 1:
        raise ValueError(f"buffer({size}): size must be at least 1")
    return Stage(_BufferOp(size, buffer_bytes))

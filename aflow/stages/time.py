"""Flow control in time: throttle, timeout, and an explicit buffer."""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import anyio

from ..abc import AsyncOperator, Batch, Context, Inbox, Message, Outlet
from ..errors import StageTimeoutError
from ..flow import Stage

__all__ = ["buffer", "throttle", "timeout"]

T = TypeVar("T")


class _ThrottleOp(AsyncOperator):
    def __init__(self, rate: float, burst: int, buffer: int | None) -> None:
        self.rate = rate
        self.burst = burst
        self.buffer = buffer
        self.name = f"throttle({rate:g}/s)"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit = out.emit
        interval = 1.0 / self.rate
        slack = (self.burst - 1) * interval
        next_at = -math.inf
        async for msg in inbox:
            pieces: list[Message] = [msg] if isinstance(msg, Batch) else [[x] for x in msg]
            for piece in pieces:
                now = anyio.current_time()
                at = max(next_at, now - slack)
                if at > now:
                    await anyio.sleep(at - now)
                cost = len(piece.data) if isinstance(piece, Batch) else 1
                next_at = at + cost * interval
                await emit(piece)


def throttle(rate: float, *, burst: int = 1, buffer: int | None = None) -> Stage[T, T]:
    """Let at most ``rate`` items (rows, for batches) per second through.

    Elements are released one by one, evenly spaced; a batch of ``n`` rows spends ``n``
    items' worth of time. ``burst`` items may pass at once after a quiet spell.
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

"""Buffers between tasks: a bounded anyio memory object stream that also counts bytes.

A sender waits while the buffer is full (by messages, or by the bytes of the arrays in it):
that is backpressure. Closing the receiving side cancels the registered producers, so an
idle source stops as soon as nobody downstream wants its data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from ..stats import RunCounters, StageCounters
from .messages import Barrier, Item, message_bytes

__all__ = ["Buffer", "Sender"]

perf_counter = time.perf_counter


class Buffer:
    """A bounded buffer between two tasks, counting messages and array bytes.

    A sender waits while the buffer holds ``size`` messages, or while adding the message
    would pass ``max_bytes`` (a message larger than that alone is let through once the
    buffer is empty, so nothing deadlocks).
    """

    def __init__(
        self,
        run: RunCounters,
        receiver: StageCounters,
        size: int,
        max_bytes: int | None,
        epoch: Callable[[], int] | None = None,
    ) -> None:
        self._tx, self._rx = anyio.create_memory_object_stream[Item](size)
        self._epoch = epoch  # the last checkpoint epoch started (for fan-in alignment)
        self.barriers = True  # False: the chains feeding it get no checkpoint barriers
        self._align: _Alignment | None = None
        self._run = run
        self._receiver = receiver
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.queued = 0
        self._space: anyio.Event | None = None
        self._receiver_closed = False
        self._on_close: list[Callable[[], None]] = []
        receiver.buffer_size = size

    async def send(self, msg: Item, blocked: list[float]) -> None:
        """Put ``msg`` in the buffer; add the time spent waiting for room to ``blocked[0]``
        (a producing stage's ``counters.blocked``).

        Does not yield to the event loop while there is room: tasks switch when a buffer
        fills or empties, not on every message, which keeps the cost of a hop low.

        Raises:
            anyio.BrokenResourceError: the receiving side is closed.
        """
        await _send_counted(self, self._tx, msg, blocked)

    @property
    def full(self) -> bool:
        """Whether a send would wait now (the buffer holds ``size`` messages or its bytes)."""
        limit = self.max_bytes
        return self.queued >= self.size or (limit is not None and self.bytes >= limit)

    async def _wait_for_bytes(self, n: int) -> None:
        limit = self.max_bytes
        while limit is not None and self.bytes and self.bytes + n > limit:
            if self._receiver_closed:
                raise anyio.BrokenResourceError
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()

    def _reserve(self, n: int) -> None:
        self.bytes += n
        self._run.add_bytes(n)

    def _admitted(self) -> None:
        self.queued += 1
        if self.queued > self._receiver.buffer_high_water:
            self._receiver.buffer_high_water = self.queued

    def add_sender_scope(self, scope: anyio.CancelScope) -> None:
        """Register the cancel scope of a task sending into this buffer; it is cancelled
        when the receiving side closes, so an idle producer stops at once."""
        self._on_close.append(scope.cancel)

    def on_receiver_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the receiving side closes."""
        self._on_close.append(callback)

    async def receive(self) -> Item:
        """Take the next message (raises ``anyio.EndOfStream`` once all senders closed)."""
        try:
            msg = self._rx.receive_nowait()
        except anyio.WouldBlock:
            msg = await self._rx.receive()
        return self._taken(msg)

    def receive_nowait(self) -> Item | None:
        """The next message if one is waiting, else None (also once all senders closed)."""
        try:
            msg = self._rx.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return None
        return self._taken(msg)

    def _taken(self, msg: Item) -> Item:
        self.queued -= 1
        if isinstance(msg, Barrier):
            return msg
        n = message_bytes(msg)
        if n:
            self.bytes -= n
            self._run.add_bytes(-n)
            if self._space is not None:
                self._space.set()
                self._space = None
        self._receiver.count_in(msg)
        return msg

    @property
    def receiver(self) -> StageCounters:
        return self._receiver

    def retarget(self, receiver: StageCounters) -> None:
        """Count what this buffer delivers into another stage's statistics."""
        receiver.buffer_size = self.size
        receiver.buffer_high_water = self._receiver.buffer_high_water
        self._receiver = receiver

    def __aiter__(self) -> Buffer:
        return self

    async def __anext__(self) -> Item:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def sender(self) -> Sender:
        """A separately closable sending handle (for several producers into one buffer).

        Checkpoint barriers are aligned among the senders: one that sent ``Barrier(n)``
        waits until every other live sender did (or closed); the last one puts it in the
        buffer, once. A sender made after epoch ``n`` started takes no part in it.
        """
        if self._align is None:
            self._align = _Alignment()
        epoch = self._epoch() if self._epoch is not None else 0
        return Sender(self, self._tx.clone(), self._align, epoch)

    def close_send(self) -> None:
        self._tx.close()

    def close_receive(self) -> None:
        if not self._receiver_closed:
            for callback in self._on_close:
                callback()
        self._receiver_closed = True
        self._rx.close()
        if self._space is not None:
            self._space.set()


async def _send_counted(buffer: Buffer, tx: Any, msg: Item, blocked: list[float]) -> None:
    """Send ``msg`` into ``buffer`` through ``tx``, honouring its message and byte limits.

    Bytes are reserved before any wait for room, so several producers sharing the buffer
    (merge) cannot all pass the byte check at once. Does not yield while there is room.
    """
    n = message_bytes(msg)
    if n and buffer.max_bytes is not None and buffer.bytes + n > buffer.max_bytes and buffer.bytes:
        t0 = perf_counter()
        await buffer._wait_for_bytes(n)
        blocked[0] += perf_counter() - t0
    buffer._reserve(n)
    try:
        try:
            tx.send_nowait(msg)
        except anyio.WouldBlock:
            t0 = perf_counter()
            await tx.send(msg)
            blocked[0] += perf_counter() - t0
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        buffer._reserve(-n)
        raise
    buffer._admitted()


class _Alignment:
    """Barrier alignment among the senders into one buffer (a fan-in).

    A sender's barriers come in increasing order, so one that delivered ``Barrier(m)``
    has passed every epoch up to ``m``: it no longer holds back an older epoch it will
    never deliver (a ``concat`` or ``repeat`` between two sub-flows when that epoch was
    injected). Epochs go into the buffer once each, oldest first.
    """

    def __init__(self) -> None:
        self.senders: list[Sender] = []
        self.waiting: set[int] = set()  # epochs some sender delivered, not yet sent on
        self.sending = False  # one sender is putting a barrier in
        self.forwarded = 0  # the last epoch put in the buffer
        self.changed = anyio.Event()

    def missing(self, epoch: int) -> int:
        """Live senders that take part in ``epoch`` and have not passed its barrier."""
        return sum(
            1 for s in self.senders if not s.closed and s.joined < epoch and s.reached < epoch
        )

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class Sender:
    """One producer's handle on a shared buffer."""

    def __init__(
        self, buffer: Buffer, tx: Any, align: _Alignment | None = None, joined: int = 0
    ) -> None:
        self.buffer = buffer
        self._tx = tx
        self._align = align
        self.joined = joined
        self.reached = joined  # the last epoch whose barrier this sender delivered
        self.closed = False
        if align is not None:
            align.senders.append(self)

    async def send(self, msg: Item, blocked: list[float]) -> None:
        if type(msg) is Barrier and self._align is not None:
            await self._barrier(msg, self._align, blocked)
            return
        await _send_counted(self.buffer, self._tx, msg, blocked)

    async def _barrier(self, barrier: Barrier, align: _Alignment, blocked: list[float]) -> None:
        """Wait for ``barrier`` from every other sender (or a later one: it has passed
        this epoch); the last one sends it on, after every older epoch."""
        n = barrier.epoch
        if n <= align.forwarded:
            return  # already in the buffer (its epoch was passed by every sender)
        self.reached = max(self.reached, n)
        align.waiting.add(n)
        align.notify()
        t0 = perf_counter()
        while n in align.waiting:  # until the barrier is in the buffer
            if not align.sending and min(align.waiting) == n and align.missing(n) == 0:
                align.sending = True
                try:
                    await _send_counted(self.buffer, self._tx, barrier, blocked)
                finally:
                    align.sending = False
                    align.waiting.discard(n)
                    align.forwarded = max(align.forwarded, n)
                    align.notify()
                return
            await align.changed.wait()
        blocked[0] += perf_counter() - t0

    def close_send(self) -> None:
        self.closed = True
        if self._align is not None:
            self._align.notify()
        self._tx.close()

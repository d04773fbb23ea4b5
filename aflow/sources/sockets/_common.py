"""Shared pieces of the socket sources: options, bad-input reports and the read pump."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import numpy as np
from numpy.typing import DTypeLike

from ...abc import Batch, Message, Outlet, Provenance
from ...codecs.framing import Framer, Framing, check_framing, make_framer
from ...errors import DecodeError
from ...policies import Reporter
from ._lifecycle import CloseReason, ConnectionEvent, OnConnection, _Tally

__all__ = [
    "GATHER_BYTES",
    "GATHER_READS",
    "LINGER",
    "READ_SIZE",
    "Address",
    "MiB",
    "OnListening",
    "Receive",
    "_Options",
    "_aclose",
    "_announce",
    "_announce_connection",
    "_ip_address",
    "_pump",
    "_reject",
    "_url",
    "gather_limit",
    "logger",
]

logger = logging.getLogger("aflow")

MiB = 1 << 20
READ_SIZE = 256 * 1024  # asyncio's transports read at most this much per call
GATHER_READS = 4  # reads gathered into one message while the flow is busy
GATHER_BYTES = MiB // 4  # and bytes (one read may be more); see gather_limit
LINGER = 0.001  # seconds a gathering connection waits for its next read

Address: TypeAlias = tuple[str, int]
Receive: TypeAlias = Callable[[int], Awaitable[bytes]]
"""Reads at most n bytes of a connection: ``b""`` at its end; raises ``OSError`` (or
``anyio.BrokenResourceError``) when it breaks."""
OnListening: TypeAlias = Callable[[Any], Awaitable[None] | None]
"""Receives the bound address of each run: ``(host, port)``, or the path of a Unix socket.
May be sync or async; e.g. ``send.send_nowait`` of a memory object stream."""


@dataclass(frozen=True, slots=True)
class _Options:
    framing: Framing
    dtype: np.dtype[Any] | None
    max_line: int
    idle_timeout: float | None
    read_size: int
    line_timeout: float | None = None
    on_connection: OnConnection | None = None

    @classmethod
    def check(
        cls,
        framing: Framing,
        dtype: DTypeLike | None,
        max_line: int,
        idle_timeout: float | None,
        read_size: int,
        line_timeout: float | None = None,
        on_connection: OnConnection | None = None,
    ) -> _Options:
        check_framing(framing, dtype)
        if max_line < 1 or read_size < 1:
            raise ValueError("max_line and read_size must be at least 1")
        for name, value in (("idle_timeout", idle_timeout), ("line_timeout", line_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value}: must be positive (or None)")
        dt = None if dtype is None else np.dtype(dtype)
        return cls(framing, dt, max_line, idle_timeout, read_size, line_timeout, on_connection)

    def framer(self, source: str) -> Framer:
        return make_framer(self.framing, source, dtype=self.dtype, max_size=self.max_line)


async def _reject(
    report: Reporter, error: DecodeError, raw: bytes, prov: Provenance | None = None
) -> None:
    """Bad input from a peer: to the source's error policy, then (unless it raised) to the
    ``"aflow"`` log, since it cut the peer's stream short or dropped its datagram."""
    await report(raw, error, prov)
    logger.warning("%s: %s", report.stage, error)


async def _announce(on_listening: OnListening | None, address: Any) -> None:
    if on_listening is not None:
        result = on_listening(address)
        if inspect.isawaitable(result):
            await result


def _ip_address(addr: Any) -> Address:
    return str(addr[0]), int(addr[1])


def _url(scheme: str, addr: Any) -> str:
    host, port = _ip_address(addr)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def _aclose(resource: Any) -> None:
    with anyio.CancelScope(shield=True):
        await resource.aclose()


async def _pump(
    receive: Receive,
    framer: Framer,
    send: Callable[[Message], Awaitable[None]],
    out: Outlet,
    opts: _Options,
    report: Reporter,
    tally: _Tally,
    backlogged: Callable[[], bool] = lambda: False,
) -> None:
    """Read a connection into ``send`` until it ends, breaks, idles, is too slow, is
    evicted or the run stops; ``tally`` counts it and records why it ended.

    While ``backlogged()`` (the buffer after the source is full, so a send would wait)
    reads that follow at once are gathered, up to ``GATHER_READS`` of them and
    ``GATHER_BYTES`` (:func:`gather_limit`), into one message: a busy flow gets fewer,
    larger blocks (cheaper to decode) and an idle one gets every read at once. Nothing
    more is read while a message waits for room, so a connection holds at most
    :func:`gather_limit` bytes of reads plus one unfinished line or frame
    (``max_line``). Framing errors end the stream; a partial line, frame or record at
    the end is reported.
    """
    reader = _Reader(receive, framer, send, opts, report, tally)
    gather = gather_limit(opts.read_size)
    while not out.stopping and not tally.evicted:
        data = await reader.read(out)
        if data is None:
            break
        reader.hold(data)
        del data  # the reader holds it: a flush waiting for room must not keep it too
        if reader.held_bytes + opts.read_size <= gather and backlogged():
            continue
        if await reader.flush():
            return
    else:
        tally.reason = "evicted" if tally.evicted else "stopped"
    if reader.held and await reader.flush():
        return
    tail = framer.finish(_WHY[tally.reason])
    if tail is not None:
        tally.errors += 1
        await _reject(report, *tail)


def gather_limit(read_size: int) -> int:
    """The most bytes of reads a busy connection gathers into one message:
    ``GATHER_READS`` reads, at most ``GATHER_BYTES`` (one read, if larger).

    Every block a busy server holds is this large: one per connection waiting for room,
    those in its buffers, those the decoders work on. 4 MiB blocks of 1 MiB reads made
    4 clients' CSV ingest hold 200 MB (1 MiB blocks: 118 MB) and decode no faster; with
    the default 256 KiB reads, 512 KiB blocks held 94-95 MB against 1 MiB blocks'
    107-110 MB, for 0.30-0.32 s of CPU against 0.29-0.31 s (4 clients x 15 MB). Each read
    a block of its own (256 KiB) peaked 7-8 MB lower again (84-85 MiB against 91-92),
    for the same CPU (0.47-0.52 s against 0.48-0.55 s, interleaved); 128 KiB blocks
    another 4 MiB lower, for 50 % more CPU.
    """
    return max(read_size, min(GATHER_READS * read_size, GATHER_BYTES))


_WHY: dict[CloseReason, str] = {
    "eof": "the peer closed the connection",
    "broken": "the connection broke",
    "idle": "the connection went idle",
    "slow": "the connection was too slow",
    "evicted": "the connection was evicted for a new one",
    "overlong": "a line or frame was too long",
    "stopped": "the run stopped",
}


class _Reader:
    """The state of one connection's pump: reads held back, deadlines, counts."""

    def __init__(
        self,
        receive: Receive,
        framer: Framer,
        send: Callable[[Message], Awaitable[None]],
        opts: _Options,
        report: Reporter,
        tally: _Tally,
    ) -> None:
        self.receive = receive
        self.framer = framer
        self.send = send
        self.opts = opts
        self.report = report
        self.tally = tally
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.last_byte = anyio.current_time()  # or the end of the last send
        self.unfinished = False  # bytes arrived since the last complete line or frame

    def hold(self, data: bytes) -> None:
        self.held.append(data)
        self.held_bytes += len(data)
        self.tally.bytes += len(data)
        self.last_byte = anyio.current_time()
        self.unfinished = True

    def _deadline(self) -> tuple[float, CloseReason]:
        """When the connection is to be closed if nothing more arrives, and why."""
        opts, tally = self.opts, self.tally
        deadline = float("inf")
        reason: CloseReason = "idle"
        if opts.idle_timeout is not None:
            deadline = self.last_byte + opts.idle_timeout
        if opts.line_timeout is not None and self.unfinished:
            slow = tally.progress + opts.line_timeout
            if slow < deadline:
                deadline, reason = slow, "slow"
        return deadline, reason

    async def read(self, out: Outlet) -> bytes | None:
        """The next read; None once the connection ended (``tally.reason`` says why).
        Held reads are flushed after ``LINGER`` seconds without a new one."""
        tally = self.tally
        while True:
            deadline, reason = self._deadline()
            wait = deadline - anyio.current_time()
            if self.held:
                wait = min(wait, LINGER)
            data: bytes | None = None
            with out.pull_scope(), tally.reading(), anyio.move_on_after(max(wait, 0)) as timer:
                try:
                    data = await self.receive(self.opts.read_size)
                except anyio.EndOfStream:
                    data = b""
                except (anyio.BrokenResourceError, OSError) as exc:
                    tally.reason = "broken"
                    logger.info(
                        "%s: %s: the connection broke (%r)", self.report.stage, tally.peer, exc
                    )
                    return None
            if data is not None:
                if not data:
                    tally.reason = "eof"
                    return None
                return data
            if tally.evicted:
                tally.reason = "evicted"
                return None
            if not timer.cancelled_caught:
                tally.reason = "stopped"
                return None
            if self.held and anyio.current_time() < deadline:
                if await self.flush():
                    return None
                continue
            tally.reason = reason
            logger.info(
                "%s: %s: %s: connection closed", self.report.stage, tally.peer, _WHY[reason]
            )
            return None

    async def flush(self) -> bool:
        """Frame and send the held reads; True if a framing error ended the stream."""
        held, tally = self.held, self.tally
        if not held:
            return False
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self.held_bytes = 0
        msg = self.framer.feed(data)
        # the framed block is a copy joined to the last read's unfinished line, or a view
        # that keeps what it needs: a send that waits for room holds it alone
        del data
        if msg is not None:
            tally.items += _items(msg)
            tally.progress = anyio.current_time()
            self.unfinished = False
            tally.sending = True
            try:
                await self.send(msg)
            finally:
                tally.sending = False
            # the clocks run only while waiting to read: a send that waited for room
            # downstream is the flow's delay, not the peer's silence or slowness
            tally.progress = self.last_byte = anyio.current_time()
        errors = self.framer.take_failures()
        for prefix, error in errors:
            tally.errors += 1
            await _reject(self.report, error, prefix)  # an over-long line: its first bytes
        if errors:
            tally.reason = "overlong"
        return bool(errors)  # the rest of the stream belongs to the bad frame


def _items(msg: Message) -> int:
    """Lines, frames or records in a message of a framer."""
    if isinstance(msg, Batch):
        prov = msg.provenance
        if prov is not None and prov.unit == "line":
            return prov.stop - prov.start
        return len(msg.data)
    return len(msg)


async def _announce_connection(on_connection: OnConnection | None, event: ConnectionEvent) -> None:
    if on_connection is not None:
        result = on_connection(event)
        if inspect.isawaitable(result):
            await result

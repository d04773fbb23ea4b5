"""Shared pieces of the socket sources: options, bad-input reports and the read pump."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import numpy as np
from anyio.abc import ByteReceiveStream
from numpy.typing import DTypeLike

from ...abc import Message, Outlet, Provenance
from ...codecs.framing import Framer, Framing, check_framing, make_framer
from ...errors import DecodeError
from ...policies import Reporter

__all__ = [
    "GATHER_READS",
    "LINGER",
    "READ_SIZE",
    "Address",
    "MiB",
    "OnListening",
    "_Options",
    "_aclose",
    "_announce",
    "_ip_address",
    "_pump",
    "_reject",
    "_url",
    "logger",
]

logger = logging.getLogger("aflow")

MiB = 1 << 20
READ_SIZE = 256 * 1024  # asyncio's transports read at most this much per call
GATHER_READS = 4  # reads gathered into one message while the flow is busy
LINGER = 0.001  # seconds a gathering connection waits for its next read

Address: TypeAlias = tuple[str, int]
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

    @classmethod
    def check(
        cls,
        framing: Framing,
        dtype: DTypeLike | None,
        max_line: int,
        idle_timeout: float | None,
        read_size: int,
    ) -> _Options:
        check_framing(framing, dtype)
        if max_line < 1 or read_size < 1:
            raise ValueError("max_line and read_size must be at least 1")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout={idle_timeout}: must be positive (or None)")
        dt = None if dtype is None else np.dtype(dtype)
        return cls(framing, dt, max_line, idle_timeout, read_size)

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
    stream: ByteReceiveStream,
    framer: Framer,
    send: Callable[[Message], Awaitable[None]],
    out: Outlet,
    opts: _Options,
    report: Reporter,
    peer: str,
    backlogged: Callable[[], bool] = lambda: False,
) -> bool:
    """Read ``stream`` into ``send`` until it ends, breaks, idles or the run stops.

    While ``backlogged()`` (the buffer after the source is full, so a send would wait)
    reads that follow at once are gathered, up to ``GATHER_READS`` of them, into one
    message: a busy flow gets fewer, larger blocks (cheaper to decode) and an idle one
    gets every read at once. Framing errors end the stream; a partial line, frame or
    record at the end is reported. Returns whether any byte arrived.
    """
    why = "the peer closed the connection"
    received = False
    held: list[bytes] = []
    held_bytes = 0
    gather = opts.read_size * GATHER_READS

    async def flush() -> bool:
        """Frame and send the held reads; True if a framing error ended the stream."""
        nonlocal held_bytes
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        held_bytes = 0
        msg = framer.feed(data)
        if msg is not None:
            await send(msg)
        errors = framer.take_errors()
        for error in errors:
            await _reject(report, error, b"")  # an over-long line or frame: not kept
        return bool(errors)  # the rest of the stream belongs to the bad frame

    while not out.stopping:
        data: bytes | None = None
        wait = LINGER if held else opts.idle_timeout
        with out.pull_scope(), anyio.move_on_after(wait) as timer:
            try:
                data = await stream.receive(opts.read_size)
            except anyio.EndOfStream:
                break
            except (anyio.BrokenResourceError, OSError) as exc:
                why = f"the connection broke ({exc!r})"
                logger.info("%s: %s: %s", report.stage, peer, why)
                break
        if data is None:
            if held and timer.cancelled_caught:  # nothing more right now: pass it on
                if await flush():
                    return received
                continue
            why = "the run stopped"
            if timer.cancelled_caught:
                why = f"no data for {opts.idle_timeout} s: connection closed"
                logger.info("%s: %s: %s", report.stage, peer, why)
            break
        received = True
        held.append(data)
        held_bytes += len(data)
        if held_bytes + opts.read_size <= gather and backlogged():
            continue
        if await flush():
            return received
    else:
        why = "the run stopped"
    if held and await flush():
        return received
    tail = framer.finish(why)
    if tail is not None:
        await _reject(report, *tail)
    return received


# -- stream servers (TCP, Unix) ---------------------------------------------------------

"""A UDP server source: lines or records from many senders.

The socket is read directly: each time it becomes readable, every datagram already
queued in the kernel is taken at once (up to a bound). A busy flow thus pays its
per-message cost per burst, not per datagram: the datagrams of each sender become one
message, and a burst from many senders (more than ``MANY_SENDERS``) becomes a single
one. While the flow is slow the kernel's buffer fills and drops what does not fit (UDP
has no backpressure); on Linux those drops are counted (``SO_RXQ_OVFL``) in the source's
``dropped`` statistic.

With ``datagrams="stream"`` (the default) a sender's datagrams are one byte stream: a
line cut across datagrams (``nc -u < file``, ``socat -u FILE UDP:...`` cut a file into
datagrams of 1-16 KB wherever the read ended) is joined again; an unfinished last line is
handed on as a line once the sender has been silent for ``TAIL_WAIT`` seconds.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray

from ...abc import Batch, Context, Outlet, Provenance, Source
from ...codecs.framing import Framing, check_framing
from ...errors import IncompleteFrameError, LineTooLongError
from ...flow import Flow
from ...policies import ErrorPolicy, Reporter, check_policy
from ._common import MiB, OnListening, _announce, _ip_address, _reject, _url

MAX_DATAGRAM = 65_535
BURST_BYTES = 1 << 20  # most bytes taken from the socket per wakeup
RECEIVE_BUFFER = 4 << 20  # asked of the kernel (it caps this at net.core.rmem_max)
SENDERS = 65_536  # senders whose numbering is remembered (the least recent is forgotten)
MANY_SENDERS = 8  # a burst from more senders than this becomes one message
TAIL_WAIT = 0.2  # seconds a sender's unfinished last line waits for its continuation
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux: count of datagrams dropped

Datagrams: TypeAlias = Literal["stream", "messages"]


@dataclass(slots=True)
class _Sender:
    """What is remembered of one sender: its next line (or row) number and, for
    ``datagrams="stream"``, its unfinished last line."""

    number: int
    tail: bytes = b""
    since: float = 0.0  # when the tail arrived


@dataclass(slots=True)
class _Burst:
    """The datagrams of one wakeup, grouped by sender in order, and the kernel's count
    of datagrams dropped so far (None where the platform does not tell)."""

    senders: dict[Any, list[bytes]] = field(default_factory=dict)
    dropped: int | None = None


class _UdpServer(Source):
    def __init__(
        self,
        host: str,
        port: int,
        framing: Framing,
        dtype: np.dtype[Any] | None,
        datagrams: Datagrams,
        max_line: int,
        receive_buffer: int,
        on_error: ErrorPolicy,
        on_listening: OnListening | None,
    ) -> None:
        self.host = host
        self.port = port
        self.framing = framing
        self.dtype = dtype
        self.stream = datagrams == "stream" and framing == "lines"
        self.max_line = max_line
        self.receive_buffer = receive_buffer
        self.on_error = check_policy(on_error)
        self.on_listening = on_listening
        self.name = f"udp_server({host}:{port})"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        sock, counts_drops = await _bind(self.host, self.port, self.receive_buffer)
        run = _Run(self, out, sock)
        try:
            await _announce(self.on_listening, run.address)
            while not out.stopping:
                with out.pull_scope() as scope, anyio.move_on_after(run.tail_wait()):
                    await anyio.wait_readable(sock)
                if scope.cancel_called:
                    break
                burst = _burst(sock, counts_drops)
                if burst.dropped is not None:
                    out.counters.dropped = burst.dropped
                await run.handle(burst.senders)
            await run.finish()
        finally:
            sock.close()


class _Run:
    """One run of a UDP server: its senders, numbering and unfinished lines."""

    def __init__(self, server: _UdpServer, out: Outlet, sock: socket.socket) -> None:
        self.server = server
        self.out = out
        self.report = Reporter(server.on_error, server.name, out.counters)
        self.address = _ip_address(sock.getsockname())
        self.url = _url("udp", self.address)
        self.senders: OrderedDict[str, _Sender] = OrderedDict()
        # senders with an unfinished line, oldest first (``since`` only grows)
        self.tails: OrderedDict[str, _Sender] = OrderedDict()
        self.coalesced = _Sender(1 if server.framing == "lines" else 0)  # the server's own

    def tail_wait(self) -> float:
        if not self.tails:
            return float("inf")
        first = next(iter(self.tails.values())).since
        return max(0.0, first + TAIL_WAIT - anyio.current_time())

    def sender(self, source: str) -> _Sender:
        state = self.senders.pop(source, None)
        if state is None:
            state = _Sender(1 if self.server.framing == "lines" else 0)
        self.senders[source] = state
        if len(self.senders) > SENDERS:
            old, gone = self.senders.popitem(last=False)
            self.tails.pop(old, None)
            del gone
        return state

    async def handle(self, senders: dict[Any, list[bytes]]) -> None:
        """Frame a burst and emit it: a message per sender, or one for many senders."""
        parts: list[tuple[str, bytes]] = []
        for peer, datagrams in senders.items():
            source = _url("udp", peer)
            data = await self._frame(datagrams, source)
            if data:
                parts.append((source, data))
        await self._expire_tails()
        if len(parts) > MANY_SENDERS:
            for source, data in parts:  # later lines of each sender keep their numbers
                self.sender(source).number += self._count(data)
            await self._emit(self.url, b"".join(d for _, d in parts), self.coalesced)
        else:
            for source, data in parts:
                await self._emit(source, data)

    async def finish(self) -> None:
        """Hand on every unfinished line (the run stops)."""
        for source in list(self.tails):
            await self._emit(source, self._take_tail(source))

    async def _expire_tails(self) -> None:
        now = anyio.current_time()
        while self.tails:
            source, state = next(iter(self.tails.items()))
            if now - state.since < TAIL_WAIT:
                break  # the rest came later
            await self._emit(source, self._take_tail(source))

    def _take_tail(self, source: str) -> bytes:
        state = self.tails.pop(source)
        tail, state.tail = state.tail, b""
        return tail + b"\n"

    def _count(self, data: bytes) -> int:
        """Lines, or records, in whole ``data``."""
        if self.server.framing == "lines":
            return data.count(b"\n")
        assert self.server.dtype is not None
        return len(data) // self.server.dtype.itemsize

    async def _emit(self, source: str, data: bytes, state: _Sender | None = None) -> None:
        lines = self.server.framing == "lines"
        payload: NDArray[Any] = np.frombuffer(data, np.uint8 if lines else self.server.dtype)
        count = self._count(data)
        state = self.sender(source) if state is None else state
        first = state.number
        state.number += count
        prov = Provenance(source, first, first + count, "line" if lines else "row")
        await self.out.emit(Batch(payload, "source", prov))

    async def _frame(self, datagrams: list[bytes], source: str) -> bytes:
        """One sender's datagrams as bytes of whole lines or records."""
        server = self.server
        if server.framing == "records":
            return b"".join(await self._whole_records(datagrams, source))
        if not server.stream:
            return b"".join(d if d.endswith(b"\n") else d + b"\n" for d in datagrams)
        state = self.sender(source)
        data = b"".join([state.tail, *datagrams])
        cut = data.rfind(b"\n") + 1
        state.tail = data[cut:]
        if state.tail:
            state.since = anyio.current_time()
            self.tails[source] = state
            self.tails.move_to_end(source)
            if len(state.tail) > server.max_line:
                await self._overlong(source, state)
        else:
            self.tails.pop(source, None)
        return data[:cut]

    async def _overlong(self, source: str, state: _Sender) -> None:
        size = len(state.tail)
        state.tail = b""
        self.tails.pop(source, None)
        error = LineTooLongError(
            f"an unfinished line of {size} bytes passed max_line={self.server.max_line}; "
            "dropped (raise max_line, or send a newline)",
            source=source,
            line=state.number,
        )
        await _reject(self.report, error, b"")

    async def _whole_records(self, datagrams: list[bytes], source: str) -> list[bytes]:
        dtype = self.server.dtype
        assert dtype is not None
        size = dtype.itemsize
        whole = []
        for data in datagrams:
            if len(data) % size:
                error = IncompleteFrameError(
                    f"a datagram of {len(data)} bytes is not a whole number of {size}-byte "
                    "records; dropped",
                    source=source,
                )
                await _reject(self.report, error, data, Provenance(source, 0, len(data), "byte"))
            else:
                whole.append(data)
        return whole


async def _bind(host: str, port: int, receive_buffer: int) -> tuple[socket.socket, bool]:
    """A bound non-blocking UDP socket, and whether it reports kernel drops."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            counts_drops = hasattr(sock, "recvmsg")
        except OSError:  # not Linux
            counts_drops = False
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock, counts_drops


_DROPS = struct.Struct("=I")
_ANCILLARY = socket.CMSG_SPACE(_DROPS.size) if hasattr(socket, "CMSG_SPACE") else 0


def _burst(sock: socket.socket, counts_drops: bool) -> _Burst:
    """Every datagram queued now (up to ``BURST_BYTES``), grouped by sender in order."""
    burst = _Burst()
    senders = burst.senders
    taken = 0
    while taken < BURST_BYTES:
        try:
            if counts_drops:
                data, ancillary, _, peer = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                        burst.dropped = _DROPS.unpack(value[: _DROPS.size])[0]
            else:
                data, peer = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            break
        if data:
            senders.setdefault(peer, []).append(data)
            taken += len(data)
    return burst


def udp_server(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    datagrams: Datagrams = "stream",
    max_line: int = MiB,
    receive_buffer: int = RECEIVE_BUFFER,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
) -> Flow[Any]:
    """Receive UDP datagrams of lines or records; runs until stopped.

    The datagrams waiting in the socket are read together. Those of each sender become
    one message: a block of lines, or an array of ``dtype`` records
    (``framing="records"``; a datagram that is not a whole number of records is dropped
    and reported through ``on_error``). When one wakeup brings datagrams from more than
    8 senders, they all become one message whose provenance names the server
    (``udp://<host>:<port>``), so many senders cost one message, not one each; its lines
    (or records) are numbered among those of the server's merged messages, from 1 on (0
    for records), while each sender's own count still advances by its lines in it.
    Otherwise provenance names the sender and numbers its lines (or records) from 1 on
    across all its datagrams, merged ones included; the 65,536 most recent senders are
    remembered, and one forgotten starts again from 1.

    Lines and datagrams, by ``datagrams``:

    * ``"stream"`` (the default): a sender's datagrams are one stream of bytes, so a
      line cut across datagrams (``nc -u < file``, ``socat -u FILE UDP:host:port``) is
      joined again. A sender's unfinished last line is handed on as a line once it has
      sent nothing more for 0.2 s (or the run stops); one longer than ``max_line`` is
      dropped and reported. A sender whose datagrams are each a message without a final
      newline should use ``"messages"``.
    * ``"messages"``: each datagram holds whole lines; its last line needs no newline.

    UDP has no backpressure: while the flow is slow, the kernel drops datagrams that do
    not fit its receive buffer (``receive_buffer`` bytes are asked for; Linux grants at
    most ``net.core.rmem_max``). On Linux the source's ``dropped`` statistic counts
    them (shown by ``statistics().format()`` and the Prometheus metrics). See
    :func:`tcp_server` for ``host``, ``port`` and ``on_listening``.
    """
    check_framing(framing, dtype, ("lines", "records"))
    if datagrams not in ("stream", "messages"):
        raise ValueError(f"datagrams={datagrams!r}: use 'stream' or 'messages'")
    if max_line < 1 or receive_buffer < 1:
        raise ValueError("max_line and receive_buffer must be at least 1")
    dt = None if dtype is None else np.dtype(dtype)
    return Flow(
        _UdpServer(
            host, port, framing, dt, datagrams, max_line, receive_buffer, on_error, on_listening
        )
    )

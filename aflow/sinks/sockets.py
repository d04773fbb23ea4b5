"""Socket sinks: write a flow to a TCP server or as UDP datagrams.

What is sent follows ``framing`` (see :mod:`aflow.codecs.framing`): text lines (arrays
as CSV lines by :class:`aflow.codecs.CsvEncoder`, byte for byte what :func:`aflow.to_csv`
writes), length-prefixed frames, or raw binary records (``arr.tobytes()``). Both sinks
await I/O, so each runs in a task of its own behind a buffer; a TCP peer that reads
slowly suspends the flow (backpressure).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import anyio
from anyio.abc import ConnectedUDPSocket, SocketStream

from ..abc import Batch, Context, SavedAttributes, SinkOperator, SinkWriter, StageCounters
from ..codecs import CsvEncoder, Fmt
from ..codecs.framing import (
    Framing,
    check_framing,
    encode_array,
    encode_items,
    is_line_block,
    split_datagrams,
)
from ..flow import Sink
from ..policies import ErrorPolicy, apply_policy, check_policy

__all__ = ["to_tcp", "to_udp"]

logger = logging.getLogger("aflow")

THREAD_ROWS = 4096
"""Arrays of at least this many rows are formatted as text in a worker thread."""


class _Encoder:
    """Turns messages into bytes for one ``framing`` choice."""

    def __init__(self, framing: Framing, fmt: Fmt, delimiter: str) -> None:
        self.framing = framing
        self.text = CsvEncoder(fmt, delimiter=delimiter)

    def items(self, items: list[Any]) -> bytes:
        return encode_items(items, self.framing, self.text)

    async def batch(self, batch: Batch) -> bytes:
        data = batch.data
        if self.framing == "lines" and is_line_block(batch):
            return data.tobytes()
        encode = functools.partial(encode_array, framing=self.framing, text=self.text)
        if self.framing == "lines" and len(data) >= THREAD_ROWS:
            return await anyio.to_thread.run_sync(encode, data)
        return encode(data)


class _TcpWriter(SavedAttributes, SinkWriter[Any, int]):
    saved = ("sent",)  # bytes sent over the resumed runs: the result counts them all

    def __init__(self, op: _TcpOp) -> None:
        self.op = op
        self.encoder = _Encoder(op.framing, op.fmt, op.delimiter)
        self.stream: SocketStream | None = None
        self.counters: StageCounters | None = None
        self.sent = 0

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.counters = counters

    async def open(self) -> None:
        await self._connect()

    async def _connect(self) -> SocketStream:
        op = self.op
        with anyio.fail_after(op.connect_timeout):
            self.stream = await anyio.connect_tcp(op.host, op.port)
        return self.stream

    async def _send_once(self, payload: bytes) -> None:
        """Send ``payload``, connecting again first if an earlier send broke. Any failure
        (refused, timed out, unknown host, reset) raises ``ConnectionError`` naming the
        peer, for the error policy."""
        stream = self.stream
        if stream is None:
            try:
                stream = await self._connect()
            except OSError as exc:  # TimeoutError and socket.gaierror are OSErrors too
                raise self._unreachable(exc, len(payload)) from exc
        try:
            await stream.send(payload)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.stream = None
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise self._broken(exc, len(payload)) from exc
        self.sent += len(payload)

    def _broken(self, exc: BaseException, size: int) -> ConnectionError:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        why = (
            f" ({cause!r})"
            if str(cause) or not isinstance(cause, anyio.BrokenResourceError)
            else ""
        )
        return ConnectionError(
            f"{self.op.name}: the peer tcp://{self.op.host}:{self.op.port} closed or reset the "
            f"connection{why}; {size} bytes were not sent after {self.sent} sent. Check that "
            "the server is up and reads; on_error=aflow.retry(...) reconnects and sends again"
        )

    def _unreachable(self, exc: OSError, size: int) -> ConnectionError:
        why = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc!r})"
        return ConnectionError(
            f"{self.op.name}: connecting again to tcp://{self.op.host}:{self.op.port} {why}; "
            f"{size} bytes were not sent after {self.sent} sent. Check that the server is "
            "up and reachable; on_error=aflow.retry(...) tries again with backoff"
        )

    async def _send(self, payload: bytes, item: Any, provenance: Any = None) -> None:
        if not payload:
            return
        try:
            await self._send_once(payload)
        except ConnectionError as exc:
            if self.op.on_error == "raise":
                raise
            assert self.counters is not None

            async def again() -> list[Any]:
                await self._send_once(payload)
                return []

            await apply_policy(
                self.op.on_error, item, exc, self.op.name, provenance, self.counters, again=again
            )

    async def write(self, item: Any) -> None:
        await self._send(self.encoder.items([item]), item)

    async def write_chunk(self, items: list[Any]) -> None:
        await self._send(self.encoder.items(items), items)

    async def write_batch(self, batch: Batch) -> None:
        await self._send(await self.encoder.batch(batch), batch.data, batch.provenance)

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    def result(self) -> int:
        return self.sent


class _TcpOp(SinkOperator[Any, int]):
    fused = False

    def __init__(
        self,
        host: str,
        port: int,
        framing: Framing,
        fmt: Fmt,
        delimiter: str,
        connect_timeout: float,
        buffer: int | None,
        on_error: ErrorPolicy,
    ) -> None:
        check_framing(framing, decoding=False)
        self.host = host
        self.port = port
        self.framing = framing
        self.fmt = fmt
        self.delimiter = delimiter
        self.connect_timeout = connect_timeout
        self.buffer = buffer
        self.on_error = check_policy(on_error)
        self.name = f"to_tcp({host}:{port})"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _TcpWriter(self)


def to_tcp(
    host: str,
    port: int,
    *,
    framing: Framing = "lines",
    fmt: Fmt = None,
    delimiter: str = ",",
    connect_timeout: float = 10.0,
    buffer: int | None = None,
    on_error: ErrorPolicy = "raise",
) -> Sink[Any, int]:
    """Send the flow over one TCP connection; the result is the number of bytes sent.

    Args:
        host: the server's address.
        port: the server's port.
        framing: ``"lines"``: an element is a line (``str`` as UTF-8, ``bytes`` as they
            are, a newline added where missing; a tuple is a CSV line of its values), an
            array batch one CSV line per row, by the rules of
            :class:`aflow.codecs.CsvEncoder` (the bytes :func:`~aflow.to_csv` writes
            without its header), and a block of lines (as from
            :func:`~aflow.tcp_server` or :func:`~aflow.read_blocks`) passes as it is.
            ``"length_prefixed"``: each element (``str``, ``bytes`` or array) and each
            batch is one frame. ``"records"``: arrays as raw bytes (``tobytes()``,
            native byte order), and ``bytes`` elements as they are.
        fmt: how values are written in text lines: ``None`` (the shortest text that
            reads back the same value), one ``%``-format for every column, or one per
            column (see :data:`aflow.codecs.Fmt`).
        delimiter: between the values of a text line.
        connect_timeout: seconds to wait for the connection, opened when the run starts.
        buffer: messages waiting in front of the sink.
        on_error: what a send does when the connection broke or connecting again failed
            (refused, timed out after ``connect_timeout``, unknown host, any other
            ``OSError``): ``"raise"`` (fail the run), ``"skip"`` (drop that message,
            count it in the sink's ``errors`` and connect again for the next),
            :func:`~aflow.retry` (connect again and resend, with backoff) or
            :func:`~aflow.dead_letter` (the message's items with their provenance).

    Raises:
        OSError: the first connection, when the run starts, could not be opened
            (refused, timed out): fails the run whatever ``on_error``.
        ConnectionError: the peer closed or reset the connection, or connecting again
            failed (the message names the peer and how many bytes were sent), under
            ``on_error="raise"``.
    """
    return Sink(_TcpOp(host, port, framing, fmt, delimiter, connect_timeout, buffer, on_error))


class _UdpWriter(SavedAttributes, SinkWriter[Any, int]):
    saved = ("sent",)

    def __init__(self, op: _UdpOp) -> None:
        self.op = op
        self.encoder = _Encoder(op.framing, op.fmt, op.delimiter)
        self.sock: ConnectedUDPSocket | None = None
        self.sent = 0

    async def open(self) -> None:
        self.sock = await anyio.create_connected_udp_socket(self.op.host, self.op.port)

    async def _send(self, datagrams: list[bytes]) -> None:
        assert self.sock is not None
        for datagram in datagrams:
            try:
                await self.sock.send(datagram)
            except ConnectionRefusedError:  # nobody listens (an ICMP reply): as UDP does
                logger.warning("%s: datagram refused by the peer; dropped", self.op.name)
                continue
            self.sent += len(datagram)

    async def write(self, item: Any) -> None:
        await self.write_chunk([item])

    async def write_chunk(self, items: list[Any]) -> None:
        op = self.op
        if op.framing == "records":  # no record size known: one datagram per element
            datagrams = [self.encoder.items([item]) for item in items]
            too_long = [len(d) for d in datagrams if len(d) > op.max_datagram]
            if too_long:
                raise ValueError(
                    f"{op.name}: an element of {too_long[0]} bytes does not fit "
                    f"max_datagram={op.max_datagram}"
                )
        else:
            datagrams = split_datagrams(self.encoder.items(items), op.max_datagram, None)
        await self._send(datagrams)

    async def write_batch(self, batch: Batch) -> None:
        data = batch.data
        payload = await self.encoder.batch(batch)
        if self.op.framing == "records":
            row_size = data.itemsize * (data.size // len(data) if len(data) else 1)
            await self._send(split_datagrams(payload, self.op.max_datagram, row_size))
        else:
            await self._send(split_datagrams(payload, self.op.max_datagram, None))

    async def aclose(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with anyio.CancelScope(shield=True):
                await sock.aclose()

    def result(self) -> int:
        return self.sent


class _UdpOp(SinkOperator[Any, int]):
    fused = False

    def __init__(
        self,
        host: str,
        port: int,
        framing: Framing,
        fmt: Fmt,
        delimiter: str,
        max_datagram: int,
        buffer: int | None,
    ) -> None:
        check_framing(framing, None, ("lines", "records"), decoding=False)
        if max_datagram < 1:
            raise ValueError(f"max_datagram={max_datagram}: must be at least 1")
        self.host = host
        self.port = port
        self.framing = framing
        self.fmt = fmt
        self.delimiter = delimiter
        self.max_datagram = max_datagram
        self.buffer = buffer
        self.name = f"to_udp({host}:{port})"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _UdpWriter(self)


def to_udp(
    host: str,
    port: int,
    *,
    framing: Framing = "lines",
    fmt: Fmt = None,
    delimiter: str = ",",
    max_datagram: int = 1472,
    buffer: int | None = None,
) -> Sink[Any, int]:
    """Send the flow as UDP datagrams; the result is the number of bytes sent.

    Lines (``framing="lines"``) and records (``"records"``) are encoded as in
    :func:`to_tcp` and packed into datagrams of at most ``max_datagram`` bytes, each
    holding whole lines or records, as :func:`~aflow.udp_server` reads them (1472 bytes
    fit one Ethernet frame; loopback takes up to 65507). A ``bytes`` element with
    ``framing="records"`` is one datagram. UDP may drop datagrams, and a datagram the
    peer refuses (nobody listens) is dropped with a warning.

    Raises:
        ValueError: a single line, record or element does not fit ``max_datagram``.
    """
    return Sink(_UdpOp(host, port, framing, fmt, delimiter, max_datagram, buffer))

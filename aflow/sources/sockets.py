"""Socket sources: TCP and Unix servers, a reconnecting TCP client, a UDP server.

A stream server accepts many clients at once: one task per connection, in the run's task
group, all feeding one bounded buffer (as :func:`~aflow.merge` does). A connection whose
send into that buffer waits stops reading its socket, so the kernel's buffers fill and
the client's writes block: backpressure reaches the peer. Each connection has its own
framer (see :mod:`aflow.codecs.framing`), so a client that misbehaves (a line longer than
``max_line``, a disconnect in the middle of a line) costs only its own data: the problem
is logged on the ``"aflow"`` logger, counted in the source's ``errors`` statistic and
handed to ``on_error``.

A flow is a re-runnable description: every run binds its own socket. With ``port=0``
each run gets a fresh ephemeral port, which ``on_listening`` receives once it is bound.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import anyio
import numpy as np
from anyio.abc import ByteReceiveStream, SocketAttribute, SocketListener, SocketStream
from numpy.typing import DTypeLike, NDArray

from .._message import Batch, Message, Provenance
from .._ops import Outlet, Source
from .._runtime import Closed, Edge, RunContext, locate
from ..codecs.framing import Framer, Framing, IncompleteFrameError, check_framing, make_framer
from ..errors import DecodeError
from ..flow import Flow
from ..policies import DeadLetter, ErrorPolicy, FailedItem, Retry, check_policy

__all__ = ["tcp_client", "tcp_server", "udp_server", "unix_server"]

logger = logging.getLogger("aflow")

MiB = 1 << 20
READ_SIZE = 64 * 1024

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


class _Reporter:
    """Applies a source's error policy to bad input: log, count, dead-letter or raise."""

    def __init__(self, policy: ErrorPolicy, stage: str, out: Outlet) -> None:
        self.policy = policy.then if isinstance(policy, Retry) else policy  # bytes won't change
        self.stage = stage
        # The Outlet protocol does not expose the source's counters; the runtime's does.
        self.counters = out.counters

    async def __call__(self, error: DecodeError, raw: bytes, prov: Provenance | None) -> None:
        if self.policy == "raise":
            raise error
        logger.warning("%s: %s", self.stage, error)
        if self.counters is not None:
            self.counters.errors += 1
        if isinstance(self.policy, DeadLetter):
            await self.policy.deliver(FailedItem(raw, error, self.stage, prov))


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


def _where(error: DecodeError) -> Provenance | None:
    """The provenance of a framing error's line (or byte offset), from its fields."""
    if error.source is None or error.offset is None:
        return None
    if error.line is not None:
        return Provenance(error.source, error.line, error.line + 1, "line", error.offset)
    return Provenance(error.source, error.offset, error.offset, "byte", error.offset)


async def _aclose(resource: Any) -> None:
    with anyio.CancelScope(shield=True):
        await resource.aclose()


async def _pump(
    stream: ByteReceiveStream,
    framer: Framer,
    send: Callable[[Message], Awaitable[None]],
    out: Outlet,
    opts: _Options,
    report: _Reporter,
    peer: str,
) -> bool:
    """Read ``stream`` into ``send`` until it ends, breaks, idles or the run stops.

    Framing errors end the stream; a partial line, frame or record at the end is reported.
    Returns whether any byte arrived.
    """
    why = "the peer closed the connection"
    received = False
    while not out.stopping:
        data: bytes | None = None
        with out.pull_scope(), anyio.move_on_after(opts.idle_timeout) as idle:
            try:
                data = await stream.receive(opts.read_size)
            except anyio.EndOfStream:
                break
            except (anyio.BrokenResourceError, OSError) as exc:
                why = f"the connection broke ({exc!r})"
                logger.info("%s: %s: %s", report.stage, peer, why)
                break
        if data is None:
            why = "the run stopped"
            if idle.cancelled_caught:
                why = f"no data for {opts.idle_timeout} s: connection closed"
                logger.info("%s: %s: %s", report.stage, peer, why)
            break
        received = True
        msg = framer.feed(data)
        if msg is not None:
            await send(msg)
        errors = framer.take_errors()
        for error in errors:
            await report(error, b"", _where(error))
        if errors:
            return received  # the rest of the stream belongs to the bad frame
    else:
        why = "the run stopped"
    tail = framer.finish(why)
    if tail is not None:
        await report(*tail)
    return received


# -- stream servers (TCP, Unix) ---------------------------------------------------------


class _SendHandle(Protocol):
    """One producer's handle on the shared buffer (``Edge.sender()``)."""

    async def send(self, msg: Message, blocked: list[float], /) -> None: ...

    def close_send(self) -> None: ...


class _StreamServer(Source):
    """Accepts connections; each is read by its own task into one shared buffer."""

    scheme = "tcp"

    def __init__(
        self,
        opts: _Options,
        *,
        max_connections: int,
        on_error: ErrorPolicy,
        on_listening: OnListening | None,
        name: str,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections}: must be at least 1")
        self.opts = opts
        self.max_connections = max_connections
        self.on_error = check_policy(on_error)
        self.on_listening = on_listening
        self.name = name

    def nested_edges(self) -> int:
        return 1

    async def bind(self) -> tuple[list[SocketListener], Any, Callable[[], None]]:
        """Open the listening sockets; return them, the address to announce and what to
        call once they are closed."""
        raise NotImplementedError

    def peer(self, stream: SocketStream, number: int) -> str:
        return _url(self.scheme, stream.extra(SocketAttribute.remote_address))

    async def produce(self, out: Outlet, ctx: RunContext) -> None:
        listeners, address, unbind = await self.bind()
        edge = ctx.edge(ctx.stage(f"{self.name}.input"))
        serving = _Serving(self, out, ctx, edge, len(listeners))
        try:
            for listener in listeners:
                serving.spawn(serving.accept_loop, listener)
            await _announce(self.on_listening, address)
            async for msg in edge:
                await out.emit(msg)
        finally:
            serving.shutdown()
            edge.close_receive()
            for listener in listeners:
                await _aclose(listener)
            unbind()


class _Serving:
    """One run of a stream server: its accept loops, connections and their cancel scopes.

    Every task is started in the run's task group inside a cancel scope kept here, so the
    server's end (early stop, or the source failing) cancels them all; a graceful stop
    only interrupts their reads (``pull_scope``), letting them hand on what they read.
    """

    def __init__(
        self, server: _StreamServer, out: Outlet, ctx: RunContext, edge: Edge, listeners: int
    ) -> None:
        self.server = server
        self.out = out
        self.ctx = ctx
        self.edge = edge
        self.report = _Reporter(server.on_error, server.name, out)
        self.slots = anyio.Semaphore(server.max_connections)
        self.scopes: set[anyio.CancelScope] = set()
        self.closed = False
        self.accepting = listeners
        self.accepted = 0

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self.ctx.tg.start_soon(self._guarded, fn, *args, name=f"aflow:{self.server.name}")

    async def _guarded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        with anyio.CancelScope() as scope:
            if self.closed:
                scope.cancel()
            self.scopes.add(scope)
            try:
                await fn(*args)
            except Closed:
                pass
            except Exception as exc:
                self.ctx.fail(locate(exc, self.server.name))
            finally:
                self.scopes.discard(scope)

    def shutdown(self) -> None:
        self.closed = True
        for scope in list(self.scopes):
            scope.cancel()

    async def accept_loop(self, listener: SocketListener) -> None:
        try:
            while (stream := await self._accept(listener)) is not None:
                self.accepted += 1
                self.spawn(self._connection, stream, self.edge.sender(), self.accepted)
        finally:
            await _aclose(listener)
            self.accepting -= 1
            if not self.accepting:
                self.edge.close_send()

    async def _accept(self, listener: SocketListener) -> SocketStream | None:
        """The next connection once a slot is free; None once the run stops."""
        while not self.out.stopping:
            with self.out.pull_scope():
                await self.slots.acquire()
                try:
                    return await listener.accept()
                except anyio.ClosedResourceError:  # closed by the server's end
                    self.slots.release()
                    return None
                except OSError as exc:  # out of file descriptors and the like: wait
                    logger.warning("%s: accept failed: %r", self.server.name, exc)
                    self.slots.release()
                    await anyio.sleep(0.1)
                except BaseException:
                    self.slots.release()
                    raise
        return None

    async def _connection(self, stream: SocketStream, sender: _SendHandle, number: int) -> None:
        server = self.server
        peer = server.peer(stream, number)
        blocked = self.edge.receiver.blocked

        async def send(msg: Message) -> None:
            try:
                await sender.send(msg, blocked)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise Closed from None

        logger.debug("%s: %s connected", server.name, peer)
        try:
            framer = server.opts.framer(peer)
            await _pump(stream, framer, send, self.out, server.opts, self.report, peer)
        finally:
            sender.close_send()
            self.slots.release()
            await _aclose(stream)
            logger.debug("%s: %s closed", server.name, peer)


class _TcpServer(_StreamServer):
    def __init__(self, host: str, port: int, opts: _Options, **kwargs: Any) -> None:
        super().__init__(opts, **kwargs)
        self.host = host
        self.port = port

    async def bind(self) -> tuple[list[SocketListener], Any, Callable[[], None]]:
        multi = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        listeners = [x for x in multi.listeners if isinstance(x, SocketListener)]
        if self.opts.read_size > READ_SIZE:
            # Large reads asked for: a kernel buffer to match (accepted sockets inherit it),
            # else reads return what autotuning buffered, often a few hundred KB.
            for listener in listeners:
                raw = listener.extra(SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.opts.read_size * 2)
        address = _ip_address(listeners[0].extra(SocketAttribute.local_address))
        return listeners, address, lambda: None


class _UnixServer(_StreamServer):
    scheme = "unix"

    def __init__(self, path: str, mode: int | None, opts: _Options, **kwargs: Any) -> None:
        super().__init__(opts, **kwargs)
        self.path = path
        self.mode = mode

    async def bind(self) -> tuple[list[SocketListener], Any, Callable[[], None]]:
        listener = await anyio.create_unix_listener(self.path, mode=self.mode)
        inode = os.stat(self.path).st_ino
        return [listener], self.path, lambda: self._unlink(inode)

    def _unlink(self, inode: int) -> None:
        """Remove the socket file, unless another socket has replaced it meanwhile."""
        with suppress(FileNotFoundError):
            st = os.stat(self.path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
                os.unlink(self.path)

    def peer(self, stream: SocketStream, number: int) -> str:
        return f"unix://{self.path}#{number}"


def tcp_server(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    max_connections: int = 64,
    max_line: int = MiB,
    idle_timeout: float | None = None,
    read_size: int = READ_SIZE,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
) -> Flow[Any]:
    """A TCP server: what its clients send, framed, as one flow; runs until stopped.

    Output by ``framing``:

    * ``"lines"``: blocks of complete lines as ``uint8`` batches, ready for the decoders
      (``af.tcp_server(9000) | af.decode_csv(dtype)``); provenance names the peer
      (``tcp://127.0.0.1:53211``) and its line numbers, counted per connection.
    * ``"length_prefixed"``: each frame (4-byte big-endian length, then the payload) as
      one ``bytes`` element.
    * ``"records"``: arrays of ``dtype`` (give the byte order, e.g. ``"<f8"``); a record
      split across reads is joined, per connection.

    Clients are read concurrently, each by its own task; while the flow's buffers are
    full the server stops reading, so the clients' writes block. Beyond
    ``max_connections`` open connections, new clients wait in the listen backlog (their
    connect succeeds but nothing is read) until a connection closes.

    A client that sends a line or frame longer than ``max_line`` bytes is disconnected.
    Unfinished data at the end of a connection (the client left mid-line, went idle, or
    the run stopped) is dropped as an :class:`~aflow.codecs.framing.IncompleteFrameError`.
    Both are logged (logger ``"aflow"``), counted in the source's ``errors`` and handed
    to ``on_error``; other connections are unaffected.

    Args:
        port: port to listen on; 0 picks a free port at every run (see ``on_listening``).
        host: address to bind; the default accepts local clients only. ``"0.0.0.0"``
            or ``"::"`` exposes the server to the network.
        framing: ``"lines"``, ``"length_prefixed"`` or ``"records"``.
        dtype: the record dtype, for ``framing="records"``.
        max_connections: connections read at once.
        max_line: longest line or frame accepted, in bytes; bounds memory per connection.
        idle_timeout: close a connection that sends nothing for this many seconds.
        read_size: bytes asked of the socket per read (a line block holds at most this
            much plus one unfinished line).
        on_error: ``"skip"`` (log and count), :func:`~aflow.dead_letter` (also receives
            the dropped bytes with their provenance), or ``"raise"`` (fail the run).
        on_listening: called with ``(host, port)`` at each run once the socket is bound,
            before the first client is read; sync or async.

    The server stops with the run (``run.stop()``, a ``take`` satisfied downstream,
    cancellation): it closes the listener and every connection, and what was read is
    passed on and flushed.

    Example: a server on a free port, the port handed over through a memory stream::

        send, receive = anyio.create_memory_object_stream[tuple[str, int]](1)
        flow = af.tcp_server(0, on_listening=send.send_nowait) | af.decode_csv(dtype)
        async with flow.open() as run:
            host, port = await receive.receive()
            ...  # tell the clients; then `async for rows in run`
    """
    opts = _Options.check(framing, dtype, max_line, idle_timeout, read_size)
    return Flow(
        _TcpServer(
            host,
            port,
            opts,
            max_connections=max_connections,
            on_error=on_error,
            on_listening=on_listening,
            name=f"tcp_server({host}:{port})",
        )
    )


def unix_server(
    path: str | os.PathLike[str],
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    mode: int | None = None,
    max_connections: int = 64,
    max_line: int = MiB,
    idle_timeout: float | None = None,
    read_size: int = READ_SIZE,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
) -> Flow[Any]:
    """A server on a Unix socket at ``path``; like :func:`tcp_server` otherwise.

    A stale socket file at ``path`` is replaced; the run removes its socket file when it
    ends. Provenance names each connection ``unix://<path>#<n>`` (n counts connections
    of the run). ``mode`` sets the socket file's permissions (e.g. ``0o600``);
    ``on_listening`` receives the path.
    """
    opts = _Options.check(framing, dtype, max_line, idle_timeout, read_size)
    text = os.fspath(path)
    return Flow(
        _UnixServer(
            text,
            mode,
            opts,
            max_connections=max_connections,
            on_error=on_error,
            on_listening=on_listening,
            name=f"unix_server({text})",
        )
    )


# -- TCP client -------------------------------------------------------------------------


class _TcpClient(Source):
    def __init__(
        self,
        host: str,
        port: int,
        opts: _Options,
        *,
        reconnect: bool,
        backoff: float,
        max_backoff: float,
        connect_timeout: float,
        on_error: ErrorPolicy,
    ) -> None:
        if backoff <= 0 or max_backoff < backoff or connect_timeout <= 0:
            raise ValueError("tcp_client: need 0 < backoff <= max_backoff, connect_timeout > 0")
        self.host = host
        self.port = port
        self.opts = opts
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.on_error = check_policy(on_error)
        self.name = f"tcp_client({host}:{port})"

    async def produce(self, out: Outlet, ctx: RunContext) -> None:
        report = _Reporter(self.on_error, self.name, out)
        delay = self.backoff
        while not out.stopping:
            try:
                stream = await self._connect(out)
            except OSError as exc:
                if not self.reconnect:
                    raise
                logger.warning("%s: cannot connect: %r; retrying in %.2g s", self.name, exc, delay)
            else:
                if stream is None:
                    return
                try:
                    peer = _url("tcp", (self.host, self.port))
                    framer = self.opts.framer(peer)
                    received = await _pump(stream, framer, out.emit, out, self.opts, report, peer)
                finally:
                    await _aclose(stream)
                if not self.reconnect:
                    return
                delay = self.backoff if received else delay
                logger.info("%s: disconnected; reconnecting in %.2g s", self.name, delay)
            with out.pull_scope():
                await anyio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _connect(self, out: Outlet) -> SocketStream | None:
        """A connection, or None once the run stops; raises OSError (TimeoutError too)."""
        with out.pull_scope(), anyio.fail_after(self.connect_timeout):
            return await anyio.connect_tcp(self.host, self.port)
        return None


def tcp_client(
    host: str,
    port: int,
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    reconnect: bool = True,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    connect_timeout: float = 10.0,
    max_line: int = MiB,
    idle_timeout: float | None = None,
    read_size: int = READ_SIZE,
    on_error: ErrorPolicy = "skip",
) -> Flow[Any]:
    """Connect to a TCP server and read what it sends, framed as in :func:`tcp_server`.

    With ``reconnect=True`` the flow runs until stopped: a failed connect, a broken
    connection or the server closing it leads to a new connect after ``backoff``
    seconds, doubling after each attempt that brings no data, up to ``max_backoff``.
    With ``reconnect=False`` the flow ends when the server closes the connection, and a
    failed connect raises ``OSError``. Line numbers in provenance start again at each
    connection; unfinished data at a disconnect is reported as in :func:`tcp_server`,
    which also describes the other arguments.

    Args:
        connect_timeout: seconds one connect may take (it then counts as failed).
        idle_timeout: treat a connection silent for this long as broken (reconnect).
    """
    opts = _Options.check(framing, dtype, max_line, idle_timeout, read_size)
    return Flow(
        _TcpClient(
            host,
            port,
            opts,
            reconnect=reconnect,
            backoff=backoff,
            max_backoff=max_backoff,
            connect_timeout=connect_timeout,
            on_error=on_error,
        )
    )


# -- UDP --------------------------------------------------------------------------------


class _UdpServer(Source):
    def __init__(
        self,
        host: str,
        port: int,
        framing: Framing,
        dtype: np.dtype[Any] | None,
        on_error: ErrorPolicy,
        on_listening: OnListening | None,
    ) -> None:
        self.host = host
        self.port = port
        self.framing = framing
        self.dtype = dtype
        self.on_error = check_policy(on_error)
        self.on_listening = on_listening
        self.name = f"udp_server({host}:{port})"

    async def produce(self, out: Outlet, ctx: RunContext) -> None:
        report = _Reporter(self.on_error, self.name, out)
        sock = await anyio.create_udp_socket(local_host=self.host, local_port=self.port)
        try:
            address = _ip_address(sock.extra(SocketAttribute.local_address))
            await _announce(self.on_listening, address)
            while not out.stopping:
                packet = None
                with out.pull_scope():
                    packet = await sock.receive()
                if packet is None:
                    return
                data, peer = packet
                msg = await self._frame(data, _url("udp", peer), report)
                if msg is not None:
                    await out.emit(msg)
        finally:
            await _aclose(sock)

    async def _frame(self, data: bytes, source: str, report: _Reporter) -> Batch | None:
        """One datagram as a block of lines (numbered from 1) or an array of records."""
        if not data:
            return None
        if self.framing == "lines":
            block = data if data.endswith(b"\n") else data + b"\n"
            n = block.count(b"\n")
            prov = Provenance(source, 1, 1 + n, "line", 0, len(data))
            return Batch(np.frombuffer(block, np.uint8), "source", prov)
        assert self.dtype is not None
        size = self.dtype.itemsize
        if len(data) % size:
            error = IncompleteFrameError(
                f"a datagram of {len(data)} bytes is not a whole number of {size}-byte "
                "records; dropped",
                source=source,
            )
            await report(error, data, Provenance(source, 0, len(data), "byte"))
            return None
        rows: NDArray[Any] = np.frombuffer(data, self.dtype)
        return Batch(rows, "source", Provenance(source, 0, len(rows), "row", 0, len(data)))


def udp_server(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
) -> Flow[Any]:
    """Receive UDP datagrams, each holding one or many lines or records; runs until stopped.

    Each datagram becomes one message: a block of its lines (a last line without a
    newline counts; provenance ``udp://<peer>``, lines numbered from 1 in the datagram),
    or an array of ``dtype`` records (``framing="records"``; a datagram that is not a
    whole number of records is dropped and reported through ``on_error``). UDP has no
    backpressure: while the flow is slow, the kernel drops datagrams that do not fit its
    receive buffer. See :func:`tcp_server` for ``host``, ``port`` and ``on_listening``.
    """
    check_framing(framing, dtype, ("lines", "records"))
    dt = None if dtype is None else np.dtype(dtype)
    return Flow(_UdpServer(host, port, framing, dt, on_error, on_listening))

"""Stream servers (TCP and Unix sockets): many clients, one task each, one buffer."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketListener
from numpy.typing import DTypeLike

from ...abc import Buffer, Closed, Context, Message, Op, Outlet, Source
from ...codecs.framing import Framing
from ...flow import Flow
from ...policies import ErrorPolicy, Reporter, check_policy
from ._common import (
    READ_SIZE,
    MiB,
    OnListening,
    _aclose,
    _announce,
    _announce_connection,
    _ip_address,
    _Options,
    _pump,
    _url,
    logger,
)
from ._lifecycle import OnConnection, _Tally

IDLE_TIMEOUT = 60.0
"""Default seconds a connection may send nothing before it is closed."""
LINE_TIMEOUT = 30.0
"""Default seconds a connection may send bytes without completing a line or frame."""
EVICT_AFTER = 1.0
"""Seconds a connection must have gone without a complete line or frame before a new
client may evict it when every slot is taken."""


class _SendHandle(Protocol):
    """One producer's handle on the shared buffer (``Buffer.sender()``)."""

    async def send(self, msg: Message, blocked: list[float], /) -> None: ...

    def close_send(self) -> None: ...


class _Edge(Op):
    """The buffer every connection sends into holds one message: each busy connection
    already holds its block while it waits for room, and the stage after the server has
    an input buffer of its own; room for more here only held more blocks in memory (the
    run's default of 4: 1 MB more of a busy 4-client server, no faster)."""

    buffer = 1


class _StreamServer(Source):
    """Accepts connections; each is read by its own task into one shared buffer.

    Sockets are read directly (``recv`` once readable), never through a transport that
    reads ahead: what the server has not asked for stays in the kernel, whose full
    buffers then stop the client (backpressure).
    """

    scheme = "tcp"

    def __init__(
        self,
        opts: _Options,
        *,
        max_connections: int,
        stop_after: int | None,
        on_error: ErrorPolicy,
        on_listening: OnListening | None,
        name: str,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections}: must be at least 1")
        if stop_after is not None and stop_after < 1:
            raise ValueError(f"stop_after={stop_after}: must be at least 1 (or None)")
        self.opts = opts
        self.max_connections = max_connections
        self.stop_after = stop_after
        self.on_error = check_policy(on_error)
        self.on_listening = on_listening
        self.name = name

    def nested_buffers(self) -> int:
        return 1

    async def bind(self) -> tuple[list[SocketListener], Any, Callable[[], None]]:
        """Open the listening sockets; return them, the address to announce and what to
        call once they are closed."""
        raise NotImplementedError

    def peer(self, address: Any, number: int) -> str:
        # A client that reset the connection before we looked may have no address: that
        # must cost its own connection only, never the server.
        try:
            return _url(self.scheme, address)
        except (TypeError, ValueError, IndexError):
            return f"{self.scheme}://unknown-peer#{number}"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        listeners, address, unbind = await self.bind()
        edge = ctx.new_buffer(ctx.new_counters(f"{self.name}.input"), _Edge())
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
        self, server: _StreamServer, out: Outlet, ctx: Context, edge: Buffer, listeners: int
    ) -> None:
        self.server = server
        self.out = out
        self.ctx = ctx
        self.edge = edge
        self.report = Reporter(server.on_error, server.name, out.counters)
        self.slots = anyio.Semaphore(server.max_connections)
        self.scopes: set[anyio.CancelScope] = set()
        self.open: set[_Tally] = set()
        self.closed = False
        self.accepting = listeners
        self.accepted = 0

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self.ctx.start_soon(self._scoped, fn, *args, name=self.server.name)

    async def _scoped(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        with anyio.CancelScope() as scope:
            if self.closed:
                scope.cancel()
            self.scopes.add(scope)
            try:
                await fn(*args)
            finally:
                self.scopes.discard(scope)

    def shutdown(self) -> None:
        self.closed = True
        for scope in list(self.scopes):
            scope.cancel()

    def _done_accepting(self) -> bool:
        limit = self.server.stop_after
        return self.out.stopping or (limit is not None and self.accepted >= limit)

    async def accept_loop(self, listener: SocketListener) -> None:
        raw = listener.extra(SocketAttribute.raw_socket)
        raw.setblocking(False)
        try:
            while not self._done_accepting():
                accepted = await self._accept(raw)
                if accepted is None:
                    break
                sock, address = accepted
                if self._done_accepting():  # another listener reached stop_after
                    sock.close()
                    break
                self.accepted += 1
                tally = _Tally(self.server.peer(address, self.accepted), self.accepted)
                self.open.add(tally)
                self.spawn(self._connection, sock, tally, self.edge.sender())
        finally:
            await _aclose(listener)
            self.accepting -= 1
            if not self.accepting:
                self.edge.close_send()

    async def _accept(self, raw: socket.socket) -> tuple[socket.socket, Any] | None:
        """The next connection, with a slot for it; None once the run stops."""
        while not self.out.stopping:
            with self.out.pull_scope():
                try:
                    await anyio.wait_readable(raw)
                    sock, address = raw.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue  # gone before we took it
                except OSError as exc:  # out of file descriptors and the like: wait
                    logger.warning("%s: accept failed: %r", self.server.name, exc)
                    await anyio.sleep(0.1)
                    continue
                try:
                    sock.setblocking(False)
                    await self._slot()
                except BaseException:
                    sock.close()
                    raise
                return sock, address
        return None

    async def _slot(self) -> None:
        """Take a connection slot. When all are taken, evict the connection that has gone
        longest without a complete line or frame, once that is ``EVICT_AFTER`` seconds."""
        while True:
            try:
                self.slots.acquire_nowait()
                return
            except anyio.WouldBlock:
                pass
            idle = [t for t in self.open if not t.sending and not t.evicted]
            wait = float("inf")
            if idle:
                victim = min(idle, key=lambda t: t.progress)
                wait = victim.progress + EVICT_AFTER - anyio.current_time()
                if wait <= 0:
                    logger.info(
                        "%s: %s: every slot taken: evicted for a new client",
                        self.server.name,
                        victim.peer,
                    )
                    victim.evict()
                    wait = float("inf")
            with anyio.move_on_after(wait):
                await self.slots.acquire()
                return

    def _backlogged(self) -> bool:
        return self.edge.full

    async def _connection(self, sock: socket.socket, tally: _Tally, sender: _SendHandle) -> None:
        server = self.server
        blocked = self.edge.receiver.blocked

        async def send(msg: Message) -> None:
            try:
                await sender.send(msg, blocked)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise Closed from None

        async def receive(n: int) -> bytes:
            await anyio.lowlevel.checkpoint()  # before the read: a cancel loses nothing
            while True:
                try:
                    return sock.recv(n)
                except (BlockingIOError, InterruptedError):
                    await anyio.wait_readable(sock)

        logger.debug("%s: %s connected", server.name, tally.peer)
        on_connection = server.opts.on_connection
        try:
            await _announce_connection(on_connection, tally.event("opened"))
            framer = server.opts.framer(tally.peer)
            await _pump(
                receive, framer, send, self.out, server.opts, self.report, tally, self._backlogged
            )
        finally:
            sender.close_send()
            self.open.discard(tally)
            self.slots.release()
            sock.close()
            logger.debug("%s: %s closed (%s)", server.name, tally.peer, tally.reason)
            with anyio.CancelScope(shield=True):
                await _announce_connection(on_connection, tally.event("closed"))


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

    def peer(self, address: Any, number: int) -> str:
        return f"unix://{self.path}#{number}"


def tcp_server(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    framing: Framing = "lines",
    dtype: DTypeLike | None = None,
    max_connections: int = 64,
    max_line: int = MiB,
    idle_timeout: float | None = IDLE_TIMEOUT,
    line_timeout: float | None = LINE_TIMEOUT,
    read_size: int = READ_SIZE,
    stop_after: int | None = None,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
    on_connection: OnConnection | None = None,
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
    full the server stops reading, so the kernel's buffers fill and the clients' writes
    block. A connection holds at most 4 reads and 256 KiB of them (one read, if
    ``read_size`` is larger) plus one unfinished line or frame (``max_line``) beyond what
    the run's buffers hold: with the defaults, 1.25 MiB per connection on top of
    ``max_bytes_in_flight``.

    Hostile or broken clients cost only their own connection, and the defaults keep the
    service reachable (see "Running a server in production" in the docs):

    * a client that resets its connection, or leaves mid-line, loses only its own
      unfinished line (reported as an
      :class:`~aflow.codecs.framing.IncompleteFrameError`);
    * a line or frame longer than ``max_line`` bytes closes its connection;
    * a connection silent for ``idle_timeout`` seconds is closed, and so is one that
      sends bytes without completing a line or frame for ``line_timeout`` seconds (a
      "slowloris" client);
    * once ``max_connections`` are open, a new client evicts the connection that has gone
      longest without a complete line or frame, if that is at least 1 s (else it waits
      for a free slot).

    Bad input is logged (logger ``"aflow"``), counted in the source's ``errors`` and
    handed to ``on_error``. To isolate a client's bad *lines* (a row that does not
    decode), give the decoder an error policy: ``af.decode_csv(dtype,
    on_error=af.dead_letter(bad))`` keeps serving every client, and each
    :class:`~aflow.FailedItem`'s provenance names the peer and the line.

    Args:
        port: port to listen on; 0 picks a free port at every run (see ``on_listening``).
        host: address to bind; the default accepts local clients only. ``"0.0.0.0"``
            or ``"::"`` exposes the server to the network.
        framing: ``"lines"``, ``"length_prefixed"`` or ``"records"``.
        dtype: the record dtype, for ``framing="records"``.
        max_connections: connections read at once.
        max_line: longest line or frame accepted, in bytes; bounds memory per connection.
        idle_timeout: close a connection that sends nothing for this many seconds
            (``None``: never).
        line_timeout: close a connection that sends bytes but no complete line or frame
            for this many seconds (``None``: never).
        read_size: bytes asked of the socket per read. While the flow is busy (its
            buffer full), reads that follow at once are gathered, up to 4 of them and
            256 KiB (with the default 256 KiB reads: none), into one block: fewer,
            larger blocks decode faster, and an idle flow still gets each read at once.
            A block holds at most 256 KiB (one read, if larger) plus one unfinished
            line.
        on_error: ``"skip"`` (log and count), :func:`~aflow.dead_letter` (also receives
            the dropped bytes with their provenance), or ``"raise"`` (fail the run).
        stop_after: stop listening after this many connections; the flow ends once
            they have closed (``None``: run until stopped).
        on_listening: called with ``(host, port)`` at each run once the socket is bound,
            before the first client is read; sync or async.
        on_connection: called with a :class:`~aflow.ConnectionEvent` as each connection
            opens and closes (peer, bytes, lines, errors, duration, why it closed); sync
            or async. To stop the server on a condition of yours, call ``run.stop()``
            from it (see the docs).

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
    opts = _Options.check(
        framing, dtype, max_line, idle_timeout, read_size, line_timeout, on_connection
    )
    return Flow(
        _TcpServer(
            host,
            port,
            opts,
            max_connections=max_connections,
            stop_after=stop_after,
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
    permissions: int | None = None,
    max_connections: int = 64,
    max_line: int = MiB,
    idle_timeout: float | None = IDLE_TIMEOUT,
    line_timeout: float | None = LINE_TIMEOUT,
    read_size: int = READ_SIZE,
    stop_after: int | None = None,
    on_error: ErrorPolicy = "skip",
    on_listening: OnListening | None = None,
    on_connection: OnConnection | None = None,
) -> Flow[Any]:
    """A server on a Unix socket at ``path``; like :func:`tcp_server` otherwise.

    A stale socket file at ``path`` is replaced; the run removes its socket file when it
    ends. Provenance names each connection ``unix://<path>#<n>`` (n counts connections
    of the run). ``permissions`` sets the socket file's mode (e.g. ``0o600``);
    ``on_listening`` receives the path.
    """
    opts = _Options.check(
        framing, dtype, max_line, idle_timeout, read_size, line_timeout, on_connection
    )
    text = os.fspath(path)
    return Flow(
        _UnixServer(
            text,
            permissions,
            opts,
            max_connections=max_connections,
            stop_after=stop_after,
            on_error=on_error,
            on_listening=on_listening,
            name=f"unix_server({text})",
        )
    )

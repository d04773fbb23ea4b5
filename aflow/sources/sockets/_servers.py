"""Stream servers (TCP and Unix sockets): many clients, one task each, one buffer."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Protocol

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from numpy.typing import DTypeLike

from ...abc import Buffer, Closed, Context, Message, Outlet, Source
from ...codecs.framing import Framing
from ...flow import Flow
from ...policies import ErrorPolicy, Reporter, check_policy
from ._common import (
    READ_SIZE,
    MiB,
    OnListening,
    _aclose,
    _announce,
    _ip_address,
    _Options,
    _pump,
    _url,
    logger,
)


class _SendHandle(Protocol):
    """One producer's handle on the shared buffer (``Buffer.sender()``)."""

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

    def nested_buffers(self) -> int:
        return 1

    async def bind(self) -> tuple[list[SocketListener], Any, Callable[[], None]]:
        """Open the listening sockets; return them, the address to announce and what to
        call once they are closed."""
        raise NotImplementedError

    def peer(self, stream: SocketStream, number: int) -> str:
        # A client that reset the connection before we looked has no address any more:
        # that must cost its own connection only, never the server.
        address = stream.extra(SocketAttribute.remote_address, None)
        if address is None:
            return f"{self.scheme}://unknown-peer#{number}"
        return _url(self.scheme, address)

    async def produce(self, out: Outlet, ctx: Context) -> None:
        listeners, address, unbind = await self.bind()
        edge = ctx.new_buffer(ctx.new_counters(f"{self.name}.input"))
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

    def _backlogged(self) -> bool:
        return self.edge.full

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
            await _pump(
                stream, framer, send, self.out, server.opts, self.report, peer, self._backlogged
            )
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
        read_size: bytes asked of the socket per read. While the flow is busy (its
            buffer full), reads that follow at once are gathered, up to 4 of them, into
            one block: fewer, larger blocks decode faster, and an idle flow still gets
            each read at once. A block holds at most ``4 * read_size`` bytes plus one
            unfinished line.
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
    permissions: int | None = None,
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
    of the run). ``permissions`` sets the socket file's mode (e.g. ``0o600``);
    ``on_listening`` receives the path.
    """
    opts = _Options.check(framing, dtype, max_line, idle_timeout, read_size)
    text = os.fspath(path)
    return Flow(
        _UnixServer(
            text,
            permissions,
            opts,
            max_connections=max_connections,
            on_error=on_error,
            on_listening=on_listening,
            name=f"unix_server({text})",
        )
    )


# -- TCP client -------------------------------------------------------------------------

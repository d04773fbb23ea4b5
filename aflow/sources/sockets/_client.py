"""A TCP client source that reconnects with capped backoff."""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import SocketStream
from numpy.typing import DTypeLike

from ...abc import Context, Outlet, Source
from ...codecs.framing import Framing
from ...flow import Flow
from ...policies import ErrorPolicy, Reporter, check_policy
from ._common import READ_SIZE, MiB, _aclose, _Options, _pump, _url, logger
from ._lifecycle import _Tally


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

    async def produce(self, out: Outlet, ctx: Context) -> None:
        report = Reporter(self.on_error, self.name, out.counters)
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
                    tally = _Tally(_url("tcp", (self.host, self.port)), 1)
                    framer = self.opts.framer(tally.peer)
                    await _pump(
                        stream.receive,
                        framer,
                        out.emit,
                        out,
                        self.opts,
                        report,
                        tally,
                        lambda: out.backlogged,
                    )
                    received = tally.bytes > 0
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

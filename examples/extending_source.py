"""A source over an external async client: numbered readings from a TCP line server.

The protocol: the client sends ``FROM <seq>\\n``; the server answers with lines
``seq,sensor,value\\n`` from that sequence number on, then ``END\\n``. A connection that
drops before ``END`` is resumed with ``FROM <next seq>``, so nothing is lost or repeated.

Run it: ``python examples/extending_source.py`` starts a server that drops the connection
every 2,500 readings and reads 10,000 readings from it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from anyio.abc import SocketStream
from numpy.typing import NDArray

import aflow as af
from aflow.abc import Batch, Context, Outlet, Provenance, Source

READING = np.dtype([("seq", "i8"), ("sensor", "i4"), ("value", "f8")])


class ConnectionLost(ConnectionError):
    """The server closed or reset the connection before ``END``."""


class ReadingsClient:
    """The external client: one connection, read in chunks of complete lines."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream: SocketStream | None = stream
        self.rest = b""
        self.ended = False

    @classmethod
    async def connect(cls, host: str, port: int, start: int) -> ReadingsClient:
        stream = await anyio.connect_tcp(host, port)
        client = cls(stream)
        try:
            await stream.send(f"FROM {start}\n".encode())
        except BaseException:
            await client.aclose()
            raise
        return client

    async def receive_lines(self) -> list[bytes]:
        """The complete lines of the next chunk received; ``[]`` once the server sent END.

        Raises:
            ConnectionLost: the connection ended before END.
        """
        assert self.stream is not None, "receive_lines() after aclose()"
        while not self.ended:
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise ConnectionLost("the server closed the connection before END") from exc
            *lines, self.rest = (self.rest + data).split(b"\n")
            if lines and lines[-1] == b"END":
                self.ended = True
                lines.pop()
            if lines:
                return lines
        return []

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None  # idempotent
        if stream is not None:
            with anyio.CancelScope(shield=True):  # closes even when cancelled
                await stream.aclose()


class ReadingsSource(Source):
    """Readings as array batches of up to ``batch_rows`` rows, with their sequence numbers
    as provenance. A batch closes when full or when no line came for ``max_delay`` seconds.

    A lost connection is resumed after ``backoff`` seconds (doubling); after ``retries``
    failed attempts in a row the run fails with a ``ConnectionError`` saying so.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        batch_rows: int = 1024,
        max_delay: float = 0.05,
        retries: int = 5,
        backoff: float = 0.05,
    ) -> None:
        # The description only: per-run state lives in produce(), so the flow re-runs.
        self.host, self.port = host, port
        self.batch_rows, self.max_delay = batch_rows, max_delay
        self.retries, self.backoff = retries, backoff
        self.name = f"readings({host}:{port})"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        next_seq, failures = 0, 0
        while not out.stopping:
            start = next_seq
            client: ReadingsClient | None = None
            try:
                with out.pull_scope():  # a graceful stop may interrupt the connect
                    client = await ReadingsClient.connect(self.host, self.port, next_seq)
            except OSError as exc:
                error: Exception = exc
            else:
                if client is None:  # stopped while connecting
                    return
                try:
                    next_seq, done = await self._pump(client, out, next_seq)
                finally:
                    await client.aclose()  # on end, error, Closed and cancellation alike
                if done:
                    return
                error = ConnectionLost(f"connection lost at seq {next_seq}")
            failures = 1 if next_seq > start else failures + 1  # no progress: back off more
            if failures > self.retries:
                raise ConnectionError(
                    f"{self.name}: {failures} attempts in a row brought no data, the last "
                    f"failing with {error!r}; is the server running?"
                ) from error
            with out.pull_scope():
                await anyio.sleep(self.backoff * 2 ** (failures - 1))

    async def _pump(self, client: ReadingsClient, out: Outlet, seq: int) -> tuple[int, bool]:
        """Emit batches from one connection; return the next sequence number and whether
        the source is done (END, or a graceful stop) rather than disconnected. Lines
        received but not emitted when the connection drops are asked for again."""
        pending: list[bytes] = []
        while True:
            lines: list[bytes] | None = None
            wait = self.max_delay if pending else math.inf
            try:
                with out.pull_scope(), anyio.move_on_after(wait):
                    lines = await client.receive_lines()
            except ConnectionLost:
                return seq, False
            if lines:  # more readings
                pending += lines
                while len(pending) >= self.batch_rows:
                    seq = await self._emit(out, pending[: self.batch_rows], seq)
                    del pending[: self.batch_rows]
                continue
            # END ([]), a quiet moment or a graceful stop (None): emit what is held
            seq = await self._emit(out, pending, seq)
            pending = []
            if lines is not None or out.stopping:
                return seq, True

    async def _emit(self, out: Outlet, lines: list[bytes], seq: int) -> int:
        if not lines:
            return seq
        rows = parse(lines)
        stop = int(rows["seq"][-1]) + 1
        where = Provenance(f"tcp://{self.host}:{self.port}", seq, stop)  # rows by seq
        await out.emit(Batch(rows, "source", where))
        return stop


def parse(lines: list[bytes]) -> NDArray[Any]:
    """``seq,sensor,value`` lines to a structured array (NumPy parses the whole block)."""
    return np.loadtxt([line.decode() for line in lines], delimiter=",", dtype=READING, ndmin=1)


def read_readings(host: str, port: int, **options: Any) -> af.Flow[NDArray[Any]]:
    """A flow of reading batches (dtype :data:`READING`) from the server at host:port."""
    return af.Flow(ReadingsSource(host, port, **options))


# -- a server to read from (what the tests and the demo run) ------------------------------


@dataclass
class ReadingsServer:
    """Where the test server listens, how many clients it is serving now, and how many
    readings it has sent in all."""

    port: int = 0
    open_connections: int = 0
    sent: int = 0


@asynccontextmanager
async def serve_readings(
    n: int | None, *, drop_every: int | None = None, pause_at: int | None = None
) -> AsyncIterator[ReadingsServer]:
    """Serve readings ``0..n-1`` (forever when ``n`` is None) on 127.0.0.1.

    ``drop_every`` closes each connection after that many lines; ``pause_at`` stops
    sending (without closing) at that sequence number.
    """
    server = ReadingsServer()

    async def handle(stream: SocketStream) -> None:
        server.open_connections += 1
        try:
            async with stream:
                request = await stream.receive()
                await send_from(stream, int(request.split()[1]))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away
        finally:
            server.open_connections -= 1

    async def send_from(stream: SocketStream, seq: int) -> None:
        sent = 0
        while n is None or seq < n:
            if seq == pause_at:
                await stream.receive()  # until the client closes the connection
            if drop_every is not None and sent == drop_every:
                return
            stop = seq + 100 if n is None else min(seq + 100, n)
            if pause_at is not None and seq < pause_at:
                stop = min(stop, pause_at)
            if drop_every is not None:
                stop = min(stop, seq + drop_every - sent)
            lines = "".join(f"{i},{i % 7},{i * 0.5}\n" for i in range(seq, stop))
            await stream.send(lines.encode())
            server.sent += stop - seq
            sent, seq = sent + stop - seq, stop
        await stream.send(b"END\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield server
        tg.cancel_scope.cancel()


async def main() -> None:
    async with serve_readings(10_000, drop_every=2_500) as server:
        result = await (read_readings("127.0.0.1", server.port) | af.collect()).run()
    rows = result.value
    assert np.array_equal(rows["seq"], np.arange(10_000)), "lost or repeated readings"
    print(f"{len(rows):,} readings, seq 0..{rows['seq'][-1]}, none lost or repeated")


if __name__ == "__main__":
    argparse.ArgumentParser(  # no options; --help describes the example without running it
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    anyio.run(main)

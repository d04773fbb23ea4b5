"""An async batching sink with retry: rows sent to an ingest server in requests of up to
``request_rows`` rows, a busy server or a dropped connection retried with backoff.

The protocol (one TCP connection, request by request): the client sends
``<request id> <byte count>\\n`` and the rows' bytes; the server answers ``OK\\n``, or
``BUSY\\n`` when it did not take them. A request sent again after a lost answer carries
the same id, and the server applies each id once: retries never duplicate rows.

Run it: ``python examples/extending_sink.py`` starts a server that is busy for every
third request and drops the connection instead of answering every seventh.
"""

from __future__ import annotations

import argparse
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from numpy.typing import NDArray

import aflow as af
from aflow.abc import Batch, Context, SinkOperator, SinkWriter, StageCounters

READING = np.dtype([("seq", "i8"), ("sensor", "i4"), ("value", "f8")])


class Unavailable(Exception):
    """A request did not go through this time (the server was busy or went away)."""


class IngestClient:
    """The external client: sends one request at a time and waits for its answer."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream: SocketStream | None = stream
        self.replies = BufferedByteReceiveStream(stream)

    @classmethod
    async def connect(cls, host: str, port: int) -> IngestClient:
        return cls(await anyio.connect_tcp(host, port))

    async def send(self, request_id: str, rows: NDArray[Any]) -> None:
        """Send ``rows``; return once the server took them.

        Raises:
            Unavailable: the server was busy or the connection broke (try again).
        """
        assert self.stream is not None, "send() after aclose()"
        payload = rows.tobytes()
        try:
            await self.stream.send(f"{request_id} {len(payload)}\n".encode() + payload)
            reply = await self.replies.receive_until(b"\n", 64)
        except (anyio.IncompleteRead, anyio.BrokenResourceError, OSError) as exc:
            await self.aclose()  # the connection is of no more use
            raise Unavailable(f"connection lost: {exc!r}") from exc
        if reply != b"OK":
            raise Unavailable(f"the server answered {reply.decode()!r}")

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None  # idempotent
        if stream is not None:
            with anyio.CancelScope(shield=True):  # closes even when cancelled
                await stream.aclose()


@dataclass(frozen=True)
class Delivery:
    """The sink's result: what the server took, and how many attempts were repeated."""

    requests: int
    rows: int
    retries: int


class IngestWriter(SinkWriter[Any, Delivery]):
    """Per-run state: the connection, the rows held for the next request, the tallies."""

    def __init__(self, op: IngestOp) -> None:
        self.op = op
        self.client: IngestClient | None = None
        self.held: list[NDArray[Any]] = []
        self.held_rows = 0
        self.run_id = uuid.uuid4().hex[:12]  # request ids are unique across runs
        self.requests = self.rows = self.retries = 0
        self.counters: StageCounters | None = None

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.counters = counters  # this sink's statistics: it counts its retries there

    async def open(self) -> None:
        self.client = await IngestClient.connect(self.op.host, self.op.port)  # fail early

    async def write(self, item: Any) -> None:
        raise TypeError("to_ingest takes array batches; put af.batch(n, dtype=READING) first")

    async def write_batch(self, batch: Batch) -> None:
        self.held.append(batch.data)
        self.held_rows += len(batch.data)
        while self.held_rows >= self.op.request_rows:
            await self._send(self._take(self.op.request_rows))

    async def flush(self) -> None:
        """End of input or graceful stop: send what is held (a last, short request)."""
        if self.held_rows:
            await self._send(self._take(self.held_rows))

    async def aclose(self) -> None:
        client, self.client = self.client, None  # idempotent
        if client is not None:
            await client.aclose()

    def result(self) -> Delivery:
        return Delivery(self.requests, self.rows, self.retries)

    def _take(self, n: int) -> NDArray[Any]:
        rows = np.concatenate(self.held)
        self.held = [rows[n:]] if n < len(rows) else []
        self.held_rows = len(rows) - n
        return rows[:n]

    async def _send(self, rows: NDArray[Any]) -> None:
        op = self.op
        request_id = f"{self.run_id}-{self.requests}"
        for attempt in range(1, op.attempts + 1):
            try:
                if self.client is None or self.client.stream is None:  # lost: reconnect
                    self.client = await IngestClient.connect(op.host, op.port)
                await self.client.send(request_id, rows)
                break
            except (Unavailable, OSError) as exc:
                if attempt == op.attempts:
                    raise Unavailable(
                        f"{op.name}: request {request_id} ({len(rows)} rows) failed "
                        f"{attempt} times, the last with {exc}; is the server up?"
                    ) from exc
                self.retries += 1
                if self.counters is not None:
                    self.counters.retries += 1
                await anyio.sleep(min(op.backoff * 2 ** (attempt - 1), op.max_backoff))
        self.requests += 1
        self.rows += len(rows)


class IngestOp(SinkOperator[Any, Delivery]):
    """The description: where to send, request size and retry settings."""

    fused = False  # awaits the network: a task of its own behind a buffer

    def __init__(
        self,
        host: str,
        port: int,
        request_rows: int,
        attempts: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if request_rows < 1 or attempts < 1:
            raise ValueError("to_ingest: request_rows and attempts must be >= 1")
        self.host, self.port, self.request_rows = host, port, request_rows
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self.name = f"to_ingest({host}:{port})"

    def writer(self, ctx: Context) -> SinkWriter[Any, Delivery]:
        return IngestWriter(self)


def to_ingest(
    host: str,
    port: int,
    *,
    request_rows: int = 1000,
    attempts: int = 5,
    backoff: float = 0.02,
    max_backoff: float = 1.0,
) -> af.Sink[Any, Delivery]:
    """Send batches' rows to the ingest server at host:port in requests of up to
    ``request_rows`` rows; the result is a :class:`Delivery`."""
    return af.Sink(IngestOp(host, port, request_rows, attempts, backoff, max_backoff))


# -- a server to send to (what the tests and the demo run) --------------------------------


@dataclass
class IngestServer:
    """A test server; ``taken`` holds each request's rows by id, in the order applied."""

    port: int = 0
    busy_every: int | None = None
    lose_reply_every: int | None = None
    taken: dict[str, NDArray[Any]] = field(default_factory=dict)
    requests: int = 0
    open_connections: int = 0

    def rows(self) -> NDArray[Any]:
        return np.concatenate(list(self.taken.values())) if self.taken else np.empty(0, READING)

    async def handle(self, stream: SocketStream) -> None:
        self.open_connections += 1
        try:
            async with stream:
                requests = BufferedByteReceiveStream(stream)
                for number in itertools.count(1):  # failures follow the count per connection
                    header = await requests.receive_until(b"\n", 64)
                    request_id, size = header.decode().split()
                    payload = await requests.receive_exactly(int(size))
                    self.requests += 1
                    if self.busy_every and number % self.busy_every == 0:
                        await stream.send(b"BUSY\n")
                        continue
                    self.taken.setdefault(request_id, np.frombuffer(payload, READING))
                    if self.lose_reply_every and number % self.lose_reply_every == 0:
                        return  # applied, but the answer is lost: the client sends it again
                    await stream.send(b"OK\n")
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            pass  # the client went away
        finally:
            self.open_connections -= 1


@asynccontextmanager
async def serve_ingest(
    busy_every: int | None = None, lose_reply_every: int | None = None
) -> AsyncIterator[IngestServer]:
    """Run an :class:`IngestServer` on 127.0.0.1 for the duration of the block."""
    server = IngestServer(busy_every=busy_every, lose_reply_every=lose_reply_every)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        yield server
        tg.cancel_scope.cancel()


async def main() -> None:
    rows = np.zeros(10_500, READING)
    rows["seq"] = np.arange(len(rows))
    rows["value"] = rows["seq"] * 0.5
    async with serve_ingest(busy_every=3, lose_reply_every=7) as server:
        flow = af.from_array(rows, batch_size=768) | to_ingest("127.0.0.1", server.port)
        delivery = (await flow.run()).value
    assert np.array_equal(server.rows(), rows), "rows lost or duplicated"
    print(
        f"{delivery.rows:,} rows in {delivery.requests} requests "
        f"(the last, sent by flush(), of {len(rows) % 1000} rows), {delivery.retries} retries"
    )


if __name__ == "__main__":
    argparse.ArgumentParser(  # no options; --help describes the example without running it
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    anyio.run(main)

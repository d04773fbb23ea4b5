"""The shape the Redis and NATS connectors share: a source whose runs read batches and
acknowledge them batch by batch once the sinks did (:class:`BatchReader`,
:class:`BatchSource`), and a sink sending each batch's rows as payloads to one target or
key-sharded targets (:class:`BatchSinkOp`, :class:`BatchWriter`). Each connector module
keeps its own client code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import numpy as np

from ..abc import (
    Batch,
    Context,
    ErrorPolicy,
    Outlet,
    Provenance,
    SinkOperator,
    SinkWriter,
    Source,
    StageCounters,
    apply_policy,
)
from ._common import Backoff, PayloadCodec, require_asyncio, shard_of

__all__ = ["BatchReader", "BatchSinkOp", "BatchSource", "BatchWriter"]

Token = TypeVar("Token")


class BatchReader(ABC, Generic[Token]):
    """One run of a broker source that acknowledges batch by batch, once the sinks did.

    Each batch emitted gets the next sequence number, its position under ``key``, and
    keeps the tokens that acknowledge its messages (entry ids, reply subjects); a commit
    covering number ``seq`` acknowledges (:meth:`_ack`) the tokens of every batch up to
    it. A read whose every payload was bad emits nothing: its tokens go with the next
    batch's. A subclass reads (:meth:`run`), hands each read's payloads to
    :meth:`_emit_payloads`, acknowledges, and closes its client (:meth:`_disconnect`,
    under :attr:`lock`, which :meth:`_ack` holds while it uses the client).
    """

    def __init__(
        self,
        out: Outlet,
        key: str,
        where: str,
        codec: PayloadCodec,
        on_error: ErrorPolicy,
        name: str,
    ) -> None:
        self.out, self.key, self.where = out, key, where
        self.codec, self.on_error, self.name = codec, on_error, name
        self.rows = 0  # rows emitted, for provenance
        self.seq = 0  # batches emitted with tokens to acknowledge
        self.unacked: OrderedDict[int, list[Token]] = OrderedDict()  # seq -> tokens
        self.carry: list[Token] = []  # tokens of reads that emitted no row
        self.acked = 0
        self.lock = anyio.Lock()
        out.on_commit(self._on_commit)  # acknowledge once the sinks did

    @abstractmethod
    async def run(self) -> None:
        """Read until the source stops (or its idle timeout ends it)."""

    @abstractmethod
    async def _ack(self, tokens: list[Token]) -> None:
        """Acknowledge the messages of ``tokens`` (not empty) to the broker."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close the client, if any (called under :attr:`lock`)."""

    async def run_and_close(self) -> None:
        """:meth:`run`, then close the client, shielded from cancellation."""
        try:
            await self.run()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def close(self) -> None:
        async with self.lock:  # not while an acknowledgement uses the client
            await self._disconnect()

    async def _emit_payloads(
        self, payloads: list[bytes], tokens: list[Token], message_id: Callable[[int], object]
    ) -> None:
        """Decode ``payloads`` (one per message; ``message_id(i)`` names the i-th in
        errors), hand the bad ones to the error policy, and emit the rows as one batch
        (the payloads as they are without a dtype)."""
        msg: Any
        if self.codec.dtype is None:
            msg = payloads
        else:
            rows, bad = self.codec.decode(payloads, message_id, self.where)
            for b in bad:
                await apply_policy(
                    self.on_error, b.payload, b.error, self.name, b.provenance,
                    self.out.counters,
                )  # fmt: skip
            if len(rows) == 0:
                self.carry += tokens
                return
            msg = Batch(rows, "source", Provenance(self.where, self.rows, self.rows + len(rows)))
            self.rows += len(rows)
        tokens = self.carry + tokens
        self.carry = []
        self.seq += 1
        self.unacked[self.seq] = tokens
        await self.out.emit(msg, position=(self.key, self.seq))

    async def _on_commit(self, positions: dict[str, Any]) -> None:
        """The sinks acknowledged everything emitted up to ``positions[key]``."""
        seq = positions.get(self.key)
        if seq is None:
            return
        tokens: list[Token] = []
        while self.unacked and next(iter(self.unacked)) <= seq:
            tokens += self.unacked.popitem(last=False)[1]
        if tokens:
            await self._ack(tokens)


class BatchSource(Source, ABC):
    """A broker source whose runs are :class:`BatchReader` objects, with the options
    every such source has."""

    resumable = True
    client_library = "its client library"

    def __init__(
        self,
        url: str,
        codec: PayloadCodec,
        count: int,
        block: float,
        idle_stop: float | None,
        connect_timeout: float,
        on_error: ErrorPolicy,
        name: str,
    ) -> None:
        self.url, self.codec, self.count, self.block = url, codec, count, block
        self.idle_stop, self.connect_timeout = idle_stop, connect_timeout
        self.on_error, self.name = on_error, name

    @abstractmethod
    def reader(self, out: Outlet) -> BatchReader[Any]:
        """The reader of one run."""

    async def produce(self, out: Outlet, ctx: Context) -> None:
        require_asyncio(self.name, self.client_library)
        await self.reader(out).run_and_close()


class BatchSinkOp(SinkOperator[Any, int], ABC):
    """A broker sink: rows encoded into payloads, sent to ``target`` (a stream, a
    subject), or by ``key`` to one of ``shards`` targets ``target<separator><shard>``."""

    fused = False
    separator = "."

    def __init__(
        self,
        target: str,
        url: str,
        codec: PayloadCodec,
        key: str | None,
        shards: int,
        connect_timeout: float,
        buffer: int | None,
        on_error: ErrorPolicy,
        name: str,
    ) -> None:
        self.target, self.url, self.codec = target, url, codec
        self.key, self.shards = key, shards
        self.connect_timeout, self.buffer, self.on_error = connect_timeout, buffer, on_error
        self.name = name
        self.where = url  # the server, for messages


class BatchWriter(SinkWriter[Any, int], ABC):
    """The writer of a :class:`BatchSinkOp`: each batch (or chunk of elements) is sent
    at once as ``(target, payload)`` pairs (:meth:`_send_once`), sent again after a
    connection error (:attr:`errors`; the client closed, capped backoff) for the sink's
    ``connect_timeout``, then handed to its ``on_error``; the result is the count sent."""

    errors: tuple[type[BaseException], ...] = (OSError,)
    """What :meth:`_send_once` raises that sending again may mend."""

    def __init__(self, op: BatchSinkOp) -> None:
        self.sink = op
        self.sent = 0
        self.counters: StageCounters | None = None
        self.backoff = Backoff()

    @abstractmethod
    async def _send_once(self, pairs: list[tuple[str, bytes]]) -> None:
        """Send ``pairs`` (connecting first when not connected); return once the server
        has every one of them."""

    async def _send(self, item: Any, pairs: list[tuple[str, bytes]]) -> None:
        """Send ``pairs`` (the payloads of ``item``), counting them in :attr:`sent`;
        after a connection error, close the client and send them all again
        (at-least-once) with capped backoff for ``connect_timeout`` seconds, then hand
        ``item`` to ``on_error`` (``ConnectionError``)."""
        if not pairs:
            return
        op = self.sink

        async def attempt() -> None:
            try:
                await self._send_once(pairs)
            except self.errors:
                await self.aclose()
                raise

        timeout = op.connect_timeout
        try:
            await self.backoff.retry(attempt, self.errors, timeout, f"{op.name}: sending failed")
        except self.errors as exc:
            error = ConnectionError(
                f"{op.name}: cannot send {len(pairs)} messages to {op.where} (tried "
                f"{timeout} s): {exc!r}"
            )
            assert self.counters is not None
            await apply_policy(op.on_error, item, error, op.name, None, self.counters)
            return
        self.sent += len(pairs)

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.counters = counters

    async def write(self, item: Any) -> None:
        await self._send(item, self._pairs(item))

    async def write_chunk(self, items: list[Any]) -> None:
        await self._send(items, [pair for item in items for pair in self._pairs(item)])

    def _pairs(self, item: Any) -> list[tuple[str, bytes]]:
        op = self.sink
        payloads = op.codec.encode(item)
        if op.key is None:
            return [(op.target, p) for p in payloads]
        if not (isinstance(item, np.ndarray) and item.dtype.names):
            raise TypeError(f"{op.name}: key={op.key!r} needs structured array batches")
        shard = shard_of(item[op.key], op.shards).tolist()
        where = op.target + op.separator
        return [(f"{where}{s}", p) for s, p in zip(shard, payloads, strict=True)]

    def result(self) -> int:
        return self.sent

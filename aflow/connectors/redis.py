"""Redis Streams: a consumer-group source (``XREADGROUP``, ``XAUTOCLAIM``, ``XACK``) and a
pipelined ``XADD`` sink. Needs the ``redis`` extra (redis-py's asyncio client) and the
asyncio backend."""

from __future__ import annotations

import logging
import math
from itertools import groupby
from typing import TYPE_CHECKING, Any

import anyio
from numpy.typing import DTypeLike

from ..abc import (
    Context,
    ErrorPolicy,
    Outlet,
    SinkWriter,
    check_policy,
)
from ..flow import Flow, Sink
from ._batch import BatchReader, BatchSinkOp, BatchSource, BatchWriter
from ._common import (
    Backoff,
    Format,
    PayloadCodec,
    consumer_name,
    require_asyncio,
    worker_index,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import Connection

__all__ = ["read_redis", "to_redis"]

logger = logging.getLogger("aflow")

_ACK_CHUNK = 5_000  # ids per XACK command (many commands pipelined in one round trip)
_ACK_PIPELINE = 20  # XACK commands per round trip
_ADD_CHUNK = 2_000  # XADD commands per write of the sink (all replies read after)
_BACKLOG_COUNT = 10_000  # pending entries per read of this consumer's backlog


def _raw(response: Any, **options: Any) -> Any:
    """The reply as the parser gave it: entries stay ``[id, [field, value, ...]]`` lists
    (redis-py would build a dict per entry, in Python)."""
    return response


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def _bulks(ids: list[bytes]) -> bytes:
    """``ids`` as RESP bulk strings, in order of length (``XACK`` takes them in any
    order): one ``join`` per length rather than a formatting per id."""
    parts = []
    for size, group in groupby(sorted(ids, key=len), len):
        sep = b"\r\n$%d\r\n" % size
        parts.append(sep[2:] + sep.join(group))
    return b"\r\n".join(parts) + b"\r\n"


def _packed_xacks(stream: str, group: str, ids: list[bytes]) -> list[bytes]:
    """``XACK stream group id...`` commands of ``_ACK_CHUNK`` ids each, packed in RESP
    here: redis-py packs each argument in Python, a cost per id worth avoiding."""
    head = _bulk(b"XACK") + _bulk(stream.encode()) + _bulk(group.encode())
    return [
        b"*%d\r\n%s%s" % (len(chunk) + 3, head, _bulks(chunk))
        for chunk in (ids[i : i + _ACK_CHUNK] for i in range(0, len(ids), _ACK_CHUNK))
    ]


def _packed_xadds(entries: list[tuple[str, bytes]], field: str, maxlen: int | None) -> list[bytes]:
    """``XADD stream [MAXLEN ~ n] * field payload`` for each entry, packed in RESP here
    (redis-py's pipeline packs each argument of each command in Python), joined into
    writes of ``_ADD_CHUNK`` commands."""
    trim = [b"MAXLEN", b"~", b"%d" % maxlen] if maxlen is not None else []
    heads: dict[str, bytes] = {}
    for stream, _ in entries:
        if stream not in heads:
            args = [b"XADD", stream.encode(), *trim, b"*", field.encode()]
            heads[stream] = b"*%d\r\n%s" % (len(args) + 1, b"".join([_bulk(a) for a in args]))
    if len(heads) == 1:
        head = heads[entries[0][0]]
        commands = [b"%s$%d\r\n%s\r\n" % (head, len(p), p) for _, p in entries]
    else:
        commands = [b"%s$%d\r\n%s\r\n" % (heads[s], len(p), p) for s, p in entries]
    return [b"".join(commands[i : i + _ADD_CHUNK]) for i in range(0, len(commands), _ADD_CHUNK)]


async def _send_packed(client: Redis, writes: list[bytes], replies: int) -> None:
    """Send ``writes`` (packed commands) on one pooled connection and read ``replies``
    replies (no timer per reply, a cost per entry: the caller bounds the whole with one
    deadline); an error reply raises (the first one), after every reply was read."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        first: BaseException | None = None
        await conn.send_packed_command(writes)
        for _ in range(replies):
            try:
                await conn.read_response(timeout=math.inf)
            except _response_errors() as exc:  # an XADD refused (a key of another type)
                first = first or exc
        if first is not None:
            raise first
    except BaseException:
        await conn.disconnect()  # replies may be left unread on it
        raise
    finally:
        await pool.release(conn)


def _response_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ResponseError

    return (ResponseError,)


async def _xack(client: Redis, stream: str, group: str, ids: list[bytes]) -> None:
    """Acknowledge ``ids``: ``_ACK_PIPELINE`` packed ``XACK`` commands per round trip."""
    commands = _packed_xacks(stream, group, ids)
    for start in range(0, len(commands), _ACK_PIPELINE):
        batch = commands[start : start + _ACK_PIPELINE]
        await _send_packed(client, batch, len(batch))


def _entries(reply: Any) -> list[Any]:
    """The entries of an ``XREADGROUP`` reply on one stream (RESP3 map or RESP2 list)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


def _client(url: str, connect_timeout: float) -> Redis:
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError(
            "the Redis connector needs redis-py: pip install 'aflow-streams[redis]'"
        ) from None
    client = aioredis.from_url(url, socket_connect_timeout=connect_timeout)
    client.set_response_callback("XREADGROUP", _raw)
    client.set_response_callback("XAUTOCLAIM", _raw)
    return client


def _connection_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions as rex

    return (rex.ConnectionError, rex.TimeoutError, OSError)


def _shown(url: str) -> str:
    """``url`` without a password, for provenance and messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class _RedisSource(BatchSource):
    client_library = "redis-py"

    def __init__(
        self,
        stream: str,
        group: str,
        url: str,
        consumer: str | None,
        codec: PayloadCodec,
        entry_field: str,
        count: int,
        block: float,
        claim_idle: float | None,
        start: str,
        idle_stop: float | None,
        connect_timeout: float,
        on_error: ErrorPolicy,
        name: str,
    ) -> None:
        super().__init__(url, codec, count, block, idle_stop, connect_timeout, on_error, name)
        self.stream, self.group, self.consumer = stream, group, consumer
        self.entry_field = entry_field.encode()
        self.claim_idle, self.start = claim_idle, start

    def reader(self, out: Outlet) -> _RedisReader:
        return _RedisReader(self, out)


class _RedisReader(BatchReader[bytes]):
    """One run of a Redis Streams source (acknowledgement tokens: entry ids)."""

    def __init__(self, op: _RedisSource, out: Outlet) -> None:
        self.op = op
        self.stream = op.stream.format(worker=worker_index())
        where = f"{_shown(op.url).rstrip('/')}/{self.stream}"
        super().__init__(out, self.stream, where, op.codec, op.on_error, op.name)
        self.consumer = op.consumer or consumer_name()
        self.client: Redis | None = None
        self.backoff = Backoff()
        self.errors = _connection_errors()
        self.acking: list[list[bytes]] = []  # ids being acknowledged
        self.ahead: Connection | None = None  # a read of new entries sent, reply unread

    async def _disconnect(self) -> None:
        await self._drop_ahead()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _connect(self) -> Redis:
        """A client with the group created: retried with backoff for ``connect_timeout``."""

        async def attempt() -> Redis:
            client = _client(self.op.url, self.op.connect_timeout)
            try:
                await self._create_group(client)
            except self.errors:
                await client.aclose()
                raise
            return client

        what = f"read_redis: {self.where} unreachable"
        timeout = self.op.connect_timeout
        try:
            self.client = await self.backoff.retry(attempt, self.errors, timeout, what)
        except self.errors as exc:
            raise ConnectionError(
                f"read_redis: cannot reach {self.where} for {timeout} s: {exc}"
            ) from exc
        return self.client

    async def _create_group(self, client: Redis) -> None:
        import redis.exceptions as rex

        try:
            await client.xgroup_create(self.stream, self.op.group, self.op.start, mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        op = self.op
        client = await self._connect()
        # Entries delivered to this consumer name and not emitted by this run come first:
        # those of a restarted worker, and after a reconnection, those whose reply was lost.
        backlog: bytes | str | None = "0"
        next_claim = anyio.current_time() if op.claim_idle is not None else float("inf")
        last_data = anyio.current_time()
        swept = waited = False  # waited: a read for new entries came back empty
        while not self.out.stopping:
            entries: list[Any] = []
            try:
                if backlog is not None:
                    # taken before the read: entries acknowledged while it is under way
                    # (a commit's XACK on another connection) may be in its reply
                    in_flight = self._in_flight()
                    entries = await self._read(client, backlog, block=False, count=_BACKLOG_COUNT)
                    backlog = entries[-1][0] if entries else None
                    if entries:
                        entries = [e for e in entries if e[0] not in in_flight]
                    if backlog is not None and not entries:
                        continue
                elif anyio.current_time() >= next_claim:
                    entries = await self._claim(client)
                    if len(entries) < op.count:
                        assert op.claim_idle is not None
                        next_claim = anyio.current_time() + op.claim_idle / 2
                elif self.ahead is not None:
                    entries = await self._ahead_reply(client)
                else:
                    with self.out.pull_scope():
                        entries = await self._read(client, ">", block=True)
                    waited = not entries
            except self.errors as exc:
                logger.warning("read_redis: lost %s (%s); reconnecting", self.where, exc)
                await self.close()
                await self.backoff.wait()
                client = await self._connect()
                backlog = "0"
                continue
            if entries:
                if backlog is None and len(entries) >= op.count:
                    await self._read_ahead(client)
                await self._emit(entries)
                last_data = anyio.current_time()
                swept = False
            elif (
                # idle only once new entries were asked for: a slow start (a loaded machine)
                # is not an idle stream
                waited
                and op.idle_stop is not None
                and anyio.current_time() - last_data >= op.idle_stop
            ):
                if swept:
                    return
                backlog, swept = "0", True  # first, entries whose reply a broken read lost
        if self.ahead is not None:  # stopped with a read sent: its entries are delivered
            try:
                entries = await self._ahead_reply(client)
            except self.errors as exc:
                logger.warning("read_redis: lost %s (%s) when stopping", self.where, exc)
                return
            if entries:
                await self._emit(entries)

    async def _read_ahead(self, client: Redis) -> None:
        """Send the next read of new entries now, its reply read by the next turn of
        ``run``: the server reads while this batch is decoded and emitted. Not when
        stopping; a connection error leaves it to the next read."""
        if self.out.stopping:
            return
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command(
                "XREADGROUP", "GROUP", self.op.group, self.consumer,
                "COUNT", self.op.count, "STREAMS", self.stream, ">",
            )  # fmt: skip
        except BaseException as exc:
            await conn.disconnect()
            await pool.release(conn)
            if not isinstance(exc, self.errors):
                raise
        else:
            self.ahead = conn

    async def _ahead_reply(self, client: Redis) -> list[Any]:
        """The entries of the read :meth:`_read_ahead` sent."""
        conn, self.ahead = self.ahead, None
        assert conn is not None
        try:
            return _entries(await conn.read_response())
        except BaseException:
            await conn.disconnect()  # the reply may be left unread on it
            raise
        finally:
            await client.connection_pool.release(conn)

    async def _drop_ahead(self) -> None:
        """Close the connection of a read sent and never read (the run ended, or its
        connection was lost): entries it delivered stay pending for this consumer (the
        next run reads them first, another worker claims them)."""
        conn, self.ahead = self.ahead, None
        if conn is not None and self.client is not None:
            await conn.disconnect()
            await self.client.connection_pool.release(conn)

    async def _read(
        self, client: Redis, after: bytes | str, *, block: bool, count: int | None = None
    ) -> list[Any]:
        reply: Any = await client.xreadgroup(
            self.op.group,
            self.consumer,
            {self.stream: after},
            count=count or self.op.count,
            block=max(1, int(self.op.block * 1000)) if block else None,
        )
        return _entries(reply)

    async def _claim(self, client: Redis) -> list[Any]:
        """Entries left pending by other (dead) consumers longer than ``claim_idle``."""
        assert self.op.claim_idle is not None
        in_flight = self._in_flight()  # before: see the backlog read in ``run``
        reply = await client.xautoclaim(
            self.stream,
            self.op.group,
            self.consumer,
            min_idle_time=int(self.op.claim_idle * 1000),
            start_id="0-0",
            count=self.op.count,
        )
        entries = [e for e in reply[1] if e[1] is not None and e[0] not in in_flight]
        if entries:
            logger.info("read_redis: reclaimed %d entries of %s", len(entries), self.where)
        return entries

    async def _emit(self, entries: list[Any]) -> None:
        if None in (fields := [e[1] for e in entries]):
            # pending entries deleted from the stream (trimmed): nothing to deliver
            self.carry += [e[0] for e, f in zip(entries, fields, strict=True) if f is None]
            entries = [e for e, f in zip(entries, fields, strict=True) if f is not None]
            if not entries:
                return
        ids: list[bytes] = [e[0] for e in entries]
        key = self.op.entry_field  # usually an entry's only field: no per-entry call
        payloads = [f[1] if f and f[0] == key else self._payload(f) for _, f in entries]
        await self._emit_payloads(payloads, ids, lambda i: ids[i].decode())

    def _in_flight(self) -> set[bytes]:
        """Ids emitted and not acknowledged yet: pending, but not to be emitted again.
        Built when needed (before backlog and claim reads, rare) rather than kept per
        entry."""
        return set().union(*self.unacked.values(), *self.acking, self.carry)

    def _payload(self, fields: list[bytes] | None) -> bytes:
        """The payload among an entry's ``[field, value, ...]``; ``b""`` when missing
        (deleted entries have none): it decodes as a bad payload, named with its id."""
        if fields:
            for i in range(0, len(fields) - 1, 2):
                if fields[i] == self.op.entry_field:
                    return fields[i + 1]
        return b""

    async def _ack(self, ids: list[bytes]) -> None:
        """``XACK`` ``ids``: called only once the sinks acknowledged them. A failure leaves
        them pending (redelivered to this consumer name, or reclaimed by another)."""
        self.acking.append(ids)
        try:
            async with self.lock:
                # the last commit comes after the source ended and closed its client
                client = self.client or _client(self.op.url, self.op.connect_timeout)
                try:
                    with anyio.fail_after(self.op.connect_timeout):  # an OSError
                        await _xack(client, self.stream, self.op.group, ids)
                finally:
                    if client is not self.client:
                        await client.aclose()
        except self.errors as exc:
            logger.warning(
                "read_redis: could not acknowledge %d entries of %s (%s); they stay pending",
                len(ids), self.where, exc,
            )  # fmt: skip
        else:
            self.acked += len(ids)
        finally:
            self.acking.remove(ids)


def read_redis(
    stream: str,
    group: str,
    *,
    url: str = "redis://127.0.0.1:6379",
    consumer: str | None = None,
    dtype: DTypeLike | None = None,
    format: Format = "csv",
    delimiter: str = ",",
    fill_int: int | None = None,
    entry_field: str = "data",
    count: int = 5000,
    block: float = 1.0,
    claim_idle: float | None = 30.0,
    start: str = "0",
    idle_timeout: float | None = None,
    connect_timeout: float = 30.0,
    on_error: ErrorPolicy = "raise",
    name: str | None = None,
) -> Flow[Any]:
    """Read a Redis stream as one consumer of a consumer group (``XREADGROUP``).

    Many processes running the same flow with the same ``group`` share the stream: each
    entry goes to one of them (``aflow run --workers N``, or the same command on several
    machines). Entries are read ``count`` at a time and decoded in one call.

    Acknowledgement: an entry is acknowledged (``XACK``) only after every sink of the run
    acknowledged it, through the run's commits (see docs/delivery.md). Until then it stays
    in the group's pending list: a worker that dies leaves its entries pending, and another
    worker claims them once idle for ``claim_idle`` seconds (``XAUTOCLAIM``); a worker
    restarted under the same consumer name reads its own pending entries first. Delivery is
    at-least-once: duplicates are bounded by what was in flight at a crash.

    Args:
        stream: the stream's key. ``"{worker}"`` in it is replaced by this process's worker
            index (``AFLOW_WORKER``, set by ``aflow run --workers``): with a key-sharded
            :func:`to_redis` (``shards=N``) each worker reads its own shard.
        group: the consumer group, created (with the stream) when missing.
        url: the Redis server, ``redis://[user:password@]host:port/db``.
        consumer: this consumer's name in the group (default: ``host-wI`` for worker I of
            ``aflow run --workers``, else ``host-pid``).
        dtype: a structured dtype: each payload is one row (``format``), and batches of
            rows come out. ``None``: chunks of the raw payloads (``bytes``).
        format: ``"csv"`` or ``"jsonl"``: how a payload holds a row.
        delimiter: CSV field separator.
        fill_int: the value of a missing integer; ``None``: a bad payload.
        entry_field: the entry's field holding the payload.
        count: entries per read (``XREADGROUP COUNT``).
        block: seconds a read waits for new entries.
        claim_idle: seconds an entry stays pending on another consumer before this one
            claims it (``None``: never claim).
        start: where a new group starts: ``"0"`` the whole stream, ``"$"`` new entries.
        idle_timeout: end the source after this many seconds without an entry (``None``:
            run until stopped).
        connect_timeout: seconds to keep trying to (re)connect, with capped backoff,
            before the run fails with ``ConnectionError``.
        on_error: what a payload that does not decode does (see :func:`aflow.dead_letter`:
            the item is the payload, the provenance names the stream URL and the entry id).
            Such entries are acknowledged with the next batch, unless the policy raised.
        name: the source's name in statistics and errors.
    """
    check_policy(on_error)
    if count < 1 or block <= 0:
        raise ValueError("read_redis: count must be >= 1 and block > 0")
    codec = PayloadCodec(dtype, format, delimiter=delimiter, fill_int=fill_int)
    source = _RedisSource(
        stream, group, url, consumer, codec, entry_field, count, block, claim_idle, start,
        idle_timeout, connect_timeout, on_error, name or f"read_redis({stream})",
    )  # fmt: skip
    return Flow(source)


class _RedisSinkOp(BatchSinkOp):
    separator = ":"

    def __init__(
        self,
        stream: str,
        url: str,
        codec: PayloadCodec,
        entry_field: str,
        maxlen: int | None,
        key: str | None,
        shards: int,
        connect_timeout: float,
        buffer: int | None,
        on_error: ErrorPolicy,
    ) -> None:
        name = f"to_redis({stream})"
        super().__init__(stream, url, codec, key, shards, connect_timeout, buffer, on_error, name)
        self.stream, self.entry_field, self.maxlen = stream, entry_field, maxlen
        self.where = f"{_shown(url).rstrip('/')}/{stream}"  # no password

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _RedisWriter(self)


class _RedisWriter(BatchWriter):
    def __init__(self, op: _RedisSinkOp) -> None:
        super().__init__(op)
        self.op = op
        self.client: Redis | None = None
        self.errors = _connection_errors()

    async def open(self) -> None:
        require_asyncio("to_redis", "redis-py")
        self.client = _client(self.op.url, self.op.connect_timeout)
        await self.client.ping()

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _send_once(self, pairs: list[tuple[str, bytes]]) -> None:
        """One pipelined round trip of ``XADD``s."""
        if self.client is None:
            self.client = _client(self.op.url, self.op.connect_timeout)
        writes = _packed_xadds(pairs, self.op.entry_field, self.op.maxlen)
        with anyio.fail_after(self.op.connect_timeout):  # TimeoutError: an OSError
            await _send_packed(self.client, writes, len(pairs))


def to_redis(
    stream: str,
    *,
    url: str = "redis://127.0.0.1:6379",
    format: Format = "csv",
    delimiter: str = ",",
    entry_field: str = "data",
    maxlen: int | None = None,
    key: str | None = None,
    shards: int = 1,
    connect_timeout: float = 30.0,
    buffer: int | None = None,
    on_error: ErrorPolicy = "raise",
) -> Sink[Any, int]:
    """Append the flow to a Redis stream (``XADD``, many per round trip); the result is
    the number of entries added.

    Each row of an array batch is one entry (a CSV line or JSON object without its
    newline, in ``entry_field``); ``bytes`` and ``str`` elements are entries as they are.

    Args:
        stream: the stream's key.
        url: the Redis server, ``redis://[user:password@]host:port/db``.
        format: ``"csv"`` or ``"jsonl"``: how a row is written.
        delimiter: CSV field separator.
        entry_field: the entry's field holding the payload.
        maxlen: trim the stream to about this many entries (``MAXLEN ~``); ``None``: never.
        key: shard by this column: a row goes to stream ``f"{stream}:{s}"`` with ``s`` a
            stable hash of its key modulo ``shards`` (the same in every process), so a
            keyed computation reading shard ``s`` sees every row of its keys.
        shards: how many shard streams (with ``key``).
        connect_timeout: seconds to keep reconnecting and resending a failed write.
        buffer: messages waiting in front of the sink.
        on_error: what a write that still fails after ``connect_timeout`` does with its
            message (``ConnectionError``): ``"raise"``, ``"skip"``, ``dead_letter``.
    """
    check_policy(on_error)
    if shards < 1 or (shards > 1 and key is None):
        raise ValueError("to_redis: shards must be >= 1, and shards > 1 needs key=")
    if maxlen is not None and maxlen < 1:
        raise ValueError(f"to_redis: maxlen={maxlen} must be >= 1 or None")
    codec = PayloadCodec(None, format, delimiter=delimiter)
    op = _RedisSinkOp(
        stream, url, codec, entry_field, maxlen, key, shards, connect_timeout, buffer, on_error
    )
    return Sink(op)

"""MQTT: a source subscribing to topics, and a sink publishing rows.

Needs the ``mqtt`` extra (aiomqtt, which runs on asyncio only). The source reads every
message queued at the client at once (up to ``max_messages``), decodes their payloads
in one call of a codec into a structured array, and adds the topic of each row as a
fixed-width string field; the sink publishes one message per row, many at once.

Acknowledgements (QoS 1): the source turns paho-mqtt's manual acknowledgement on, so a
message's PUBACK is sent only once every sink handled it: when the run commits the epoch
holding it (the source registers ``on_commit``, which makes the run commit every
``commit_interval`` seconds). See the docs page on connectors for what a broker restart
redelivers and loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import aiomqtt
import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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
    check_policy,
)
from ..codecs import CsvDecoder, CsvEncoder, JsonlDecoder, JsonlEncoder
from ..errors import DecodeError
from ..flow import Flow, Sink
from ._common import require_asyncio

__all__ = ["MqttFormat", "read_mqtt", "to_mqtt"]

logger = logging.getLogger("aflow")

MqttFormat: TypeAlias = Literal["jsonl", "csv", "raw"]
"""How an MQTT payload is read or written: one JSON object (``"jsonl"``), one CSV line
(``"csv"``), or the bytes as they are (``"raw"``: ``(topic, payload)`` tuples)."""

THREAD_BYTES = 1 << 20
"""Payloads of a read of at least this many bytes are decoded in a worker thread."""


def _check(backoff: float, max_backoff: float, connect_timeout: float, qos: int) -> None:
    if not (0 < backoff <= max_backoff) or not connect_timeout > 0:
        raise ValueError("mqtt: need 0 < backoff <= max_backoff, connect_timeout > 0")
    if qos not in (0, 1, 2):
        raise ValueError(f"mqtt: qos={qos}: must be 0, 1 or 2")


class _Reads:
    """Faster reads for one paho-mqtt client: paho receives a packet's header a byte at a
    time (a system call per byte) and handles one packet per readiness callback of the
    event loop (a loop iteration per message). This reads the socket 64 KiB at a time and
    handles every complete packet of a callback at once (up to ``BURST``, then again at
    the next iteration of the loop). Installed only when the client has the private
    methods it wraps. (What remains is paho's own decoding: building an MQTT 5
    ``Properties`` object per PUBLISH is most of a read's time.)"""

    BURST = 4096

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.paho = client._client
        self.recv = self.paho._sock_recv
        self.buf = b""
        self.pos = 0

    @classmethod
    def install(cls, client: aiomqtt.Client) -> None:
        paho = client._client
        if not all(hasattr(paho, n) for n in ("_sock_recv", "_packet_read", "_loop_rc_handle")):
            return  # another paho-mqtt than the one this was written for: its own reads
        reads = cls(client)
        paho._sock_recv = reads.sock_recv  # type: ignore[method-assign]
        paho.loop_read = reads.loop_read  # type: ignore[method-assign]

    def sock_recv(self, bufsize: int) -> bytes:
        if self.pos >= len(self.buf):
            data = self.recv(1 << 16)  # BlockingIOError when nothing is there: paho's AGAIN
            if not data:
                return data  # the connection closed
            self.buf, self.pos = data, 0
        chunk = self.buf[self.pos : self.pos + bufsize]
        self.pos += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        paho = self.paho
        for _ in range(self.BURST):
            if paho._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = paho._packet_read()
            if rc > 0:
                return paho._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        # more is there (maybe only in the buffer, which the socket's readiness does not
        # announce): go on at the next iteration of the event loop
        self.client._loop.call_soon(self._again)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _again(self) -> None:
        try:
            self.loop_read()
        except Exception as exc:  # as aiomqtt's own read callback: the connection broke
            if not self.client._disconnected.done():
                self.client._disconnected.set_exception(exc)


class _Acks:
    """Messages received and not yet acknowledged, by sequence number, for one client."""

    def __init__(self) -> None:
        self.pending: deque[tuple[int, int, int, int]] = deque()  # seq, mid, qos, generation
        self.client: aiomqtt.Client | None = None
        self.generation = 0
        self.acked = 0

    def connected(self, client: aiomqtt.Client) -> None:
        """A new connection: the unacknowledged messages of the previous one cannot be
        acknowledged any more (the broker redelivers them to a persistent session)."""
        self.client = client
        self.generation += 1
        self.pending.clear()

    def add(self, seq: int, mid: int, qos: int) -> None:
        if qos > 0:
            self.pending.append((seq, mid, qos, self.generation))

    def upto(self, seq: int) -> None:
        """Acknowledge every message numbered ``seq`` or less."""
        pending, client = self.pending, self.client
        while pending and pending[0][0] <= seq:
            _, mid, qos, generation = pending.popleft()
            if client is not None and generation == self.generation:
                client._client.ack(mid, qos)
                self.acked += 1


class _Decode:
    """Payloads of many messages to one structured array plus the topic of each row."""

    def __init__(
        self,
        fmt: MqttFormat,
        dtype: np.dtype[Any] | None,
        delimiter: str,
        topic_field: str | None,
        topic_width: int,
    ) -> None:
        self.fmt = fmt
        self.topic_field = topic_field
        self.topic_width = topic_width
        self.decoder: CsvDecoder | JsonlDecoder | None = None
        self.dtype: np.dtype[Any] | None = None
        if fmt == "raw":
            return
        if dtype is None:
            raise ValueError(f"read_mqtt(format={fmt!r}) needs a dtype")
        self.decoder = (
            CsvDecoder(dtype, delimiter=delimiter) if fmt == "csv" else JsonlDecoder(dtype)
        )
        inner = self.decoder.dtype
        assert inner.names is not None
        if topic_field is None:
            self.dtype = inner
        else:
            if topic_field in inner.names:
                raise ValueError(
                    f"read_mqtt: the dtype has a field {topic_field!r} already; pass another "
                    "topic_field (or None)"
                )
            fields = [(n, inner.fields[n][0]) for n in inner.names]  # type: ignore[index]
            self.dtype = np.dtype([*fields, (topic_field, f"U{topic_width}")])

    def block(
        self, topics: list[str], payloads: list[bytes]
    ) -> tuple[bytes, list[int], list[tuple[int, str]]]:
        """The payloads as one block of lines, the message of each line, and the messages
        refused before decoding (index, why)."""
        lines, kept, refused = [], [], []
        for i, payload in enumerate(payloads):
            text = payload.strip()
            if self.topic_field is not None and len(topics[i]) > self.topic_width:
                refused.append((i, f"a topic longer than topic_width={self.topic_width}"))
            elif not text:
                refused.append((i, "an empty payload"))
            elif b"\n" in text:
                if self.fmt == "csv":
                    refused.append((i, "several lines (one CSV record per message)"))
                    continue
                lines.append(text.replace(b"\n", b" "))  # JSON whitespace, never in a string
                kept.append(i)
            else:
                lines.append(text)
                kept.append(i)
        blob = b"\n".join(lines) + b"\n" if lines else b""
        return blob, kept, refused

    def rows(self, decoded_rows: NDArray[Any], good: list[int], topics: list[str]) -> NDArray[Any]:
        if self.topic_field is None:
            return decoded_rows
        assert self.dtype is not None
        out = np.empty(len(decoded_rows), self.dtype)
        names = decoded_rows.dtype.names
        assert names is not None
        for name in names:
            out[name] = decoded_rows[name]
        out[self.topic_field] = [topics[i] for i in good]
        return out


class _MqttSource(Source):
    def __init__(
        self,
        topics: list[str],
        host: str,
        port: int,
        *,
        qos: int,
        decode: _Decode,
        client_id: str | None,
        clean_start: bool,
        session_expiry: int,
        max_messages: int,
        receive_maximum: int,
        username: str | None,
        password: str | None,
        backoff: float,
        max_backoff: float,
        connect_timeout: float,
        on_error: ErrorPolicy,
        name: str | None,
    ) -> None:
        if not topics:
            raise ValueError("read_mqtt: give at least one topic")
        _check(backoff, max_backoff, connect_timeout, qos)
        if not clean_start and client_id is None:
            raise ValueError("read_mqtt(clean_start=False) needs a client_id (the session's)")
        if max_messages < 1 or not 1 <= receive_maximum <= 65535:
            raise ValueError("read_mqtt: need max_messages >= 1 and 1 <= receive_maximum <= 65535")
        self.topics = topics
        self.host = host
        self.port = port
        self.qos = qos
        self.decode = decode
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.max_messages = max_messages
        self.receive_maximum = receive_maximum
        self.username = username
        self.password = password
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.on_error = check_policy(on_error)
        self.url = f"mqtt://{host}:{port}"
        # a persistent session is resumed by the broker: it redelivers what was not acked
        self.resumable = not clean_start
        self.name = name or f"read_mqtt({','.join(topics)})"

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if self.clean_start else self.session_expiry
        props.ReceiveMaximum = self.receive_maximum
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id or f"aflow-{uuid.uuid4().hex[:16]}",
            username=self.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=self.clean_start,
            properties=props,
            timeout=self.connect_timeout,
        )
        client._client.manual_ack_set(True)  # PUBACK only once the flow has the message
        return client

    async def produce(self, out: Outlet, ctx: Context) -> None:
        require_asyncio(self.name, "aiomqtt")
        acks = _Acks()

        async def committed(positions: dict[str, Any]) -> None:
            seq = positions.get(self.url)
            if seq is not None:
                acks.upto(int(seq))

        out.on_commit(committed)  # PUBACKs once every sink handled the messages
        delay = self.backoff
        # numbered on from the last run's committed number, so a stale one never covers new
        seq = int(out.resume_positions.get(self.url, 0))
        while not out.stopping:
            try:
                async with self._client() as client:
                    _Reads.install(client)
                    acks.connected(client)
                    await client.subscribe([(t, self.qos) for t in self.topics])
                    logger.info("%s: subscribed to %s", self.name, self.url)
                    delay = self.backoff
                    seq = await self._pump(client, out, acks, seq)
                    # a graceful stop: keep the connection until the final commit has
                    # acknowledged what it covers (a restart then redelivers nothing)
                    await out.end(commit_timeout=self.connect_timeout)
                    return
            except aiomqtt.MqttError as exc:
                logger.warning(
                    "%s: %s: %s; reconnecting in %.2g s", self.name, self.url, exc, delay
                )
            with out.pull_scope():
                await anyio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _pump(self, client: aiomqtt.Client, out: Outlet, acks: _Acks, seq: int) -> int:
        messages = client.messages
        while not out.stopping:
            first = None
            with out.pull_scope():
                first = await anext(messages)
            if first is None:  # a graceful stop
                break
            got = [first]
            # What is queued at the client now, taken without awaiting: each ``anext``
            # would yield to the loop, where paho queues more, so under a steady stream a
            # read went on until max_messages (and cost a task per message)
            queue: asyncio.Queue[aiomqtt.Message] = client._queue
            got.extend(queue.get_nowait() for _ in range(min(self.max_messages - 1, queue.qsize())))
            for msg in got:
                seq += 1
                acks.add(seq, msg.mid, msg.qos)
            await self._emit(got, out, seq)
        return seq

    async def _emit(self, got: list[aiomqtt.Message], out: Outlet, seq: int) -> None:
        first_seq = seq - len(got) + 1
        topics = [m.topic.value for m in got]
        payloads = [m.payload if isinstance(m.payload, bytes) else b"" for m in got]
        for i, m in enumerate(got):
            if not isinstance(m.payload, bytes):
                payloads[i] = str(m.payload).encode() if m.payload is not None else b""
        position = (self.url, seq)
        emit = out.emit
        decode = self.decode
        if decode.decoder is None:
            msg: list[Any] | Batch = list(zip(topics, payloads, strict=True))
            await self._send(emit, msg, position)
            return
        blob, kept, refused = decode.block(topics, payloads)
        bad: list[tuple[int, DecodeError]] = [
            (i, DecodeError(f"{why} on topic {topics[i]!r}", source=self._where(got[i])))
            for i, why in refused
        ]
        rows: NDArray[Any] | None = None
        if blob:
            if len(blob) >= THREAD_BYTES:
                decoded = await anyio.to_thread.run_sync(decode.decoder.decode, blob)
            else:
                decoded = decode.decoder.decode(blob)
            for line in decoded.bad:
                i = kept[line.index]
                error = DecodeError(
                    f"bad payload on topic {topics[i]!r}: {line.error}", source=self._where(got[i])
                )
                bad.append((i, error))
            failed = {kept[line.index] for line in decoded.bad}
            good = [i for i in kept if i not in failed]
            rows = decode.rows(decoded.rows, good, topics)
        for i, error in sorted(bad, key=lambda b: b[0]):
            prov = Provenance(self._where(got[i]), first_seq + i, first_seq + i + 1)
            await apply_policy(self.on_error, payloads[i], error, self.name, prov, out.counters)
        if rows is not None and len(rows):
            prov = Provenance(self.url, first_seq, seq + 1)
            await self._send(emit, Batch(rows, "source", prov), position)
        elif bad:
            await self._send(emit, Batch(np.empty(0, decode.dtype), "source"), position)

    async def _send(self, emit: Any, msg: list[Any] | Batch, position: tuple[str, int]) -> None:
        await emit(msg, position=position)

    def _where(self, msg: aiomqtt.Message) -> str:
        return f"{self.url}/{msg.topic.value} (packet id {msg.mid})"


def read_mqtt(
    topics: str | Sequence[str],
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    format: MqttFormat = "jsonl",
    dtype: DTypeLike | None = None,
    delimiter: str = ",",
    topic_field: str | None = "topic",
    topic_width: int = 64,
    qos: int = 1,
    client_id: str | None = None,
    clean_start: bool = True,
    session_expiry: int = 3600,
    max_messages: int = 65_536,
    receive_maximum: int = 65_535,
    username: str | None = None,
    password: str | None = None,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    connect_timeout: float = 10.0,
    on_error: ErrorPolicy = "skip",
    name: str | None = None,
) -> Flow[Any]:
    """Subscribe to MQTT topics; each read decodes every queued message into one batch.

    A message's payload is one record: a JSON object (``format="jsonl"``; newlines inside
    are read as spaces) or one CSV line (``format="csv"``), decoded by
    :class:`~aflow.codecs.JsonlDecoder` / :class:`~aflow.codecs.CsvDecoder` for all the
    messages of a read at once. Each row gets the topic it came on in the field
    ``topic_field``, a fixed-width string (``U{topic_width}``) that ``key=`` of keyed
    stages and sinks takes as any other column. ``format="raw"`` gives chunks of
    ``(topic, payload)`` tuples instead (``payload`` as bytes). The flow runs until stopped.

    Topics may hold wildcards (``sensors/+/temp``, ``sensors/#``). Shared subscriptions
    (``$share/group/sensors/#``) spread the messages among every client subscribed with
    the same group: run one ``read_mqtt`` per worker process (or several in one flow with
    :func:`~aflow.merge`) to scale out.

    Messages are acknowledged (QoS 1 PUBACK) only once handed on: when the run commits
    the epoch that holds them if it makes delivery commits, else once the flow's buffer
    took them. With ``clean_start=False`` and a fixed ``client_id`` the broker keeps the
    session while the source is away (``session_expiry`` seconds): messages published
    meanwhile are delivered at the next connect, and unacknowledged ones again
    (at-least-once). With ``clean_start=True`` (the default) what is published while the
    source is disconnected is lost to it. A connection that fails or breaks is opened
    again after ``backoff`` seconds, doubling up to ``max_backoff``.

    Needs the ``mqtt`` extra (aiomqtt), MQTT 5 at the broker, and the asyncio backend.

    Args:
        topics: one topic filter or several.
        host: the broker's address.
        port: the broker's port.
        format: how payloads are read (see :data:`MqttFormat`).
        dtype: the rows' structured dtype (a field per JSON key or CSV column), without
            the topic field.
        delimiter: the CSV field separator.
        topic_field: the name of the field holding each row's topic (``None``: none).
        topic_width: the most characters of a topic; a message on a longer topic is bad
            input (for ``on_error``), never cut short.
        qos: the subscriptions' quality of service (1: at least once).
        client_id: the MQTT client identifier (default: a new random one per connection).
        clean_start: start a new session at each connect (``False``: resume the session
            of ``client_id``).
        session_expiry: seconds the broker keeps a session after a disconnect (with
            ``clean_start=False``).
        max_messages: the most messages decoded into one batch.
        receive_maximum: the most unacknowledged QoS 1 messages the broker sends.
        username: for the broker's authentication.
        password: for the broker's authentication.
        backoff: seconds before the first reconnection attempt.
        max_backoff: the longest wait between two reconnection attempts.
        connect_timeout: seconds one connection attempt may take.
        on_error: what to do with a payload that does not decode (with a
            :class:`~aflow.DecodeError` naming its topic and packet id, and provenance
            ``mqtt://host:port/topic (packet id N)``): ``"skip"`` (the default: counted
            in ``errors``), ``"raise"`` or :func:`~aflow.dead_letter`.
        name: the source's name in statistics and errors.

    Raises:
        ValueError: no topic, no ``dtype`` for a decoded format, a ``topic_field`` the
            dtype has already, or an argument out of its range.
        RuntimeError: the flow runs on trio (aiomqtt needs asyncio).
    """
    topic_list = [topics] if isinstance(topics, str) else list(topics)
    if topic_width < 1:
        raise ValueError(f"read_mqtt: topic_width={topic_width}: must be at least 1")
    decode = _Decode(
        format, None if dtype is None else np.dtype(dtype), delimiter, topic_field, topic_width
    )
    return Flow(
        _MqttSource(
            topic_list,
            host,
            port,
            qos=qos,
            decode=decode,
            client_id=client_id,
            clean_start=clean_start,
            session_expiry=session_expiry,
            max_messages=max_messages,
            receive_maximum=receive_maximum,
            username=username,
            password=password,
            backoff=backoff,
            max_backoff=max_backoff,
            connect_timeout=connect_timeout,
            on_error=on_error,
            name=name,
        )
    )


class _Refused(Exception):
    """The broker answered a publish with a failure reason code (PUBACK >= 0x80)."""

    def __init__(self, topic: str, reason: Any) -> None:
        super().__init__(topic, reason)
        self.topic = topic
        self.reason = reason


class _Acked:
    """The reason code of each QoS 1 publish's PUBACK, for one client: aiomqtt drops it,
    so a publish the broker refused (not authorized, quota exceeded...) would count as
    published."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.waiters: dict[int, asyncio.Future[Any]] = {}
        paho = client._client
        inner: Any = paho.on_publish  # aiomqtt's, of paho's callback API version 2

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            waiter = self.waiters.pop(mid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(reason)
            if inner is not None:
                inner(c, userdata, mid, reason, props)

        paho.on_publish = on_publish

    async def publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, op: _MqttOptions
    ) -> None:
        info = client._client.publish(topic, payload, op.qos, op.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if op.qos == 0 or info.is_published():
            return
        # single-threaded: paho calls on_publish from a later read callback, never
        # before publish() returned
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[info.mid] = waiter
        timeout = client.timeout if op.timeout is None else op.timeout
        try:
            reason = await asyncio.wait_for(waiter, None if timeout == math.inf else timeout)
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None
        finally:
            if self.waiters.get(info.mid) is waiter:
                del self.waiters[info.mid]
        if reason is not None and getattr(reason, "is_failure", False):
            raise _Refused(topic, reason)


async def _publish_all(
    client: aiomqtt.Client, acked: _Acked, pairs: list[tuple[str, bytes]], op: _MqttOptions
) -> list[Any]:
    """Publish ``pairs`` at once: ``None`` per message acknowledged, else its error. A
    connection lost midway fails every message not yet acknowledged at once (aiomqtt
    alone would wait for their acknowledgements until ``timeout``)."""
    calls = [acked.publish(client, t, p, op) for t, p in pairs]
    gathered = asyncio.ensure_future(asyncio.gather(*calls, return_exceptions=True))
    lost: asyncio.Future[None] = client._disconnected
    try:
        waits: set[asyncio.Future[Any]] = {gathered, lost}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        gathered.cancel()
        raise
    if gathered.done():
        return list(gathered.result())
    gathered.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gathered
    error = lost.exception() if not lost.cancelled() else None
    return [error or aiomqtt.MqttError("disconnected")] * len(pairs)


class _MqttWriter(SinkWriter[Any, int]):
    def __init__(self, op: _MqttOp) -> None:
        self.op = op.opts
        self.name = op.name
        self.on_error = op.on_error
        self.client: aiomqtt.Client | None = None
        self.acked: _Acked | None = None
        self.counters: StageCounters | None = None
        self.encoder = (
            CsvEncoder(delimiter=op.opts.delimiter) if op.opts.format == "csv" else JsonlEncoder()
        )
        self.published = 0
        self.reconnects = 0

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.counters = counters

    async def open(self) -> None:
        require_asyncio(self.name, "aiomqtt")
        try:
            await self._connect()
        except aiomqtt.MqttError as exc:
            raise ConnectionError(
                f"{self.name}: cannot connect to mqtt://{self.op.host}:{self.op.port}: {exc}"
            ) from exc

    async def _connect(self) -> aiomqtt.Client:
        op = self.op
        client = aiomqtt.Client(
            op.host,
            op.port,
            identifier=f"aflow-{uuid.uuid4().hex[:16]}",
            username=op.username,
            password=op.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=op.connect_timeout,
            max_inflight_messages=op.max_inflight,
        )
        self.acked = _Acked(client)
        await client.__aenter__()
        self.client = client
        return client

    async def _disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)

    async def _publish(self, pairs: list[tuple[str, bytes]]) -> None:
        """Publish every ``(topic, payload)``, at once; at QoS 1 and 2 return when the
        broker acknowledged them all. A broken connection is opened again (capped
        backoff) and the messages not acknowledged are published again."""
        op = self.op
        todo = pairs
        delay = op.backoff
        while todo:
            client = self.client
            try:
                if client is None:
                    client = await self._connect()
                assert self.acked is not None
                results = await _publish_all(client, self.acked, todo, op)
            except aiomqtt.MqttError as exc:
                results = [exc] * len(todo)
            failed = [pair for pair, r in zip(todo, results, strict=True) if r is not None]
            self.published += len(todo) - len(failed)
            errors = [r for r in results if isinstance(r, BaseException)]
            refused = [r for r in errors if isinstance(r, _Refused)]
            if refused:
                topics = sorted({r.topic for r in refused})
                raise RuntimeError(
                    f"{self.name}: mqtt://{op.host}:{op.port} refused {len(refused)} of "
                    f"{len(todo)} messages (PUBACK reason {refused[0].reason}, "
                    f"{int(refused[0].reason.value):#04x}) on {topics[:5]}; none of them "
                    "was delivered (check the broker's access rules and limits)"
                )
            for error in errors:
                if not isinstance(error, aiomqtt.MqttError | OSError):
                    raise error
            todo = failed
            if todo:
                logger.warning(
                    "%s: %d messages not acknowledged (%s); reconnecting in %.2g s",
                    self.name,
                    len(todo),
                    errors[0],
                    delay,
                )
                await self._disconnect()
                await anyio.sleep(delay)
                delay = min(delay * 2, op.max_backoff)
                self.reconnects += 1
                if self.counters is not None:
                    self.counters.retries += 1

    def _pairs(self, data: NDArray[Any]) -> list[tuple[str, bytes]]:
        op = self.op
        if op.topic_field is None:
            body = data
            topics: list[str] = [op.topic] * len(data)
        else:
            names = data.dtype.names
            if names is None or op.topic_field not in names:
                raise TypeError(
                    f"{self.name}: topic_field={op.topic_field!r} names no field of {data.dtype}"
                )
            body = data[[n for n in names if n != op.topic_field]]
            topics = [str(t) for t in data[op.topic_field].tolist()]
            if op.topic:
                topics = [op.topic.format(t) for t in topics]
        lines = self.encoder.encode(body).split(b"\n")[: len(data)]
        return list(zip(topics, lines, strict=True))

    async def write(self, item: Any) -> None:
        await self.write_chunk([item])

    async def write_chunk(self, items: list[Any]) -> None:
        pairs = []
        for item in items:
            if isinstance(item, tuple) and len(item) == 2:
                topic, payload = item
            else:
                topic, payload = self.op.topic, item
            if isinstance(payload, str):
                payload = payload.encode()
            if not isinstance(payload, bytes | bytearray) or not isinstance(topic, str):
                raise TypeError(
                    f"{self.name}: elements must be bytes, str or (topic, payload) tuples, "
                    f"got {type(item).__name__}"
                )
            pairs.append((topic, bytes(payload)))
        await self._publish(pairs)

    async def write_batch(self, batch: Batch) -> None:
        try:
            pairs = self._pairs(batch.data)
        except (TypeError, ValueError) as exc:
            assert self.counters is not None
            await apply_policy(
                self.on_error, batch.data, exc, self.name, batch.provenance, self.counters
            )
            return
        await self._publish(pairs)

    async def aclose(self) -> None:
        await self._disconnect()

    def result(self) -> int:
        return self.published


@dataclass(frozen=True, slots=True, kw_only=True)
class _MqttOptions:
    topic: str
    host: str
    port: int
    format: Literal["jsonl", "csv"]
    delimiter: str
    topic_field: str | None
    qos: int
    retain: bool
    max_inflight: int
    timeout: float | None
    username: str | None
    password: str | None
    backoff: float
    max_backoff: float
    connect_timeout: float
    buffer: int | None
    on_error: ErrorPolicy
    name: str | None


class _MqttOp(SinkOperator[Any, int]):
    fused = False

    def __init__(self, opts: _MqttOptions) -> None:
        _check(opts.backoff, opts.max_backoff, opts.connect_timeout, opts.qos)
        if opts.format not in ("jsonl", "csv"):
            raise ValueError(f"to_mqtt: format={opts.format!r}: use 'jsonl' or 'csv'")
        if opts.max_inflight < 1:
            raise ValueError("to_mqtt: max_inflight must be at least 1")
        self.opts = opts
        self.buffer = opts.buffer
        self.on_error = check_policy(opts.on_error)
        self.name = opts.name or f"to_mqtt({opts.topic or opts.topic_field})"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _MqttWriter(self)


def to_mqtt(
    topic: str,
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    format: Literal["jsonl", "csv"] = "jsonl",
    delimiter: str = ",",
    topic_field: str | None = None,
    qos: int = 1,
    retain: bool = False,
    max_inflight: int = 1000,
    timeout: float | None = 30.0,
    username: str | None = None,
    password: str | None = None,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    connect_timeout: float = 10.0,
    buffer: int | None = None,
    on_error: ErrorPolicy = "raise",
    name: str | None = None,
) -> Sink[Any, int]:
    """Publish each row of the batches as one MQTT message; the result is the count of
    messages published (acknowledged by the broker, at QoS 1 and 2).

    A batch's rows are encoded at once (:class:`~aflow.codecs.JsonlEncoder`: one JSON
    object per message; :class:`~aflow.codecs.CsvEncoder`: one CSV line, without its
    newline) and published together, up to ``max_inflight`` unacknowledged at a time; the
    sink takes the next batch once the broker acknowledged them all. Elements (not
    batches) are published as they are: ``bytes`` or ``str`` to ``topic``, a
    ``(topic, payload)`` tuple to its own topic. A connection that breaks is opened again
    (capped backoff) and the messages not acknowledged are published again, so a
    message may reach subscribers twice (at-least-once), never zero times.

    Needs the ``mqtt`` extra (aiomqtt) and the asyncio backend.

    Args:
        topic: where to publish; with ``topic_field``, a ``str.format`` template given
            the field's value (``"sensors/{}"``), or ``""`` to use the value as it is.
        host: the broker's address.
        port: the broker's port.
        format: the payload's encoding, ``"jsonl"`` or ``"csv"``.
        delimiter: the CSV field separator.
        topic_field: a field of the rows holding each row's topic (left out of the
            payload).
        qos: the messages' quality of service.
        retain: publish as retained messages.
        max_inflight: the most messages published and not yet acknowledged.
        timeout: seconds a publish may wait for its acknowledgement before the
            connection counts as broken.
        username: for the broker's authentication.
        password: for the broker's authentication.
        backoff: seconds before the first reconnection attempt.
        max_backoff: the longest wait between two reconnection attempts.
        connect_timeout: seconds one connection attempt may take.
        buffer: messages waiting in front of the sink.
        on_error: what to do with a batch that cannot be encoded (no ``topic_field``
            in its dtype): ``"raise"``, ``"skip"`` or :func:`~aflow.dead_letter`.
        name: the sink's name in statistics and errors.

    Raises:
        ConnectionError: the first connection, when the run starts, could not be opened.
        RuntimeError: the flow runs on trio (aiomqtt needs asyncio), or the broker
            refused a publish (a PUBACK reason code of 0x80 or more, such as 0x87 not
            authorized): the error names the count, the reason and the topics.
    """
    return Sink(
        _MqttOp(
            _MqttOptions(
                topic=topic,
                host=host,
                port=port,
                format=format,
                delimiter=delimiter,
                topic_field=topic_field,
                qos=qos,
                retain=retain,
                max_inflight=max_inflight,
                timeout=timeout,
                username=username,
                password=password,
                backoff=backoff,
                max_backoff=max_backoff,
                connect_timeout=connect_timeout,
                buffer=buffer,
                on_error=on_error,
                name=name,
            )
        )
    )

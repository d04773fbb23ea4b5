"""The MQTT sink: publish each row of the batches as one message, many at once.

Each batch's rows are encoded at once and published together; at QoS 1 and 2 the sink
waits for every PUBACK (with its reason code: aiomqtt drops it) before it takes the next
batch, and publishes again what a broken connection left unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
import anyio
from numpy.typing import NDArray
from paho.mqtt.enums import MQTTErrorCode

from ...abc import (
    Batch,
    Context,
    ErrorPolicy,
    SinkOperator,
    SinkWriter,
    StageCounters,
    apply_policy,
    check_policy,
)
from ...codecs import CsvEncoder, JsonlEncoder
from ...flow import Sink
from .._common import Backoff, require_asyncio
from ._wire import _check, disconnected

logger = logging.getLogger("aflow")


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
            disconnected(client)

    async def _publish(self, pairs: list[tuple[str, bytes]]) -> None:
        """Publish every ``(topic, payload)``, at once; at QoS 1 and 2 return when the
        broker acknowledged them all. A broken connection is opened again (capped
        backoff) and the messages not acknowledged are published again."""
        op = self.op
        todo = pairs
        backoff = Backoff(op.backoff, op.max_backoff)
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
                    backoff.next_delay(),
                )
                await self._disconnect()
                await backoff.wait()
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

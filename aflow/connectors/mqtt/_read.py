"""The MQTT source: subscribe to topics, decode each read's payloads into one batch.

The source takes every message received at once (up to ``max_messages``, read in bulk
by :class:`~._wire.Inbox`), decodes their payloads in one call of a codec into a
structured array, and adds the topic of each row as a fixed-width string field.

Acknowledgements (QoS 1): the source turns paho-mqtt's manual acknowledgement on, so a
message's PUBACK is sent only once every sink handled it: when the run commits the epoch
holding it (the source registers ``on_commit``, which makes the run commit every
``commit_interval`` seconds). See the docs page on connectors for what a broker restart
redelivers and loses.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import aiomqtt
import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ...abc import (
    Batch,
    Context,
    ErrorPolicy,
    Outlet,
    Provenance,
    Source,
    apply_policy,
    check_policy,
)
from ...codecs import CsvDecoder, JsonlDecoder
from ...errors import DecodeError
from ...flow import Flow
from ...kernels.rows import empty_rows
from .._common import Backoff, require_asyncio
from ._wire import Acks, Inbox, Received, _check, disconnected

logger = logging.getLogger("aflow")

MqttFormat: TypeAlias = Literal["jsonl", "csv", "raw"]
"""How an MQTT payload is read or written: one JSON object (``"jsonl"``), one CSV line
(``"csv"``), or the bytes as they are (``"raw"``: ``(topic, payload)`` tuples)."""

THREAD_BYTES = 1 << 20
"""Payloads of a read of at least this many bytes are decoded in a worker thread."""


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

    async def decode(
        self, topics: list[str], payloads: list[bytes]
    ) -> tuple[NDArray[Any], list[tuple[int, str]]]:
        """The rows of the messages that decode (in their order, with their topics), and
        the index of each other one with what is wrong with it, in order."""
        assert self.decoder is not None
        blob = self._joined(topics, payloads)
        kept: Sequence[int] = range(len(payloads))
        refused: list[tuple[int, str]] = []
        if blob is not None:
            decoded = await self._decode(blob)
            if len(decoded.rows) + len(decoded.bad) != len(payloads):
                blob = None  # a blank payload, skipped by the decoder: read them one by one
        if blob is None:
            blob, kept, refused = self._block(topics, payloads)
            decoded = await self._decode(blob)
        bad = [(i, f"{why} on topic {topics[i]!r}") for i, why in refused]
        bad += [
            (kept[line.index], f"bad payload on topic {topics[kept[line.index]]!r}: {line.error}")
            for line in decoded.bad
        ]
        if not bad:
            return self._rows(decoded.rows, topics), bad
        failed = {i for i, _ in bad}
        good = [topics[i] for i in kept if i not in failed]
        return self._rows(decoded.rows, good), sorted(bad)

    async def _decode(self, blob: bytes) -> Any:
        assert self.decoder is not None
        if len(blob) >= THREAD_BYTES:
            return await anyio.to_thread.run_sync(self.decoder.decode, blob)
        return self.decoder.decode(blob)

    def _joined(self, topics: list[str], payloads: list[bytes]) -> bytes | None:
        """The payloads as lines, when every one is a line as it is and no topic is too
        long (most reads: no Python per message), else ``None``."""
        if self.topic_field is not None and max(map(len, set(topics))) > self.topic_width:
            return None
        blob = b"\n".join(payloads) + b"\n"
        if blob.count(b"\n") != len(payloads) or b"\r" in blob:
            return None
        return blob

    def _block(
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

    def _rows(self, decoded_rows: NDArray[Any], topics: list[str]) -> NDArray[Any]:
        """The decoded rows with the topic of each (``topics``: one per row)."""
        if self.topic_field is None:
            return decoded_rows
        assert self.dtype is not None
        out = empty_rows(len(decoded_rows), self.dtype)
        names = decoded_rows.dtype.names
        assert names is not None
        for name in names:
            out[name] = decoded_rows[name]
        out[self.topic_field] = topics
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
        acks = Acks()

        async def committed(positions: dict[str, Any]) -> None:
            seq = positions.get(self.url)
            if seq is not None:
                acks.upto(int(seq))

        out.on_commit(committed)  # PUBACKs once every sink handled the messages
        backoff = Backoff(self.backoff, self.max_backoff)
        # numbered on from the last run's committed number, so a stale one never covers new
        seq = int(out.resume_positions.get(self.url, 0))
        while not out.stopping:
            client = self._client()
            inbox = Inbox.install(client)
            try:
                async with client:
                    acks.connected(client)
                    seq = await self._subscribe_and_pump(client, inbox, out, acks, seq)
                    # a graceful stop: keep the connection until the final commit has
                    # acknowledged what it covers (a restart then redelivers nothing)
                    await out.end(commit_timeout=self.connect_timeout)
                    return
            except aiomqtt.MqttError as exc:
                logger.warning(
                    "%s: %s: %s; reconnecting in %.2g s",
                    self.name, self.url, exc, backoff.next_delay(),
                )  # fmt: skip
            finally:
                disconnected(client)
            with out.pull_scope():
                await backoff.wait()

    async def _subscribe_and_pump(
        self, client: aiomqtt.Client, inbox: Inbox, out: Outlet, acks: Acks, seq: int
    ) -> int:
        """Subscribe while reading: a resumed session's queued messages come before the
        SUBACK, and they are read meanwhile (waiting for the SUBACK first could take
        longer than ``connect_timeout`` with many of them)."""
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._subscribe, client, inbox)
            try:
                seq = await self._pump(inbox, out, acks, seq)
            except Exception as exc:  # raised as itself, not in a group, once tg is done
                error = exc
            tg.cancel_scope.cancel()  # a graceful stop: no need to wait for the SUBACK
        if error is not None:
            raise error
        return seq

    async def _subscribe(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        try:
            await client.subscribe([(t, self.qos) for t in self.topics])
        except aiomqtt.MqttError as exc:
            inbox.fail(exc)  # the pump raises it
        else:
            logger.info("%s: subscribed to %s", self.name, self.url)

    async def _pump(self, inbox: Inbox, out: Outlet, acks: Acks, seq: int) -> int:
        while not out.stopping:
            with out.pull_scope():
                await inbox.wait()
            if out.stopping:  # a graceful stop (what was taken is read again: not acked)
                break
            got = inbox.take(self.max_messages)
            seq += len(got)
            acks.add(seq, got)
            await self._emit(got, out, seq)
        return seq

    async def _emit(self, got: Received, out: Outlet, seq: int) -> None:
        first_seq = seq - len(got) + 1
        topics, payloads = got.topics, got.payloads
        position = (self.url, seq)
        decode = self.decode
        if decode.decoder is None:
            await out.emit(list(zip(topics, payloads, strict=True)), position=position)
            return
        rows, bad = await decode.decode(topics, payloads)
        for i, why in bad:
            where = self._where(got, i)
            prov = Provenance(where, first_seq + i, first_seq + i + 1)
            error = DecodeError(why, source=where)
            await apply_policy(self.on_error, payloads[i], error, self.name, prov, out.counters)
        if len(rows):
            prov = Provenance(self.url, first_seq, seq + 1)
            await out.emit(Batch(rows, "source", prov), position=position)
        elif bad:
            await out.emit(Batch(rows, "source"), position=position)

    def _where(self, got: Received, i: int) -> str:
        return f"{self.url}/{got.topics[i]} (packet id {got.mids[i]})"


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

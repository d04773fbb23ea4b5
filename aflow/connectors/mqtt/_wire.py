"""The MQTT source's side of paho-mqtt: reading PUBLISH packets in bulk, and PUBACKs in bulk.

paho-mqtt (under aiomqtt) receives a packet's header a byte at a time, handles one packet
per readiness callback of the event loop, builds an ``MQTTMessage`` and an MQTT 5
``Properties`` object per PUBLISH, and aiomqtt wraps each in a ``Message`` and an
``asyncio.Queue`` item: some 20 us of Python per message. :class:`Inbox` reads the socket
64 KiB at a time and takes each complete PUBLISH without properties (what a broker sends
unless asked for more) and at QoS 0 or 1 straight from the buffer into four lists (topic,
payload, packet id, QoS); every other packet (CONNACK, SUBACK, QoS 2, a PUBLISH with
properties...) goes to paho as before, at a packet boundary, and paho's own messages land
in the same lists, in order. :class:`Acks` sends the PUBACKs of a commit as one write.

Both wrap private parts of paho-mqtt 2 and aiomqtt 2; :meth:`Inbox.install` checks they
are there and otherwise leaves paho as it is (every message then takes paho's path).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiomqtt
import numpy as np
from paho.mqtt.client import MQTTMessage, MQTTv5
from paho.mqtt.enums import MQTTErrorCode

PUBLISH = 0x30
PUBACK = 0x40
_PAHO = ("_sock_recv", "_packet_read", "_loop_rc_handle", "_in_packet", "_packet_queue")


def _check(backoff: float, max_backoff: float, connect_timeout: float, qos: int) -> None:
    if not (0 < backoff <= max_backoff) or not connect_timeout > 0:
        raise ValueError("mqtt: need 0 < backoff <= max_backoff, connect_timeout > 0")
    if qos not in (0, 1, 2):
        raise ValueError(f"mqtt: qos={qos}: must be 0, 1 or 2")


def disconnected(client: aiomqtt.Client) -> None:
    """Mark the error of ``client``'s lost connection as seen: aiomqtt keeps it in a
    future that nothing awaits once the connection is given up (its ``__aexit__`` returns
    at once), and asyncio logs "Future exception was never retrieved" when the future is
    collected."""
    lost: asyncio.Future[None] = client._disconnected
    if lost.done() and not lost.cancelled():
        lost.exception()


class Received:
    """Messages received and not yet taken, as parallel lists."""

    __slots__ = ("mids", "payloads", "qos", "topics")

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.payloads: list[bytes] = []
        self.mids: list[int] = []
        self.qos: list[int] = []

    def __len__(self) -> int:
        return len(self.mids)

    def cut(self, n: int) -> Received:
        """The first ``n`` messages, taken out (all of them, at once, when ``n`` covers
        them: no copy)."""
        head = Received()
        if n >= len(self.mids):
            head.topics, self.topics = self.topics, []
            head.payloads, self.payloads = self.payloads, []
            head.mids, self.mids = self.mids, []
            head.qos, self.qos = self.qos, []
            return head
        for name in self.__slots__:
            rows = getattr(self, name)
            setattr(head, name, rows[:n])
            del rows[:n]
        return head


class Inbox:
    """The messages of one connection, read in bulk (see the module's docstring); the
    source awaits :meth:`wait` and takes them with :meth:`take`."""

    BURST = 64
    """Socket reads handled per readiness callback (then again at the next iteration of
    the event loop, so other tasks run)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.paho = client._client
        self.v5 = self.paho._protocol == MQTTv5
        self.got = Received()
        self.ready = asyncio.Event()
        self.bulk = False
        self.buf = b""
        self.pos = 0
        self.error: OSError | None = None
        self.recv: Callable[[int], bytes] = getattr(self.paho, "_sock_recv", bytes)
        self.failed: Exception | None = None
        self.names: dict[bytes, str] = {}
        self.paho.on_message = self._on_message  # aiomqtt's own queue stays empty

    @classmethod
    def install(cls, client: aiomqtt.Client) -> Inbox:
        """An inbox for ``client`` (not connected yet, manual acknowledgements on): its
        messages no longer reach ``client.messages``."""
        inbox = cls(client)
        paho = inbox.paho
        # the bulk path sends no PUBACK of its own: only for a client acknowledging by hand
        bulk = all(hasattr(paho, n) for n in _PAHO) and getattr(paho, "_manual_ack", False)
        if bulk and isinstance(paho._in_packet, dict):
            inbox.bulk = True
            paho._sock_recv = inbox._sock_recv  # type: ignore[method-assign]
            paho.loop_read = inbox.loop_read  # type: ignore[method-assign]
        return inbox

    # -- what the source calls ---------------------------------------------------------
    async def wait(self) -> None:
        """Until messages are there; raises ``aiomqtt.MqttError`` once the connection is
        lost (after the messages received before were taken)."""
        lost: asyncio.Future[None] = self.client._disconnected
        while not self.got.mids:
            if self.failed is not None:
                raise self.failed
            if lost.done():
                # retrieved here, or asyncio logs "Future exception was never retrieved"
                error = None if lost.cancelled() else lost.exception()
                raise aiomqtt.MqttError("Disconnected during message iteration") from error
            self.ready.clear()
            waiter = asyncio.ensure_future(self.ready.wait())
            try:
                await asyncio.wait((waiter, lost), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def fail(self, exc: Exception) -> None:
        """Have :meth:`wait` raise ``exc`` (once the messages received were taken)."""
        self.failed = exc
        self.ready.set()

    def take(self, most: int) -> Received:
        return self.got.cut(most)

    # -- paho's side -------------------------------------------------------------------
    def _on_message(self, client: Any, userdata: Any, message: MQTTMessage) -> None:
        got = self.got
        got.topics.append(message.topic)
        got.payloads.append(bytes(message.payload))
        got.mids.append(message.mid)
        got.qos.append(message.qos)
        self.ready.set()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self.pos >= len(self.buf) and (self.error is not None or not self._fill()):
            error, self.error = self.error, None
            if error is not None:
                raise error
            return b""  # the connection closed
        chunk = self.buf[self.pos : self.pos + bufsize]
        self.pos += len(chunk)
        return chunk

    def _fill(self) -> bool:
        """Read what the socket has (up to 64 KiB); False when nothing came. Raises
        ``BlockingIOError`` when nothing is there yet (paho's AGAIN); keeps any other
        error for paho's next read."""
        try:
            data = self.recv(1 << 16)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.error = exc
            return False
        self.buf, self.pos = data, 0
        return bool(data)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's ``loop_read``, called by aiomqtt when the socket is readable."""
        paho = self.paho
        before = len(self.got.mids)
        try:
            for _ in range(self.BURST):
                if paho._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                if paho._in_packet["command"] == 0:  # between two packets
                    if self.pos >= len(self.buf) and self.error is None:
                        try:
                            self._fill()  # an error or the end: paho's read below tells
                        except BlockingIOError:
                            return MQTTErrorCode.MQTT_ERR_SUCCESS
                    self._take_publishes()
                    if self.pos >= len(self.buf) and self.buf and self.error is None:
                        continue  # all taken: read on
                rc = paho._packet_read()  # one packet not for the bulk path (or its rest)
                if rc > 0:
                    return paho._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
            # more may be there (maybe only in the buffer, which the socket's readiness
            # does not announce): go on at the next iteration of the event loop
            self.client._loop.call_soon(self._again)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if len(self.got.mids) > before:
                paho._last_bytes_received = time.monotonic()  # for paho's keepalive
                self.ready.set()

    def _again(self) -> None:
        try:
            self.loop_read()
        except Exception as exc:  # as aiomqtt's own read callback: the connection broke
            if not self.client._disconnected.done():
                self.client._disconnected.set_exception(exc)

    def _take_publishes(self) -> None:
        """Take the complete PUBLISH packets at QoS 0 or 1 without properties from the
        buffer, up to the first other packet (or incomplete one)."""
        buf, pos, end, v5, names = self.buf, self.pos, len(self.buf), self.v5, self.names
        got = self.got
        topics, payloads, mids, qoss = got.topics, got.payloads, got.mids, got.qos
        while pos + 2 <= end:
            command = buf[pos]
            qos = (command >> 1) & 3
            if command & 0xF0 != PUBLISH or qos > 1:
                break
            length = buf[pos + 1]
            start = pos + 2
            if length & 0x80:  # the remaining length takes 2 to 4 bytes
                length &= 0x7F
                shift = 7
                while True:
                    if start >= end or shift > 21:
                        self.pos = pos
                        return
                    byte = buf[start]
                    start += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
            stop = start + length
            if stop > end or length < 2:
                break  # incomplete (or malformed: paho says so)
            named = start + 2 + ((buf[start] << 8) | buf[start + 1])
            at = named + (2 if qos else 0)
            if at + v5 > stop:
                break  # malformed: paho says so
            mid = (buf[named] << 8) | buf[named + 1] if qos else 0
            if v5:
                if buf[at] != 0:  # properties: paho's path
                    break
                at += 1
            name = buf[start + 2 : named]
            topic = names.get(name)
            if topic is None:
                try:
                    topic = name.decode()
                except UnicodeDecodeError:
                    break  # paho's path
                if len(names) < 4096:
                    names[name] = topic
            topics.append(topic)
            payloads.append(buf[at:stop])
            mids.append(mid)
            qoss.append(qos)
            pos = stop
        self.pos = pos


class Acks:
    """Messages received and not yet acknowledged, by sequence number, for one source:
    a run of messages per read (its last sequence number, the packet ids at QoS 1 and 2,
    the connection that got them)."""

    def __init__(self) -> None:
        self.pending: deque[tuple[int, list[int], list[int], int]] = deque()
        self.client: aiomqtt.Client | None = None
        self.generation = 0
        self.acked = 0

    def connected(self, client: aiomqtt.Client) -> None:
        """A new connection: the unacknowledged messages of the previous one cannot be
        acknowledged any more (the broker redelivers them to a persistent session)."""
        self.client = client
        self.generation += 1
        self.pending.clear()

    def add(self, last_seq: int, got: Received) -> None:
        """The messages of one read, numbered up to ``last_seq``."""
        if any(got.qos):
            self.pending.append((last_seq, got.mids, got.qos, self.generation))

    def upto(self, seq: int) -> None:
        """Acknowledge every message numbered ``seq`` or less."""
        pending, client = self.pending, self.client
        ones: list[int] = []
        while pending and pending[0][0] <= seq:
            _, mids, qoss, generation = pending.popleft()
            if client is None or generation != self.generation:
                continue
            if 2 in qoss:
                for mid, qos in zip(mids, qoss, strict=True):
                    if qos:
                        client._client.ack(mid, qos)
                self.acked += sum(1 for q in qoss if q)
            else:
                ones.extend(mid for mid, qos in zip(mids, qoss, strict=True) if qos)
        if ones and client is not None:
            self._pubacks(client, ones)
            self.acked += len(ones)

    @staticmethod
    def _pubacks(client: aiomqtt.Client, mids: list[int]) -> None:
        """One write of a PUBACK per packet id (success: the same four bytes in MQTT 3.1.1
        and 5), or paho's ``ack`` per message where its private queue is not there."""
        paho = client._client
        if not paho._manual_ack:
            return
        if not hasattr(paho, "_packet_queue"):
            for mid in mids:
                paho.ack(mid, 1)
            return
        packets = np.empty((len(mids), 4), np.uint8)
        packets[:, 0] = PUBACK
        packets[:, 1] = 2
        packets[:, 2:] = np.asarray(mids, ">u2").view(np.uint8).reshape(-1, 2)
        paho._packet_queue(PUBACK, packets.tobytes(), 0, 0)

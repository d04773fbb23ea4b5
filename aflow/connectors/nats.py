"""NATS JetStream: a durable pull consumer as a source (fetched in batches, acknowledged
after the sinks) and a publishing sink that waits for JetStream's acks. Needs the ``nats``
extra (nats-py) and the asyncio backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
    require_asyncio,
    worker_index,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

__all__ = ["read_nats", "to_nats"]

logger = logging.getLogger("aflow")


async def _connect(url: str, connect_timeout: float) -> NATS:
    try:
        import nats
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError(
            "the NATS connector needs nats-py: pip install 'aflow-streams[nats]'"
        ) from None

    async def quiet(exc: Exception) -> None:  # aflow logs and reports failures itself
        pass

    # aflow reconnects itself, with capped backoff: nats-py's own loop would hide failures
    # (its first connection keeps retrying a refused server: bound it).
    with anyio.fail_after(max(0.5, min(connect_timeout, 5.0))):
        return await nats.connect(
            url,
            allow_reconnect=False,
            connect_timeout=max(1, int(connect_timeout)),
            max_reconnect_attempts=0,
            error_cb=quiet,
        )


def _connection_errors() -> tuple[type[BaseException], ...]:
    import nats.errors as nerr

    return (
        nerr.ConnectionClosedError,
        nerr.NoServersError,
        nerr.StaleConnectionError,
        nerr.UnexpectedEOF,
        nerr.OutboundBufferLimitError,
        OSError,
    )


async def _flush(nc: NATS, patience: float) -> None:
    """``nc.flush`` (``FlushTimeoutError`` after ``patience`` seconds) that raises
    ``ConnectionError`` as soon as the connection closes: nats-py leaves the flush's PING
    unanswered when the server goes away, and the flush would wait out its whole patience
    (a sink's whole reconnect timeout) instead of letting the caller reconnect at once."""
    failure: Exception | None = None

    async def watch_closed() -> None:
        nonlocal failure
        while not nc.is_closed:  # noqa: ASYNC110 - nats-py has no awaitable "closed"
            await anyio.sleep(0.25)
        failure = ConnectionError("the connection closed before the server answered a flush")
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_closed)
        try:
            await nc.flush(timeout=max(1, int(patience)))
        except Exception as exc:  # raised below, outside the task group (not in a group)
            failure = failure or exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


_ACKS_PER_WRITE = 10_000


async def _publish_acks(nc: NATS, replies: list[str]) -> None:
    """``+ACK`` each reply subject: the ``PUB`` commands packed here, many per write into
    the client's outgoing buffer (nats-py's ``publish`` costs microseconds a message);
    one ``publish`` each if the client has no such buffer (another nats-py version)."""
    send = getattr(nc, "_send_command", None)
    if send is None:  # pragma: no cover - a nats-py without it
        for reply in replies:
            await nc.publish(reply, b"+ACK")
        return
    for i in range(0, len(replies), _ACKS_PER_WRITE):
        chunk = replies[i : i + _ACKS_PER_WRITE]
        await send("".join([f"PUB {r} 4\r\n+ACK\r\n" for r in chunk]).encode())


class _Puller:
    """Pull requests of one JetStream consumer, answered into an inbox of our own.

    nats-py's ``fetch`` waits for each message with its own timeout (a task and a timer
    per message); here the subscription's callback only appends to a list, and a fetch
    waits once for the batch: the first request takes what is there (``no_wait``), and
    when nothing was, a second waits ``block`` seconds for the first messages. Messages
    a request delivers after its fetch returned are kept for the next fetch.
    """

    def __init__(self, nc: NATS, next_subject: str) -> None:
        self.nc, self.next_subject = nc, next_subject
        self.inbox = nc.new_inbox()
        self.msgs: list[Msg] = []
        self.want = 0  # messages that end the current wait
        self.done = asyncio.Event()
        self.error: BaseException | None = None

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=-1)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.msgs.append(msg)
            if len(self.msgs) >= self.want:
                self.done.set()
        elif status != "100":  # not a heartbeat: the request ended
            # 404 no messages, 408 expired, 409 leadership change: nothing more; else
            # an error (409 consumer deleted, ...)
            why = (msg.headers or {}).get("Description", "")
            if status not in ("404", "408") and "Leadership" not in why:
                import nats.js.errors as jerr

                self.error = jerr.APIError.from_msg(msg)
            self.done.set()

    async def _request(self, batch: int, want: int, patience: float, **extra: Any) -> None:
        self.want, self.error = want, None
        self.done.clear()
        if len(self.msgs) >= want:
            return
        request = json.dumps({"batch": batch, **extra}).encode()
        await self.nc.publish(self.next_subject, request, reply=self.inbox)
        with anyio.fail_after(patience):  # no answer at all: the connection is gone
            await self.done.wait()
        if self.error is not None:
            raise self.error

    async def fetch(self, count: int, block: float) -> list[Msg]:
        """Up to about ``count`` messages; none after ``block`` seconds without any."""
        if not self.msgs:
            await self._request(count, count, max(block, 5.0), no_wait=True)
        if not self.msgs:
            await self._request(count, 1, block + 1.0, expires=int(block * 1e9))
        msgs, self.msgs = self.msgs, []
        return msgs


_PUBS_PER_WRITE = 5_000


class _Publisher:
    """JetStream publishes of a batch, acknowledged into an inbox of our own.

    nats-py's ``publish_async`` costs a future, a done-callback and a ``PUB`` packed per
    message; here the batch's ``PUB`` commands are packed many per write, every message
    of one attempt names the same reply subject, and the inbox's callback only counts the
    acks (and keeps the first error). An attempt is done when as many acks as messages
    came back (JetStream answers each publish once): a reply subject of its own per
    attempt, so late acks of an attempt given up are not counted for the next.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.inbox = nc.new_inbox()
        self.attempt = 0
        self.reply = ""
        self.acks = 0
        self.want = 0
        self.error: str | None = None
        self.done = asyncio.Event()

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_ack, pending_msgs_limit=-1)

    async def _on_ack(self, msg: Msg) -> None:
        if msg.subject != self.reply:
            return  # an ack of an attempt given up
        status = msg.headers.get("Status") if msg.headers else None
        if status == "503":
            self.error = self.error or "no stream captures the subject (no responders)"
        elif status is not None or b'"error"' in msg.data:
            self.error = self.error or f"JetStream refused a message: {msg.data[:200]!r}"
        self.acks += 1
        if self.acks >= self.want or self.error is not None:
            self.done.set()

    async def publish(self, messages: list[tuple[str, bytes]], patience: float) -> None:
        """Publish ``messages`` and wait until JetStream acked every one of them; an error
        reply raises ``nats.errors.Error``, ``patience`` seconds without all acks or a closed
        connection raise ``TimeoutError`` / ``ConnectionError``."""
        self.attempt += 1
        self.reply = f"{self.inbox}.{self.attempt}"
        self.acks, self.want, self.error = 0, len(messages), None
        self.done.clear()
        reply = self.reply.encode()
        send = getattr(self.nc, "_send_command", None)
        for i in range(0, len(messages), _PUBS_PER_WRITE):
            chunk = messages[i : i + _PUBS_PER_WRITE]
            if send is None:  # pragma: no cover - a nats-py without it
                for subject, payload in chunk:
                    await self.nc.publish(subject, payload, reply=self.reply)
                continue
            subjects = {s: s.encode() for s in {s for s, _ in chunk}}
            await send(
                b"".join(
                    [b"PUB %s %s %d\r\n%s\r\n" % (subjects[s], reply, len(p), p) for s, p in chunk]
                )
            )
        await _flush(self.nc, patience)
        with anyio.fail_after(patience):
            while not self.done.is_set():
                with anyio.move_on_after(0.25):
                    await self.done.wait()
                if self.nc.is_closed:  # its pending acks never come
                    raise ConnectionError("to_nats: the connection closed before the acks")
        if self.error is not None:
            import nats.errors as nerr

            raise nerr.Error(f"to_nats: {self.error}")


class _NatsSource(BatchSource):
    client_library = "nats-py"

    def __init__(
        self,
        subject: str,
        durable: str,
        stream: str | None,
        url: str,
        codec: PayloadCodec,
        count: int,
        block: float,
        ack_wait: float,
        idle_stop: float | None,
        connect_timeout: float,
        on_error: ErrorPolicy,
        name: str,
    ) -> None:
        super().__init__(url, codec, count, block, idle_stop, connect_timeout, on_error, name)
        self.subject, self.durable, self.stream, self.ack_wait = subject, durable, stream, ack_wait

    def reader(self, out: Outlet) -> _NatsReader:
        return _NatsReader(self, out)


class _NatsReader(BatchReader[str]):
    """One run of a JetStream pull consumer (acknowledgement tokens: reply subjects)."""

    def __init__(self, op: _NatsSource, out: Outlet) -> None:
        self.op = op
        self.subject = op.subject.format(worker=worker_index())
        where = f"{op.url.rstrip('/')}/{self.subject}"
        super().__init__(out, self.subject, where, op.codec, op.on_error, op.name)
        self.nc: NATS | None = None
        self.backoff = Backoff()
        self.errors = _connection_errors()
        self.ack_errors: tuple[type[BaseException], ...] = (*self.errors, TimeoutError)

    async def _disconnect(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):  # closing a broken connection
                await self.nc.close()
        self.nc = None

    async def _subscribe(self) -> _Puller:
        """Connect, create the durable consumer when missing, and subscribe its inbox;
        retried with backoff for ``connect_timeout`` (a restarted server answers
        ``JetStream not ready`` for a while)."""
        import nats.errors as nerr
        import nats.js.errors as jerr
        from nats.js.api import ConsumerConfig

        retried: tuple[type[BaseException], ...] = (*self.errors, TimeoutError, nerr.Error)

        async def attempt() -> _Puller:
            self.nc = await _connect(self.op.url, self.op.connect_timeout)
            js = self.nc.jetstream()
            try:
                stream = self.op.stream or await js.find_stream_name_by_subject(self.subject)
                try:
                    await js.consumer_info(stream, self.op.durable)
                except jerr.NotFoundError:
                    config = ConsumerConfig(
                        durable_name=self.op.durable,
                        ack_wait=self.op.ack_wait,
                        max_ack_pending=-1,
                        filter_subject=self.subject,
                    )
                    await js.add_consumer(stream, config)
                puller = _Puller(self.nc, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.op.durable}")
                await puller.start()
            except retried:
                await self.close()
                raise
            return puller

        timeout = self.op.connect_timeout
        try:
            return await self.backoff.retry(attempt, retried, timeout, f"read_nats: {self.where}")
        except retried as exc:
            raise ConnectionError(
                f"read_nats: cannot reach or subscribe to {self.where} for {timeout} s: {exc!r}"
            ) from exc

    async def run(self) -> None:
        import nats.errors as nerr

        op = self.op
        puller = await self._subscribe()
        last_data = anyio.current_time()
        while not self.out.stopping:
            msgs: list[Msg] = []
            try:
                with self.out.pull_scope():
                    msgs = await puller.fetch(op.count, op.block)
            except (nerr.TimeoutError, TimeoutError) as exc:  # no answer (an OSError too)
                if self.nc is None or self.nc.is_closed or not self.nc.is_connected:
                    await self._lost(exc)
                    puller = await self._subscribe()
                    continue
            except self.errors as exc:
                await self._lost(exc)
                puller = await self._subscribe()
                continue
            if msgs:
                last_data = anyio.current_time()
                await self._emit(msgs)
            elif op.idle_stop is not None and anyio.current_time() - last_data >= op.idle_stop:
                return

    async def _lost(self, exc: BaseException) -> None:
        logger.warning("read_nats: lost %s (%r); reconnecting", self.op.url, exc)
        await self.close()
        await self.backoff.wait()

    async def _emit(self, msgs: list[Msg]) -> None:
        replies = [m.reply for m in msgs]
        payloads = [m.data for m in msgs]
        await self._emit_payloads(payloads, replies, lambda i: msgs[i].metadata.sequence.stream)

    async def _ack(self, replies: list[str]) -> None:
        """Acknowledge messages by their reply subjects (``+ACK``), on the current
        connection: called only once the sinks acknowledged them. A failure leaves them
        unacknowledged: JetStream redelivers them after ``ack_wait``."""
        try:
            async with self.lock:
                nc = self.nc
                if nc is None or nc.is_closed:  # the last commit comes after the source ended
                    nc = await _connect(self.op.url, self.op.connect_timeout)
                try:
                    await _publish_acks(nc, replies)
                    await _flush(nc, self.op.connect_timeout)
                finally:
                    if nc is not self.nc:
                        await nc.close()
        except self.ack_errors as exc:
            logger.warning(
                "read_nats: could not acknowledge %d messages (%r); JetStream redelivers them",
                len(replies), exc,
            )  # fmt: skip
        else:
            self.acked += len(replies)


def read_nats(
    subject: str,
    durable: str,
    *,
    stream: str | None = None,
    url: str = "nats://127.0.0.1:4222",
    dtype: DTypeLike | None = None,
    format: Format = "csv",
    delimiter: str = ",",
    fill_int: int | None = None,
    count: int = 1000,
    block: float = 1.0,
    ack_wait: float = 30.0,
    idle_timeout: float | None = None,
    connect_timeout: float = 30.0,
    on_error: ErrorPolicy = "raise",
    name: str | None = None,
) -> Flow[Any]:
    """Read a JetStream stream through a durable pull consumer, ``count`` messages a fetch.

    Processes running the same flow with the same ``durable`` share the messages: each
    goes to one of them (``aflow run --workers N``, or the same command on several
    machines).

    Acknowledgement: a message is acknowledged only after every sink of the run
    acknowledged it, through the run's commits (see docs/delivery.md). A message not
    acknowledged within ``ack_wait`` seconds (its worker died) is delivered again, to any
    worker. Delivery is at-least-once.

    Args:
        subject: the subject to consume (a filter on the stream; wildcards allowed).
            ``"{worker}"`` in it is replaced by this process's worker index.
        durable: the durable consumer's name, created when missing.
        stream: the stream's name (``None``: the stream holding ``subject``).
        url: the NATS server, ``nats://host:port``.
        dtype: a structured dtype: each payload is one row (``format``), and batches of
            rows come out. ``None``: chunks of the raw payloads (``bytes``).
        format: ``"csv"`` or ``"jsonl"``: how a payload holds a row.
        delimiter: CSV field separator.
        fill_int: the value of a missing integer; ``None``: a bad payload.
        count: messages per fetch.
        block: seconds a fetch waits for messages.
        ack_wait: seconds JetStream waits for an ack before delivering a message again
            (set on a consumer it creates; keep it above the run's commit interval).
        idle_timeout: end the source after this many seconds without a message (``None``:
            run until stopped).
        connect_timeout: seconds to keep trying to (re)connect, with capped backoff,
            before the run fails with ``ConnectionError``.
        on_error: what a payload that does not decode does (provenance: the subject URL
            and the message's stream sequence). Such messages are acknowledged with the
            next batch, unless the policy raised.
        name: the source's name in statistics and errors.
    """
    check_policy(on_error)
    if count < 1 or block <= 0 or ack_wait <= 0:
        raise ValueError("read_nats: count must be >= 1, block and ack_wait > 0")
    codec = PayloadCodec(dtype, format, delimiter=delimiter, fill_int=fill_int)
    source = _NatsSource(
        subject, durable, stream, url, codec, count, block, ack_wait, idle_timeout,
        connect_timeout, on_error, name or f"read_nats({subject})",
    )  # fmt: skip
    return Flow(source)


def _refusals() -> tuple[type[BaseException], ...]:
    import nats.errors as nerr
    import nats.js.errors as jerr

    return (nerr.Error, jerr.Error)


class _NatsSinkOp(BatchSinkOp):
    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _NatsWriter(self)


class _NatsWriter(BatchWriter):
    def __init__(self, op: _NatsSinkOp) -> None:
        super().__init__(op)
        self.op = op
        self.nc: NATS | None = None
        self.publisher: _Publisher | None = None
        # a refusal (no stream captures the subject, the stream is full) may pass too
        self.errors = (*_connection_errors(), TimeoutError, *_refusals())

    async def open(self) -> None:
        """Connect, retrying with capped backoff for ``connect_timeout`` seconds.

        Raises:
            ConnectionError: no server answered in that time.
        """
        require_asyncio("to_nats", "nats-py")
        url, timeout = self.op.url, self.op.connect_timeout
        try:
            await self.backoff.retry(self._start, self.errors, timeout, f"to_nats: {url}")
        except self.errors as exc:
            raise ConnectionError(f"to_nats: cannot reach {url} for {timeout} s: {exc!r}") from exc

    async def _start(self) -> None:
        """Connect (once) and subscribe the publisher's inbox."""
        self.nc = await _connect(self.op.url, self.op.connect_timeout)
        self.publisher = _Publisher(self.nc)
        try:
            await self.publisher.start()
        except Exception:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):  # closing a broken connection
                await self.nc.close()
        self.nc = self.publisher = None

    async def _send_once(self, pairs: list[tuple[str, bytes]]) -> None:
        """Publish ``pairs`` and wait for every ack."""
        if self.publisher is None:
            await self._start()
        assert self.publisher is not None
        await self.publisher.publish(pairs, self.op.connect_timeout)


def to_nats(
    subject: str,
    *,
    url: str = "nats://127.0.0.1:4222",
    format: Format = "csv",
    delimiter: str = ",",
    key: str | None = None,
    shards: int = 1,
    connect_timeout: float = 30.0,
    buffer: int | None = None,
    on_error: ErrorPolicy = "raise",
) -> Sink[Any, int]:
    """Publish the flow to JetStream, waiting for the stream's acks (many messages in
    flight at once); the result is the number of messages acknowledged.

    Each row of an array batch is one message (a CSV line or JSON object without its
    newline); ``bytes`` and ``str`` elements are messages as they are. A stream must
    capture ``subject``.

    Args:
        subject: the subject to publish to.
        url: the NATS server, ``nats://host:port``.
        format: ``"csv"`` or ``"jsonl"``: how a row is written.
        delimiter: CSV field separator.
        key: shard by this column: a row goes to subject ``f"{subject}.{s}"`` with ``s`` a
            stable hash of its key modulo ``shards``.
        shards: how many shard subjects (with ``key``).
        connect_timeout: seconds to keep reconnecting and publishing a failed message again.
        buffer: messages waiting in front of the sink.
        on_error: what a message still failing after ``connect_timeout`` does
            (``ConnectionError``): ``"raise"``, ``"skip"``, ``dead_letter``.
    """
    check_policy(on_error)
    if shards < 1 or (shards > 1 and key is None):
        raise ValueError("to_nats: shards must be >= 1, and shards > 1 needs key=")
    codec = PayloadCodec(None, format, delimiter=delimiter)
    op = _NatsSinkOp(
        subject, url, codec, key, shards, connect_timeout, buffer, on_error, f"to_nats({subject})"
    )
    return Sink(op)

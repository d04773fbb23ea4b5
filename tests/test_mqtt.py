"""The MQTT source and sink against a real broker (Mosquitto on 127.0.0.1:1883), and against
a broker of the test's own (a ``mosquitto`` subprocess) for restarts."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af

aiomqtt = pytest.importorskip("aiomqtt", reason="the mqtt extra (aiomqtt) is not installed")

from aflow.connectors import read_mqtt, to_mqtt  # noqa: E402

HOST = os.environ.get("AFLOW_TEST_MQTT_HOST", "127.0.0.1")
PORT = int(os.environ.get("AFLOW_TEST_MQTT_PORT", "1883"))
DT = np.dtype([("id", "i8"), ("value", "f8")])


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def base() -> str:
    if not reachable(HOST, PORT):
        pytest.skip(f"no MQTT broker at {HOST}:{PORT}")
    return f"aflow-test/{uuid.uuid4().hex[:12]}"


async def publish(
    pairs: list[tuple[str, bytes]], *, port: int = PORT, retain: bool = False
) -> None:
    async with aiomqtt.Client(HOST, port) as client:
        for topic, payload in pairs:
            await client.publish(topic, payload, qos=1, retain=retain)


async def read_after_ready(
    flow: af.Flow[Any], base: str, send: Any, ready_payload: bytes = b'{"id": -1, "value": 0}'
) -> Any:
    """Run ``flow`` (which reads ``base/#``); once it received the retained ``base/ready``
    message (so it is subscribed), call ``send()``. Returns the run's result."""
    ready = anyio.Event()

    def seen(batch: Any) -> Any:
        ready.set()
        return batch

    result: Any = None

    async def run() -> None:
        nonlocal result
        result = await (flow | af.map(seen) | af.collect()).run()

    await publish([(f"{base}/ready", ready_payload)], retain=True)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(10):
                await ready.wait()
            await send()
    finally:
        await publish([(f"{base}/ready", b"")], retain=True)  # clears the retained message
    return result


@pytest.mark.asyncio
async def test_rows_published_and_read_back_with_their_topics(base: str) -> None:
    data = np.zeros(300, [("id", "i8"), ("value", "f8"), ("room", "U8")])
    data["id"] = np.arange(300)
    data["value"] = data["id"] / 2
    data["room"] = np.where(data["id"] % 3 == 0, "kitchen", "hall")

    async def send() -> None:
        sink = to_mqtt(base + "/{}", topic_field="room", port=PORT)
        result = await (af.from_array(data, 64) | sink).run()
        assert result.value == 300

    flow = read_mqtt(f"{base}/#", HOST, PORT, dtype=DT) | af.take(301)
    result = await read_after_ready(flow, base, send)
    rows = result.value
    assert rows.dtype == np.dtype([("id", "i8"), ("value", "f8"), ("topic", "U64")])
    rows = rows[rows["id"] >= 0]
    rows = rows[np.argsort(rows["id"])]
    assert rows["id"].tolist() == list(range(300))
    assert rows["value"].tolist() == (np.arange(300) / 2).tolist()
    want = np.where(data["id"] % 3 == 0, f"{base}/kitchen", f"{base}/hall")
    assert rows["topic"].tolist() == want.tolist()
    # the topic field works as a key, as any string column
    counts = await (af.from_array(rows) | af.to_aggregate(key="topic", value="value")).run()
    assert sorted(counts.value["topic"].tolist()) == sorted({f"{base}/kitchen", f"{base}/hall"})


@pytest.mark.asyncio
async def test_bad_payloads_go_to_the_error_policy_with_topic_and_packet_id(base: str) -> None:
    dead: list[Any] = []
    pairs = [
        (f"{base}/a", b'{"id": 1, "value": 1.5}'),
        (f"{base}/a", b"not json"),
        (f"{base}/b", b'{\n "id": 2,\n "value": 2.5\n}\n'),  # newlines inside: spaces
        (f"{base}/b", b'{"id": "x", "value": 1}'),
        (f"{base}/" + "t" * 80, b'{"id": 3, "value": 3.5}'),  # longer than topic_width
        (f"{base}/c", b"   "),
        (f"{base}/c", b'{"id": 4, "value": 4.5}'),
    ]

    async def send() -> None:
        await publish(pairs)

    flow = read_mqtt([f"{base}/#"], HOST, PORT, dtype=DT, on_error=af.dead_letter(dead)) | af.take(
        4
    )
    result = await read_after_ready(flow, base, send)
    rows = result.value[result.value["id"] >= 0]
    assert rows["id"].tolist() == [1, 2, 4]
    assert [d.item for d in dead] == [
        b"not json",
        b'{"id": "x", "value": 1}',
        b'{"id": 3, "value": 3.5}',
        b"   ",
    ]
    assert all(isinstance(d.error, af.DecodeError) for d in dead)
    assert f"on topic '{base}/a'" in str(dead[0].error)
    assert "topic longer than topic_width=64" in str(dead[2].error)
    assert "an empty payload" in str(dead[3].error)
    for d in dead:
        assert d.provenance.source.startswith(f"mqtt://{HOST}:{PORT}/{base}/")
        assert "(packet id " in d.provenance.source
        assert d.provenance.stop == d.provenance.start + 1
    assert result.statistics.stages[0].errors == 4


@pytest.mark.asyncio
async def test_csv_and_raw_payloads(base: str) -> None:
    pairs = [(f"{base}/x", b"1,0.5"), (f"{base}/x", b"3,1\n4,2"), (f"{base}/x", b"2,1.5\r\n")]
    dead: list[Any] = []

    async def send() -> None:
        await publish(pairs)

    flow = read_mqtt(
        f"{base}/#",
        HOST,
        PORT,
        format="csv",
        dtype=DT,
        topic_field=None,
        on_error=af.dead_letter(dead),
    ) | af.take(3)
    result = await read_after_ready(flow, base, send, b"-1,0")
    rows = result.value.tolist()
    assert rows == [(-1, 0.0), (1, 0.5), (2, 1.5)]
    assert "several lines (one CSV record per message)" in str(dead[0].error)

    raw = read_mqtt(f"{base}/#", HOST, PORT, format="raw") | af.take(2)
    result = await read_after_ready(raw, base, lambda: publish([(f"{base}/y", b"\x00\x01")]))
    assert result.value == [
        (f"{base}/ready", b'{"id": -1, "value": 0}'),
        (f"{base}/y", b"\x00\x01"),
    ]


@pytest.mark.asyncio
async def test_shared_subscription_spreads_messages_over_workers(base: str) -> None:
    n = 400
    got: list[list[int]] = [[], []]
    subscribed = [anyio.Event(), anyio.Event()]

    async def worker(k: int) -> None:
        flow = read_mqtt(f"$share/g{base[-12:]}/{base}/#", HOST, PORT, dtype=DT)
        async with flow.open() as run:
            async for batch in run:
                got[k].extend(batch["id"].tolist())
                subscribed[k].set()
                if sum(map(len, got)) >= n + 1:
                    run.stop()

    async def send() -> None:
        sink = to_mqtt(f"{base}/data", port=PORT)
        data = np.zeros(n, DT)
        data["id"] = np.arange(n)
        await (af.from_array(data, 10) | sink).run()

    async with anyio.create_task_group() as tg:
        for k in (0, 1):
            tg.start_soon(worker, k)
        # both subscribed: probes until each worker saw one (the group shares them out)
        with anyio.fail_after(10):
            while not all(e.is_set() for e in subscribed):
                await publish([(f"{base}/probe", b'{"id": -1, "value": 0}')])
                await anyio.sleep(0.05)
        probes = sum(ids.count(-1) for ids in got)
        await send()
        with anyio.fail_after(10):
            while sum(len([i for i in ids if i >= 0]) for ids in got) < n:  # noqa: ASYNC110 - polls a count
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    ids = sorted(i for worker_ids in got for i in worker_ids if i >= 0)
    assert ids == list(range(n)), "every message once, over both workers"
    assert all(len([i for i in w if i >= 0]) > 0 for w in got), "both workers got some"
    assert probes >= 2


@pytest.mark.asyncio
async def test_pubacks_wait_for_the_sinks(base: str) -> None:
    """Messages a failed run handled but never committed come again to the next run of the
    same persistent session; those committed before do not."""
    cid = f"aflow-acks-{uuid.uuid4().hex[:8]}"
    first = [(f"{base}/m", b'{"id": %d, "value": 0}' % i) for i in range(5)]
    second = [(f"{base}/m", b'{"id": %d, "value": 0}' % i) for i in range(5, 10)]
    seen: list[int] = []
    handled = anyio.Event()

    def sink(batch: Any) -> None:
        if (batch["id"] >= 5).any():
            raise RuntimeError("the sink fails")
        seen.extend(batch["id"].tolist())
        if len(seen) == 5:
            handled.set()

    def reader() -> af.Flow[Any]:
        return read_mqtt(
            f"{base}/m",
            HOST,
            PORT,
            dtype=DT,
            client_id=cid,
            clean_start=False,
            session_expiry=60,
        )

    async def failing_run() -> None:
        with pytest.raises(RuntimeError, match="the sink fails"):
            await (reader() | af.for_each(sink)).run(commit_interval=0.05)

    # the session exists before anything is published
    async with anyio.create_task_group() as tg:
        tg.start_soon(failing_run)
        await anyio.sleep(0.5)
        await publish(first)
        with anyio.fail_after(10):
            await handled.wait()
        await anyio.sleep(0.3)  # a few commits: 0..4 acknowledged
        await publish(second)
    again = await (reader() | af.take(5)).run()
    assert sorted(again.value["id"].tolist()) == [5, 6, 7, 8, 9]
    async with aiomqtt.Client(HOST, PORT, identifier=cid, clean_session=True):
        pass  # ends the session


@pytest.mark.asyncio
async def test_graceful_stop_acknowledges_all_it_read(base: str) -> None:
    """A persistent session stopped gracefully gets nothing again at the next connect:
    the final commit acknowledges before the source disconnects."""
    cid = f"aflow-stop-{uuid.uuid4().hex[:8]}"
    seen: list[int] = []
    all_seen = anyio.Event()

    def record(batch: Any) -> None:
        seen.extend(batch["id"].tolist())
        if len(seen) >= 20:
            all_seen.set()

    def reader() -> af.Flow[Any]:
        return read_mqtt(
            f"{base}/m", HOST, PORT, dtype=DT, client_id=cid, clean_start=False, session_expiry=60
        )

    try:
        # no commit but the final one: without it every message would come again
        async with (reader() | af.for_each(record)).open(commit_interval=600) as run:
            await anyio.sleep(0.5)  # subscribed
            await publish([(f"{base}/m", b'{"id": %d, "value": 0}' % i) for i in range(20)])
            with anyio.fail_after(10):
                await all_seen.wait()
            run.stop()
            await run.wait()
        assert sorted(seen) == list(range(20))
        async with anyio.create_task_group() as tg:
            again: list[Any] = []

            async def second_run() -> None:
                again.append(await (reader() | af.take(1)).run())

            tg.start_soon(second_run)
            await anyio.sleep(0.5)
            await publish([(f"{base}/m", b'{"id": 999, "value": 0}')])
        assert again[0].value["id"].tolist() == [999]
    finally:
        async with aiomqtt.Client(HOST, PORT, identifier=cid, clean_session=True):
            pass  # ends the session


@pytest.mark.asyncio
@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
async def test_every_kind_of_publish_arrives_whole_and_in_order(base: str) -> None:
    """The source reads PUBLISH packets in bulk and leaves the others to paho-mqtt: a
    message with properties (paho's path) between plain ones, QoS 0 beside QoS 1, and
    payloads of 100 KiB and more (longer than one socket read, a remaining length of 3
    bytes) all come whole, in the order sent."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    sent: list[tuple[str, bytes]] = []
    for i in range(600):
        size = 150_000 if i % 97 == 5 else 20_000 if i % 41 == 3 else 20
        sent.append((f"{base}/q1", (b"%05d-" % i) + bytes([65 + i % 26]) * size))
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("k", "v")]

    async def send() -> None:
        async with aiomqtt.Client(HOST, PORT, protocol=aiomqtt.ProtocolVersion.V5) as client:
            for i, (topic, payload) in enumerate(sent):
                extra = {"properties": props} if i % 7 == 0 else {}
                await client.publish(topic, payload, qos=1, **extra)
                if i % 5 == 0:
                    await client.publish(f"{base}/q0", payload, qos=0)

    raw = read_mqtt(f"{base}/#", HOST, PORT, format="raw") | af.take(1 + 600 + 120)
    result = await read_after_ready(raw, base, send)
    got = result.value[1:]
    assert [m for m in got if m[0] == f"{base}/q1"] == sent
    qos0 = [m[1] for m in got if m[0] == f"{base}/q0"]
    assert qos0 == [p for i, (_, p) in enumerate(sent) if i % 5 == 0]


@pytest.mark.asyncio
async def test_a_read_takes_at_most_max_messages(base: str) -> None:
    """More messages received than ``max_messages``: batches of at most that many, the
    rest in the next reads, nothing lost or reordered."""
    cid = f"aflow-max-{uuid.uuid4().hex[:8]}"
    sizes: list[int] = []

    def size(batch: Any) -> Any:
        sizes.append(len(batch))
        return batch

    def reader() -> af.Flow[Any]:
        return read_mqtt(
            f"{base}/m", HOST, PORT, dtype=DT, client_id=cid, clean_start=False,
            session_expiry=60, max_messages=64,
        )  # fmt: skip

    try:
        async with aiomqtt.Client(HOST, PORT, identifier=cid, clean_session=False) as c:
            await c.subscribe(f"{base}/m", qos=1)  # the session queues while no one reads
        await publish([(f"{base}/m", b'{"id": %d, "value": 0}' % i) for i in range(1000)])
        result = await (reader() | af.map(size) | af.take(1000)).run()
        assert result.value["id"].tolist() == list(range(1000))
        assert max(sizes) == 64, sizes
    finally:
        async with aiomqtt.Client(HOST, PORT, identifier=cid, clean_session=True):
            pass  # ends the session


@pytest.mark.asyncio
async def test_a_read_takes_what_is_queued_not_what_keeps_coming(base: str) -> None:
    # regression: a read awaited the client's queue message by message, which let paho
    # queue more each time, so under a steady stream one read went on until max_messages
    # and nothing came out meanwhile (a benchmark saw 0 rows while 50,000 were sent)
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub (the Mosquitto clients) is not installed")
    n, step = 8_000, 400  # the stream lasts 1 s: reads of at most half of it must be many
    sizes: list[int] = []

    def size(batch: Any) -> Any:
        sizes.append(len(batch))
        return batch

    async def send() -> None:  # another process: a steady stream, 400 messages per 50 ms
        cmd = ["mosquitto_pub", "-h", HOST, "-p", str(PORT), "-q", "1", "-t", f"{base}/data"]
        async with await anyio.open_process([*cmd, "-l"]) as proc:
            assert proc.stdin is not None
            for lo in range(0, n, step):
                lines = b"".join(b'{"id": %d, "value": 0.5}\n' % i for i in range(lo, lo + step))
                await proc.stdin.send(lines)
                await anyio.sleep(0.05)
            await proc.stdin.aclose()
            assert await proc.wait() == 0

    flow = read_mqtt(f"{base}/#", HOST, PORT, dtype=DT) | af.map(size) | af.take(n + 1)
    result = await read_after_ready(flow, base, send)
    rows = result.value[result.value["id"] >= 0]
    assert sorted(rows["id"].tolist()) == list(range(n))
    assert len(sizes) >= 3, sizes
    assert max(sizes) <= n // 2, sizes


@pytest.mark.asyncio
async def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="needs a dtype"):
        read_mqtt("a")
    with pytest.raises(ValueError, match="has a field 'topic' already"):
        read_mqtt("a", dtype=[("topic", "U4")])
    with pytest.raises(ValueError, match="needs a client_id"):
        read_mqtt("a", dtype=DT, clean_start=False)
    with pytest.raises(ValueError, match="qos=3"):
        to_mqtt("a", qos=3)
    with pytest.raises(ConnectionError, match=r"cannot connect to mqtt://127\.0\.0\.1:1"):
        await (af.from_iterable([b"x"]) | to_mqtt("a", port=1)).run()


def test_trio_is_refused_clearly() -> None:
    async def main() -> None:
        await (read_mqtt("a", dtype=DT) | af.take(1)).run()

    with pytest.raises(RuntimeError, match="aiomqtt runs on asyncio only, not trio"):
        anyio.run(main, backend="trio")


# -- a broker of our own, restarted --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        (tmp / "data").mkdir()
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp / 'data'}/\nmax_queued_messages 0\n"
            # started as root, mosquitto switches to the user ``mosquitto``, which cannot
            # write its database into our directory: persistence would do nothing
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"log_dest file {tmp / 'mosquitto.log'}\n{extra}"
        )
        self.db = tmp / "data" / "mosquitto.db"
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("mosquitto") or "mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None
            if sig == signal.SIGTERM:  # a graceful stop saves the sessions, else no test
                log = self.log.read_text() if self.log.exists() else "(no log)"
                saved = self.db.exists() and "Error saving" not in log
                assert saved, f"mosquitto did not save its database; its log: {log[-2000:]}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("no mosquitto binary to start a broker of our own")
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop(signal.SIGKILL)


async def restart_run(
    broker: Broker, sig: int, monkeypatch: pytest.MonkeyPatch, n: int = 3000
) -> dict[str, int]:
    """Publish ``n`` rows through ``to_mqtt`` while ``read_mqtt`` (persistent session)
    reads them, and restart the broker twice midway with ``sig``."""
    got: list[int] = []
    data = np.zeros(n, DT)
    data["id"] = np.arange(n)
    cid = f"aflow-restart-{uuid.uuid4().hex[:8]}"
    reader = read_mqtt(
        "r/#",
        "127.0.0.1",
        broker.port,
        dtype=DT,
        client_id=cid,
        clean_start=False,
        backoff=0.05,
        max_backoff=0.2,
    )
    published = 0

    async def read() -> None:
        async with reader.open() as run:
            async for batch in run:
                got.extend(batch["id"].tolist())

    async def source() -> AsyncIterator[Any]:
        for start in range(0, n, 20):
            yield data[start : start + 20]
            await anyio.sleep(0.01)

    async def write() -> None:
        nonlocal published
        sink = to_mqtt("r/data", port=broker.port, backoff=0.05, max_backoff=0.2)
        published = (await (af.from_arrays(source) | sink).run()).value

    # regression: aiomqtt's future holding a lost connection's error was never awaited,
    # and asyncio logged "Future exception was never retrieved" once it was collected
    clients: list[Any] = []
    init = aiomqtt.Client.__init__

    def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        clients.append(self)

    monkeypatch.setattr(aiomqtt.Client, "__init__", tracked)
    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.5)  # the reader's session exists
        tg.start_soon(write)
        for _ in range(2):
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(broker.stop, sig)
            await anyio.sleep(0.2)
            await anyio.to_thread.run_sync(broker.start)
        with anyio.move_on_after(15):
            while len(set(got)) < n or published < n:  # noqa: ASYNC110 - polls counts
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)  # late redeliveries
        tg.cancel_scope.cancel()
    unique = set(got)
    return {
        "published": published,
        "received": len(got),
        "unique": len(unique),
        "lost": n - len(unique),
        "duplicates": len(got) - len(unique),
        # what asyncio would log as "Future exception was never retrieved"
        "unretrieved errors": sum(
            c._disconnected.done()
            and not c._disconnected.cancelled()
            and c._disconnected._log_traceback
            for c in clients
        ),
    }


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.asyncio
async def test_broker_restarted_gracefully_loses_nothing(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = await restart_run(broker, signal.SIGTERM, monkeypatch)
    print("graceful restarts:", counts)
    assert counts["published"] == 3000
    assert counts["lost"] == 0, counts
    assert counts["unretrieved errors"] == 0, counts


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.asyncio
async def test_broker_killed_counts_what_mqtt_loses(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = await restart_run(broker, signal.SIGKILL, monkeypatch)
    print("killed broker:", counts)
    assert counts["published"] == 3000  # the sink republishes what was not acknowledged
    # what the killed broker had queued and not saved is lost: only measured (docs)
    assert counts["unique"] + counts["lost"] == 3000
    assert counts["unretrieved errors"] == 0, counts


@pytest.mark.asyncio
async def test_a_publish_the_broker_refuses_fails_the_run(tmp_path: Path) -> None:
    # regression: a PUBACK with a failure reason code (here 0x87, not authorized) counted
    # as published (aiomqtt drops the reason code): the rows were lost without a word
    if shutil.which("mosquitto") is None:
        pytest.skip("no mosquitto binary to start a broker of our own")
    (tmp_path / "acl").write_text("topic readwrite open/#\n")
    # (with max_queued_messages 0, mosquitto 2.0.11 closes the connection instead)
    broker = Broker(tmp_path, f"max_queued_messages 100\nacl_file {tmp_path / 'acl'}\n")
    broker.start()
    try:
        data = np.zeros(5, DT)
        data["id"] = np.arange(5)
        ok = await (af.from_array(data) | to_mqtt("open/x", port=broker.port)).run()
        assert ok.value == 5
        with pytest.raises(RuntimeError) as info:
            await (af.from_array(data) | to_mqtt("closed/x", port=broker.port)).run()
        message = str(info.value)
        assert f"mqtt://127.0.0.1:{broker.port} refused 5 of 5 messages" in message, message
        assert "(PUBACK reason Not authorized, 0x87)" in message, message
        assert "['closed/x']" in message, message
    finally:
        broker.stop(signal.SIGKILL)

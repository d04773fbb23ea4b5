"""Broker connectors under faults, with real processes: workers killed with SIGKILL every
2 s and restarted (or never), and the broker itself restarted mid-run. Each worker is
``tests/_broker_worker.py``: a broker source -> a sink appending every message id to the
worker's file, synced at every commit. At the end every id is there (none lost), and the
duplicates are no more than what was in flight (read, not acknowledged) at the kills."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import aflow as af
from tests._brokers import (
    NatsServer,
    RedisServer,
    add_stream,
    consumer_pending,
    consumer_settled,
    delete_stream,
    nats_or_skip,
    redis_or_skip,
    unique,
)

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_broker_worker.py")


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def redis_fill(
    port: int, stream: str, n: int, chunk: int = 20_000, rate: float | None = None
) -> None:
    """XADD entries ``data=i`` for i in 0..n-1: commands packed here, many per write,
    the replies parsed by hiredis (redis-py would take most of the test's time);
    ``rate``: at about that many entries/s (a live stream), else at once."""
    import hiredis

    t0 = time.monotonic()

    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = hiredis.Reader()
        key = stream.encode()
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            sock.sendall(
                b"".join(_resp(b"XADD", key, b"*", b"data", b"%d" % i) for i in range(start, stop))
            )
            got = 0
            while got < stop - start:
                reader.feed(sock.recv(1 << 20))
                while (reply := reader.gets()) is not False:
                    assert not isinstance(reply, hiredis.ReplyError), reply
                    got += 1
            if rate is not None:
                time.sleep(max(0.0, t0 + stop / rate - time.monotonic()))


def read_ids(files: list[Path], n: int) -> tuple[int, int]:
    """(ids missing, duplicates) over the workers' files; every id must be < n."""
    counts = np.zeros(n, np.int64)
    for f in files:
        if f.exists():
            data = f.read_bytes()
            data = data[: data.rfind(b"\n") + 1]  # a half-written last line: not written
            if data:
                ids = np.array(data.split(), dtype=np.int64)
                assert ids.min() >= 0, f"{f.name}: an id out of range"
                assert ids.max() < n, f"{f.name}: an id out of range"
                counts += np.bincount(ids, minlength=n)
    return int((counts == 0).sum()), int(np.maximum(counts - 1, 0).sum())


class Workers:
    """Worker subprocesses by index: started, killed, restarted under the same name."""

    def __init__(self, tmp: Path, broker: str, url: str, stream: str, group: str) -> None:
        self.tmp, self.broker, self.url, self.stream, self.group = tmp, broker, url, stream, group
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started = 0

    def out(self, i: int) -> Path:
        return self.tmp / f"ids-{i}.txt"

    def start(self, i: int, *extra: str) -> None:
        consumer = f"w{i}" if self.broker == "redis" else "-"
        log = open(self.tmp / f"worker-{i}.log", "ab")  # noqa: SIM115 - the child owns it
        args = [self.broker, self.url, self.stream, self.group, consumer, str(self.out(i))]
        self.procs[i] = subprocess.Popen(
            [sys.executable, str(WORKER), *args, *extra],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        log.close()
        self.started += 1

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def wait_all(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs.values():
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(None)
        return codes

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
            for f in sorted(self.tmp.glob("worker-*.log"))
        )


def _redis(url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(url)


def _group(client, stream: str, group: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    for g in client.xinfo_groups(stream):
        if g["name"] in (group, group.encode()):
            return dict(g)
    raise AssertionError(f"no group {group}")


def _consumer_pending(client, stream: str, group: str, consumer: str) -> int:  # type: ignore[no-untyped-def]
    for c in client.xinfo_consumers(stream, group):
        if c["name"] in (consumer, consumer.encode()):
            return int(c["pending"])
    return 0


def test_redis_workers_killed_every_2_seconds_lose_nothing(tmp_path: Path) -> None:
    url = redis_or_skip()
    pytest.importorskip("hiredis", reason="the redis extra (hiredis) is not installed")
    n = int(os.environ.get("AFLOW_FAULT_MESSAGES", "1000000"))
    stream, group = unique("faults-"), "g"
    client = _redis(url)
    try:
        client.xgroup_create(stream, group, "0", mkstream=True)
        # a live stream: written over ~25 s while the workers read it and get killed
        producer = threading.Thread(target=redis_fill, args=(6379, stream, n, 20_000, n / 25))
        producer.start()
        workers = Workers(tmp_path, "redis", url, stream, group)
        for i in range(4):
            workers.start(i)
        in_flight_at_kills, kills, abandoned = 0, 0, None
        t0 = time.monotonic()
        rng = random.Random(16)
        try:
            while time.monotonic() - t0 < 75:
                time.sleep(2)
                if not producer.is_alive() and _group(client, stream, group)["lag"] == 0:
                    break  # every entry was delivered: killing more tests nothing new
                alive = workers.alive()
                if not alive:
                    break
                i = rng.choice(alive)
                workers.kill(i)
                kills += 1
                in_flight_at_kills += _consumer_pending(client, stream, group, f"w{i}")
                if kills == 3:  # this one never comes back: the others claim its entries
                    abandoned = i
                    continue
                workers.start(i)
            codes = workers.wait_all(60)
        finally:
            workers.stop_all()
            producer.join(60)
        took = time.monotonic() - t0
        assert codes == [0] * len(codes), workers.logs()
        assert client.xlen(stream) == n, "the producer did not write every entry"
        info = _group(client, stream, group)
        missing, duplicates = read_ids([workers.out(i) for i in range(4)], n)
        print(
            f"\nredis: {n} messages, 4 workers, {kills} SIGKILLs (worker {abandoned} never "
            f"restarted) in {took:.1f} s: {missing} lost, {duplicates} duplicates; "
            f"in flight at the kills: {in_flight_at_kills}"
        )
        assert missing == 0, workers.logs()
        assert duplicates <= in_flight_at_kills
        assert info["pending"] == 0
        assert info["lag"] == 0
        assert kills >= 3, f"the run ended after {kills} kills: too fast to test anything"
    finally:
        client.delete(stream)
        client.close()


def nats_fill(url: str, subject: str, n: int, rate: float | None = None) -> None:
    """Publish payloads ``i`` for i in 0..n-1 (core publishes, flushed: the stream stores
    them), then wait until the stream holds them all; ``rate``: at about that many
    messages/s (a live stream), else at once."""

    async def go() -> None:
        import nats

        nc = await nats.connect(url)
        t0 = time.monotonic()
        try:
            for i in range(n):
                await nc.publish(subject, b"%d" % i)
                if i % 10_000 == 9_999:
                    await nc.flush()
                    if rate is not None:
                        await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
            await nc.flush()
            js = nc.jetstream()
            stream = await js.find_stream_name_by_subject(subject)
            deadline = time.monotonic() + 30
            while (await js.stream_info(stream)).state.messages < n:
                assert time.monotonic() < deadline, "the stream did not store every message"
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    asyncio.run(go())


def test_nats_workers_killed_every_2_seconds_lose_nothing(tmp_path: Path) -> None:
    pytest.importorskip("nats", reason="the nats extra (nats-py) is not installed")
    from nats.js.errors import NotFoundError

    n = int(os.environ.get("AFLOW_FAULT_NATS_MESSAGES", "600000"))
    with nats_or_skip(tmp_path) as url:
        name = unique("FAULTS")
        subject, durable = name.lower(), "workers"
        add_stream(url, name, [subject])
        producer = threading.Thread(target=nats_fill, args=(url, subject, n, n / 25))
        try:
            producer.start()  # a live stream: written over ~25 s while the workers read it
            workers = Workers(tmp_path, "nats", url, subject, durable)
            extra = ("--ack-wait", "6", "--idle", "12")
            for i in range(4):
                workers.start(i, *extra)
            deadline = time.monotonic() + 30
            while True:  # the workers create the consumer
                with contextlib.suppress(NotFoundError):
                    consumer_pending(url, name, durable)
                    break
                assert time.monotonic() < deadline, workers.logs()
                time.sleep(0.2)
            in_flight_at_kills, kills = 0, 0
            t0 = time.monotonic()
            rng = random.Random(16)
            try:
                while time.monotonic() - t0 < 60:
                    time.sleep(2)
                    if not producer.is_alive() and consumer_pending(url, name, durable)[0] == 0:
                        break  # every message was delivered
                    alive = workers.alive()
                    if not alive:
                        break
                    i = rng.choice(alive)
                    workers.kill(i)
                    kills += 1
                    # at most what the consumer had unacknowledged, on any worker
                    in_flight_at_kills += consumer_pending(url, name, durable)[1]
                    if kills == 3:
                        continue  # never restarted: JetStream gives its messages to others
                    workers.start(i, *extra)
                codes = workers.wait_all(60)
            finally:
                workers.stop_all()
                producer.join(60)
            took = time.monotonic() - t0
            assert codes == [0] * len(codes), workers.logs()
            assert _nats_stored(url, name) == n, "the producer did not publish every message"
            missing, duplicates = read_ids([workers.out(i) for i in range(4)], n)
            print(
                f"\nnats: {n} messages, 4 workers, {kills} SIGKILLs (one never restarted) in "
                f"{took:.1f} s: {missing} lost, {duplicates} duplicates; unacknowledged at "
                f"the kills: {in_flight_at_kills}"
            )
            assert missing == 0, workers.logs()
            assert duplicates <= in_flight_at_kills
            assert consumer_settled(url, name, durable) == (0, 0)
            assert kills >= 3, f"the run ended after {kills} kills: too fast to test anything"
        finally:
            delete_stream(url, name)


def _run_in_thread(flow: af.SinkFlow[int]) -> tuple[threading.Thread, dict[str, object]]:
    got: dict[str, object] = {}

    def go() -> None:
        try:
            got["result"] = af.run(flow, handle_signals=False, commit_interval=0.3).value
        except BaseException as exc:  # reported by the test
            got["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, got


def _ids_of_payloads(payloads: list[bytes], n: int) -> tuple[int, int]:
    counts = np.bincount(np.array(payloads, dtype=np.int64), minlength=n)
    assert len(counts) == n, "an id out of range"
    return int((counts == 0).sum()), int(np.maximum(counts - 1, 0).sum())


def test_redis_server_restarted_mid_run(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    n = 200_000
    try:
        client = _redis(server.url)
        client.xgroup_create("in", "g", "0", mkstream=True)
        redis_fill(server.port, "in", n)
        client.close()
        flow = af.read_redis(
            "in", "g", url=server.url, dtype=[("i", "i8")], count=2000, idle_timeout=5
        ) | af.to_redis("out", url=server.url)
        thread, got = _run_in_thread(flow)
        client = _redis(server.url)
        deadline = time.monotonic() + 60
        while client.xlen("out") < n // 4:  # a quarter through: restart the server
            assert time.monotonic() < deadline, "the flow did not get a quarter through"
            time.sleep(0.05)
        client.close()
        t = time.monotonic()
        server.stop()
        time.sleep(1.0)
        server.start()
        down = time.monotonic() - t
        thread.join(90)
        assert not thread.is_alive(), "the run did not end"
        assert "error" not in got, got.get("error")
        client = _redis(server.url)
        payloads = [fields[b"data"] for _, fields in client.xrange("out")]
        missing, duplicates = _ids_of_payloads(payloads, n)
        info = _group(client, "in", "g")
        client.close()
        print(
            f"\nredis restarted ({down:.1f} s down) with {n} entries: {missing} lost, "
            f"{duplicates} duplicates written"
        )
        assert missing == 0
        assert info["pending"] == 0
        assert info["lag"] == 0
    finally:
        server.stop()


def _nats_payloads(url: str, stream: str, subject: str) -> list[bytes]:
    async def go() -> list[bytes]:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            config = ConsumerConfig(ack_policy=AckPolicy.NONE)  # a read, no acks to wait for
            sub = await js.pull_subscribe(subject, durable="check", stream=stream, config=config)
            payloads: list[bytes] = []
            while True:
                try:
                    msgs = await sub.fetch(5000, timeout=1)
                except TimeoutError:
                    return payloads
                payloads += [m.data for m in msgs]
        finally:
            await nc.close()

    return asyncio.run(go())


def _nats_stored(url: str, stream: str) -> int:
    async def go() -> int:
        import nats

        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def test_nats_server_restarted_mid_run(tmp_path: Path) -> None:
    pytest.importorskip("nats", reason="the nats extra (nats-py) is not installed")
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    n = 100_000
    try:
        add_stream(server.url, "IN", ["in"])
        add_stream(server.url, "OUT", ["out"])
        nats_fill(server.url, "in", n)
        flow = af.read_nats(
            "in", "work", url=server.url, dtype=[("i", "i8")], count=2000, ack_wait=4,
            idle_timeout=10,
        ) | af.to_nats("out", url=server.url)  # fmt: skip
        thread, got = _run_in_thread(flow)
        deadline = time.monotonic() + 60
        while _nats_stored(server.url, "OUT") < n // 4:
            assert time.monotonic() < deadline, "the flow did not get a quarter through"
            time.sleep(0.05)
        t = time.monotonic()
        server.stop()
        time.sleep(1.0)
        server.start()
        down = time.monotonic() - t
        thread.join(90)
        assert not thread.is_alive(), "the run did not end"
        assert "error" not in got, got.get("error")
        payloads = _nats_payloads(server.url, "OUT", "out")
        missing, duplicates = _ids_of_payloads(payloads, n)
        print(
            f"\nnats-server restarted ({down:.1f} s down) with {n} messages: {missing} lost, "
            f"{duplicates} duplicates written"
        )
        assert missing == 0
        assert consumer_settled(server.url, "IN", "work") == (0, 0)
    finally:
        server.stop()

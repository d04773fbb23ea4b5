"""Throughput of the MQTT source and the PostgreSQL sink beside their ceilings.

MQTT: the benchmark starts a Mosquitto of its own on a free port of 127.0.0.1, configured
to queue without limit (``max_queued_messages 0``, ``max_inflight_messages 0``: the
default 1000-message queue drops what a slow reader has not taken). Per run, it creates
the persistent sessions of 1, 2 or 4 readers (one subscription, or one shared subscription
``$share/group/topic`` across the readers), queues ``n`` small JSON messages at QoS 1 with
``mosquitto_pub -l`` (its rate is printed: the load's ceiling), then starts the readers,
each in a process of its own, resuming its session, and times from the moment the readers
start connecting (a Python reader's imports done: they wait for a word on stdin) to the
last message any reader got: messages/s of ``read_mqtt`` beside ``mosquitto_sub`` and a
plain aiomqtt loop with the same number of readers, as ratios (of the totals: the same as
per reader). Each figure is the best and the
median of ``--repeat`` runs (the machine's load average is printed: other work on the
machine lowers every figure).

PostgreSQL (127.0.0.1:5432, database ``test``): rows/s of ``to_postgres`` (binary COPY
built by NumPy) beside a plain asyncpg ``copy_records_to_table`` loop over the same
batches and beside ``psql \\copy`` of the same rows as CSV.

    python benchmarks/bench_mqtt_pg.py [--quick] [--repeat N] [--only mqtt|pg]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import aflow as af
from aflow.codecs import JsonlDecoder
from aflow.connectors import read_mqtt, to_postgres

DSN = "postgresql://postgres@127.0.0.1:5432/test"
DT = np.dtype([("id", "i8"), ("value", "f8")])
HOST = "127.0.0.1"
EXPIRY = 3600
READERS = ("read_mqtt", "mosquitto_sub", "aiomqtt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """A Mosquitto of the benchmark's own, queueing without limit."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
        )
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- the reader processes ------------------------------------------------------------------
def _say(count: int) -> None:
    sys.stdout.write(f"{count}\n")
    sys.stdout.flush()


async def _worker_read_mqtt(port: int, filt: str, cid: str) -> None:
    flow = read_mqtt(filt, HOST, port, dtype=DT, client_id=cid, clean_start=False)
    # pyarrow's first conversion to NumPy imports pandas (about a second, once per
    # process, whatever the throughput): done before the clock starts
    JsonlDecoder(DT).decode(b"".join(b'{"id": %d, "value": 0.5}\n' % i for i in range(1000)))
    _ready()
    async with flow.open() as run:
        async for batch in run:
            _say(len(batch))


async def _worker_aiomqtt(port: int, filt: str, cid: str) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = EXPIRY
    _ready()
    async with aiomqtt.Client(
        HOST,
        port,
        identifier=cid,
        clean_start=False,
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=props,
    ) as client:
        # the resumed session has the subscription: subscribing again would wait for
        # its SUBACK behind every queued message (and time out at this loop's pace)
        got = 0
        async for _ in client.messages:
            got += 1
            if not len(client.messages):  # the queue at the client is empty: report
                _say(got)
                got = 0


def _ready() -> None:
    """Set up (imports done, the flow built): start at the "go" on stdin."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()


def worker_main(kind: str, port: int, filt: str, cid: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    work = _worker_read_mqtt if kind == "read_mqtt" else _worker_aiomqtt
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(work(port, filt, cid))


def reader_command(kind: str, port: int, filt: str, cid: str) -> list[str]:
    if kind == "mosquitto_sub":
        return [
            "mosquitto_sub", "-h", HOST, "-p", str(port), "-V", "mqttv5", "-c", "-i", cid,
            "-x", str(EXPIRY), "-q", "1", "-t", filt,
        ]  # fmt: skip
    return [sys.executable, __file__, "--worker", kind, str(port), filt, cid]


# -- one timed run ---------------------------------------------------------------------------
async def make_sessions(port: int, filt: str, ids: list[str]) -> None:
    """The readers' persistent sessions exist (and queue) before anything is published."""
    for cid in ids:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = EXPIRY
        async with aiomqtt.Client(
            HOST,
            port,
            identifier=cid,
            clean_start=False,
            protocol=aiomqtt.ProtocolVersion.V5,
            properties=props,
        ) as c:
            await c.subscribe(filt, qos=1)


async def one_run(port: int, lines: Path, n: int, kind: str, workers: int) -> tuple[float, float]:
    """Messages/s of ``mosquitto_pub`` queueing ``n`` messages, and of ``workers`` readers
    of ``kind`` taking them all, from their start (their connections included; a Python
    reader's imports left out: the readers start together once all have imported)."""
    topic = f"bench/{uuid.uuid4().hex[:8]}"
    filt = f"$share/g{uuid.uuid4().hex[:6]}/{topic}" if workers > 1 else topic
    ids = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(workers)]
    await make_sessions(port, filt, ids)
    t0 = time.perf_counter()
    with lines.open("rb") as stdin:
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-h", HOST, "-p", str(port), "-q", "1", "-t", topic, "-l",
            stdin=stdin,
        )  # fmt: skip
        status = await pub.wait()
    if status != 0:
        raise RuntimeError("mosquitto_pub failed")
    pub_rate = n / (time.perf_counter() - t0)
    got = 0
    python = kind != "mosquitto_sub"
    if not python:  # a C program: connecting is what it does first
        start = time.monotonic()
    procs = [
        await asyncio.create_subprocess_exec(
            *reader_command(kind, port, filt, cid),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE if python else None,
        )
        for cid in ids
    ]
    if python:  # every reader has imported what it needs: all of them start at once
        for p in procs:
            assert p.stdout is not None
            if await p.stdout.readline() != b"ready\n":
                raise RuntimeError(f"{kind}: a reader did not start")
        start = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
    last = 0.0
    done = asyncio.Event()

    def counted(k: int) -> None:
        nonlocal got, last
        got += k
        last = time.monotonic()
        if got >= n:
            done.set()

    async def count(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        if kind == "mosquitto_sub":  # one line per message
            while chunk := await proc.stdout.read(1 << 16):
                counted(chunk.count(b"\n"))
            return
        while line := await proc.stdout.readline():  # a count per read
            counted(int(line))

    readers = [asyncio.create_task(count(p)) for p in procs]
    try:
        async with asyncio.timeout(max(60.0, n / 1000)):
            await done.wait()
    except TimeoutError:
        raise RuntimeError(f"{kind} x{workers}: received {got} of {n} messages") from None
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
        for p in procs:
            await p.wait()
        for t in readers:
            t.cancel()
    if got != n:
        raise RuntimeError(f"{kind} x{workers}: received {got} messages, {n} were published")
    return pub_rate, n / max(last - start, 1e-9)


def best_median(xs: list[float]) -> str:
    return f"{max(xs):10,.0f} / {statistics.median(xs):10,.0f}"


def report(rates: dict[str, list[float]]) -> None:
    """The rates of each reader, side by side, as ratios of the medians."""
    ceiling = max(statistics.median(rates["mosquitto_sub"]), 1e-9)
    plain = max(statistics.median(rates["aiomqtt"]), 1e-9)
    ours = statistics.median(rates["read_mqtt"])
    print(f"    mosquitto_sub       {best_median(rates['mosquitto_sub'])}")
    print(
        f"    plain aiomqtt loop  {best_median(rates['aiomqtt'])}"
        f"  median / mosquitto_sub {plain / ceiling:5.2f}"
    )
    print(
        f"    read_mqtt           {best_median(rates['read_mqtt'])}"
        f"  median / mosquitto_sub {ours / ceiling:5.2f}  / aiomqtt {ours / plain:5.2f}"
    )


async def bench_mqtt(n: int, repeat: int) -> None:
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            print(f"MQTT: skipped ({tool} is not installed)")
            return
    print(f"MQTT: {n} queued messages of ~25 bytes, QoS 1, best / median of {repeat} runs")
    print(f"  load average before: {os.getloadavg()[0]:.2f} (1 min), cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "lines.txt"
        lines.write_bytes(b"".join(b'{"id": %d, "value": 0.5}\n' % i for i in range(n)))
        broker = Broker(Path(tmp))
        try:
            pub_rates: list[float] = []
            for workers in (1, 2, 4):
                rates: dict[str, list[float]] = {k: [] for k in READERS}
                for _ in range(repeat):
                    for kind in READERS:
                        p, r = await one_run(broker.port, lines, n, kind, workers)
                        pub_rates.append(p)
                        rates[kind].append(r)
                shared = "" if workers == 1 else " of one shared subscription"
                print(
                    f"  {workers} reader(s){shared}: msg/s, best / median (per reader: / {workers})"
                )
                report(rates)
            print(f"  mosquitto_pub -l (the load) {best_median(pub_rates)} msg/s")
        finally:
            broker.stop()
    print(f"  load average after: {os.getloadavg()[0]:.2f} (1 min)")


async def bench_pg(n: int, batch: int) -> None:
    print(f"PostgreSQL: {n} rows of (bigint, double precision), batches of {batch}")
    conn = await asyncpg.connect(DSN)
    table = f"bench_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE TABLE {table} (id bigint, value double precision)")
    data = np.zeros(n, DT)
    data["id"] = np.arange(n)
    data["value"] = np.arange(n) * 0.5
    try:
        t0 = time.perf_counter()
        await (af.from_array(data, batch) | to_postgres(DSN, table)).run()
        ours = n / (time.perf_counter() - t0)
        await conn.execute(f"TRUNCATE {table}")
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    table, records=data[start : start + batch].tolist(), columns=["id", "value"]
                )
        records = n / (time.perf_counter() - t0)
        await conn.execute(f"TRUNCATE {table}")
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "rows.csv"
            np.savetxt(csv, data, fmt=["%d", "%.17g"], delimiter=",")
            t0 = time.perf_counter()
            subprocess.run(  # noqa: ASYNC221 - timed alone, nothing else runs
                ["psql", DSN, "-q", "-c", f"\\copy {table} FROM '{csv}' WITH (FORMAT csv)"],
                check=True,
            )
            psql = n / (time.perf_counter() - t0)
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == n
    finally:
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()
    print(f"  to_postgres (NumPy binary COPY):       {ours:12,.0f} rows/s")
    print(
        f"  asyncpg copy_records_to_table loop:    {records:12,.0f} rows/s  ours/this {ours / records:5.2f}"
    )
    print(
        f"  psql \\copy of the same rows as CSV:    {psql:12,.0f} rows/s  ours/this {ours / psql:5.2f}"
    )


async def main(quick: bool, repeat: int, only: str | None) -> None:
    scale = 10 if quick else 1
    if only in (None, "mqtt"):
        await bench_mqtt(50_000 // scale, repeat)
    if only in (None, "pg"):
        await bench_pg(1_000_000 // scale, 65_536 // scale)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":  # a reader process (see reader_command)
        worker_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["mqtt", "pg"])
    args: Any = parser.parse_args()
    asyncio.run(main(args.quick, args.repeat, args.only))

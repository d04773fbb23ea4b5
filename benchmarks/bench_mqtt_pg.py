"""Throughput of the MQTT source and the PostgreSQL sink beside their ceilings.

MQTT (broker on 127.0.0.1:1883): messages/s read by ``read_mqtt`` with 1, 2 and 4 workers
of one shared subscription, beside a plain aiomqtt loop reading the same messages. The
messages (small JSON objects, QoS 1) are published first, to a persistent session per
worker, so only reading is timed.

PostgreSQL (127.0.0.1:5432, database ``test``): rows/s of ``to_postgres`` (binary COPY
built by NumPy) beside a plain asyncpg ``copy_records_to_table`` loop over the same
batches and beside ``psql \\copy`` of the same rows as CSV.

    python benchmarks/bench_mqtt_pg.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import numpy as np

import aflow as af
from aflow.connectors import read_mqtt, to_postgres

DSN = "postgresql://postgres@127.0.0.1:5432/test"
DT = np.dtype([("id", "i8"), ("value", "f8")])


async def prepare_sessions(ids: list[str], topic: str, group: str | None) -> None:
    for cid in ids:  # the sessions exist (and queue) before anything is published
        filt = f"$share/{group}/{topic}" if group else topic
        async with aiomqtt.Client(
            "127.0.0.1", identifier=cid, clean_session=False, protocol=aiomqtt.ProtocolVersion.V311
        ) as c:
            await c.subscribe(filt, qos=1)


async def publish(topic: str, n: int) -> None:
    async with aiomqtt.Client("127.0.0.1", max_inflight_messages=1000) as c:
        payloads = [b'{"id": %d, "value": 0.5}' % i for i in range(n)]
        for start in range(0, n, 1000):
            await asyncio.gather(
                *(c.publish(topic, p, qos=1) for p in payloads[start : start + 1000])
            )


async def bench_mqtt(n: int) -> None:
    print(f"MQTT: {n} messages of ~25 bytes, QoS 1")
    # ceiling: a plain aiomqtt loop
    topic = f"bench/{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client("127.0.0.1", protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(topic, qos=1)
        pub = asyncio.create_task(publish(topic, n))
        t0 = last = time.perf_counter()
        got = 0
        it = aiter(c.messages)
        while got < n:
            try:
                async with asyncio.timeout(1.0):
                    await anext(it)
            except TimeoutError:
                break  # what the broker dropped (its queue limit) never comes
            got += 1
            last = time.perf_counter()
        plain = got / (last - t0)
        await pub
    print(f"  plain aiomqtt loop (publisher running): {plain:12,.0f} msg/s  received {got}/{n}")
    for workers in (1, 2, 4):
        topic = f"bench/{uuid.uuid4().hex[:8]}"
        group = f"g{uuid.uuid4().hex[:6]}"
        filt = f"$share/{group}/{topic}" if workers > 1 else topic
        counts = [0] * workers

        async def worker(
            k: int, stop: asyncio.Event, counts: list[int] = counts, filt: str = filt
        ) -> None:
            flow = read_mqtt(filt, dtype=DT)
            async with flow.open() as run:
                async for batch in run:
                    counts[k] += len(batch)
                    if sum(counts) >= n:
                        stop.set()
                    if stop.is_set():
                        run.stop()

        stop = asyncio.Event()
        tasks = [asyncio.create_task(worker(k, stop)) for k in range(workers)]
        await asyncio.sleep(0.5)  # subscribed
        t0 = time.perf_counter()
        await publish(topic, n)
        seen, last = -1, time.perf_counter()
        while not stop.is_set() and sum(counts) != seen:
            seen, last = sum(counts), time.perf_counter()
            await asyncio.sleep(1.0)  # stop once nothing more comes (broker drops)
        stop.set()
        rate = sum(counts) / (last - t0)
        await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(
            f"  read_mqtt, {workers} worker(s) (publisher running): {rate:12,.0f} msg/s"
            f"  ratio to plain {rate / plain:5.2f}  received {sum(counts)}/{n} split {counts}"
        )


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


async def main(quick: bool) -> None:
    scale = 10 if quick else 1
    await bench_mqtt(50_000 // scale)
    await bench_pg(1_000_000 // scale, 65_536 // scale)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args: Any = parser.parse_args()
    asyncio.run(main(args.quick))

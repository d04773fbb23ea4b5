"""Broker throughput: messages/s read (and decoded into structured arrays) by 1, 2 and 4
worker processes on one consumer group, beside the broker's own ceiling.

Redis: ``--messages`` entries (default 200,000, CSV rows ``k,v``) are XADDed (not timed);
then N processes run ``read_redis(..., dtype) | discard()`` on one group until the stream
is drained, acknowledging through the run's commits. Two ceilings: a plain redis-py loop
(``XREADGROUP COUNT n`` then ``XACK`` of the ids, what a hand-written consumer does, with
hiredis and raw replies, without decoding) on the same kind of stream, and
``redis-benchmark`` reading ``XRANGE key - + COUNT n`` from one connection (the server's
own rate for reading stream entries: requests/s times ``n``; ``XREADGROUP`` of pending
entries is printed beside it). The sinks' server ceiling is ``redis-benchmark`` issuing
``XADD`` pipelined by 1,000.

NATS: the same through ``read_nats`` on one durable pull consumer; the ceiling is a plain
nats-py pull consumer (``fetch`` of the same batches, ``ack()`` each message), without
aflow (one process): ``nats bench`` (the nats CLI) is not installed here.

Target: batched reads reach at least half of the ceiling per worker. Printed side by side
as ratios.

    python benchmarks/bench_brokers.py
    python benchmarks/bench_brokers.py --messages 500000 --brokers redis
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import re
import shutil
import subprocess
import time
import uuid

import numpy as np

import aflow as af

DT = np.dtype([("k", "i8"), ("v", "f8")])
REDIS = "redis://127.0.0.1:6379"
NATS = "nats://127.0.0.1:4222"
COUNT = 5000


def rows(n: int) -> np.ndarray:
    data = np.zeros(n, DT)
    data["k"] = np.arange(n)
    data["v"] = data["k"] * 0.5
    return data


def _drain(flow: af.Flow, start: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Run ``flow`` once every worker is ready; report (rows, start, time of the last batch):
    the idle time that ends a worker is not counted."""
    # pyarrow's first conversion to NumPy imports pandas (about a second of CPU, once per
    # process, whatever the throughput): done before the clock starts
    block = b"".join(b"%d,0.5\n" % i for i in range(100_000))
    af.codecs.CsvDecoder(DT).decode(block)
    start.wait()
    t = time.time()
    counted = flow | af.map(lambda b: (len(b), time.time()))
    n, last = af.run(counted | af.reduce(lambda a, b: (a[0] + b[0], max(a[1], b[1])), (0, t))).value
    out.put((n, t, last))


def _redis_worker(stream: str, i: int, start: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    flow = af.read_redis(stream, "g", consumer=f"b{i}", dtype=DT, count=COUNT, idle_timeout=0.5)
    _drain(flow, start, out)


def _nats_worker(subject: str, durable: str, i: int, start: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    flow = af.read_nats(subject, durable, url=NATS, dtype=DT, count=COUNT, idle_timeout=0.5)
    _drain(flow, start, out)


def workers_rate(target, args_of, workers: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Messages/s of ``workers`` processes together: all rows over the time from the
    common start to the last batch any of them got."""
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start = mp.Barrier(workers)
    procs = [mp.Process(target=target, args=(*args_of, i, start, q)) for i in range(workers)]
    for p in procs:
        p.start()
    got = [q.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(n for n, _, _ in got)
    wall = max(last for _, _, last in got) - min(t for _, t, _ in got)
    return total / wall, total


def _redis_benchmark(*args: str) -> float:
    """Requests/s of one ``redis-benchmark`` run (``nan`` without redis-benchmark)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return float("nan")
    out = subprocess.run([exe, "-q", *args], capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


def redis_ceiling(n: int) -> float:
    """The server's rate for writing stream entries: ``XADD`` pipelined by 1,000."""
    key = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    rate = _redis_benchmark("-n", str(n), "-P", "1000", "XADD", key, "*", "data", "123456,0.5")
    subprocess.run(["redis-cli", "DEL", key], capture_output=True, check=False)
    return rate


def redis_read_ceilings(n: int) -> tuple[float, float]:
    """The server's rates for reading stream entries (entries/s), ``COUNT`` at a time from
    one connection, as the workers read: ``XRANGE key - + COUNT`` (entries only, no
    consumer group: the upper bound), and ``XREADGROUP ... STREAMS key 0`` (a consumer's
    ``COUNT`` pending entries read again: the group's bookkeeping per entry, and a lookup
    per entry that a read of new entries does not make: a lower bound)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    key = f"bench-read-{uuid.uuid4().hex[:8]}"
    _redis_benchmark("-n", str(n), "-P", "1000", "XADD", key, "*", "data", "123456,0.5")
    client.xgroup_create(key, "g", "0")
    client.xreadgroup("g", "c", {key: ">"}, count=COUNT)  # COUNT entries pending for c
    requests = str(max(50, 10 * n // COUNT))
    count = str(COUNT)
    xrange = _redis_benchmark("-c", "1", "-n", requests, "XRANGE", key, "-", "+", "COUNT", count)
    reread = _redis_benchmark(
        "-c", "1", "-n", requests, "XREADGROUP", "GROUP", "g", "c", "COUNT", count,
        "STREAMS", key, "0",
    )  # fmt: skip
    client.delete(key)
    client.close()
    return xrange * COUNT, reread * COUNT


def redis_plain(n: int) -> float:
    """A plain redis-py consumer: ``XREADGROUP COUNT`` then ``XACK`` those ids; msgs/s.
    Like for like with ``read_redis``: hiredis parses, replies stay as parsed (no dict per
    entry), one ``XACK`` per read, no decoding (the payloads are taken, not decoded)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    client.set_response_callback("XREADGROUP", lambda response, **options: response)
    stream = f"bench-plain-{uuid.uuid4().hex[:8]}"
    af.run(af.from_array(rows(n), batch_size=10_000) | af.to_redis(stream))
    client.xgroup_create(stream, "g", "0")
    got = 0
    t = time.perf_counter()
    while reply := client.xreadgroup("g", "plain", {stream: ">"}, count=COUNT):
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))
        ids = [entry_id for entry_id, _ in entries]
        payloads = [fields[1] for _, fields in entries]
        assert len(payloads) == len(ids)
        client.xack(stream, "g", *ids)
        got += len(ids)
    rate = got / (time.perf_counter() - t)
    assert got == n, f"read {got} of {n}"
    client.delete(stream)
    client.close()
    return rate


def bench_redis(n: int) -> list[tuple[str, float, float, float]]:
    import redis

    client = redis.Redis.from_url(REDIS)
    server, reread = redis_read_ceilings(n)
    print(
        f"redis read ceilings (redis-benchmark, COUNT {COUNT}): XRANGE {server:,.0f} entries/s, "
        f"XREADGROUP of pending entries {reread:,.0f} entries/s"
    )
    results = []
    for workers in (1, 2, 4):
        plain = redis_plain(n)  # measured beside each run: the machine's load changes
        stream = f"bench-{uuid.uuid4().hex[:8]}"
        af.run(af.from_array(rows(n), batch_size=10_000) | af.to_redis(stream))
        rate, total = workers_rate(_redis_worker, (stream,), workers)
        assert total == n, f"read {total} of {n}"
        assert client.xpending(stream, "g")["pending"] == 0
        client.delete(stream)
        results.append((f"redis, {workers} worker(s)", rate, plain, server))
    client.close()
    return results


async def _nats_setup(name: str, subject: str) -> None:
    import nats

    nc = await nats.connect(NATS)
    await nc.jetstream().add_stream(name=name, subjects=[subject])
    await nc.close()


async def _nats_delete(name: str) -> None:
    import nats

    nc = await nats.connect(NATS)
    await nc.jetstream().delete_stream(name)
    await nc.close()


async def _nats_baseline(subject: str, n: int) -> float:
    """A plain nats-py pull consumer: fetch COUNT, ack each; messages/s."""
    import nats
    from nats.js.api import ConsumerConfig

    nc = await nats.connect(NATS)
    # unlimited unacknowledged messages, as read_nats sets (the default 1,000 would stall
    # every fetch of more until its timeout)
    config = ConsumerConfig(max_ack_pending=-1)
    sub = await nc.jetstream().pull_subscribe(subject, durable="baseline", config=config)
    got = 0
    t = time.perf_counter()
    while got < n:
        msgs = await sub.fetch(batch=COUNT, timeout=2)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    rate = got / (time.perf_counter() - t)
    await nc.close()
    return rate


def bench_nats(n: int) -> list[tuple[str, float, float, float]]:
    results = []
    name = f"BENCH{uuid.uuid4().hex[:8]}"
    subject = name.lower()
    asyncio.run(_nats_setup(name, subject))
    af.run(af.from_array(rows(n), batch_size=10_000) | af.to_nats(subject, url=NATS))
    ceiling = asyncio.run(_nats_baseline(subject, n))
    for workers in (1, 2, 4):
        rate, total = workers_rate(_nats_worker, (subject, f"d{workers}"), workers)
        assert total == n, f"read {total} of {n}"
        results.append((f"nats, {workers} worker(s)", rate, ceiling, float("nan")))
    asyncio.run(_nats_delete(name))
    return results


def _timed(flow: af.SinkFlow) -> tuple[float, int]:  # type: ignore[type-arg]
    t = time.perf_counter()
    sent = af.run(flow).value
    return sent / (time.perf_counter() - t), sent


def bench_redis_sink(n: int) -> list[tuple[str, float, float, float]]:
    """``to_redis`` beside a plain redis-py loop (a pipeline of ``XADD`` per 10,000 rows,
    the payloads formatted in Python) and redis-benchmark's ``XADD -P 1000``."""
    import redis

    client = redis.Redis.from_url(REDIS)
    data = rows(n)
    stream = f"bench-sink-{uuid.uuid4().hex[:8]}"
    rate, sent = _timed(af.from_array(data, batch_size=10_000) | af.to_redis(stream))
    assert sent == n, f"wrote {sent}"
    assert client.xlen(stream) == n, f"the stream holds {client.xlen(stream)}"
    client.delete(stream)
    t = time.perf_counter()
    for i in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        for k, v in data[i : i + 10_000].tolist():
            pipe.xadd(stream, {"data": f"{k},{v}"})
        pipe.execute()
    plain = n / (time.perf_counter() - t)
    assert client.xlen(stream) == n
    client.delete(stream)
    client.close()
    return [("to_redis", rate, plain, redis_ceiling(n))]


async def _nats_plain_publish(subject: str, data: np.ndarray) -> float:
    """A plain nats-py publisher: ``publish_async`` each row, the acks gathered per
    10,000; messages/s."""
    import nats

    nc = await nats.connect(NATS)
    js = nc.jetstream(publish_async_max_pending=16_384)
    t = time.perf_counter()
    for i in range(0, len(data), 10_000):
        futures = [
            await js.publish_async(subject, f"{k},{v}".encode())
            for k, v in data[i : i + 10_000].tolist()
        ]
        await asyncio.gather(*futures)
    rate = len(data) / (time.perf_counter() - t)
    await nc.close()
    return rate


def bench_nats_sink(n: int) -> list[tuple[str, float, float, float]]:
    """``to_nats`` beside a plain nats-py publisher."""
    name = f"BENCH{uuid.uuid4().hex[:8]}"
    subject = name.lower()
    asyncio.run(_nats_setup(name, subject))
    data = rows(n)
    rate, sent = _timed(af.from_array(data, batch_size=10_000) | af.to_nats(subject, url=NATS))
    assert sent == n, f"wrote {sent}"
    plain = asyncio.run(_nats_plain_publish(subject, data))
    asyncio.run(_nats_delete(name))
    return [("to_nats", rate, plain, float("nan"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--brokers", default="redis,nats")
    parser.add_argument("--sinks", action="store_true", help="only the sinks")
    args = parser.parse_args()
    results = []
    if "redis" in args.brokers:
        results += bench_redis_sink(args.messages)
    if "nats" in args.brokers:
        results += bench_nats_sink(args.messages)
    if args.sinks:
        _print(results)
        return
    if "redis" in args.brokers:
        results += bench_redis(args.messages)
    if "nats" in args.brokers:
        results += bench_nats(args.messages)
    _print(results)


def _print(results: list[tuple[str, float, float, float]]) -> None:
    print(
        f"{'reader / writer':<22}{'msgs/s':>10}{'plain':>10}{'ratio':>7}{'/worker':>8}"
        f"{'server':>11}{'ratio':>7}{'/worker':>8}"
    )
    for label, rate, plain, server in results:
        workers = int(label.split(", ")[1].split()[0]) if ", " in label else 1
        print(
            f"{label:<22}{rate:>10,.0f}{plain:>10,.0f}{rate / plain:>7.2f}"
            f"{rate / workers / plain:>8.2f}{server:>11,.0f}{rate / server:>7.2f}"
            f"{rate / workers / server:>8.2f}"
        )
    print(
        "plain: a hand-written client on the same machine (redis-py XREADGROUP + XACK; "
        "nats-py fetch + ack each; for sinks: a redis-py pipeline of XADDs, nats-py "
        "publish_async gathered); server: redis-benchmark, for readers XRANGE COUNT "
        f"{COUNT} (entries/s), for writers XADD -P 1000; NATS: no server tool here (the "
        "nats CLI is not installed): the plain nats-py client is its ceiling"
    )


if __name__ == "__main__":
    main()

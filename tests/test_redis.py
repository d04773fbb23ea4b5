"""Redis Streams connectors against the real server on 127.0.0.1:6379 (skipped, with the
reason, when it is unreachable)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import aflow as af
from tests._brokers import redis_or_skip, unique

DT = np.dtype([("k", "i8"), ("v", "f8")])


def rows(n: int, start: int = 0) -> np.ndarray:
    k = np.arange(start, start + n)
    return np.array(list(zip(k.tolist(), (k * 0.5).tolist(), strict=True)), DT)


@pytest.fixture
def redis_url() -> str:
    return redis_or_skip()


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    import redis

    c = redis.Redis.from_url(redis_url)
    keys: list[str] = []
    c.test_keys = keys  # type: ignore[attr-defined]
    yield c
    for pattern in keys:
        for key in c.scan_iter(match=pattern):
            c.delete(key)
    c.close()


def stream_name(client: Any) -> str:
    name = unique("aflow-test-")
    client.test_keys.append(name + "*")
    return name


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_round_trip_through_a_stream(client: Any, fmt: str) -> None:
    stream = stream_name(client)
    data = rows(5000)
    sent = af.run(af.from_array(data, batch_size=700) | af.to_redis(stream, format=fmt))
    assert sent.value == 5000 == client.xlen(stream)
    got = af.run(
        af.read_redis(stream, "g", dtype=DT, format=fmt, count=1000, idle_timeout=0.3)
        | af.collect()
    )
    np.testing.assert_array_equal(got.value, data)
    assert client.xpending(stream, "g")["pending"] == 0, "acknowledged once the sink had them"


def test_batches_carry_the_stream_as_provenance(client: Any, redis_url: str) -> None:
    stream = stream_name(client)
    af.run(af.from_array(rows(250), batch_size=250) | af.to_redis(stream))
    seen: list[af.Provenance | None] = []

    class Record(af.abc.SinkOperator[Any, None]):
        def writer(self, ctx: Any) -> Any:
            class W(af.abc.SinkWriter[Any, None]):
                async def write(self, item: Any) -> None: ...

                async def write_batch(self, batch: af.Batch) -> None:
                    seen.append(batch.provenance)

                def result(self) -> None:
                    return None

            return W()

    af.run(af.read_redis(stream, "g", dtype=DT, count=100, idle_timeout=0.3) | af.Sink(Record()))
    assert [(p.start, p.stop) for p in seen if p] == [(0, 100), (100, 200), (200, 250)]
    assert all(p is not None and p.source == f"{redis_url}/{stream}" for p in seen)


def test_raw_payloads_without_a_dtype(client: Any) -> None:
    stream = stream_name(client)
    af.run(af.from_iterable([b"a", "b", b"c,d"]) | af.to_redis(stream))
    got = af.run(af.read_redis(stream, "g", idle_timeout=0.3) | af.collect())
    assert got.value == [b"a", b"b", b"c,d"]


def test_a_bad_payload_goes_to_the_policy_naming_stream_and_entry_id(
    client: Any, redis_url: str
) -> None:
    stream = stream_name(client)
    ids = [client.xadd(stream, {"data": p}) for p in (b"1,0.5", b"2,oops", b"3,1.5", b"")]
    letters: list[af.FailedItem] = []
    got = af.run(
        af.read_redis(stream, "g", dtype=DT, idle_timeout=0.3, on_error=af.dead_letter(letters))
        | af.collect()
    )
    assert got.value["k"].tolist() == [1, 3]
    assert [f.item for f in letters] == [b"2,oops", b""]
    for failed, entry in zip(letters, [ids[1], ids[3]], strict=True):
        assert failed.provenance is not None
        assert failed.provenance.source == f"{redis_url}/{stream}#{entry.decode()}"
        assert isinstance(failed.error, af.DecodeError)
        assert entry.decode() in str(failed.error)
    with pytest.raises(af.DecodeError, match=r"message .* of redis://"):
        af.run(af.read_redis(stream, "other", dtype=DT, idle_timeout=0.3) | af.collect())


def test_consumers_of_one_group_share_the_stream(client: Any) -> None:
    stream = stream_name(client)
    af.run(af.from_array(rows(20_000), batch_size=1000) | af.to_redis(stream))
    results: dict[str, np.ndarray] = {}

    def consume(name: str) -> None:
        flow = af.read_redis(stream, "g", consumer=name, dtype=DT, count=500, idle_timeout=0.5)
        results[name] = af.run(flow | af.collect()).value

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = results["c0"]["k"], results["c1"]["k"]
    assert len(a) > 0, "both consumers got a share"
    assert len(b) > 0, "both consumers got a share"
    assert np.intersect1d(a, b).size == 0
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(20_000))


def test_entries_left_pending_by_a_dead_consumer_are_reclaimed(client: Any) -> None:
    stream = stream_name(client)
    af.run(af.from_array(rows(3000), batch_size=1000) | af.to_redis(stream))
    # "dead" reads everything and never acknowledges (as a worker killed mid-run)
    client.xgroup_create(stream, "g", "0")
    client.xreadgroup("g", "dead", {stream: ">"}, count=10_000)
    assert client.xpending(stream, "g")["pending"] == 3000
    time.sleep(0.3)
    got = af.run(
        af.read_redis(stream, "g", consumer="alive", dtype=DT, claim_idle=0.2, idle_timeout=0.5)
        | af.collect()
    )
    assert np.array_equal(np.sort(got.value["k"]), np.arange(3000))
    consumers = {c["name"]: c["pending"] for c in client.xinfo_consumers(stream, "g")}
    assert consumers[b"dead"] == 0


def test_a_failing_sink_leaves_the_entries_pending_for_the_next_run(client: Any) -> None:
    stream = stream_name(client)
    af.run(af.from_array(rows(1000), batch_size=1000) | af.to_redis(stream))

    def boom(batch: Any) -> None:
        raise RuntimeError("sink down")

    with pytest.raises(RuntimeError, match="sink down"):
        af.run(
            af.read_redis(stream, "g", consumer="w", dtype=DT, idle_timeout=2) | af.for_each(boom)
        )
    assert client.xpending(stream, "g")["pending"] == 1000, "nothing acknowledged"
    # the same consumer restarted reads its own pending entries first
    got = af.run(
        af.read_redis(stream, "g", consumer="w", dtype=DT, claim_idle=None, idle_timeout=0.3)
        | af.collect()
    )
    assert np.array_equal(got.value["k"], np.arange(1000))


def test_the_sink_trims_with_maxlen(client: Any) -> None:
    stream = stream_name(client)
    af.run(af.from_array(rows(50_000), batch_size=5000) | af.to_redis(stream, maxlen=1000))
    assert 1000 <= client.xlen(stream) < 50_000 // 2


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_key_sharded_streams_hold_each_key_in_one_shard(client: Any) -> None:
    stream = stream_name(client)
    data = rows(4000)
    data["k"] %= 37
    af.run(af.from_array(data, batch_size=1000) | af.to_redis(stream, key="k", shards=4))
    total = 0
    for s in range(4):
        got = af.run(
            af.read_redis(f"{stream}:{s}", "g", dtype=DT, idle_timeout=0.3) | af.collect()
        ).value
        total += len(got)
        keys = np.unique(got["k"])
        assert np.all(af.connectors._common.shard_of(keys, 4) == s)
    assert total == 4000


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_source_and_sink_reconnect_after_their_connections_are_killed(client: Any) -> None:
    src, dst = stream_name(client), stream_name(client)
    af.run(af.from_array(rows(30_000), batch_size=1000) | af.to_redis(src))
    # the flow logs in as its own user, so the kills reach its connections only (not
    # those of anything else using this server)
    user = f"aflow-test-{os.getpid()}"
    client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                       commands=["+@all"])  # fmt: skip
    url = f"redis://{user}:pw@127.0.0.1:6379"
    stop = threading.Event()
    killed: list[int] = []

    def killer() -> None:  # 15 times, every 0.2 s
        for _ in range(15):
            if stop.wait(0.2):
                return
            killed.append(int(client.execute_command("CLIENT", "KILL", "USER", user)))

    t = threading.Thread(target=killer)
    t.start()
    try:
        flow = af.read_redis(src, "g", url=url, dtype=DT, count=200, block=0.1, idle_timeout=3.0)
        sent = af.run(flow | af.rebatch(200) | af.to_redis(dst, url=url))
    finally:
        stop.set()
        t.join()
        client.acl_deluser(user)
    got = af.run(af.read_redis(dst, "g", dtype=DT, idle_timeout=0.3) | af.collect()).value
    assert sum(killed) > 0, "the flow's connections were cut"
    assert sent.value >= 30_000
    assert np.array_equal(np.unique(got["k"]), np.arange(30_000)), "nothing lost"


def test_redis_needs_the_asyncio_backend(client: Any) -> None:
    stream = stream_name(client)
    with pytest.raises(RuntimeError, match="asyncio backend"):
        af.run(af.read_redis(stream, "g", idle_timeout=0.1) | af.collect(), backend="trio")


def test_arguments_are_checked_when_the_flow_is_built() -> None:
    with pytest.raises(ValueError, match="format="):
        af.read_redis("s", "g", dtype=DT, format="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs key="):
        af.to_redis("s", shards=3)
    with pytest.raises(ValueError, match="on_error"):
        af.read_redis("s", "g", on_error="ignore")  # type: ignore[arg-type]


def test_a_refused_xadd_fails_the_run_and_the_other_entries_are_written(client: Any) -> None:
    # the sink packs many XADDs per write: an error reply (a shard key of another type)
    # fails the run with the server's error, after every reply of the write was read
    stream = stream_name(client)
    client.set(f"{stream}:1", "not a stream")
    data = rows(2000)
    with pytest.raises(Exception, match="WRONGTYPE"):
        af.run(af.from_array(data, batch_size=2000) | af.to_redis(stream, key="k", shards=2))
    shard0 = int((af.connectors._common.shard_of(data["k"], 2) == 0).sum())
    assert 0 < shard0 < 2000
    assert client.xlen(f"{stream}:0") == shard0


def test_bytes_and_str_items_are_entries_in_order(client: Any) -> None:
    stream = stream_name(client)
    items = [b"a,1", "b,2", b"c,3"] * 3000
    sent = af.run(af.from_iterable(items) | af.to_redis(stream))
    assert sent.value == len(items)
    got = [fields[b"data"] for _, fields in client.xrange(stream)]
    assert got == [i if isinstance(i, bytes) else i.encode() for i in items]


def test_entries_with_ids_of_many_lengths_are_all_acknowledged(client: Any) -> None:
    stream = stream_name(client)
    ids = [f"{ms}-{seq}" for ms in (1, 22, 4444444444444) for seq in (0, 7, 31, 999, 123456)]
    for i, entry_id in enumerate(ids):
        client.xadd(stream, {"data": f"{i},0.5"}, id=entry_id)
    got = af.run(af.read_redis(stream, "g", dtype=DT, count=4, idle_timeout=0.3) | af.collect())
    assert got.value["k"].tolist() == list(range(len(ids)))
    assert client.xpending(stream, "g")["pending"] == 0


def test_full_batches_read_ahead_deliver_each_entry_once_and_ack_all(client: Any) -> None:
    stream = stream_name(client)
    af.run(af.from_array(rows(10_000), batch_size=1000) | af.to_redis(stream))
    flow = af.read_redis(stream, "g", dtype=DT, count=500, idle_timeout=0.3)
    got = af.run(flow | af.collect()).value
    np.testing.assert_array_equal(got, rows(10_000))
    assert client.xpending(stream, "g")["pending"] == 0

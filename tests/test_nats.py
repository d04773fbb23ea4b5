"""NATS JetStream connectors against a real server: 127.0.0.1:4222, else a nats-server
started for the test on a free port (skipped, with the reason, when neither can be had)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af
from tests._brokers import (
    add_stream,
    consumer_pending,
    consumer_settled,
    delete_stream,
    nats_or_skip,
    unique,
)

DT = np.dtype([("k", "i8"), ("v", "f8")])


def rows(n: int) -> np.ndarray:
    k = np.arange(n)
    return np.array(list(zip(k.tolist(), (k * 0.5).tolist(), strict=True)), DT)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with nats_or_skip(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture
def stream(nats_url: str) -> Iterator[tuple[str, str]]:
    """A fresh stream capturing ``<subject>`` and ``<subject>.>``: (name, subject)."""
    name = unique("AFLOWTEST")
    subject = name.lower()
    add_stream(nats_url, name, [subject, f"{subject}.>"])
    yield name, subject
    delete_stream(nats_url, name)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_round_trip_and_are_acknowledged(
    nats_url: str, stream: tuple[str, str], fmt: str
) -> None:
    name, subject = stream
    data = rows(5000)
    sent = af.run(
        af.from_array(data, batch_size=700) | af.to_nats(subject, url=nats_url, format=fmt)
    )
    assert sent.value == 5000
    flow = af.read_nats(subject, "d", url=nats_url, dtype=DT, format=fmt, idle_timeout=0.5)
    got = af.run(flow | af.collect())
    np.testing.assert_array_equal(got.value, data)
    assert consumer_settled(nats_url, name, "d") == (0, 0)


def test_a_bad_payload_goes_to_the_policy_with_its_stream_sequence(
    nats_url: str, stream: tuple[str, str]
) -> None:
    _, subject = stream
    af.run(af.from_iterable([b"1,0.5", b"2,oops", b"3,1.5"]) | af.to_nats(subject, url=nats_url))
    letters: list[af.FailedItem] = []
    flow = af.read_nats(
        subject, "d", url=nats_url, dtype=DT, idle_timeout=0.5, on_error=af.dead_letter(letters)
    )
    got = af.run(flow | af.collect())
    assert got.value["k"].tolist() == [1, 3]
    assert [f.item for f in letters] == [b"2,oops"]
    place = letters[0].provenance
    assert place is not None
    assert place.source == f"{nats_url}/{subject}#2"


def test_pull_consumers_of_one_durable_share_the_messages(
    nats_url: str, stream: tuple[str, str]
) -> None:
    _, subject = stream
    af.run(af.from_array(rows(20_000), batch_size=1000) | af.to_nats(subject, url=nats_url))
    results: list[np.ndarray] = []

    def consume() -> None:
        flow = af.read_nats(subject, "d", url=nats_url, dtype=DT, count=200, idle_timeout=1.0)
        results.append(af.run(flow | af.collect()).value["k"])

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(r) > 0 for r in results), "both consumers got a share"
    assert np.intersect1d(*results).size == 0
    assert np.array_equal(np.sort(np.concatenate(results)), np.arange(20_000))


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_a_failing_sink_leaves_messages_unacknowledged_and_they_come_again(
    nats_url: str, stream: tuple[str, str]
) -> None:
    name, subject = stream
    af.run(af.from_array(rows(1000), batch_size=1000) | af.to_nats(subject, url=nats_url))

    def boom(batch: Any) -> None:
        raise RuntimeError("sink down")

    flow = af.read_nats(subject, "d", url=nats_url, dtype=DT, ack_wait=0.5, idle_timeout=2)
    with pytest.raises(RuntimeError, match="sink down"):
        af.run(flow | af.for_each(boom))
    assert consumer_pending(nats_url, name, "d")[1] > 0, "delivered, not acknowledged"
    # redelivered after ack_wait; the idle timeout waits three times that long
    again = af.read_nats(subject, "d", url=nats_url, dtype=DT, ack_wait=0.5, idle_timeout=1.5)
    got = af.run(again | af.collect())
    assert np.array_equal(np.unique(got.value["k"]), np.arange(1000))
    assert consumer_settled(nats_url, name, "d") == (0, 0)


@pytest.mark.slow  # over 2 s: in the slow run (CI runs it)
def test_key_sharded_subjects(nats_url: str, stream: tuple[str, str]) -> None:
    _, subject = stream
    data = rows(3000)
    data["k"] %= 23
    af.run(
        af.from_array(data, batch_size=500) | af.to_nats(subject, url=nats_url, key="k", shards=3)
    )
    total = 0
    for s in range(3):
        flow = af.read_nats(f"{subject}.{s}", f"d{s}", url=nats_url, dtype=DT, idle_timeout=0.5)
        got = af.run(flow | af.collect()).value
        total += len(got)
        assert np.all(af.connectors._common.shard_of(np.unique(got["k"]), 3) == s)
    assert total == 3000


def test_an_unreachable_server_fails_after_connect_timeout(tmp_path: Path) -> None:
    from tests._brokers import free_port

    flow = af.read_nats("x", "d", url=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
    with pytest.raises(ConnectionError, match="cannot reach"):
        af.run(flow | af.collect())


def test_a_subject_no_stream_captures_goes_to_on_error_after_connect_timeout(
    nats_url: str,
) -> None:
    # no stream: every publish of the batch is answered "no responders", none acked
    subject = unique("aflownostream").lower()
    letters: list[Any] = []
    sink = af.to_nats(subject, url=nats_url, connect_timeout=0.5, on_error=af.dead_letter(letters))
    sent = af.run(af.from_array(rows(100), batch_size=50) | sink)
    assert sent.value == 0
    assert len(letters) == 2
    assert "no stream captures" in str(letters[0].error)


def test_the_sink_counts_only_messages_the_stream_stored(
    nats_url: str, stream: tuple[str, str]
) -> None:
    # a stream limited to 1,000 messages with DiscardPolicy NEW refuses the rest: the
    # refusal is an error reply, not an ack, and the batch goes to on_error
    import asyncio

    import nats
    from nats.js.api import DiscardPolicy

    name, subject = stream

    async def limit() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        info = await js.stream_info(name)
        config = info.config
        config.max_msgs, config.discard = 1000, DiscardPolicy.NEW
        await js.update_stream(config)
        await nc.close()

    asyncio.run(limit())
    letters: list[Any] = []
    sink = af.to_nats(subject, url=nats_url, connect_timeout=0.3, on_error=af.dead_letter(letters))
    sent = af.run(af.from_array(rows(1500), batch_size=500) | sink)
    assert sent.value == 1000
    assert len(letters) == 1
    assert "refused" in str(letters[0].error)


def test_a_flush_ends_at_once_when_the_server_goes_away() -> None:
    """A server that closes the connection instead of answering a flush's PING: the
    flush fails with ConnectionError at once (the sink reconnects), not after waiting
    out its whole patience (nats-py never answers that PING itself)."""
    pytest.importorskip("nats", reason="the nats extra (nats-py) is not installed")
    import asyncio

    from aflow.connectors.nats import _connect, _flush

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.10.0", "proto": 1, "max_payload": 1 << 20}
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        pings = 0
        while line := await reader.readline():
            if line.startswith(b"PING"):
                pings += 1
                if pings > 1:  # the connection's handshake answered; this is the flush
                    break
                writer.write(b"PONG\r\n")
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            nc = await _connect(f"nats://127.0.0.1:{port}", 5)
            with anyio.fail_after(20), pytest.raises(ConnectionError, match="closed"):
                await _flush(nc, 30)

    anyio.run(main, backend="asyncio")

"""Socket sources and sinks over real sockets on 127.0.0.1 (and a Unix socket), on asyncio
and trio: many clients at once, framing across any split, misbehaving clients cost only
their own data, backpressure reaches the sender, reconnects, UDP, round trips."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import connect_and_reset, serving, settle
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow import FrameTooLongError, IncompleteFrameError, LineTooLongError
from aflow.codecs.framing import HEADER, LengthPrefixedFramer, RecordFramer, split_datagrams
from aflow.sources.sockets._common import GATHER_READS, READ_SIZE, gather_limit

HOST = "127.0.0.1"
RECORD = np.dtype([("id", "<i4"), ("x", "<f8")])  # 12 bytes, unaligned on purpose
MiB = 1 << 20

Address = tuple[str, int]
Line = tuple[str, int, bytes]
"""(source, line number, text without the newline)."""


def lines_of(block: af.Batch) -> list[Line]:
    prov = block.provenance
    assert prov is not None
    assert prov.unit == "line"
    texts = block.data.tobytes().split(b"\n")[:-1]
    assert len(texts) == prov.stop - prov.start
    return [(prov.source, prov.start + i, t) for i, t in enumerate(texts)]


async def receive_lines(run: af.Run[Any], n: int) -> list[Line]:
    got: list[Line] = []
    with anyio.fail_after(5):
        async for msg in run.envelopes():
            assert isinstance(msg, af.Batch)
            got.extend(lines_of(msg))
            if len(got) >= n:
                break
    return got


async def send_in_pieces(stream: Any, data: bytes, rng: random.Random, most: int = 50) -> None:
    pos = 0
    while pos < len(data):
        step = rng.randint(1, most)
        await stream.send(data[pos : pos + step])
        pos += step
        if rng.random() < 0.2:
            await anyio.sleep(0.001)  # let the server read a ragged piece


async def listen(port: int = 0) -> SocketListener:
    """A plain listener on 127.0.0.1, for tests of the client."""
    multi = await anyio.create_tcp_listener(local_host=HOST, local_port=port)
    [listener] = multi.listeners
    assert isinstance(listener, SocketListener)
    return listener


def received_bytes(run: af.Run[Any]) -> int:
    return run.statistics().stage("tcp_server(127.0.0.1:0)").items_out


async def connect(host: str, port: int) -> SocketStream:
    return await anyio.connect_tcp(host, port)


async def send_forever(stream: Any) -> None:
    while True:
        await stream.send(b"x" * 65536)


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (polls state that has no event)
            await anyio.sleep(0.01)


SUBPROCESS_CLIENT = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    s.sendall(b"".join(b"proc line %d\\n" % i for i in range(300)))
"""


@pytest.mark.anyio
async def test_many_clients_at_once_all_lines_arrive_in_order() -> None:
    async with serving(lambda cb: af.tcp_server(0, on_listening=cb)) as (run, (host, port)):
        assert host == HOST

        async def client(i: int) -> None:
            data = b"".join(b"client %d line %d\n" % (i, j) for j in range(300))
            async with await anyio.connect_tcp(host, port) as stream:
                await send_in_pieces(stream, data, random.Random(i))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(client, i)
            tg.start_soon(anyio.run_process, [sys.executable, "-c", SUBPROCESS_CLIENT, str(port)])
            got = await receive_lines(run, 5 * 300)
        run.stop()
    by_source: dict[str, list[tuple[int, bytes]]] = {}
    for source, number, text in got:
        by_source.setdefault(source, []).append((number, text))
    assert len(by_source) == 5
    assert all(s.startswith(f"tcp://{HOST}:") for s in by_source)
    for lines in by_source.values():  # per connection: numbered 1.., in the order sent
        assert [n for n, _ in lines] == list(range(1, 301))
        prefix = lines[0][1].rsplit(b" ", 1)[0]
        assert [t for _, t in lines] == [b"%s %d" % (prefix, j) for j in range(300)]
    assert {t.rsplit(b" ", 2)[0] for _, _, t in got} == {
        *(b"client %d" % i for i in range(4)),
        b"proc",
    }


@pytest.mark.anyio
async def test_line_blocks_feed_a_decoder() -> None:
    dtype = np.dtype([("id", "i8"), ("x", "f8")])
    flow = lambda cb: af.tcp_server(0, on_listening=cb) | af.decode_csv(dtype)  # noqa: E731
    async with serving(flow) as (run, (host, port)):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"1,0.5\n2,1.5\n3,")
            await stream.send(b"2.5\n")
        with anyio.fail_after(5):
            rows = np.concatenate([a async for a in _take_rows(run, 3)])
    assert rows.tolist() == [(1, 0.5), (2, 1.5), (3, 2.5)]


async def _take_rows(run: af.Run[Any], n: int) -> AsyncIterator[Any]:
    seen = 0
    async for arr in run:
        yield arr
        seen += len(arr)
        if seen >= n:
            return


@pytest.mark.anyio
async def test_records_across_arbitrary_send_splits() -> None:
    records = np.zeros(2000, RECORD)
    records["id"] = np.arange(2000)
    records["x"] = np.arange(2000) / 7
    make = lambda cb: af.tcp_server(0, framing="records", dtype=RECORD, on_listening=cb)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        async with await anyio.connect_tcp(host, port) as stream:
            await send_in_pieces(stream, records.tobytes(), random.Random(7), most=100)
        got: list[af.Batch] = []
        with anyio.fail_after(5):
            async for msg in run.envelopes():
                assert isinstance(msg, af.Batch)
                got.append(msg)
                if sum(len(b) for b in got) == len(records):
                    break
        run.stop()
    assert np.array_equal(np.concatenate([b.data for b in got]), records)
    provs = [b.provenance for b in got]
    assert all(p is not None for p in provs)
    assert [p.start for p in provs if p] == [0, *(p.stop for p in provs[:-1] if p)]


@pytest.mark.anyio
async def test_client_leaving_mid_line_loses_only_its_partial_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead: list[af.FailedItem] = []
    make = lambda cb: af.tcp_server(0, on_error=af.dead_letter(dead), on_listening=cb)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="aflow"):
        async with serving(make) as (run, (host, port)):
            b = await anyio.connect_tcp(host, port)
            async with await anyio.connect_tcp(host, port) as a:
                await a.send(b"a1\na2\npartial")
                await b.send(b"b1\nb2")
            got = await receive_lines(run, 3)  # a1, a2, b1
            await b.send(b"\nb3\n")
            got += await receive_lines(run, 2)
            await b.aclose()
            stats = run.statistics()
            run.stop()
    assert sorted(t for _, _, t in got) == [b"a1", b"a2", b"b1", b"b2", b"b3"]
    [failed] = dead
    assert failed.item == b"partial"
    assert isinstance(failed.error, IncompleteFrameError)
    assert failed.provenance is not None
    assert failed.provenance.start == 3  # line 3 of its connection
    assert failed.provenance.source.startswith(f"tcp://{HOST}:")
    assert stats.stage("tcp_server(127.0.0.1:0)").errors == 1
    assert any("inside a line" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_endless_line_closes_only_that_connection() -> None:
    make = lambda cb: af.tcp_server(0, max_line=4096, on_listening=cb)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        good = await anyio.connect_tcp(host, port)
        async with await anyio.connect_tcp(host, port) as endless:
            await endless.send(b"before\n")
            with anyio.fail_after(5), pytest.raises((anyio.BrokenResourceError, OSError)):
                await send_forever(endless)  # until the server hangs up, past max_line
        async with good:
            await good.send(b"still here\n")
            got = await receive_lines(run, 2)
        stats = run.statistics()
        run.stop()
    assert sorted(t for _, _, t in got) == [b"before", b"still here"]
    assert stats.stage("tcp_server(127.0.0.1:0)").errors == 1


@pytest.mark.anyio
async def test_overlong_line_with_raise_policy_fails_the_run() -> None:
    make = lambda cb: af.tcp_server(0, max_line=100, on_error="raise", on_listening=cb)  # noqa: E731
    with pytest.raises(LineTooLongError, match="line longer than 100 bytes"):  # noqa: PT012
        async with serving(make) as (run, (host, port)), await connect(host, port) as stream:
            await stream.send(b"y" * 1000)
            with anyio.fail_after(5):
                await run.wait()


@pytest.mark.anyio
async def test_slow_sink_makes_the_server_stop_reading() -> None:
    gate = anyio.Event()
    received = 0

    async def paused(block: Any) -> None:
        nonlocal received
        await gate.wait()
        received += len(block)

    make = lambda cb: af.tcp_server(0, on_listening=cb) | af.for_each(paused, buffer=1)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        payload = (b"y" * 99 + b"\n") * 655
        sent = tried = 0  # a send cut short by the cancellation may have sent a part
        input_buffer = "tcp_server(127.0.0.1:0).input"
        async with await anyio.connect_tcp(host, port) as stream:

            async def send_all() -> None:
                nonlocal sent, tried
                while sent < 64 * MiB:
                    tried += len(payload)
                    await stream.send(payload)
                    sent += len(payload)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)
                await wait_until(lambda: run.statistics().stage(input_buffer).buffer_high_water)
                await settle(lambda: (sent, received_bytes(run)))  # the sender is stuck
                stats = run.statistics()
                tg.cancel_scope.cancel()
            assert sent < 24 * MiB  # what the kernel's socket buffers hold, no more
            # the server's buffer holds 1 block (2 for a moment: one handed to its
            # waiting reader counts until that task runs), the sink's 1; the connection
            # holds one more while it waits for room, not in the buffers' count
            assert stats.peak_bytes_in_flight <= 3 * gather_limit(READ_SIZE)
            assert stats.stage(input_buffer).buffer_high_water <= 2
            gate.set()
        await wait_until(lambda: received >= sent - len(payload))
        run.stop()
    assert sent - len(payload) <= received <= tried


@pytest.mark.anyio
async def test_a_busy_server_gathers_reads_into_larger_blocks_and_holds_none_back() -> None:
    read_size = 4096
    make = lambda cb: af.tcp_server(0, read_size=read_size, on_listening=cb)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        lines = [b"%05d" % i + b"x" * 94 for i in range(3000)]  # 100 bytes with the newline
        async with await anyio.connect_tcp(host, port) as stream:
            # 20,000-byte writes, nobody reading the run (smaller writes on a loaded machine
            # could each be read alone as they arrive: 2,000-byte reads, nothing to gather)
            for k in range(0, len(lines), 200):
                await stream.send(b"".join(line + b"\n" for line in lines[k : k + 200]))
            await settle(lambda: received_bytes(run))  # it read on, gathering while backlogged
            sizes: list[int] = []
            got: list[Line] = []
            with anyio.fail_after(5):
                async for msg in run.envelopes():  # the client is still connected, silent:
                    sizes.append(len(msg.data))  # its last reads must not be held back
                    got.extend(lines_of(msg))
                    if len(got) >= len(lines):
                        break
    assert [(n, t) for _, n, t in got] == [(i + 1, line) for i, line in enumerate(lines)]
    assert max(sizes) > 2 * read_size  # reads were gathered into larger blocks
    assert max(sizes) <= GATHER_READS * read_size + 100


@pytest.mark.anyio
async def test_a_busy_server_gathers_at_most_256_kib_of_reads_into_a_block() -> None:
    # 64 KiB reads: 4 gathered are one 256 KiB block. Larger blocks were held by each
    # connection, the buffers and the decoders alike (4 clients' CSV: 512 KiB blocks
    # peaked at 92 MiB, 256 KiB ones at 84-85, 1 MiB ones at 107-110)
    read_size = 64 * 1024
    make = lambda cb: af.tcp_server(0, read_size=read_size, on_listening=cb)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        line = b"x" * 99 + b"\n"
        chunk = line * 10_000  # 1 MB per write
        async with await anyio.connect_tcp(host, port) as stream, anyio.create_task_group() as tg:

            async def send() -> None:
                for _ in range(12):
                    await stream.send(chunk)

            tg.start_soon(send)
            sizes: list[int] = []
            with anyio.fail_after(10):
                await settle(lambda: received_bytes(run))  # backlogged: it gathered
                async for block in run:
                    sizes.append(len(block))
                    if sum(sizes) >= 12 * len(chunk):
                        break
    assert sum(sizes) == 12 * len(chunk)
    assert max(sizes) > read_size + len(line)  # reads were gathered
    assert max(sizes) <= MiB // 4 + len(line)
    assert gather_limit(read_size) == gather_limit(READ_SIZE) == READ_SIZE == MiB // 4
    assert gather_limit(MiB) == MiB  # one read larger than that: a block alone


@pytest.mark.anyio
async def test_a_connection_waiting_for_room_holds_no_read_beside_its_block() -> None:
    """While a gathered block waits for room downstream, the reads it was joined from
    are referenced by nothing of the connection's (a waiting connection held the last
    one too: up to one more ``read_size`` per busy connection)."""
    import contextlib

    from aflow.codecs.framing import make_framer
    from aflow.sources.sockets._common import _Options, _pump
    from aflow.sources.sockets._lifecycle import _Tally

    size = 128 * 1024
    reads = [bytes([65 + i]) * (size - 1) + b"\n" for i in range(3)]
    pending = iter(reads)
    counts: list[list[int]] = []

    class Out:
        stopping = False

        def pull_scope(self) -> Any:
            return contextlib.nullcontext()

    class Report:
        stage = "test"

    async def receive(_: int) -> bytes:
        try:
            return next(pending)
        except StopIteration:
            raise anyio.EndOfStream from None

    async def send(block: Any) -> None:
        # our list and getrefcount's argument: 2 for a read nothing else refers to
        counts.append([sys.getrefcount(reads[i]) - 2 for i in range(len(reads))])

    opts = _Options("lines", None, MiB, None, size)
    framer = make_framer("lines", "test", dtype=None, max_size=MiB)
    tally = _Tally("peer", 1)
    await _pump(receive, framer, send, Out(), opts, Report(), tally, backlogged=lambda: True)
    assert len(counts) == 2  # reads 0 and 1 gathered into one block, then read 2
    assert counts[0] == [0, 0, 0]


@pytest.mark.anyio
async def test_a_busy_tcp_client_gathers_reads_too() -> None:
    listener = await listen()
    port = listener.extra(SocketAttribute.local_port)
    lines = [b"%05d" % i + b"y" * 94 for i in range(3000)]
    flow = af.tcp_client(HOST, port, read_size=4096, reconnect=False)
    async with listener, flow.open() as run:
        with anyio.fail_after(5):
            conn = await listener.accept()
        async with conn:
            for k in range(0, len(lines), 20):  # nobody reads the run meanwhile
                await conn.send(b"".join(line + b"\n" for line in lines[k : k + 20]))
            await settle(lambda: run.statistics().stages[0].items_out)
            sizes: list[int] = []
            got: list[Line] = []
            with anyio.fail_after(5):
                async for msg in run.envelopes():
                    sizes.append(len(msg.data))
                    got.extend(lines_of(msg))
                    if len(got) >= len(lines):
                        break
        run.stop()
    assert [t for _, _, t in got] == lines
    assert max(sizes) > 2 * 4096


@pytest.mark.anyio
async def test_tcp_client_reconnects_after_the_server_restarts() -> None:
    first = await listen()
    port = first.extra(SocketAttribute.local_port)
    flow = af.tcp_client(HOST, port, backoff=0.02, max_backoff=0.1)
    async with flow.open() as run:
        async with first, await first.accept() as conn:
            await conn.send(b"a\nb\n")
        got = await receive_lines(run, 2)
        await anyio.sleep(0.2)  # the client retries, refused, backing off
        second = await listen(port)
        async with second:
            with anyio.fail_after(5):
                conn = await second.accept()
            async with conn:
                await conn.send(b"c\n")
                got += await receive_lines(run, 1)
        run.stop()
    assert [(n, t) for _, n, t in got] == [(1, b"a"), (2, b"b"), (1, b"c")]


@pytest.mark.anyio
async def test_tcp_client_without_reconnect_ends_at_eof() -> None:
    dead: list[af.FailedItem] = []
    listener = await listen()
    port = listener.extra(SocketAttribute.local_port)

    async def serve_one() -> None:
        async with listener, await listener.accept() as conn:
            await conn.send(b"x\ny\nunfinished")

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_one)
        flow = af.tcp_client(HOST, port, reconnect=False, on_error=af.dead_letter(dead))
        with anyio.fail_after(5):
            result = await flow.run()
    assert bytes(result.value) == b"x\ny\n"
    assert [f.item for f in dead] == [b"unfinished"]
    with pytest.raises(OSError, match="connection attempts failed"):  # nobody listens now
        await af.tcp_client(HOST, port, reconnect=False).run()


@pytest.mark.anyio
async def test_connection_limit_and_idle_timeout() -> None:
    idle = 0.3
    make = lambda cb: af.tcp_server(0, max_connections=1, idle_timeout=idle, on_listening=cb)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        async with await anyio.connect_tcp(host, port) as first:
            sent_first = anyio.current_time()
            await first.send(b"first\n")
            assert [t for _, _, t in await receive_lines(run, 1)] == [b"first"]
            async with await anyio.connect_tcp(host, port) as second:
                await second.send(b"second\n")  # waits: only one connection is read
                got = await receive_lines(run, 1)
                # ... until the first connection, silent since, was closed as idle
                assert anyio.current_time() - sent_first >= idle * 0.95
                assert [t for _, _, t in got] == [b"second"]
                with anyio.fail_after(1), pytest.raises(anyio.EndOfStream):
                    await first.receive()  # the server closed the silent connection
        run.stop()


@pytest.mark.anyio
async def test_take_ends_the_server_and_its_connections() -> None:
    # on blocks of lines, take counts lines
    make = lambda cb: af.tcp_server(0, on_listening=cb) | af.take(1)  # noqa: E731
    async with serving(make) as (run, (host, port)), await connect(host, port) as stream:
        await stream.send(b"one\n")
        with anyio.fail_after(5):
            async for block in run:
                assert bytes(block) == b"one\n"
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()  # closed by the server


@pytest.mark.anyio
async def test_cancelling_the_run_closes_the_listener_and_connections() -> None:
    addresses: list[Address] = []
    arrived = anyio.Event()
    flow = af.tcp_server(0, on_listening=addresses.append) | af.for_each(lambda _: arrived.set())
    client: list[SocketStream] = []

    async def connect_one_then_cancel(run: anyio.CancelScope) -> None:
        await wait_until(lambda: bool(addresses))
        client.append(await connect(*addresses[0]))
        await client[0].send(b"hello\n")
        await arrived.wait()  # the run holds a connection now
        run.cancel()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as outside:
                tg.start_soon(connect_one_then_cancel, outside)
                await flow.run()
        async with client[0]:
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await client[0].receive()  # the server closed the connection
    with pytest.raises(OSError, match="connection attempts failed"):
        await connect(*addresses[0])  # and its listener


@pytest.mark.anyio
async def test_graceful_stop_flushes_lines_and_reports_the_partial_one() -> None:
    dead: list[af.FailedItem] = []
    ports: list[int] = []
    make = lambda cb: af.tcp_server(0, on_error=af.dead_letter(dead), on_listening=cb)  # noqa: E731
    flow = make(lambda address: ports.append(address[1])) | af.collect()
    for _ in range(2):  # a flow runs again, on a fresh port each time
        async with flow.open() as run:
            await wait_until(lambda: len(ports) > len(dead))
            async with await anyio.connect_tcp(HOST, ports[-1]) as stream:
                await stream.send(b"1\n2\n3")
                await wait_until(lambda: received_bytes(run) >= 4)
                run.stop()
                result = await run.wait()
        assert bytes(result.value) == b"1\n2\n"
    assert len(set(ports)) == 2
    assert [f.item for f in dead] == [b"3", b"3"]
    assert "the run stopped" in str(dead[0].error)


@pytest.mark.anyio
async def test_length_prefixed_frames_and_a_frame_too_long() -> None:
    dead: list[af.FailedItem] = []
    make = lambda cb: af.tcp_server(  # noqa: E731
        0, framing="length_prefixed", max_line=1000, on_error=af.dead_letter(dead), on_listening=cb
    )
    frames = [b"", b"one", b"two\nlines", bytes(999)]
    async with serving(make) as (run, (host, port)):
        async with await anyio.connect_tcp(host, port) as stream:
            data = b"".join(HEADER.pack(len(f)) + f for f in frames)
            await send_in_pieces(stream, data, random.Random(3))
            await stream.send(HEADER.pack(1001) + b"z")
            got: list[bytes] = []
            with anyio.fail_after(5):
                async for frame in run:
                    got.append(frame)
                    if len(got) == len(frames):
                        break
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
        run.stop()
    assert got == frames
    [failed] = dead
    assert isinstance(failed.error, FrameTooLongError)
    assert failed.provenance is not None
    assert failed.provenance.offset == len(data)  # where the bad frame starts


@pytest.mark.anyio
async def test_udp_datagrams_with_several_records_each() -> None:
    dead: list[af.FailedItem] = []
    records = np.zeros(500, RECORD)
    records["id"] = np.arange(500)
    make = lambda cb: af.udp_server(  # noqa: E731
        0, framing="records", dtype=RECORD, on_error=af.dead_letter(dead), on_listening=cb
    )
    async with serving(make) as (run, (host, port)):
        async with await anyio.create_connected_udp_socket(host, port) as sock:
            await sock.send(b"not a whole record")
            for part in np.array_split(records, 10):
                await sock.send(part.tobytes())
        got: list[Any] = []
        with anyio.fail_after(5):
            async for arr in run:
                got.append(arr)
                if sum(map(len, got)) == len(records):
                    break
        run.stop()
    assert np.array_equal(np.concatenate(got), records)  # datagrams read at once are joined
    assert [f.item for f in dead] == [b"not a whole record"]


@pytest.mark.anyio
async def test_udp_bursts_become_one_block_per_sender_numbered_on() -> None:
    make = lambda cb: af.udp_server(0, datagrams="messages", on_listening=cb)  # noqa: E731
    async with serving(make) as (run, (host, port)):
        async with (
            await anyio.create_connected_udp_socket(host, port) as a,
            await anyio.create_connected_udp_socket(host, port) as b,
        ):
            for i in range(200):  # a burst, faster than one message per datagram
                await a.send(b"a%d\n" % i)
                await b.send(b"b%d\nb%d-2" % (i, i))  # the last line needs no newline
            got: list[Line] = []
            blocks = 0
            with anyio.fail_after(5):
                async for msg in run.envelopes():
                    blocks += 1
                    got.extend(lines_of(msg))
                    if len(got) == 600:
                        break
        run.stop()
    by_sender: dict[str, list[tuple[int, bytes]]] = {}
    for source, number, text in got:
        by_sender.setdefault(source, []).append((number, text))
    assert sorted(len(v) for v in by_sender.values()) == [200, 400]
    for lines in by_sender.values():  # in order, numbered on from 1 across datagrams
        assert [n for n, _ in lines] == list(range(1, len(lines) + 1))
    texts = sorted(by_sender.values(), key=len)
    assert [t for _, t in texts[0]] == [b"a%d" % i for i in range(200)]
    assert [t for _, t in texts[1]][:4] == [b"b0", b"b0-2", b"b1", b"b1-2"]
    assert blocks < 400  # datagrams read at once were joined


@pytest.mark.anyio
async def test_unix_socket_server(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    async with serving(lambda cb: af.unix_server(path, on_listening=cb)) as (run, address):
        assert address == str(path)
        for i in range(2):
            async with await anyio.connect_unix(path) as stream:
                await stream.send(b"hello %d\nbye\n" % i)
            got = await receive_lines(run, 2)
            assert [(s, n, t) for s, n, t in got] == [
                (f"unix://{path}#{i + 1}", 1, b"hello %d" % i),
                (f"unix://{path}#{i + 1}", 2, b"bye"),
            ]
        run.stop()
    assert not path.exists()


@pytest.mark.anyio
async def test_to_tcp_round_trips_records_lines_and_frames(tmp_path: Path) -> None:
    text = tmp_path / "lines.txt"
    text.write_bytes(b"x\ny\n")
    records = np.zeros(3000, RECORD)
    records["id"] = np.arange(3000)
    records["x"] = np.arange(3000) / 3

    async def round_trip(server: Any, flow: Any, n: int) -> tuple[list[Any], int]:
        async with serving(server) as (run, (host, port)):
            sent = await (flow | af.to_tcp(host, port, **framing)).run()
            got: list[Any] = []
            with anyio.fail_after(5):
                async for item in run:
                    got.append(item)
                    if sum(len(x) if isinstance(x, np.ndarray) else 1 for x in got) >= n:
                        break
            run.stop()
        return got, sent.value

    framing: dict[str, Any] = {"framing": "records"}
    got, sent = await round_trip(
        lambda cb: af.tcp_server(0, framing="records", dtype=RECORD, on_listening=cb),
        af.from_array(records, 700),
        len(records),
    )
    assert sent == records.nbytes
    assert np.array_equal(np.concatenate(got), records)

    framing = {"framing": "lines"}  # structured rows as CSV text, decoded back
    got, _ = await round_trip(
        lambda cb: af.tcp_server(0, on_listening=cb) | af.decode_csv(RECORD),
        af.from_array(records, 5000),
        len(records),
    )
    assert np.array_equal(np.concatenate(got), records)

    got, _ = await round_trip(
        lambda cb: af.tcp_server(0, on_listening=cb),
        af.from_iterable(["a", b"b", ("c", 1, 2.5)]),
        6,
    )
    assert bytes(np.concatenate(got)) == b"a\nb\nc,1,2.5\n"

    got, _ = await round_trip(  # numbers, even uint8, go as text; blocks of lines as they are
        lambda cb: af.tcp_server(0, on_listening=cb),
        af.concat(af.from_array(np.array([7, 8], np.uint8)), af.read_blocks(str(text))),
        8,
    )
    assert bytes(np.concatenate(got)) == b"7\n8\nx\ny\n"

    framing = {"framing": "length_prefixed"}
    got, _ = await round_trip(
        lambda cb: af.tcp_server(0, framing="length_prefixed", on_listening=cb),
        af.from_iterable([b"x", "y\nz", b""]),
        3,
    )
    assert got == [b"x", b"y\nz", b""]


@pytest.mark.anyio
async def test_to_udp_packs_lines_and_records_into_datagrams() -> None:
    async with serving(lambda cb: af.udp_server(0, on_listening=cb)) as (run, (host, port)):
        lines = [f"line {i}" for i in range(300)]
        sent = await (af.from_iterable(lines) | af.to_udp(host, port, max_datagram=512)).run()
        got = await receive_lines(run, 300)
        run.stop()
    assert sent.value == sum(len(x) + 1 for x in lines)
    assert [t.decode() for _, _, t in got] == lines
    assert [n for _, n, _ in got] == list(range(1, 301))  # numbered on across datagrams

    records = np.zeros(400, RECORD)
    records["id"] = np.arange(400)
    async with await anyio.create_udp_socket(local_host=HOST) as receiver:
        port = receiver.extra(SocketAttribute.local_port)
        sink = af.to_udp(HOST, port, framing="records", max_datagram=1000)
        await (af.from_array(records, 250) | sink).run()
        datagrams: list[bytes] = []
        with anyio.fail_after(5):
            while sum(map(len, datagrams)) < records.nbytes:
                datagrams.append((await receiver.receive())[0])
    assert max(map(len, datagrams)) == 1000 // RECORD.itemsize * RECORD.itemsize
    assert np.array_equal(np.frombuffer(b"".join(datagrams), RECORD), records)


def test_bad_arguments_fail_at_build_time() -> None:
    with pytest.raises(ValueError, match="needs dtype"):
        af.tcp_server(0, framing="records")
    with pytest.raises(ValueError, match="framing="):
        af.udp_server(0, framing="length_prefixed")
    with pytest.raises(ValueError, match="max_connections"):
        af.tcp_server(0, max_connections=0)
    with pytest.raises(ValueError, match="max_datagram"):
        split_datagrams(b"a very long line\n", 5, None)


# -- framers, for any split of the stream ------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=20), st.lists(st.integers(0, 10_000)))
def test_length_prefixed_framer_any_split(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(HEADER.pack(len(f)) + f for f in frames)
    framer = LengthPrefixedFramer("mem", 30)
    got: list[bytes] = []
    for piece in split_at(data, cuts):
        got.extend(framer.feed(piece) or [])
    assert got == frames
    assert framer.finish("end") is None


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 50), st.lists(st.integers(0, 10_000)), st.integers(0, 11))
def test_record_framer_any_split(n: int, cuts: list[int], extra: int) -> None:
    records = np.zeros(n, RECORD)
    records["id"] = np.arange(n)
    framer = RecordFramer("mem", RECORD)
    parts = [framer.feed(p) for p in split_at(records.tobytes() + bytes(extra), cuts)]
    rows = [b.data for b in parts if b is not None]
    assert np.array_equal(np.concatenate([np.empty(0, RECORD), *rows]), records)
    tail = framer.finish("end")
    assert (tail is None) == (extra == 0)


@pytest.mark.anyio
async def test_clients_that_reset_at_once_cost_only_their_own_connection() -> None:
    """Issue 10.1: a connect-then-reset storm interleaved with normal senders ends only the
    resetting connections; every line of the normal senders arrives."""
    got: list[bytes] = []
    expected = 8 * len(b"normal 0\n") + len(b"last\n")
    arrived = anyio.Event()

    def keep(block: np.ndarray) -> None:
        got.append(block.tobytes())
        if sum(map(len, got)) >= expected:
            arrived.set()

    async with serving(lambda cb: af.tcp_server(0, HOST, on_listening=cb) | af.for_each(keep)) as (
        run,
        address,
    ):
        sent: list[bytes] = []
        for i in range(200):
            await anyio.to_thread.run_sync(connect_and_reset, address)
            if i % 25 == 0:
                line = f"normal {i // 25}\n".encode()
                await anyio.to_thread.run_sync(_send_all, address, line)
                sent.append(line)
        await anyio.to_thread.run_sync(connect_and_reset, address, b"partial line", 0.05)
        await anyio.to_thread.run_sync(_send_all, address, b"last\n")
        sent.append(b"last\n")
        with anyio.fail_after(5):
            await arrived.wait()
        run.stop()
        await run.wait()
    assert sorted(b"".join(got).splitlines(keepends=True)) == sorted(sent)


def _send_all(address: Address, data: bytes) -> None:
    import socket

    with socket.create_connection(address) as s:
        s.sendall(data)

"""Stream servers against hostile and real clients (issue 10), over real sockets on
127.0.0.1, on asyncio and trio: resets, backpressure to a real fast sender, idle and
slowloris clients, endless lines, connection lifecycle, and a storm of real client
processes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import connect_and_reset, serving

import aflow as af
from aflow.codecs.lines import LineSplitter
from aflow.sources.sockets._common import READ_SIZE, gather_limit

HOST = "127.0.0.1"
MiB = 1 << 20
Address = tuple[str, int]
PER_CONNECTION = gather_limit(READ_SIZE) + MiB  # documented (1.25 MiB): reads held + a line


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 (polls state that has no event)
            await anyio.sleep(0.01)


def _start(*cmd: str) -> subprocess.Popen[bytes]:
    """A real client process, started without waiting for it."""
    return subprocess.Popen(cmd)


@pytest.mark.anyio
async def test_a_reset_50_ms_after_sending_costs_only_that_connection() -> None:
    events: list[af.ConnectionEvent] = []
    dead: list[af.FailedItem] = []
    make = lambda cb: af.tcp_server(  # noqa: E731
        0, on_listening=cb, on_connection=events.append, on_error=af.dead_letter(dead)
    )
    async with serving(make) as (run, address):
        await anyio.to_thread.run_sync(connect_and_reset, address, b"whole\nhalf a li", 0.05)
        with socket.create_connection(address) as s:
            s.sendall(b"after\n")
        got: list[bytes] = []
        with anyio.fail_after(5):
            async for block in run:
                got.append(bytes(block))
                if b"after\n" in b"".join(got):
                    break
        run.stop()
    assert b"".join(got) == b"whole\nafter\n"
    assert [f.item for f in dead] == [b"half a li"]
    closed = [e for e in events if e.kind == "closed"]
    assert closed[0].reason == "broken"
    assert closed[0].peer.startswith("tcp://127.0.0.1:")
    assert (closed[0].bytes, closed[0].items, closed[0].errors) == (15, 1, 1)


STORM = """
import socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port))
    except OSError:
        continue
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.anyio
async def test_a_storm_of_resetting_processes_loses_nothing_of_8_real_senders(
    tmp_path: Path,
) -> None:
    """1,000 connect-then-reset clients (4 processes) interleaved with 8 socat and nc
    senders: every line of the senders arrives, once."""
    files = []
    for k in range(8):
        path = tmp_path / f"sender{k}.txt"
        path.write_bytes(b"".join(b"sender %d line %d\n" % (k, i) for i in range(20_000)))
        files.append(path)
    expected = sorted(b"".join(p.read_bytes() for p in files).splitlines())
    events: list[af.ConnectionEvent] = []
    lines: list[bytes] = []
    flow = lambda cb: af.tcp_server(0, on_listening=cb, on_connection=events.append)  # noqa: E731
    async with serving(flow) as (run, (host, port)):
        procs = [_start(sys.executable, "-c", STORM, str(port), "250") for _ in range(4)]
        for k, path in enumerate(files):
            if k % 2:
                cmd = ["socat", "-u", f"FILE:{path}", f"TCP:{host}:{port}"]
            else:
                cmd = ["sh", "-c", f"nc -N {host} {port} < {path}"]
            procs.append(_start(*cmd))
        with anyio.fail_after(90):
            async for block in run:
                lines.extend(bytes(block).splitlines())
                if len(lines) >= len(expected):
                    break
            for proc in procs:
                assert await anyio.to_thread.run_sync(proc.wait) == 0
        run.stop()
    assert sorted(lines) == expected
    reasons = [e.reason for e in events if e.kind == "closed"]
    assert reasons.count("eof") >= 8  # (the kernel drops most reset clients before accept)
    assert set(reasons) <= {"eof", "broken", "stopped"}


@pytest.mark.anyio
async def test_backpressure_reaches_a_real_fast_sender_and_a_stop_loses_no_read_byte(
    tmp_path: Path,
) -> None:
    """socat sends 64 MB into a flow whose sink is held: the server reads no more than
    the run's budget plus the per-connection constant, and socat stays blocked. A
    graceful stop then hands on (or reports) every byte that was read."""
    path = tmp_path / "big.csv"
    line = b"%08d,1234567,3.25\n"
    path.write_bytes(b"".join(line % i for i in range(3_000_000)))  # 81 MB
    budget = 4 * MiB
    events: list[af.ConnectionEvent] = []
    dead: list[af.FailedItem] = []
    held = anyio.Event()
    delivered: list[int] = []

    async def slow(block: Any) -> None:
        delivered.append(len(block))
        await held.wait()

    def make(cb: Any) -> Any:
        server = af.tcp_server(
            0, on_listening=cb, on_connection=events.append, on_error=af.dead_letter(dead)
        )
        return server | af.for_each(slow)

    async with serving(make, max_bytes_in_flight=budget) as (run, (host, port)):
        proc = _start("socat", "-u", f"FILE:{path}", f"TCP:{host}:{port}")
        try:
            source = run.statistics().stages[0].name

            def read() -> int:
                return run.statistics().stage(source).bytes_out

            # the server goes as far as the buffers let it, then stops reading
            await wait_until(lambda: bool(delivered))
            before = -1
            while read() != before:
                before = read()
                await anyio.sleep(0.3)
            assert proc.poll() is None  # socat is blocked: the kernel buffers are full
            assert read() <= budget + PER_CONNECTION
            assert run.statistics().peak_bytes_in_flight <= budget + PER_CONNECTION
            run.stop()
            held.set()
            result = await run.wait()
        finally:
            proc.kill()
            proc.wait()
    [closed] = [e for e in events if e.kind == "closed"]
    assert closed.reason == "stopped"
    kept = sum(len(f.item) for f in dead)
    assert sum(delivered) + kept == closed.bytes  # every byte read: delivered or reported
    assert result.value == len(delivered)


@pytest.mark.anyio
async def test_idle_and_slowloris_clients_do_not_lock_out_a_real_one() -> None:
    """With the defaults, 64 idle and 64 slowloris connections open: a legitimate client
    is served at once (within 5 s on a loaded machine; without eviction it would wait for
    the slowloris clients' 500 s), and the hostile ones are closed (evicted) and counted."""
    events: list[af.ConnectionEvent] = []
    hostile: list[Any] = []
    make = lambda cb: af.tcp_server(0, on_listening=cb, on_connection=events.append)  # noqa: E731
    try:
        async with serving(make) as (run, (host, port)), anyio.create_task_group() as tg:

            async def slowloris(stream: Any) -> None:
                for _ in range(1000):
                    try:
                        await stream.send(b"x")
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        return
                    await anyio.sleep(0.5)

            for i in range(128):
                stream = await anyio.connect_tcp(host, port)
                hostile.append(stream)
                if i % 2:
                    tg.start_soon(slowloris, stream)
            with anyio.fail_after(5):
                async with await anyio.connect_tcp(host, port) as legit:
                    await legit.send(b"hello\n")
                    async for block in run:
                        assert bytes(block) == b"hello\n"
                        break
            evicted = [e for e in events if e.kind == "closed" and e.reason == "evicted"]
            assert len(evicted) >= 65  # 64 waited for a slot, the legitimate client took one
            assert all(e.items == 0 for e in evicted)
            tg.cancel_scope.cancel()
            run.stop()
    finally:
        with anyio.CancelScope(shield=True):
            for stream in hostile:  # closed even when an assertion fails: no leaked sockets
                await stream.aclose()


@pytest.mark.anyio
async def test_idle_and_slow_connections_are_closed_by_their_timeouts() -> None:
    events: list[af.ConnectionEvent] = []
    make = lambda cb: af.tcp_server(  # noqa: E731
        0, idle_timeout=0.3, line_timeout=0.6, on_listening=cb, on_connection=events.append
    )
    async with serving(make) as (run, (host, port)):
        async with (
            await anyio.connect_tcp(host, port) as idle,
            await anyio.connect_tcp(host, port) as slow,
        ):
            await idle.send(b"one\n")
            with anyio.fail_after(5):
                for _ in range(100):
                    await slow.send(b"x")  # a byte at a time: never idle, never a line
                    await anyio.sleep(0.05)
                    if sum(e.kind == "closed" for e in events) == 2:
                        break
        run.stop()
    reasons = {e.bytes: e.reason for e in events if e.kind == "closed"}
    assert reasons[4] == "idle"
    assert "slow" in reasons.values()


@pytest.mark.anyio
async def test_a_client_sending_through_a_downstream_stall_is_not_closed_as_idle() -> None:
    """The sink stalls 1.5 s (three idle timeouts) while a client keeps sending: the
    server's send waits for room meanwhile, which is not the client's silence, so the
    connection stays open and every byte arrives."""
    events: list[af.ConnectionEvent] = []
    resumed = anyio.Event()
    delivered: list[int] = []

    async def stall(block: Any) -> None:
        if not delivered:
            await anyio.sleep(1.5)
            resumed.set()
        delivered.append(len(block))

    def make(cb: Any) -> Any:
        server = af.tcp_server(0, idle_timeout=0.5, on_listening=cb, on_connection=events.append)
        return server | af.for_each(stall)

    chunk = b"%07d,0123456789abcdef\n" * 1000  # 24 KB of lines
    sent = 0
    async with serving(make, max_bytes_in_flight=64 * 1024) as (run, (host, port)):
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(host, port) as client:
                after = 0
                while after < 20:
                    await client.send(chunk)  # raises if the server closed it
                    sent += len(chunk)
                    after += resumed.is_set()
                    await anyio.sleep(0.01)
            await wait_until(lambda: any(e.kind == "closed" for e in events))
        run.stop()
        await run.wait()
    [closed] = [e for e in events if e.kind == "closed"]
    assert closed.reason == "eof"
    assert closed.bytes == sent == sum(delivered)


@pytest.mark.anyio
async def test_stop_after_n_connections_ends_the_flow_with_their_counts() -> None:
    events: list[af.ConnectionEvent] = []

    async def record(event: af.ConnectionEvent) -> None:
        events.append(event)

    flow = lambda cb: af.tcp_server(0, stop_after=3, on_listening=cb, on_connection=record)  # noqa: E731
    tx, rx = anyio.create_memory_object_stream[Any](1)
    with tx, rx, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:

            async def clients() -> None:
                address = await rx.receive()
                for i in range(3):
                    await anyio.to_thread.run_sync(_send, address, b"%d\n" % i * (i + 1))

            tg.start_soon(clients)
            result = await (flow(tx.send_nowait) | af.collect()).run()
    assert sorted(bytes(result.value).splitlines()) == [b"0", b"1", b"1", b"2", b"2", b"2"]
    closed = sorted((e for e in events if e.kind == "closed"), key=lambda e: e.number)
    assert [(e.number, e.items, e.bytes, e.reason) for e in closed] == [
        (1, 1, 2, "eof"),
        (2, 2, 4, "eof"),
        (3, 3, 6, "eof"),
    ]
    assert [e.kind for e in events].count("opened") == 3
    assert all(e.seconds >= 0 and e.peer.startswith("tcp://127.0.0.1:") for e in closed)


def _send(address: Address, data: bytes) -> None:
    with socket.create_connection(address) as s:
        s.sendall(data)


@pytest.mark.anyio
async def test_an_endless_line_is_cut_and_only_its_connection_closed() -> None:
    events: list[af.ConnectionEvent] = []
    make = lambda cb: af.tcp_server(  # noqa: E731
        0, max_line=16 * MiB, on_listening=cb, on_connection=events.append
    )
    async with serving(make) as (run, (host, port)):
        async with await anyio.connect_tcp(host, port) as stream:
            with anyio.fail_after(20):
                try:
                    while not events or events[-1].kind == "opened":
                        await stream.send(b"x" * MiB)
                except (anyio.BrokenResourceError, OSError):
                    pass
                await wait_until(lambda: events[-1].kind == "closed")
        run.stop()
    assert events[-1].reason == "overlong"
    assert events[-1].errors == 1
    assert run.statistics().errors == 1


def test_an_endless_line_is_held_in_one_buffer_grown_in_place() -> None:
    """Cutting an over-long line is linear: the unfinished line grows in place (no copy of
    all of it per chunk), and is dropped once it passes max_line."""
    splitter = LineSplitter("s", max_line=8 * MiB)
    chunk = b"x" * (64 * 1024)
    splitter.feed(chunk)
    splitter.feed(chunk)
    held = splitter._rest
    for _ in range(100):
        splitter.feed(chunk)
        assert splitter._rest is held
    for _ in range(100):
        splitter.feed(chunk)
    assert [type(e) for e in splitter.take_errors()] == [af.LineTooLongError]
    assert splitter.feed(b"tail\nnext\n") is not None
    assert splitter.pending == 0


@pytest.mark.anyio
async def test_a_clients_bad_line_is_isolated_by_the_decoders_error_policy() -> None:
    """The documented one-liner: the decoder's on_error keeps serving every client and
    names the peer and line of each bad row."""
    bad: list[af.FailedItem] = []
    dtype = np.dtype([("a", "i8"), ("b", "f8")])

    def make(cb: Any) -> Any:
        decode = af.decode_csv(dtype, on_error=af.dead_letter(bad))
        return af.tcp_server(0, on_listening=cb) | decode

    async with serving(make) as (run, address):
        await anyio.to_thread.run_sync(_send, address, b"1,2.5\nnot,a row\n3,4.5\n")
        await anyio.to_thread.run_sync(_send, address, b"5,6.5\n")
        rows: list[Any] = []
        with anyio.fail_after(5):
            async for arr in run:
                rows.extend(arr.tolist())
                if len(rows) == 3:
                    break
        run.stop()
    assert rows == [(1, 2.5), (3, 4.5), (5, 6.5)]
    [failed] = bad
    assert failed.provenance is not None
    assert failed.provenance.source.startswith("tcp://127.0.0.1:")
    assert failed.provenance.start == 2

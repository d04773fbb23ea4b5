"""to_tcp when its peer resets the connection, and on_error for to_tcp and for_each
(issue 10.10), over real sockets on 127.0.0.1, on asyncio and trio."""

from __future__ import annotations

import socket
import struct
from contextlib import suppress
from typing import Any

import anyio
import numpy as np
import pytest
from anyio.abc import SocketAttribute, SocketListener, SocketStream

import aflow as af

HOST = "127.0.0.1"


async def listen() -> tuple[SocketListener, int]:
    multi = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    [listener] = multi.listeners
    assert isinstance(listener, SocketListener)
    return listener, listener.extra(SocketAttribute.local_port)


def _reset(stream: SocketStream) -> None:
    raw = stream.extra(SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _slowly(n: int, delay: anyio.Event) -> Any:
    for i in range(n):
        if i == 1:
            await delay.wait()
        yield b"line %d\n" % i


@pytest.mark.anyio
async def test_a_reset_in_to_tcp_names_the_peer() -> None:
    listener, port = await listen()
    reset = anyio.Event()
    async with listener, anyio.create_task_group() as tg:

        async def reset_first() -> None:
            stream = await listener.accept()
            await stream.receive()
            _reset(stream)
            await stream.aclose()
            reset.set()

        tg.start_soon(reset_first)
        flow = af.from_iterable(_slowly(10_000, reset)) | af.to_tcp(HOST, port)
        with anyio.fail_after(10), pytest.raises(ConnectionError) as caught:
            await flow.run()
    message = str(caught.value)
    assert f"tcp://{HOST}:{port}" in message
    assert "closed or reset" in message
    assert "on_error" in message


@pytest.mark.anyio
async def test_to_tcp_retry_reconnects_and_resends() -> None:
    listener, port = await listen()
    reset = anyio.Event()
    got: list[bytes] = []
    async with listener, anyio.create_task_group() as tg:

        async def serve() -> None:
            first = await listener.accept()
            await first.receive()
            _reset(first)
            await first.aclose()
            reset.set()
            async with await listener.accept() as second:
                try:
                    while True:
                        got.append(await second.receive())
                except anyio.EndOfStream:
                    pass

        tg.start_soon(serve)
        sink = af.to_tcp(HOST, port, on_error=af.retry(5, backoff=0.01))
        with anyio.fail_after(10):
            result = await (af.from_iterable(_slowly(50, reset)) | sink).run()
    lines = b"".join(got).splitlines()
    assert lines[-1] == b"line 49"
    assert len(lines) >= 48  # what the first connection lost, at most its first line
    assert result.statistics.stage(f"to_tcp({HOST}:{port})").retries >= 1


@pytest.mark.anyio
async def test_for_each_on_error_skip_and_dead_letter() -> None:
    def picky(x: int) -> None:
        if x % 3 == 0:
            raise ValueError(f"no {x}")

    result = await (af.from_iterable(range(10)) | af.for_each(picky, on_error="skip")).run()
    assert result.value == 10
    assert result.statistics.errors == 4
    dead: list[af.FailedItem] = []

    async def batchwise(arr: Any) -> None:
        if arr[0] >= 4:
            raise ValueError("bad batch")

    flow = af.from_array(np.arange(8), batch_size=4) | af.for_each(
        batchwise, on_error=af.dead_letter(dead)
    )
    await flow.run()
    assert [list(f.item) for f in dead] == [[4, 5, 6, 7]]
    with pytest.raises(ValueError, match="no 0"):
        await (af.from_iterable(range(3)) | af.for_each(picky)).run()


@pytest.mark.anyio
async def test_to_tcp_dead_letter_takes_a_refused_reconnect_naming_the_peer() -> None:
    """The server takes one line, resets the connection and stops listening: every later
    send and reconnect (refused) goes to the policy, and the run ends normally."""
    listener, port = await listen()
    reset = anyio.Event()
    dead: list[af.FailedItem] = []
    async with anyio.create_task_group() as tg:

        async def reset_and_close() -> None:
            async with listener:
                stream = await listener.accept()
                await stream.receive()
                _reset(stream)
                await stream.aclose()
            reset.set()

        tg.start_soon(reset_and_close)
        sink = af.to_tcp(HOST, port, on_error=af.dead_letter(dead))
        with anyio.fail_after(10):
            result = await (af.from_iterable(_slowly(5, reset)) | sink).run()
    assert len(dead) >= 3  # the first line after the reset may go into the dead socket
    assert all(isinstance(f.error, ConnectionError) for f in dead)
    assert all(f"tcp://{HOST}:{port}" in str(f.error) for f in dead)
    assert any("connecting again" in str(f.error) for f in dead)  # refused
    assert result.statistics.stage(f"to_tcp({HOST}:{port})").errors == len(dead)


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["dead_letter", "retry"])
async def test_to_tcp_policies_take_a_reconnect_that_times_out(policy: str) -> None:
    """After a reset, the server's accept queue is full (listen backlog 0, never
    accepted), so connecting again times out: a dead letter gets the lines, and retry
    gives up naming the peer, never with a bare TimeoutError."""
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen(0)
    port = server.getsockname()[1]
    reset = anyio.Event()
    fillers: list[socket.socket] = []
    dead: list[af.FailedItem] = []

    async def reset_first_and_fill() -> None:
        conn, _ = await anyio.to_thread.run_sync(server.accept)
        with conn:
            await anyio.to_thread.run_sync(conn.recv, 100)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for _ in range(2):  # the queue holds backlog + 1 connections: the next hangs
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect((HOST, port))
            fillers.append(filler)
        await anyio.sleep(0.05)  # their handshakes complete on loopback
        reset.set()

    on_error = af.dead_letter(dead) if policy == "dead_letter" else af.retry(2, backoff=0.01)
    sink = af.to_tcp(HOST, port, connect_timeout=0.2, on_error=on_error)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reset_first_and_fill)
            with anyio.fail_after(10):
                if policy == "dead_letter":
                    await (af.from_iterable(_slowly(4, reset)) | sink).run()
                    errors = [f.error for f in dead]
                else:
                    with pytest.raises(af.RetriesExhaustedError) as caught:
                        await (af.from_iterable(_slowly(4, reset)) | sink).run()
                    errors = [caught.value]
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert errors
    assert all(f"tcp://{HOST}:{port}" in str(e) for e in errors)
    assert "timed out" in str(errors[-1])

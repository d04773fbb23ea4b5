"""udp_server against real senders (issue 10), on 127.0.0.1, on asyncio and trio: files
sent by ``nc -u`` and ``socat`` (lines cut across datagrams are joined), many senders of
one datagram each (nothing lost that the kernel delivered), and kernel drops counted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import serving

import aflow as af
from aflow.abc import Batch, Message, Operator, Processor, Provenance

HOST = "127.0.0.1"
Address = tuple[str, int]


def _run(*cmd: str) -> int:
    return subprocess.run(cmd, check=False, timeout=30).returncode


def _csv(path: Path, rows: int) -> bytes:
    data = b"".join(b"%d,%d,%.2f\n" % (i, i % 97, i / 4) for i in range(rows))
    path.write_bytes(data)
    return data


TOOLS = {
    "nc": lambda path, port: ("sh", "-c", f"nc -u -w0 {HOST} {port} < {path}"),
    "socat": lambda path, port: ("socat", "-u", f"FILE:{path}", f"UDP:{HOST}:{port}"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("tool", sorted(TOOLS))
async def test_a_file_sent_by_a_real_udp_tool_arrives_line_for_line(
    tool: str, tmp_path: Path
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    path = tmp_path / "readings.csv"
    data = _csv(path, 20_000)  # ~300 KB: datagrams of 8-16 KB, cut mid-line
    dtype = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f8")])
    make = lambda cb: af.udp_server(0, on_listening=cb) | af.decode_csv(dtype)  # noqa: E731
    rows: list[Any] = []
    async with serving(make) as (run, (_, port)):
        assert await anyio.to_thread.run_sync(_run, *TOOLS[tool](path, port)) == 0
        with anyio.fail_after(10):
            async for arr in run:
                rows.extend(arr.tolist())
                if len(rows) >= 20_000:
                    break
        run.stop()
        stats = await run.wait()
    assert rows == [(i, i % 97, round(i / 4, 2)) for i in range(20_000)]
    assert stats.statistics.errors == 0
    assert len(data) > 20 * 8192


@pytest.mark.anyio
async def test_an_unfinished_last_line_is_handed_on_once_its_sender_is_quiet() -> None:
    async with serving(lambda cb: af.udp_server(0, on_listening=cb)) as (run, address):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"one\ntw", address)
            s.sendto(b"o\nthree", address)  # "three" waits for more, then is a line
        got = b""
        with anyio.fail_after(5):
            async for block in run:
                got += bytes(block)
                if got.endswith(b"three\n"):
                    break
        run.stop()
    assert got == b"one\ntwo\nthree\n"


MANY = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new source port each
        s.sendto(b"%d\\n" % i, ("127.0.0.1", port))
"""


@pytest.mark.anyio
async def test_many_senders_of_one_datagram_each_lose_nothing_uncounted() -> None:
    """Each datagram from a new source port: bursts from many senders become one message,
    and what arrived plus what the kernel dropped is every datagram sent."""
    n = 5000
    lines: list[bytes] = []
    blocks = 0
    async with serving(lambda cb: af.udp_server(0, on_listening=cb)) as (run, (_, port)):
        assert (
            await anyio.to_thread.run_sync(_run, sys.executable, "-c", MANY, str(port), str(n)) == 0
        )
        source = run.statistics().stages[0].name
        with anyio.fail_after(10):
            async for block in run:
                blocks += 1
                lines.extend(bytes(block).splitlines())
                if len(lines) + run.statistics().stage(source).dropped >= n:
                    break
        run.stop()
        result = await run.wait()
    dropped = result.statistics.stage(source).dropped
    assert len(lines) + dropped == n
    assert len(set(lines)) == len(lines)
    assert blocks < n // 2  # senders of one wakeup were coalesced


@pytest.mark.anyio
async def test_kernel_drops_are_counted_and_shown() -> None:
    """A flood into a held flow with a small receive buffer: the kernel drops datagrams,
    and received + dropped == sent, in statistics, format() and the Prometheus metrics."""
    if not sys.platform.startswith("linux"):
        pytest.skip("SO_RXQ_OVFL is Linux only")
    n = 3000
    held = anyio.Event()
    lines: list[bytes] = []

    async def slow(block: Any) -> None:
        await held.wait()
        lines.extend(bytes(block).splitlines())

    def make(cb: Any) -> Any:
        return af.udp_server(0, receive_buffer=32 * 1024, on_listening=cb) | af.for_each(slow)

    async with serving(make) as (run, address):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(n):
                s.sendto(b"%05d %s\n" % (i, b"x" * 200), address)
        held.set()
        source = run.statistics().stages[0].name
        lasts = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, anyio.fail_after(10):
            while b"last" not in lines:  # it carries the drop count; it may be dropped too
                s.sendto(b"last\n", address)
                lasts += 1
                await anyio.sleep(0.05)
        stats = run.statistics()
        run.stop()
        await run.wait()
    dropped = stats.stage(source).dropped
    assert dropped > 0
    assert len(lines) + dropped == n + lasts
    assert stats.dropped == dropped
    assert f"{dropped:,} dropped" in stats.format()
    assert stats.errors == 0  # drops are not errors


def test_the_prometheus_collector_exports_dropped() -> None:
    pytest.importorskip("prometheus_client")
    from aflow.monitor import _Collector
    from aflow.stats import RunCounters, StageCounters

    counters = RunCounters()
    counters.stages.append(StageCounters("0:udp_server(127.0.0.1:0)", dropped=7))

    class FakeRun:
        def statistics(self) -> Any:
            return counters.freeze()

    families = {f.name: f for f in _Collector(FakeRun()).collect()}  # type: ignore[arg-type]
    [sample] = families["aflow_stage_dropped"].samples
    assert sample.value == 7.0


class _Provenances(Operator, Processor):
    """Records the provenance of every batch passing by."""

    name = "provenances"

    def __init__(self) -> None:
        self.seen: list[Provenance | None] = []

    def start(self) -> Processor:
        return self

    def process(self, msg: Message) -> list[Message]:
        if isinstance(msg, Batch):
            self.seen.append(msg.provenance)
        return [msg]


@pytest.mark.anyio
@pytest.mark.parametrize("datagrams", ["stream", "messages"])
async def test_a_senders_lines_merged_with_many_others_still_count(datagrams: str) -> None:
    """A sender's line merged into a burst of 10 senders (numbered under the server) still
    counts: the sender's next line is its line 3."""
    seen = _Provenances()
    make = lambda cb: af.udp_server(0, datagrams=datagrams, on_listening=cb) | af.Stage(seen)  # noqa: E731
    others = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(9)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((HOST, 0))
        me = _url(sender.getsockname())
        try:
            async with serving(make) as (run, address):
                lines: list[bytes] = []

                async def until(count: int) -> None:
                    with anyio.fail_after(5):
                        async for block in run:
                            lines.extend(bytes(block).splitlines())
                            if len(lines) >= count:
                                return

                sender.sendto(b"p 1\n", address)
                await until(1)
                # no await between these sends: the server wakes to all ten at once
                sender.sendto(b"p 2\n", address)
                for other in others:
                    other.sendto(b"o 1\n", address)
                await until(11)
                sender.sendto(b"p 3\n", address)
                await until(12)
                run.stop()
                await run.wait()
        finally:
            for other in others:
                other.close()
    first, merged, third = seen.seen
    assert first is not None
    assert merged is not None
    assert third is not None
    assert (first.source, first.start, first.stop) == (me, 1, 2)
    assert merged.source == f"udp://{HOST}:{address[1]}"
    assert (merged.start, merged.stop) == (1, 11)
    assert (third.source, third.start, third.stop) == (me, 3, 4)
    assert lines[-1] == b"p 3"


def _url(address: Address) -> str:
    return f"udp://{address[0]}:{address[1]}"

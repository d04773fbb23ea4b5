"""Hostile-client benchmark for ``tcp_server`` (issue 10): cutting an endless line, and
memory while a fast sender outpaces a held flow.

1. Endless line: a client sends ``x`` without a newline until the server cuts it at
   ``max_line`` (16, 64, 128, 256 MiB). Prints the time to cut it and the longest stall
   of the event loop meanwhile (a ticker task measures its own lateness). Before the fix
   the unfinished line was copied whole at every read: 64 MiB took 20 s, 256 MiB was not
   cut in 170 s.
2. Read-ahead: a subprocess sends 200 MB as fast as it can into ``tcp_server | for_each``
   whose sink is held; prints how many bytes the server read (must stay within
   ``max_bytes_in_flight`` plus the per-connection constant, 2 MiB) and whether the
   sender is blocked.

    python benchmarks/bench_hostile.py
    python benchmarks/bench_hostile.py --backend trio
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from typing import Any

import anyio

import aflow as af

MiB = 1 << 20


async def _ticker(worst: list[float]) -> None:
    while True:
        t0 = time.perf_counter()
        await anyio.sleep(0.005)
        worst[0] = max(worst[0], time.perf_counter() - t0 - 0.005)


def _endless(port: int, done: list[bool]) -> None:
    chunk = b"x" * MiB
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            while not done[0]:
                s.sendall(chunk)
        except OSError:
            pass


class _Port:
    """Receives the bound address (``on_listening``); ``await port.wait()`` gives the port."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.port = 0

    def __call__(self, address: Any) -> None:
        self.port = address[1]
        self.event.set()

    async def wait(self) -> int:
        await self.event.wait()
        return self.port


def _start(*cmd: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd)


async def cut_endless_line(limit_mib: int) -> tuple[float, float]:
    ports = _Port()
    closed = anyio.Event()

    def seen(event: af.ConnectionEvent) -> None:
        if event.kind == "closed":
            closed.set()

    flow = (
        af.tcp_server(0, max_line=limit_mib * MiB, on_listening=ports, on_connection=seen)
        | af.discard()
    )
    worst = [0.0]
    done = [False]
    async with flow.open() as run, anyio.create_task_group() as tg:
        port = await ports.wait()
        tg.start_soon(_ticker, worst)
        t0 = time.perf_counter()
        tg.start_soon(anyio.to_thread.run_sync, _endless, port, done)
        await closed.wait()
        seconds = time.perf_counter() - t0
        done[0] = True
        tg.cancel_scope.cancel()
        run.stop()
    return seconds, worst[0]


SENDER = """
import socket, sys
chunk = b"12345678,1234567,3.25\\n" * 10000
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    for _ in range(int(200e6) // len(chunk)):
        s.sendall(chunk)
"""


async def read_ahead(budget: int) -> tuple[int, bool]:
    ports = _Port()
    held = anyio.Event()

    async def slow(block: Any) -> None:
        await held.wait()

    flow = af.tcp_server(0, on_listening=ports) | af.for_each(slow)
    async with flow.open(max_bytes_in_flight=budget) as run:
        proc = _start(sys.executable, "-c", SENDER, str(await ports.wait()))
        await anyio.sleep(2)
        read = run.statistics().stages[0].bytes_out
        blocked = proc.poll() is None
        proc.kill()
        proc.wait()
        run.stop()
        held.set()
    return read, blocked


async def main(limits: list[int]) -> None:
    print(f"{'max_line':>10} {'seconds to cut':>15} {'worst loop stall ms':>20}")
    for limit in limits:
        seconds, stall = await cut_endless_line(limit)
        print(f"{limit:>7} MiB {seconds:>15.2f} {stall * 1e3:>20.1f}")
    budget = 8 * MiB
    read, blocked = await read_ahead(budget)
    print(
        f"\nheld flow, 200 MB sender: server read {read / MiB:.1f} MiB "
        f"(budget {budget / MiB:.0f} MiB + 2 MiB per connection); sender blocked: {blocked}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--limits", type=int, nargs="*", default=[16, 64, 128, 256])
    args = parser.parse_args()
    anyio.run(main, args.limits, backend=args.backend)

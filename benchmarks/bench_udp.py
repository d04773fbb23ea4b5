"""UDP ingest benchmark: a sender paced at a fixed rate of datagrams, for one second.

UDP has no backpressure: what a server does not read in time, the kernel drops. So the
figure that matters is the share of datagrams that arrive, at each rate:

- aflow: ``udp_server | decode_csv | for_each`` (each datagram: 1 or 20 CSV lines, decoded
  into a structured array and counted);
- bare asyncio DatagramProtocol: ``datagram_received`` only counts (no decoding): the
  ceiling of a per-datagram Python server.

    python benchmarks/bench_udp.py           # 10k, 50k and 100k datagrams/s
    python benchmarks/bench_udp.py --quick   # 10k datagrams/s only
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import anyio
import numpy as np

import aflow as af

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])
SENDER = """
import socket, sys, time
port, n, per, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
msg = b"".join(b"%d,%d,1.5\\n" % (i, i % 100) for i in range(per))
start = time.perf_counter()
for i in range(n):
    s.sendto(msg, ("127.0.0.1", port))
    if i % 20 == 0:  # paced in bursts of 20
        while time.perf_counter() - start < i / rate:
            time.sleep(0.0002)
"""
SETTLE = 0.3  # seconds after the sender ends for the last datagrams to be read


async def run_aflow(rate: int, per: int) -> int:
    ports = anyio.create_memory_object_stream[tuple[str, int]](1)
    rows = 0

    def count(batch: np.ndarray) -> None:
        nonlocal rows
        rows += len(batch)

    flow = (
        af.udp_server(0, on_listening=ports[0].send_nowait)
        | af.decode_csv(READING)
        | af.for_each(count)
    )
    async with flow.open() as run:
        _, port = await ports[1].receive()
        await anyio.run_process(
            [sys.executable, "-c", SENDER, str(port), str(rate), str(per), str(rate)]
        )
        await anyio.sleep(SETTLE)
        run.stop()
    ports[0].close()
    ports[1].close()
    return rows // per


class Counting(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.datagrams += 1


async def run_protocol(rate: int, per: int) -> int:
    loop = asyncio.get_running_loop()
    protocol = Counting()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: protocol, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, str(port), str(rate), str(per), str(rate)
    )
    await sender.wait()
    await asyncio.sleep(SETTLE)
    transport.close()
    return protocol.datagrams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rates = [10_000] if args.quick else [10_000, 50_000, 100_000]
    print("datagrams sent in 1 s at each rate; share that arrived (best of 3)")
    print(
        f"{'rate/s':>8} {'lines each':>10} {'aflow (+ decode_csv)':>21} {'bare Protocol (count)':>22}"
    )
    for rate in rates:
        for per in (1, 20):
            got = max(anyio.run(run_aflow, rate, per) for _ in range(3))
            base = max(asyncio.run(run_protocol(rate, per)) for _ in range(3))
            print(f"{rate:>8,} {per:>10} {got / rate:>20.0%} {base / rate:>21.0%}")


if __name__ == "__main__":
    main()

"""Load generator for sensor_service.py: simulated devices send ``ts_ms,sensor,value``
lines, half over UDP (a few readings per datagram), half over TCP (one connection each).

    python examples/sensor_loadgen.py --udp 9901 --tcp 9902 --devices 50 --seconds 5

Prints how many readings it sent. Only 127.0.0.1 is ever addressed.
"""

from __future__ import annotations

import argparse
import random
import socket
import time

import anyio

HOST = "127.0.0.1"


async def device(sensor: int, args: argparse.Namespace, sent: list[int]) -> None:
    rng = random.Random(sensor)
    over_tcp = sensor % 2 == 1
    started = time.time()
    ts = int(started * 1000)
    stream = await anyio.connect_tcp(HOST, args.tcp) if over_tcp else None
    udp = None if over_tcp else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        while time.time() - started < args.seconds:
            lines = []
            for _ in range(4):
                ts += 25
                lines.append(f"{ts},{sensor},{20 + rng.gauss(0, 2):.3f}\n")
            data = "".join(lines).encode()
            if stream is not None:
                await stream.send(data)
            else:
                assert udp is not None
                udp.sendto(data, (HOST, args.udp))
            sent[0] += len(lines)
            await anyio.sleep(0.1)
    finally:
        if stream is not None:
            await stream.aclose()
        if udp is not None:
            udp.close()


async def main_async(args: argparse.Namespace) -> None:
    sent = [0]
    async with anyio.create_task_group() as tg:
        for sensor in range(args.devices):
            tg.start_soon(device, sensor, args, sent)
    print(f"sent {sent[0]:,} readings from {args.devices} devices", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--udp", type=int, default=9901)
    parser.add_argument("--tcp", type=int, default=9902)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()

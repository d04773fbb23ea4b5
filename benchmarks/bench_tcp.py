"""TCP ingest benchmark: 4 concurrent clients each send 1,000,000 CSV lines.

Every implementation serves the same clients (real subprocesses, each sending a
pre-generated ~20 MB payload as fast as the server takes it) and stops when all lines are
in:

- aflow: ``tcp_server | decode_csv | reduce`` (per-sensor count and sum, vectorized);
- bare asyncio Protocol: ``data_received`` only counts newlines: the ceiling for any
  server that looks at every byte;
- per-element asyncio: ``asyncio.start_server``, ``readline`` per line, parse, aggregate in
  a dict (on a tenth of the lines, marked ``scaled``).

Prints lines/s, the ratio to the bare Protocol (target for aflow: >= 0.7) and checks that
aflow's per-sensor counts and sums are right.

    python benchmarks/bench_tcp.py           # 4 x 1,000,000 lines
    python benchmarks/bench_tcp.py --quick   # 4 x 100,000 lines
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import numpy as np

import aflow as af

CLIENTS = 4
SENSORS = 1000
READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])
CLIENT = (
    "import socket, sys; data = open(sys.argv[1], 'rb').read(); "
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[2]))); "
    "s.sendall(data); s.close()"
)


def payload(folder: Path, lines: int) -> tuple[Path, np.ndarray, np.ndarray]:
    path = folder / f"tcp-{lines}.csv"
    rng = np.random.default_rng(3)
    sensor = rng.integers(0, SENSORS, lines)
    value = rng.integers(0, 1000, lines)  # integers: sums are exact
    if not path.exists():
        text = np.char.add(
            np.char.add(np.arange(lines).astype("U12"), ","),
            np.char.add(np.char.add(sensor.astype("U6"), ","), value.astype("U6")),
        )
        path.write_text("\n".join(text.tolist()) + "\n")
    return path, sensor, value


def start_clients(path: Path, port: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", CLIENT, str(path), str(port)])
        for _ in range(CLIENTS)
    ]


async def run_aflow(path: Path, lines: int) -> tuple[float, np.ndarray, np.ndarray]:
    total = CLIENTS * lines
    ports = anyio.create_memory_object_stream[tuple[str, int]](1)
    count = np.zeros(SENSORS, np.int64)
    sums = np.zeros(SENSORS)
    seen = 0
    done = anyio.Event()

    def add(batch: np.ndarray) -> None:
        nonlocal seen
        count[:] += np.bincount(batch["sensor"], minlength=SENSORS)
        sums[:] += np.bincount(batch["sensor"], weights=batch["value"], minlength=SENSORS)
        seen += len(batch)
        if seen >= total:
            done.set()

    flow = (
        af.tcp_server(0, on_listening=ports[0].send_nowait, read_size=1 << 20)
        | af.decode_csv(READING)
        | af.for_each(add)
    )
    async with flow.open() as run:
        _, port = await ports[1].receive()
        started = time.perf_counter()
        clients = start_clients(path, port)
        await done.wait()
        seconds = time.perf_counter() - started
        run.stop()
    for c in clients:
        c.wait()
    ports[0].close()
    ports[1].close()
    return seconds, count, sums


class CountingProtocol(asyncio.Protocol):
    def __init__(self, state: dict[str, object]) -> None:
        self.state = state

    def data_received(self, data: bytes) -> None:
        n = self.state["lines"] + data.count(b"\n")  # type: ignore[operator]
        self.state["lines"] = n
        if n >= self.state["total"]:  # type: ignore[operator]
            self.state["done"].set()  # type: ignore[attr-defined]


async def run_protocol(path: Path, lines: int) -> float:
    state: dict[str, object] = {"lines": 0, "total": CLIENTS * lines, "done": asyncio.Event()}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: CountingProtocol(state), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.perf_counter()
    clients = start_clients(path, port)
    await state["done"].wait()  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    server.close()
    for c in clients:
        c.wait()
    return seconds


async def run_per_element(path: Path, lines: int) -> float:
    total = CLIENTS * lines
    agg: dict[int, list[float]] = {}
    seen = 0
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        while line := await reader.readline():
            _, s, v = line.split(b",")
            a = agg.setdefault(int(s), [0, 0.0])
            a[0] += 1
            a[1] += float(v)
            seen += 1
            if seen >= total:
                done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.perf_counter()
    clients = start_clients(path, port)
    await done.wait()
    seconds = time.perf_counter() - started
    server.close()
    for c in clients:
        c.wait()
    return seconds


def best(reps: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(reps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    lines = 100_000 if args.quick else 1_000_000
    folder = Path(tempfile.gettempdir()) / "aflow-bench-tcp"
    folder.mkdir(exist_ok=True)
    path, sensor, value = payload(folder, lines)
    small, _, _ = payload(folder, lines // 10)
    expected_count = np.bincount(sensor, minlength=SENSORS) * CLIENTS
    expected_sum = np.bincount(sensor, weights=value, minlength=SENSORS) * CLIENTS

    results: dict[str, tuple[float, int]] = {}
    aflow_runs = [anyio.run(run_aflow, path, lines) for _ in range(args.reps)]
    seconds, count, sums = min(aflow_runs, key=lambda r: r[0])
    if not (np.array_equal(count, expected_count) and np.allclose(sums, expected_sum)):
        raise SystemExit("aflow: per-sensor counts or sums are wrong")
    results["aflow (tcp_server | decode_csv)"] = (seconds, CLIENTS * lines)
    results["bare asyncio Protocol (count \\n)"] = (
        best(args.reps, lambda: asyncio.run(run_protocol(path, lines))),
        CLIENTS * lines,
    )
    results["per-element asyncio (scaled)"] = (
        asyncio.run(run_per_element(small, lines // 10)),
        CLIENTS * (lines // 10),
    )
    limit = CLIENTS * lines / results["bare asyncio Protocol (count \\n)"][0]
    print(f"{CLIENTS} clients x {lines:,} CSV lines over TCP on 127.0.0.1; best of {args.reps}")
    print(f"{'implementation':<36} {'lines/s':>12} {'seconds':>8} {'vs Protocol':>11}")
    for name, (secs, n) in results.items():
        print(f"{name:<36} {n / secs:>12,.0f} {secs:>8.2f} {n / secs / limit:>10.2f}x")
    ratio = CLIENTS * lines / results["aflow (tcp_server | decode_csv)"][0] / limit
    print(
        f"  (c) aflow / bare Protocol = {ratio:.2f} (target >= 0.7): "
        f"{'PASS' if ratio >= 0.7 else 'FAIL'}; per-sensor counts and sums verified"
    )


if __name__ == "__main__":
    main()

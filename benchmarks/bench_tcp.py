"""TCP ingest benchmark: 4 concurrent clients each send 1,000,000 CSV lines.

Every implementation serves the same clients (real subprocesses, each sending a
pre-generated ~20 MB payload as fast as the server takes it) and stops when all lines are
in. Two jobs:

Receive and frame (count the lines):

- bare asyncio Protocol: ``data_received`` only counts newlines: the ceiling for any
  server that looks at every byte;
- aflow: ``tcp_server`` (per-connection tasks, line framing with provenance, bounded
  buffers) ``| for_each`` counting the newlines of each block: the same job.

Receive, decode and aggregate (per-sensor count and sum):

- aflow: ``tcp_server | decode_csv | for_each`` (vectorized ``np.bincount`` per batch);
- receive all, then parse: a Protocol keeps every byte, then one ``pyarrow.csv`` parse
  (multi-threaded) and the same per-sensor count and sum per connection: the limit for
  this job, in time (not memory);
- per-element asyncio: ``asyncio.start_server``, ``readline`` per line, parse, aggregate in
  a dict (on a tenth of the lines, marked ``scaled``).

Prints lines/s, CPU seconds and peak RSS, and ratios (targets for aflow: >= 0.7 of the
bare Protocol on the same job; decoding, >= 0.8 of receive-all-then-parse's speed in at
most a third of its peak RSS), and checks the per-sensor counts and sums. Each run is a
process of its own (its own peak RSS; the clients are processes apart), runs
interleaved, best of ``--reps``.

    python benchmarks/bench_tcp.py           # 4 x 1,000,000 lines
    python benchmarks/bench_tcp.py --quick   # 4 x 100,000 lines
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from _runs import (
    arrow_numpy,
    interleaved,
    job_imports,
    load,
    measure,
    memory_verdict,
    peak_rss,
)

import aflow as af

CLIENTS = 4
SENSORS = 1000
READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])
CLIENT = (
    "import socket, sys; data = open(sys.argv[1], 'rb').read(); "
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[2]))); "
    "s.sendall(data); s.close()"
)


def payload(folder: Path, lines: int) -> tuple[Path, Path]:
    """The payload each client sends, and the per-sensor count and sum of the four
    (``.npz``: loaded by the runs that check them, so none holds the generated arrays)."""
    path = folder / f"tcp-{lines}.csv"
    expected = folder / f"tcp-{lines}-sums.npz"
    if not (path.exists() and expected.exists()):
        rng = np.random.default_rng(3)
        sensor = rng.integers(0, SENSORS, lines)
        value = rng.integers(0, 1000, lines)  # integers: sums are exact
        text = np.char.add(
            np.char.add(np.arange(lines).astype("U12"), ","),
            np.char.add(np.char.add(sensor.astype("U6"), ","), value.astype("U6")),
        )
        path.write_text("\n".join(text.tolist()) + "\n")
        np.savez(
            expected,
            count=np.bincount(sensor, minlength=SENSORS) * CLIENTS,
            sum=np.bincount(sensor, weights=value, minlength=SENSORS) * CLIENTS,
        )
    return path, expected


def start_clients(path: Path, port: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", CLIENT, str(path), str(port)])
        for _ in range(CLIENTS)
    ]


async def run_aflow(path: Path, lines: int, decode: bool) -> tuple[float, np.ndarray, np.ndarray]:
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

    def count_lines(block: np.ndarray) -> None:
        nonlocal seen
        seen += int(np.count_nonzero(block == 10))
        if seen >= total:
            done.set()

    server = af.tcp_server(0, on_listening=ports[0].send_nowait)
    flow = (
        server | af.decode_csv(READING) | af.for_each(add)
        if decode
        else server | af.for_each(count_lines)
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


class KeepingProtocol(asyncio.Protocol):
    """Keeps its connection's bytes; counts newlines to know when all lines are in."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.chunks: list[bytes] = []
        state["connections"].append(self)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.state["lines"] += data.count(b"\n")
        if self.state["lines"] >= self.state["total"]:
            self.state["done"].set()


async def run_receive_then_parse(path: Path, lines: int) -> tuple[float, np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    state: dict[str, Any] = {
        "connections": [],
        "lines": 0,
        "total": CLIENTS * lines,
        "done": asyncio.Event(),
    }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: KeepingProtocol(state), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.perf_counter()
    clients = start_clients(path, port)
    await state["done"].wait()
    read = pacsv.ReadOptions(column_names=list(READING.names or ()))
    convert = pacsv.ConvertOptions(
        column_types={"ts": pa.int64(), "sensor": pa.int32(), "value": pa.float32()}
    )
    count = np.zeros(SENSORS, np.int64)
    sums = np.zeros(SENSORS)
    for conn in state["connections"]:  # one parse per connection: lines never interleave
        table = pacsv.read_csv(pa.py_buffer(b"".join(conn.chunks)), read, convert_options=convert)
        sensor = arrow_numpy(table.column("sensor"), "i4")
        count += np.bincount(sensor, minlength=SENSORS)  # the same aggregate as aflow's
        sums += np.bincount(
            sensor, weights=arrow_numpy(table.column("value"), "f4"), minlength=SENSORS
        )
    seconds = time.perf_counter() - started
    server.close()
    for c in clients:
        c.wait()
    return seconds, count, sums


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


def jobs(lines: int) -> dict[str, Callable[[], float]]:
    """Each job, timed; the decoding ones check aflow's and the single shot's sums."""
    folder = Path(tempfile.gettempdir()) / "aflow-bench-tcp"
    folder.mkdir(exist_ok=True)
    path, expected = payload(folder, lines)
    small, _ = payload(folder, lines // 10)

    def checked(name: str, count: np.ndarray, sums: np.ndarray) -> None:
        with np.load(expected) as truth:
            right = np.array_equal(count, truth["count"]) and np.allclose(sums, truth["sum"])
        if not right:
            raise SystemExit(f"{name}: per-sensor counts or sums are wrong")

    def aflow_decode() -> float:
        seconds, count, sums = anyio.run(run_aflow, path, lines, True)
        checked("aflow", count, sums)
        return seconds

    def receive_then_parse() -> float:
        seconds, count, sums = asyncio.run(run_receive_then_parse(path, lines))
        checked("receive-then-parse", count, sums)
        return seconds

    return {
        PROTOCOL: lambda: asyncio.run(run_protocol(path, lines)),
        AFLOW_LINES: lambda: anyio.run(run_aflow, path, lines, False)[0],
        SINGLE: receive_then_parse,
        AFLOW_DECODE: aflow_decode,
        # a tenth of the lines, scaled to full size
        PER_ELEMENT: lambda: asyncio.run(run_per_element(small, lines // 10)) * 10,
    }


def child(name: str, lines: int) -> None:
    """One job in this process: its seconds, CPU seconds and peak RSS as a JSON line."""
    job_imports(name, lambda: af.codecs.CsvDecoder(READING))  # not timed

    job = jobs(lines)[name]
    cpu = time.process_time()
    seconds = job()
    cpu = time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rss": peak_rss(), "result": None}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--child")
    parser.add_argument("--lines", type=int)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.lines)
        return
    lines = 100_000 if args.quick else 1_000_000
    total = CLIENTS * lines
    jobs(lines)  # the payloads, written once
    names = [PROTOCOL, AFLOW_LINES, SINGLE, AFLOW_DECODE]
    started_load = load()
    # each job in its own process (its own peak RSS), interleaved: a noisy stretch of
    # the shared machine hits every job alike
    runs = interleaved(__file__, names, ["--lines", str(lines)], args.reps)
    runs[PER_ELEMENT] = [measure(__file__, PER_ELEMENT, ["--lines", str(lines)])]
    best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu"] for r in rs) for name, rs in runs.items()}
    rss = {name: max(r["rss"] for r in rs) for name, rs in runs.items()}

    print(
        f"{CLIENTS} clients x {lines:,} CSV lines over TCP on 127.0.0.1; best of {args.reps}, "
        f"each run its own process; {started_load} before, {load()} after"
    )
    print(
        f"{'implementation':<48} {'lines/s':>12} {'seconds':>8} {'vs Protocol':>11} "
        f"{'CPU s':>6} {'peak RSS':>8}"
    )
    for name, secs in best.items():
        print(
            f"{name:<48} {total / secs:>12,.0f} {secs:>8.2f} {best[PROTOCOL] / secs:>10.2f}x "
            f"{cpu[name]:>6.2f} {rss[name] / 1e6:>6.0f}MB"
        )
    ratio = best[PROTOCOL] / best[AFLOW_LINES]
    print(
        f"  (c) receive + frame: aflow / bare Protocol = {ratio:.2f} (target >= 0.7): "
        f"{'PASS' if ratio >= 0.7 else 'FAIL'}"
    )
    print(
        f"      with decode: aflow / bare Protocol = {best[PROTOCOL] / best[AFLOW_DECODE]:.2f}; "
        f"aflow / receive-all-then-parse = {best[SINGLE] / best[AFLOW_DECODE]:.2f}; "
        f"aflow / per-element = {best[PER_ELEMENT] / best[AFLOW_DECODE]:.1f}; "
        "counts and sums verified"
    )
    print(
        f"      medians: aflow / receive-all-then-parse = "
        f"{median[SINGLE] / median[AFLOW_DECODE]:.2f} (target >= 0.8)"
    )
    memory_verdict(rss[AFLOW_DECODE], rss[SINGLE], "receive all, then parse")


PROTOCOL = "bare asyncio Protocol (count \\n)"
AFLOW_LINES = "aflow tcp_server (line blocks, count \\n)"
SINGLE = "receive all, then pyarrow parse + aggregate"
AFLOW_DECODE = "aflow tcp_server | decode_csv | aggregate"
PER_ELEMENT = "per-element asyncio, decode + aggregate (scaled)"


if __name__ == "__main__":
    main()

"""Peer comparison: five workloads through aflow, its peers and the single-shot limit.

Workloads (data generated once, seeded, into a temp folder; every value is a multiple of
0.25 so sums are exact whatever the order of addition):

1. ``csv``: sensor CSV lines ``ts,sensor,value`` in 4 files -> per-sensor count, sum, min,
   max over 1,000 sensors.
2. ``binary``: records (int64 ts, int32 sensor, float32 value) in 4 files -> the same.
3. ``logs``: nginx combined access log lines (with request time) -> count per status.
4. ``tcp``: 4 local client processes each send the same CSV payload to 127.0.0.1 -> the
   per-sensor aggregate; timed from the clients' start to the result.
5. ``slow-sink``: binary records read as fast as the disk gives them into a sink that
   takes 4 us per row (a slow device: it sleeps off its debt every 2 ms of work) -> count
   and sum. Reports the most rows ever read but not yet written ("held") and peak RSS.

Implementations:

- ``aflow``: its own sources, decoders and sinks (``read_csv``, ``read_records``,
  ``read_log``, ``tcp_server``, ``to_aggregate``, an async ``for_each``);
- ``aiostream``, ``streamz``, ``rx`` (reactivex): per element, as their docs show
  (``stream.iterate | pipe.map | pipe.action``; ``Stream().map().sink()`` with ``emit``;
  ``from_iterable().pipe(ops.map)`` then ``subscribe``); on a scaled input;
- ``asyncio.Queue``: hand-written, a reader task and a worker task joined by a queue of 4
  blocks, each block decoded in one call (the kernels of the limit);
- ``generators``: plain chained generators over the same blocks and kernels;
- ``numpy``: the single-shot program (whole input at once: ``pyarrow.csv.read_csv``,
  ``np.fromfile``, a vectorized log scan): the limit.

Each implementation runs in its own subprocess, so its peak RSS (VmHWM, not ru_maxrss,
which survives fork and exec) is its own; imports are not timed. Fast cases take the best
of ``--reps`` runs; the slow-sink case runs once (its time is the device's). Every result
is checked against the ground truth computed from the generated arrays (exit status 1 on
any difference). ``--quick`` uses a tenth of the data.

    benchmarks/peers/run.sh                 # makes .venv with the peers, runs the full set
    python benchmarks/peers/compare.py --quick --only csv,logs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SENSORS = 1000
FILES = 4
CLIENTS = 4
BLOCK = 1 << 20
READING = np.dtype([("ts", "<i8"), ("sensor", "<i4"), ("value", "<f4")])
RECORD = struct.Struct("<qif")
STATS = ("count", "sum", "min", "max")
DEVICE_ROWS_PER_S = 250_000
DEVICE_TICK = 0.002
STATUSES = np.array([200, 200, 200, 200, 200, 200, 200, 304, 301, 404, 404, 500, 502, 206])
PER_ELEMENT = ("aiostream", "streamz", "rx")
IMPLS = ("aflow", "aiostream", "streamz", "rx", "asyncio.Queue", "generators", "numpy")
CLIENT = (
    "import socket, sys; data = open(sys.argv[1], 'rb').read(); "
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[2]))); "
    "s.sendall(data); s.close()"
)


# -- data ------------------------------------------------------------------------------------
def readings(rows: int, seed: int) -> np.ndarray:
    """Seeded sensor readings; values are multiples of 0.25 (exact in float32 and sums)."""
    rng = np.random.default_rng(seed)
    out = np.empty(rows, READING)
    out["ts"] = np.arange(rows, dtype=np.int64) * 1000
    out["sensor"] = rng.integers(0, SENSORS, rows)
    out["value"] = np.round(rng.normal(20.0, 5.0, rows) * 4) / 4
    return out


def csv_text(rec: np.ndarray) -> str:
    ts = np.char.add(rec["ts"].astype("U20"), ",")
    sensor = np.char.add(rec["sensor"].astype("U6"), ",")
    lines = np.char.add(np.char.add(ts, sensor), np.char.mod("%.2f", rec["value"]))
    return "\n".join(lines.tolist()) + "\n"


def log_lines(rows: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    status = STATUSES[rng.integers(0, len(STATUSES), rows)]
    ip = rng.integers(1, 255, rows)
    item = rng.integers(0, 100_000, rows)
    size = rng.integers(0, 50_000, rows)
    ms = rng.integers(1, 900, rows)
    agents = ['"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"', '"curl/8.5.0"']
    lines = []
    for i in range(rows):
        sec = i // 100
        stamp = f"{10 + sec // 86400:02d}/Oct/2024:{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d} +0000"  # fmt: skip
        lines.append(
            f'10.0.{ip[i] % 8}.{ip[i]} - - [{stamp}] "GET /api/items/{item[i]}?page=2 HTTP/1.1" '
            f'{status[i]} {size[i]} "https://example.com/" {agents[i & 1]} 0.{ms[i]:03d}'
        )
    return lines, status


@dataclass
class Data:
    """Where a workload's data is and what the right answer is."""

    paths: list[str]
    rows: int
    truth: Any


def split_files(folder: Path, name: str, parts: list[Any], write: Callable[[Path, Any], None]) -> list[str]:  # fmt: skip
    paths = [folder / f"{name}-{k}" for k in range(len(parts))]
    if not (folder / "ready").exists():
        for p, part in zip(paths, parts, strict=True):
            write(p, part)
        (folder / "ready").touch()
    return [str(p) for p in paths]


def sensor_truth(rec: np.ndarray) -> dict[str, list[float]]:
    return Agg().add(rec["sensor"], rec["value"]).summary()


def make_data(root: Path, workload: str, rows: int) -> Data:
    folder = root / f"{workload}-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    if workload == "logs":
        lines, status = log_lines(rows, 5)
        parts = [lines[k::FILES] for k in range(FILES)]
        paths = split_files(folder, "access.log", parts, lambda p, ls: p.write_text("\n".join(ls) + "\n"))  # fmt: skip
        return Data(paths, rows, status_counts(status))
    rec = readings(rows, {"csv": 1, "binary": 2, "tcp": 3, "slow-sink": 4}[workload])
    if workload == "csv":
        parts = np.array_split(rec, FILES)
        paths = split_files(folder, "sensors.csv", parts, lambda p, r: p.write_text(csv_text(r)))
    elif workload == "tcp":  # one payload, sent by each of CLIENTS clients
        paths = split_files(folder, "payload.csv", [rec], lambda p, r: p.write_text(csv_text(r)))
        rec = np.concatenate([rec] * CLIENTS)
    elif workload == "binary":
        parts = np.array_split(rec, FILES)
        paths = split_files(folder, "sensors.bin", parts, lambda p, r: r.tofile(p))
    else:
        paths = split_files(folder, "sensors.bin", [rec], lambda p, r: r.tofile(p))
        return Data(paths, rows, [rows, float(rec["value"].astype(np.float64).sum())])
    return Data(paths, len(rec), sensor_truth(rec))


# -- shared aggregates and kernels -----------------------------------------------------------
class Agg:
    """Per-sensor count, sum, min, max, vectorized (one update per block)."""

    def __init__(self) -> None:
        self.count = np.zeros(SENSORS, np.int64)
        self.total = np.zeros(SENSORS)
        self.low = np.full(SENSORS, np.inf)
        self.high = np.full(SENSORS, -np.inf)

    def add(self, sensor: np.ndarray, value: np.ndarray) -> Agg:
        value = value.astype(np.float64, copy=False)
        self.count += np.bincount(sensor, minlength=SENSORS)
        self.total += np.bincount(sensor, weights=value, minlength=SENSORS)
        np.minimum.at(self.low, sensor, value)
        np.maximum.at(self.high, sensor, value)
        return self

    def add_records(self, rec: np.ndarray) -> Agg:
        return self.add(rec["sensor"], rec["value"])

    def summary(self) -> dict[str, list[float]]:
        return {
            "count": self.count.tolist(),
            "sum": self.total.tolist(),
            "min": self.low.tolist(),
            "max": self.high.tolist(),
        }


class ElementAgg:
    """The same aggregate, one element at a time: what a per-element pipeline does."""

    def __init__(self) -> None:
        self.count = [0] * SENSORS
        self.total = [0.0] * SENSORS
        self.low = [float("inf")] * SENSORS
        self.high = [float("-inf")] * SENSORS

    def add(self, item: tuple[int, float]) -> None:
        s, v = item
        self.count[s] += 1
        self.total[s] += v
        if v < self.low[s]:
            self.low[s] = v
        if v > self.high[s]:
            self.high[s] = v

    def summary(self) -> dict[str, list[float]]:
        return {"count": self.count, "sum": self.total, "min": self.low, "max": self.high}


def from_aggregate(table: np.ndarray) -> dict[str, list[float]]:
    """aflow's ``to_aggregate`` result (one row per sensor seen) as dense per-sensor lists."""
    agg = Agg()
    keys = table["sensor"]
    agg.count[keys] = table["count"]
    agg.total[keys] = table["sum"]
    agg.low[keys] = table["min"]
    agg.high[keys] = table["max"]
    return agg.summary()


def status_counts(status: np.ndarray) -> dict[str, int]:
    codes, counts = np.unique(status, return_counts=True)
    return {str(c): int(n) for c, n in zip(codes.tolist(), counts.tolist(), strict=True)}


def parse_csv_line(line: bytes | str) -> tuple[int, float]:
    _, s, v = line.split(b"," if isinstance(line, bytes) else ",")
    return int(s), float(v)


def parse_record(rec: tuple[int, int, float]) -> tuple[int, float]:
    return rec[1], rec[2]


def parse_status(line: bytes) -> int:
    """Status of a combined-format line: the field after the quoted request."""
    return int(line.split(b'"', 2)[2].split(None, 1)[0])


def decode_csv_block(blob: bytes) -> np.ndarray:
    """One block of whole CSV lines -> records, in one pyarrow call."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(
        pa.py_buffer(blob),
        read_options=pacsv.ReadOptions(column_names=["ts", "sensor", "value"]),
        convert_options=pacsv.ConvertOptions(
            column_types={"ts": pa.int64(), "sensor": pa.int32(), "value": pa.float32()}
        ),
    )
    out = np.empty(table.num_rows, READING)
    for name in ("ts", "sensor", "value"):
        out[name] = table.column(name).to_numpy()
    return out


def status_kernel(buf: np.ndarray) -> np.ndarray:
    """Statuses of a block of whole combined-format lines (``uint8``), vectorized: the
    3 digits two bytes after each line's second quote."""
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    quotes = np.flatnonzero(buf == 34)
    close = quotes[np.searchsorted(quotes, starts) + 1]
    d = buf[close[:, None] + np.array([2, 3, 4])].astype(np.int64) - 48
    status: np.ndarray = d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]
    return status


class StatusCounter:
    def __init__(self) -> None:
        self.counts = np.zeros(600, np.int64)

    def add(self, status: np.ndarray) -> None:
        self.counts += np.bincount(status, minlength=600)

    def summary(self) -> dict[str, int]:
        return {str(c): int(self.counts[c]) for c in np.flatnonzero(self.counts)}


def element_status_summary(counts: dict[int, int]) -> dict[str, int]:
    return {str(c): n for c, n in sorted(counts.items())}


# -- block readers for the hand-written implementations ----------------------------------
def line_blocks(paths: Iterable[str]) -> Iterator[bytes]:
    """Blocks of whole lines, about ``BLOCK`` bytes each, file after file."""
    for path in paths:
        with open(path, "rb") as f:
            rest = b""
            while chunk := f.read(BLOCK):
                chunk = rest + chunk
                cut = chunk.rfind(b"\n") + 1
                rest = chunk[cut:]
                if cut:
                    yield chunk[:cut]
            if rest:
                yield rest + b"\n"


def record_blocks(paths: Iterable[str]) -> Iterator[np.ndarray]:
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK // READING.itemsize * READING.itemsize):
                yield np.frombuffer(chunk, READING)


def lines_of(paths: Iterable[str]) -> Iterator[bytes]:
    for block in line_blocks(paths):
        yield from block.splitlines()


def records_of(paths: Iterable[str]) -> Iterator[tuple[int, int, float]]:
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK // RECORD.size * RECORD.size):
                yield from RECORD.iter_unpack(chunk)


async def async_lines(paths: Iterable[str]) -> Any:
    """Lines of files read with aiofiles in 1 MiB reads (what an async source does)."""
    import aiofiles

    for path in paths:
        async with aiofiles.open(path, "rb") as f:
            rest = b""
            while chunk := await f.read(BLOCK):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line
            if rest:
                yield rest


async def async_records(paths: Iterable[str]) -> Any:
    import aiofiles

    for path in paths:
        async with aiofiles.open(path, "rb") as f:
            while chunk := await f.read(BLOCK // RECORD.size * RECORD.size):
                for rec in RECORD.iter_unpack(chunk):
                    yield rec


async def queue_blocks(blocks: Iterator[Any], work: Callable[[Any], None], size: int = 4) -> None:
    """Reader task (blocking reads in a thread) -> bounded queue -> worker task."""
    queue: asyncio.Queue[Any] = asyncio.Queue(size)
    end = object()

    async def reader() -> None:
        while (block := await asyncio.to_thread(next, blocks, end)) is not end:
            await queue.put(block)
        await queue.put(end)

    async def worker() -> None:
        while (block := await queue.get()) is not end:
            work(block)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(reader())
        tg.create_task(worker())


# -- workloads 1-3: files --------------------------------------------------------------------
def file_impl(workload: str, impl: str, paths: list[str]) -> Any:
    return FILE_IMPLS[workload][impl](paths)


def aflow_aggregate() -> Any:
    import aflow as af

    return af.to_aggregate(key="sensor", value="value", stats=STATS)


def csv_aflow(paths: list[str]) -> Any:
    import aflow as af

    return from_aggregate(af.run(af.read_csv(paths, READING) | aflow_aggregate()).value)


def bin_aflow(paths: list[str]) -> Any:
    import aflow as af

    return from_aggregate(af.run(af.read_records(paths, READING) | aflow_aggregate()).value)


def logs_aflow(paths: list[str]) -> Any:
    import aflow as af

    flow = af.read_log(paths, columns={"status": "int"}) | af.to_aggregate(key="status", value=None)
    table = af.run(flow).value
    return {str(k): int(n) for k, n in zip(table["status"].tolist(), table["count"].tolist(), strict=True)}  # fmt: skip


def logs_aflow_kernel(paths: list[str]) -> Any:
    import aflow as af

    flow = (
        af.read_blocks(paths)
        | af.map_batches(status_kernel)
        | af.to_aggregate(key=None, value=None)
    )
    table = af.run(flow).value
    return {str(k): int(n) for k, n in zip(table["key"].tolist(), table["count"].tolist(), strict=True)}  # fmt: skip


def element_source(workload: str, paths: list[str]) -> tuple[Callable[[], Iterator[Any]], Callable[[Any], Any]]:  # fmt: skip
    """(a generator function of raw elements, the per-element parse) for a workload."""
    if workload == "binary":
        return lambda: records_of(paths), parse_record
    if workload == "logs":
        return lambda: lines_of(paths), parse_status
    return lambda: lines_of(paths), parse_csv_line


def async_source(workload: str, paths: list[str]) -> Callable[[], Any]:
    return (lambda: async_records(paths)) if workload == "binary" else (lambda: async_lines(paths))


def element_sink(workload: str) -> tuple[Callable[[Any], None], Callable[[], Any]]:
    """(per-element update, summary) for a workload's aggregate."""
    if workload == "logs":
        counts: dict[int, int] = {}

        def count(status: int) -> None:
            counts[status] = counts.get(status, 0) + 1

        return count, lambda: element_status_summary(counts)
    agg = ElementAgg()
    return agg.add, agg.summary


def with_aiostream(workload: str, paths: list[str]) -> Any:
    from aiostream import pipe, stream

    _, parse = element_source(workload, paths)
    update, summary = element_sink(workload)
    xs = stream.iterate(async_source(workload, paths)()) | pipe.map(parse) | pipe.action(update)

    async def main() -> None:
        await xs  # runs the stream to its end

    asyncio.run(main())
    return summary()


def with_streamz(workload: str, paths: list[str]) -> Any:
    from streamz import Stream

    gen, parse = element_source(workload, paths)
    update, summary = element_sink(workload)
    source = Stream()
    source.map(parse).sink(update)
    for item in gen():
        source.emit(item)
    return summary()


def with_rx(workload: str, paths: list[str]) -> Any:
    import reactivex as rx
    from reactivex import operators as ops

    gen, parse = element_source(workload, paths)
    update, summary = element_sink(workload)
    rx.from_iterable(gen()).pipe(ops.map(parse)).subscribe(update)
    return summary()


def block_work(workload: str) -> tuple[Callable[[Any], None], Callable[[], Any]]:
    """(what to do with one block, summary) for the hand-written batched pipelines."""
    if workload == "logs":
        counter = StatusCounter()
        return lambda b: counter.add(status_kernel(np.frombuffer(b, np.uint8))), counter.summary
    agg = Agg()
    if workload == "binary":
        return agg.add_records, agg.summary
    return lambda b: agg.add_records(decode_csv_block(b)), agg.summary


def blocks_for(workload: str, paths: list[str]) -> Iterator[Any]:
    return record_blocks(paths) if workload == "binary" else line_blocks(paths)


def with_queue(workload: str, paths: list[str]) -> Any:
    work, summary = block_work(workload)
    asyncio.run(queue_blocks(blocks_for(workload, paths), work))
    return summary()


def with_generators(workload: str, paths: list[str]) -> Any:
    work, summary = block_work(workload)
    for block in blocks_for(workload, paths):
        work(block)
    return summary()


def csv_numpy(paths: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    opts = pacsv.ReadOptions(column_names=["ts", "sensor", "value"])
    conv = pacsv.ConvertOptions(
        column_types={"ts": pa.int64(), "sensor": pa.int32(), "value": pa.float32()}
    )
    table = pa.concat_tables(
        [pacsv.read_csv(p, read_options=opts, convert_options=conv) for p in paths]
    )
    sensor, value = table.column("sensor").to_numpy(), table.column("value").to_numpy()
    return Agg().add(sensor, value).summary()


def bin_numpy(paths: list[str]) -> Any:
    return Agg().add_records(np.concatenate([np.fromfile(p, READING) for p in paths])).summary()


def logs_numpy(paths: list[str]) -> Any:
    counter = StatusCounter()
    counter.add(status_kernel(np.concatenate([np.fromfile(p, np.uint8) for p in paths])))
    return counter.summary()


def per_workload(workload: str) -> dict[str, Callable[[list[str]], Any]]:
    return {
        "aiostream": lambda p: with_aiostream(workload, p),
        "streamz": lambda p: with_streamz(workload, p),
        "rx": lambda p: with_rx(workload, p),
        "asyncio.Queue": lambda p: with_queue(workload, p),
        "generators": lambda p: with_generators(workload, p),
    }


FILE_IMPLS: dict[str, dict[str, Callable[[list[str]], Any]]] = {
    "csv": {"aflow": csv_aflow, **per_workload("csv"), "numpy": csv_numpy},
    "binary": {"aflow": bin_aflow, **per_workload("binary"), "numpy": bin_numpy},
    "logs": {
        "aflow": logs_aflow,
        "aflow + NumPy kernel": logs_aflow_kernel,
        **per_workload("logs"),
        "numpy": logs_numpy,
    },
}


# -- workload 4: TCP ingest ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_clients(path: str, port: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", CLIENT, path, str(port)]) for _ in range(CLIENTS)
    ]


@dataclass
class Ingest:
    """Counts lines in, and tells when all of them arrived (from any thread: streamz runs
    its TCP server on an event loop thread of its own)."""

    total: int
    seen: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def add(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.total:
            self.loop.call_soon_threadsafe(self.done.set)


async def timed_ingest(path: str, port: int, ingest: Ingest) -> float:
    started = time.perf_counter()
    clients = start_clients(path, port)
    await asyncio.wait_for(ingest.done.wait(), 300)
    seconds = time.perf_counter() - started
    for c in clients:
        await asyncio.to_thread(c.wait)
    return seconds


async def tcp_aflow(path: str, total: int) -> tuple[float, Any]:
    import aflow as af

    ingest = Ingest(total)
    ports: list[tuple[str, int]] = []
    listening = asyncio.Event()

    def on_listening(address: tuple[str, int]) -> None:
        ports.append(address)
        listening.set()

    def seen(batch: np.ndarray) -> np.ndarray:
        ingest.add(len(batch))
        return batch

    flow = (
        af.tcp_server(0, on_listening=on_listening, read_size=BLOCK)
        | af.decode_csv(READING)
        | af.map_batches(seen)
        | aflow_aggregate()
    )
    async with flow.open() as run:
        await listening.wait()
        seconds = await timed_ingest(path, ports[0][1], ingest)
        run.stop()
        table = await run.wait()
    return seconds, from_aggregate(table.value)


async def tcp_numpy(path: str, total: int) -> tuple[float, Any]:
    """The limit: take every byte (a bare Protocol), then decode it all in one call."""
    connections: list[list[bytes]] = []
    closed = Ingest(CLIENTS)

    class Collect(asyncio.Protocol):
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            connections.append(self.parts)

        def data_received(self, data: bytes) -> None:
            self.parts.append(data)

        def connection_lost(self, exc: Exception | None) -> None:
            closed.add(1)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Collect, "127.0.0.1", 0)
    started = time.perf_counter()
    clients = start_clients(path, server.sockets[0].getsockname()[1])
    await closed.done.wait()
    result = Agg().add_records(decode_csv_block(b"".join(map(b"".join, connections)))).summary()
    seconds = time.perf_counter() - started
    server.close()
    for c in clients:
        c.wait()
    return seconds, result


async def tcp_queue(path: str, total: int) -> tuple[float, Any]:
    ingest, agg = Ingest(total), Agg()
    queue: asyncio.Queue[bytes] = asyncio.Queue(4)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rest = b""
        while chunk := await reader.read(BLOCK):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            if cut:
                await queue.put(chunk[:cut])
        writer.close()

    async def worker() -> None:
        while True:
            block = await queue.get()
            rec = decode_csv_block(block)
            agg.add_records(rec)
            ingest.add(len(rec))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=BLOCK)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(worker())
        seconds = await timed_ingest(path, server.sockets[0].getsockname()[1], ingest)
        task.cancel()
    server.close()
    return seconds, agg.summary()


def tcp_generators(path: str, total: int) -> tuple[float, Any]:
    """Plain synchronous code: a selector loop in a generator of line blocks."""
    import selectors

    agg = Agg()

    def blocks(listener: socket.socket) -> Iterator[bytes]:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        rest: dict[socket.socket, bytes] = {}
        accepted = 0
        while accepted < CLIENTS or rest:
            for key, _ in sel.select():
                sock = key.fileobj
                if sock is listener:
                    conn, _ = listener.accept()
                    sel.register(conn, selectors.EVENT_READ)
                    rest[conn] = b""
                    accepted += 1
                    continue
                chunk = sock.recv(BLOCK)  # type: ignore[union-attr]
                if not chunk:
                    sel.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    del rest[sock]  # type: ignore[arg-type]
                    continue
                chunk = rest[sock] + chunk  # type: ignore[index]
                cut = chunk.rfind(b"\n") + 1
                rest[sock] = chunk[cut:]  # type: ignore[index]
                if cut:
                    yield chunk[:cut]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        started = time.perf_counter()
        clients = start_clients(path, listener.getsockname()[1])
        for block in blocks(listener):
            agg.add_records(decode_csv_block(block))
        seconds = time.perf_counter() - started
    for c in clients:
        c.wait()
    return seconds, agg.summary()


async def tcp_aiostream(path: str, total: int) -> tuple[float, Any]:
    from aiostream import pipe, stream

    ingest, agg = Ingest(total), ElementAgg()

    def update(item: tuple[int, float]) -> None:
        agg.add(item)
        ingest.add(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await (stream.iterate(reader) | pipe.map(parse_csv_line) | pipe.action(update))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seconds = await timed_ingest(path, server.sockets[0].getsockname()[1], ingest)
    server.close()
    return seconds, agg.summary()


async def tcp_streamz(path: str, total: int) -> tuple[float, Any]:
    from streamz import Stream

    ingest, agg = Ingest(total), ElementAgg()

    def update(item: tuple[int, float]) -> None:
        agg.add(item)
        ingest.add(1)

    port = free_port()
    source = Stream.from_tcp(port, asynchronous=True)
    source.map(parse_csv_line).sink(update)
    source.start()
    await asyncio.sleep(0.2)  # the server listens once the loop has run start()'s callback
    seconds = await timed_ingest(path, port, ingest)
    source.stop()
    return seconds, agg.summary()


async def tcp_rx(path: str, total: int) -> tuple[float, Any]:
    import reactivex as rx
    from reactivex import operators as ops

    ingest, agg = Ingest(total), ElementAgg()
    lines: rx.subject.Subject[bytes] = rx.subject.Subject()

    def update(item: tuple[int, float]) -> None:
        agg.add(item)
        ingest.add(1)

    lines.pipe(ops.map(parse_csv_line)).subscribe(update)

    class Lines(asyncio.Protocol):
        """No TCP source in RxPY: a Protocol pushes each complete line into a Subject."""

        def __init__(self) -> None:
            self.rest = b""

        def data_received(self, data: bytes) -> None:
            parts = (self.rest + data).split(b"\n")
            self.rest = parts.pop()
            for line in parts:
                lines.on_next(line)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Lines, "127.0.0.1", 0)
    seconds = await timed_ingest(path, server.sockets[0].getsockname()[1], ingest)
    server.close()
    return seconds, agg.summary()


TCP_IMPLS: dict[str, Callable[[str, int], Any]] = {
    "aflow": tcp_aflow,
    "aiostream": tcp_aiostream,
    "streamz": tcp_streamz,
    "rx": tcp_rx,
    "asyncio.Queue": tcp_queue,
    "generators": tcp_generators,
    "numpy": tcp_numpy,
}


# -- workload 5: a fast source into a slow sink ----------------------------------------------
class Device:
    """A slow sink: 1 / DEVICE_ROWS_PER_S seconds per row, paid in sleeps of ~2 ms.

    Counts rows produced (read from the file) and written, and the most rows ever held in
    between, in buffers, queues or the program's own arrays.
    """

    def __init__(self) -> None:
        self.produced = self.written = self.held = 0
        self.total = 0.0
        self.debt = 0.0
        self.lock = threading.Lock()

    def produce(self, n: int) -> None:
        with self.lock:
            self.produced += n
            self.held = max(self.held, self.produced - self.written)

    def write(self, n: int, value_sum: float) -> float:
        """Take ``n`` rows; return the seconds to sleep now (0 until ~2 ms are owed)."""
        with self.lock:
            self.written += n
            self.total += value_sum
            self.debt += n / DEVICE_ROWS_PER_S
            if self.debt < DEVICE_TICK:
                return 0.0
            owed, self.debt = self.debt, 0.0
            return owed

    def summary(self) -> dict[str, Any]:
        return {"result": [self.written, self.total], "held": self.held}


def produced(device: Device, items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        device.produce(1)
        yield item


def slow_aflow(path: str) -> dict[str, Any]:
    import aflow as af

    device = Device()

    def read(batch: np.ndarray) -> np.ndarray:
        device.produce(len(batch))
        return batch

    async def write(batch: np.ndarray) -> None:
        if owed := device.write(len(batch), float(batch["value"].sum(dtype=np.float64))):
            await asyncio.sleep(owed)

    flow = af.read_records(path, READING) | af.map_batches(read) | af.for_each(write)
    af.run(flow, max_bytes_in_flight=4 * BLOCK)
    return device.summary()


def slow_aiostream(path: str) -> dict[str, Any]:
    from aiostream import pipe, stream

    device = Device()

    async def write(rec: tuple[int, int, float]) -> None:
        if owed := device.write(1, rec[2]):
            await asyncio.sleep(owed)

    async def source() -> Any:
        async for rec in async_records([path]):
            device.produce(1)
            yield rec

    async def main() -> None:
        await (stream.iterate(source()) | pipe.action(write))

    asyncio.run(main())
    return device.summary()


def slow_streamz(path: str) -> dict[str, Any]:
    from streamz import Stream

    device = Device()
    total = os.path.getsize(path) // READING.itemsize
    done = threading.Event()

    async def write(rec: tuple[int, int, float]) -> None:
        if owed := device.write(1, rec[2]):
            await asyncio.sleep(owed)
        if device.written == total:
            done.set()

    async def main() -> None:
        source = Stream.from_iterable(produced(device, records_of([path])), asynchronous=True)
        source.sink(write)  # an async sink: emit awaits it, so the source waits
        source.start()
        await asyncio.to_thread(done.wait)

    asyncio.run(main())
    return device.summary()


def slow_rx(path: str) -> dict[str, Any]:
    import reactivex as rx
    from reactivex import operators as ops
    from reactivex.scheduler import EventLoopScheduler

    device = Device()
    done = threading.Event()

    def write(rec: tuple[int, int, float]) -> None:
        if owed := device.write(1, rec[2]):
            time.sleep(owed)

    rx.from_iterable(produced(device, records_of([path]))).pipe(
        ops.observe_on(EventLoopScheduler())  # the slow sink on its own thread
    ).subscribe(write, on_completed=done.set)
    done.wait()
    return device.summary()


def slow_queue(path: str) -> dict[str, Any]:
    device = Device()
    queue: asyncio.Queue[Any] = asyncio.Queue(4)
    end = object()

    async def reader() -> None:
        for block in record_blocks([path]):
            device.produce(len(block))
            await queue.put(block)
        await queue.put(end)

    async def writer() -> None:
        while (block := await queue.get()) is not end:
            value_sum = float(block["value"].sum(dtype=np.float64))
            if owed := device.write(len(block), value_sum):
                await asyncio.sleep(owed)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(reader())
            tg.create_task(writer())

    asyncio.run(main())
    return device.summary()


def slow_generators(path: str) -> dict[str, Any]:
    device = Device()
    for block in record_blocks([path]):
        device.produce(len(block))
        if owed := device.write(len(block), float(block["value"].sum(dtype=np.float64))):
            time.sleep(owed)
    return device.summary()


def slow_numpy(path: str) -> dict[str, Any]:
    device = Device()
    data = np.fromfile(path, READING)
    device.produce(len(data))
    for i in range(0, len(data), BLOCK // READING.itemsize):
        block = data[i : i + BLOCK // READING.itemsize]
        if owed := device.write(len(block), float(block["value"].sum(dtype=np.float64))):
            time.sleep(owed)
    return device.summary()


SLOW_IMPLS: dict[str, Callable[[str], dict[str, Any]]] = {
    "aflow": slow_aflow,
    "aiostream": slow_aiostream,
    "streamz": slow_streamz,
    "rx": slow_rx,
    "asyncio.Queue": slow_queue,
    "generators": slow_generators,
    "numpy": slow_numpy,
}


# -- one measurement, in a child process -----------------------------------------------------
def peak_rss() -> int:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from
    the parent across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def preload(impl: str) -> None:
    """Import what ``impl`` uses before the clock starts."""
    import aiofiles  # noqa: F401
    import pyarrow.csv  # noqa: F401

    modules = {
        "aiostream": ["aiostream"],
        "streamz": ["streamz"],
        "rx": ["reactivex", "reactivex.operators", "reactivex.scheduler"],
    }.get(impl.split()[0], ["aflow"] if impl.startswith("aflow") else [])
    for name in modules:
        __import__(name)


def child(workload: str, impl: str, paths: list[str], rows: int) -> None:
    preload(impl)
    held = None
    if workload == "tcp":
        fn = TCP_IMPLS[impl]
        if asyncio.iscoroutinefunction(fn):
            seconds, result = asyncio.run(fn(paths[0], rows))
        else:
            seconds, result = fn(paths[0], rows)
    else:
        started = time.perf_counter()
        if workload == "slow-sink":
            out = SLOW_IMPLS[impl](paths[0])
            result, held = out["result"], out["held"]
        else:
            result = file_impl(workload, impl, paths)
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "result": result, "rss": peak_rss(), "held": held}))
    sys.stdout.flush()
    # Skip interpreter teardown: pyarrow's thread pool sometimes aborts it ("terminate
    # called without an active exception") after the work is done and reported.
    os._exit(0)


# -- the parent: run, check, report ----------------------------------------------------------
@dataclass
class Row:
    workload: str
    impl: str
    rows: int
    scaled: bool
    seconds: float
    rss: int
    held: int | None
    rate: float = 0.0
    ratio: float = 0.0


def measure(workload: str, impl: str, data: Data, reps: int) -> tuple[dict[str, Any], Any]:
    best: dict[str, Any] = {}
    for _ in range(reps):
        args = [sys.executable, __file__, "--child", workload, impl, "--rows", str(data.rows)]
        out = subprocess.run([*args, *data.paths], capture_output=True, text=True, timeout=900)
        if out.returncode:
            raise SystemExit(f"{workload} / {impl} failed:\n{out.stderr[-3000:]}")
        got = json.loads(out.stdout.strip().splitlines()[-1])
        if not best or got["seconds"] < best["seconds"]:
            best = got
    return best, best["result"]


def same(workload: str, got: Any, truth: Any) -> bool:
    if workload == "logs":
        return bool(got == truth)
    if workload == "slow-sink":
        return bool(got[0] == truth[0] and np.isclose(got[1], truth[1], rtol=1e-9))
    exact = all(np.array_equal(got[k], truth[k]) for k in ("count", "min", "max"))
    return exact and bool(np.allclose(got["sum"], truth["sum"], rtol=1e-9))


SIZES = {  # workload: (rows for the full run, rows for per-element peers); --quick: / 10
    "csv": (4_000_000, 200_000),
    "binary": (20_000_000, 1_000_000),
    "logs": (1_000_000, 200_000),
    "tcp": (1_000_000, 50_000),  # per client
    "slow-sink": (2_000_000, 200_000),
}


def impls_of(workload: str) -> list[str]:
    if workload in FILE_IMPLS:
        return list(FILE_IMPLS[workload])
    return list(TCP_IMPLS if workload == "tcp" else SLOW_IMPLS)


def run_workload(workload: str, root: Path, scale: int, reps: int) -> list[Row]:
    full, small = (n // scale for n in SIZES[workload])
    datasets = {False: make_data(root, workload, full), True: make_data(root, workload, small)}
    rows: list[Row] = []
    for impl in impls_of(workload):
        scaled = impl in PER_ELEMENT and small < full
        data = datasets[scaled]
        r, result = measure(workload, impl, data, 1 if workload == "slow-sink" else reps)
        if not same(workload, result, data.truth):
            raise SystemExit(f"RESULT MISMATCH: {workload} / {impl}: {str(result)[:400]}")
        rows.append(Row(workload, impl, data.rows, scaled, r["seconds"], r["rss"], r["held"]))
        print(f"  {workload:<9} {impl:<22} {data.rows / r['seconds']:>14,.0f} rows/s", flush=True)  # fmt: skip
    limit = next(r for r in rows if r.impl == "numpy")
    for r in rows:
        r.rate = r.rows / r.seconds
        r.ratio = r.rate / (limit.rows / limit.seconds)
    return rows


def table(rows: list[Row]) -> str:
    head = f"| workload | implementation | rows | rows/s | vs limit | peak RSS | held rows |\n|{'---|' * 7}"  # fmt: skip
    lines = [head]
    for r in rows:
        tag = " (scaled)" if r.scaled else ""
        held = f"{r.held:,}" if r.held is not None else ""
        lines.append(
            f"| {r.workload} | {r.impl}{tag} | {r.rows:,} | {r.rate:,.0f} | {r.ratio:.2f} | "
            f"{r.rss / 1e6:,.0f} MB | {held} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's targets: aflow >= 30x every per-element peer, >= 1/1.5 of the limit."""
    out = []
    for workload in dict.fromkeys(r.workload for r in rows):
        group = {r.impl: r for r in rows if r.workload == workload}
        aflow = group["aflow"]
        peers = ", ".join(f"{aflow.rate / group[p].rate:,.0f}x {p}" for p in PER_ELEMENT)
        if workload == "slow-sink":
            held = ", ".join(f"{p} {group[p].held:,} of {group[p].rows:,}" for p in group)
            out.append(f"slow-sink: rows held at most: {held}")
            continue
        slowest = min(aflow.rate / group[p].rate for p in PER_ELEMENT)
        ok = slowest >= 30 and aflow.ratio >= 1 / 1.5
        out.append(
            f"{workload}: aflow = {peers} (target >= 30x each); {aflow.ratio:.2f}x the "
            f"limit's rows/s (target >= 0.67): {'MEETS' if ok else 'MISSES'}"
        )
    return out


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in rows))
    impls = list(dict.fromkeys(r.impl for r in rows))
    width = 0.9 / len(impls)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = plt.get_cmap("tab10")
    for i, impl in enumerate(impls):
        xs, ys, hatches = [], [], []
        for j, w in enumerate(workloads):
            r = next((r for r in rows if r.workload == w and r.impl == impl), None)
            if r is not None:
                xs.append(j + (i - len(impls) / 2 + 0.5) * width)
                ys.append(r.rate)
                hatches.append("//" if r.scaled else "")
        bars = ax.bar(xs, ys, width, label=impl, color=colors(i))
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("rows per second (log scale)")
    ax.set_title("aflow and peers, same workloads (hatched: per-element peers on a scaled input)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(ncol=4, fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--reps", type=int, default=3, help="runs per fast case (best kept)")
    parser.add_argument("--only", help="comma-separated workloads: " + ",".join(SIZES))
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "IMPL"), help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.paths, args.rows)
        return
    workloads = args.only.split(",") if args.only else list(SIZES)
    root = Path(tempfile.gettempdir()) / "aflow-bench-peers"
    scale = 10 if args.quick else 1
    print(
        f"{os.cpu_count()} CPUs; best of {args.reps} per case (slow-sink: 1 run); "
        "per-element peers on a scaled input where marked",
        flush=True,
    )
    rows: list[Row] = []
    for workload in workloads:
        rows += run_workload(workload, root, scale, args.reps)
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    print("results identical to the ground truth for every implementation")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()

"""File sinks (aflow/sinks/files.py): real files in tmp_path, read back with other readers."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import python_env
from anyio.abc import SocketAttribute

import aflow as af
from aflow.codecs import CsvEncoder, JsonlEncoder

pytestmark = pytest.mark.anyio

ROW = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])


def rows(n: int, start: int = 0) -> np.ndarray:
    out = np.zeros(n, ROW)
    out["ts"] = np.arange(start, start + n)
    out["sensor"] = out["ts"] % 7
    out["value"] = out["ts"] / 4
    return out


@pytest.mark.parametrize("chunk_bytes", [1, 1000, 1 << 22])
async def test_npy_round_trip(tmp_path: Path, chunk_bytes: int) -> None:
    path = tmp_path / "out.npy"
    data = rows(10_000)
    flow = af.from_array(data, batch_size=999) | af.to_npy(path, chunk_bytes=chunk_bytes)
    summary = (await flow.run()).value
    assert (summary.path, summary.rows) == (str(path), len(data))
    assert np.array_equal(np.load(path), data)


async def test_npy_rows_of_any_shape_and_empty_flows(tmp_path: Path) -> None:
    grid = np.arange(60, dtype=np.int16).reshape(20, 3)
    await (af.from_array(grid, batch_size=7) | af.to_npy(tmp_path / "grid.npy")).run()
    assert np.array_equal(np.load(tmp_path / "grid.npy"), grid)
    await (af.from_iterable([]) | af.to_npy(tmp_path / "empty.npy")).run()
    assert np.load(tmp_path / "empty.npy").shape == (0,)


async def test_npy_rejects_a_different_dtype(tmp_path: Path) -> None:
    batches = [np.arange(3.0), np.array(["x"])]
    with pytest.raises(TypeError, match="holds float64"):
        await (af.from_arrays(batches) | af.to_npy(tmp_path / "x.npy")).run()
    assert np.array_equal(np.load(tmp_path / "x.npy"), np.arange(3.0))  # kept on error


async def test_npy_is_loadable_whenever_a_chunk_was_written(tmp_path: Path) -> None:
    """Read the file while the run writes it: always a prefix of whole batches."""
    path = tmp_path / "live.npy"
    seen: list[int] = []

    async def batches() -> AsyncIterator[np.ndarray]:
        for i in range(40):
            if path.exists() and path.stat().st_size:
                loaded = np.load(path)
                assert np.array_equal(loaded, np.arange(len(loaded), dtype=np.float64))
                seen.append(len(loaded))
            yield np.arange(i * 100, (i + 1) * 100, dtype=np.float64)
            await anyio.sleep(0.002)

    flow = af.from_arrays(batches) | af.to_npy(path, chunk_bytes=1)
    await flow.run()
    assert all(n % 100 == 0 for n in seen)
    assert max(seen) > 0
    assert len(np.load(path)) == 4000


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, anyio, aflow as af
    kind, path = sys.argv[1], sys.argv[2]
    sink = {"npy": af.to_npy, "csv": af.to_csv, "jsonl": af.to_jsonl}[kind]

    async def batches():
        i = 0
        while True:
            yield np.arange(i * 1000, (i + 1) * 1000, dtype=np.int64)
            i += 1
            await anyio.sleep(0.001)

    anyio.run((af.from_arrays(batches) | sink(path, chunk_bytes=3000)).run)
    """
)


def read_back(kind: str, path: Path) -> np.ndarray:
    if kind == "npy":
        return np.load(path)
    text = path.read_text()
    assert text.endswith("\n")  # whole lines only
    lines = text.splitlines()[1:] if kind == "csv" else text.splitlines()
    return np.array([int(x) for x in lines], np.int64)


@pytest.mark.parametrize("kind", ["npy", "csv", "jsonl"])
def test_file_is_readable_after_sigkill(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"crash.{kind}"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, kind, str(path)], env=python_env())
    try:
        deadline = time.monotonic() + 20
        while not (path.exists() and path.stat().st_size > 100_000):
            assert time.monotonic() < deadline, "the writer made no progress"
            assert proc.poll() is None, "the writer died"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    data = read_back(kind, path)
    assert len(data) >= 1000
    assert len(data) % 1000 == 0  # complete batches only
    assert np.array_equal(data, np.arange(len(data)))


async def test_csv_round_trip(tmp_path: Path) -> None:
    data = np.array(
        [(1, 0.1, "plain", True), (-2, float("nan"), 'with "quotes", comma', False)] * 50,
        [("id", "i8"), ("x", "f8"), ("text", "U32"), ("ok", "?")],
    )
    path = tmp_path / "out.csv"
    summary = (await (af.from_array(data, batch_size=7) | af.to_csv(path)).run()).value
    assert summary.rows == len(data)
    with path.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "x", "text", "ok"]
    assert len(table) == len(data) + 1
    for got, want in zip(table[1:], data.tolist(), strict=True):
        assert int(got[0]) == want[0]
        assert float(got[1]) == want[1] or (math.isnan(want[1]) and got[1] == "nan")
        assert got[2:] == [want[2], str(want[3])]


async def test_csv_formats_and_shapes(tmp_path: Path) -> None:
    flow = af.from_array(np.array([1.23456, 2.5]), batch_size=1)
    await (flow | af.to_csv(tmp_path / "a.csv", fmt="%.2f")).run()
    assert (tmp_path / "a.csv").read_text() == "value\n1.23\n2.50\n"
    grid = np.arange(6).reshape(3, 2)
    await (af.from_array(grid) | af.to_csv(tmp_path / "b.csv", header=False)).run()
    assert (tmp_path / "b.csv").read_text() == "0,1\n2,3\n4,5\n"
    assert CsvEncoder(["%d", None, "%.1f"]).encode(rows(2)) == b"0,0,0.0\n1,1,0.2\n"
    with pytest.raises(ValueError, match="3 columns"):
        CsvEncoder(["%d"]).encode(rows(2))


MIXED = np.dtype(
    [("id", "i8"), ("x", "f4"), ("y", "f8"), ("text", "U12"), ("raw", "S6"), ("ok", "?")]
)


def mixed_rows(n: int) -> np.ndarray:
    data = np.zeros(n, MIXED)
    data["id"] = np.arange(n) - n // 2
    data["x"] = np.arange(n, dtype="f4") / 3
    data["y"] = np.where(np.arange(n) % 5 == 0, np.nan, np.arange(n) * 1e-7)
    data["text"] = ["plain", 'a "quote"', "a,comma", "line\nbreak", "café"] * (n // 5)
    data["raw"] = [b"bytes", b"b,c", b"", b'q"', b"x"] * (n // 5)
    data["ok"] = np.arange(n) % 2 == 0
    return data


async def test_file_and_socket_sinks_write_the_same_csv_bytes(tmp_path: Path) -> None:
    data = mixed_rows(5000)  # enough rows for the socket sink to format them in a thread
    path = tmp_path / "out.csv"
    for fmt in (None, ["%d", "%.3f", None, None, None, None]):
        await (af.from_array(data, 700) | af.to_csv(path, header=False, fmt=fmt)).run()
        received = bytearray()
        done = anyio.Event()

        async def serve(stream: Any, received: bytearray = received, done: Any = done) -> None:
            async with stream:
                async for chunk in stream:
                    received.extend(chunk)
            done.set()  # the sink closed the connection: all is here

        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, serve)
                sent = await (
                    af.from_array(data, 700) | af.to_tcp("127.0.0.1", port, fmt=fmt)
                ).run()
                with anyio.fail_after(10):
                    await done.wait()
                tg.cancel_scope.cancel()
        assert bytes(received) == path.read_bytes()
        assert len(received) == sent.value
        with path.open(newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
        assert len(table) == len(data)
        if fmt is None:  # the shortest text that reads back the same value
            assert np.array_equal(np.array([float(r[1]) for r in table], "f4"), data["x"])
            assert [r[2] for r in table[:2]] == ["nan", "1e-07"]
        assert [r[3:] for r in table[:5]] == [
            ["plain", "bytes", "True"],
            ['a "quote"', "b,c", "False"],
            ["a,comma", "", "True"],
            ["line\nbreak", 'q"', "False"],
            ["café", "x", "True"],
        ]


async def test_jsonl_round_trip(tmp_path: Path) -> None:
    data = np.array(
        [(1, 1.5, "tab\there", b"raw", True), (2, float("inf"), 'q"\\é', b"", False)] * 20,
        [("id", "u2"), ("x", "f4"), ("s", "U10"), ("b", "S4"), ("ok", "?")],
    )
    path = tmp_path / "out.jsonl"
    await (af.from_array(data, batch_size=3) | af.to_jsonl(path)).run()
    got = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    want = [
        {"id": i, "x": None if math.isinf(x) else x, "s": s, "b": b.decode(), "ok": ok}
        for i, x, s, b, ok in data.tolist()
    ]
    assert got == want


def test_jsonl_values_and_arrays() -> None:
    assert JsonlEncoder().encode(np.array([1, 2])) == b"1\n2\n"
    assert JsonlEncoder().encode(np.array([[1.5, np.nan]])) == b"[1.5, null]\n"
    with pytest.raises(TypeError, match="as JSON"):
        JsonlEncoder().encode(np.array([1 + 2j]))


async def test_parquet_round_trip(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    data = rows(5000)
    path = tmp_path / "out.parquet"
    flow = af.from_array(data, batch_size=1000) | af.to_parquet(path, chunk_bytes=20_000)
    assert (await flow.run()).value.rows == 5000
    table = pq.read_table(path)
    assert table.num_rows == 5000
    assert np.array_equal(table.column("value").to_numpy(), data["value"])
    assert pq.ParquetFile(path).num_row_groups > 1


def test_parquet_needs_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install pyarrow"):
        af.to_parquet("x.parquet")


async def test_files_are_closed_and_kept_after_an_error(tmp_path: Path) -> None:
    """Whatever reached the sink before an upstream error is written, and the file closed."""

    def boom(batch: Any) -> Any:
        if batch[0] >= 900:
            raise RuntimeError("boom")
        return batch

    path = tmp_path / "e.csv"
    flow = af.from_array(np.arange(1000), batch_size=100) | af.map_batches(boom)
    with pytest.raises(RuntimeError, match="boom"):
        await (flow | af.to_csv(path, header=False)).run()
    lines = path.read_text().splitlines() if path.exists() else []
    assert lines == [str(i) for i in range(len(lines))]
    assert len(lines) % 100 == 0


async def endless() -> AsyncIterator[np.ndarray]:
    i = 0
    while True:
        yield np.arange(i * 100, (i + 1) * 100, dtype=np.float64)
        i += 1
        await anyio.sleep(0.001)


async def test_graceful_stop_flushes_every_batch_received(tmp_path: Path) -> None:
    path = tmp_path / "stop.npy"
    flow = af.from_arrays(endless) | af.to_npy(path)  # 4 MiB chunks: only flush writes
    with anyio.fail_after(10):
        async with flow.open() as run:
            for _ in range(1000):
                await anyio.sleep(0.01)
                if run.statistics().stages[-1].items_in >= 1000:
                    break
            run.stop()
            result = await run.wait()
    data = np.load(path)
    assert len(data) == result.value.rows == result.statistics.stages[-1].items_in
    assert np.array_equal(data, np.arange(len(data)))


async def test_cancelled_caller_still_gets_a_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "cancel.jsonl"
    flow = af.from_arrays(endless) | af.to_jsonl(path)
    with anyio.fail_after(10), anyio.CancelScope() as caller:
        async with flow.open() as run:
            while run.statistics().stages[-1].items_in < 1000:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            caller.cancel()  # the caller is cancelled while the run writes
            await run.wait()
    assert caller.cancelled_caught
    values = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(values) >= 100
    assert len(values) % 100 == 0
    assert values == list(range(len(values)))


async def test_empty_batches_write_no_blank_lines(tmp_path: Path) -> None:
    rows = np.array([(1, "x"), (2, "y"), (3, "z")], [("a", "i8"), ("s", "U3")])
    drop_two = af.map_batches(lambda b: b[b["a"] != 2])
    await (af.from_array(rows, 1) | drop_two | af.to_csv(tmp_path / "o.csv")).run()
    assert (tmp_path / "o.csv").read_text() == "a,s\n1,x\n3,z\n"
    await (af.from_array(rows, 1) | drop_two | af.to_jsonl(tmp_path / "o.jsonl")).run()
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [json.loads(line)["a"] for line in lines] == [1, 3]


async def test_parquet_is_readable_after_an_upstream_error(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")

    def fail_late(b: np.ndarray) -> np.ndarray:
        if b[0] >= 250:
            raise RuntimeError("upstream failure")
        return b

    path = tmp_path / "part.parquet"
    flow = af.from_array(np.arange(300.0), 50) | af.map_batches(fail_late)
    with pytest.raises(RuntimeError, match="upstream failure"):
        await (flow | af.to_parquet(path, chunk_bytes=1000)).run()
    if path.exists():  # whatever reached the sink before the error is a readable file
        rows = pq.read_table(path).num_rows
        assert rows <= 250
        assert rows % 50 == 0

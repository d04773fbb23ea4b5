"""A graceful stop in the middle of files that are not followed: every row handed on is
a whole row of the input (never a line cut where a read ended, never a read handed on
twice), and a restart from the checkpoint reads the rest exactly once."""

from __future__ import annotations

import gzip
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])]

ROWS = 30_000  # per file
READ = 4096  # bytes per read: many reads, each ending inside a line
DT = np.dtype([("id", "<i8"), ("value", "<i8")])


def _text(first: int, n: int) -> list[str]:
    # 53-byte lines: a read of 4096 bytes almost never ends at the end of a line
    return [f"line-{i:07d}-" + "x" * 40 for i in range(first, first + n)]


def _write_lines(path: Path, first: int, compress: bool = False) -> None:
    data = "".join(line + "\n" for line in _text(first, ROWS)).encode()
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)


def _rows(first: int) -> np.ndarray[Any, np.dtype[Any]]:
    rows = np.zeros(ROWS, DT)
    rows["id"] = np.arange(first, first + ROWS)
    rows["value"] = rows["id"] * 3 + 1
    return rows


def _ids_of_lines(items: list[Any]) -> list[int]:
    """The number of each line; a row that is not a whole line of the input fails."""
    ids = []
    for line in items:
        assert isinstance(line, str)
        assert len(line) == 53, f"not a whole line: {line!r}"
        number = int(line[5:12])
        assert line == _text(number, 1)[0], f"not a line of the input: {line!r}"
        ids.append(number)
    return ids


def _array(value: Any) -> Any:
    """``collect()``'s result as one array."""
    return np.concatenate([np.asarray(v) for v in value]) if isinstance(value, list) else value


def _ids_of_rows(value: Any) -> list[int]:
    """The ids of structured rows; a row whose value does not go with its id fails."""
    rows = _array(value)
    if len(rows) == 0:
        return []
    bad = rows["value"] != rows["id"] * 3 + 1
    assert not bad.any(), f"torn rows: {rows[bad][:3]}"
    return [int(i) for i in rows["id"]]


def _lines_flow(
    tmp_path: Path, files: int, compress: bool = False
) -> tuple[Any, Callable[..., Any]]:
    for k in range(files):
        _write_lines(tmp_path / f"in{k}.log", k * ROWS, compress)
    pattern = str(tmp_path / "in*.log")
    return af.read_lines(pattern, read_size=READ, max_open=files), _ids_of_lines


def _blocks_flow(tmp_path: Path, kind: str) -> tuple[Any, Callable[..., Any]]:
    rows = _rows(0)
    if kind == "csv":
        path = tmp_path / "in.csv"
        path.write_text("".join(f"{r['id']},{r['value']}\n" for r in rows))
        return af.read_csv(path, DT, read_size=READ), _ids_of_rows
    if kind == "jsonl":
        path = tmp_path / "in.jsonl"
        path.write_text("".join(f'{{"id": {r["id"]}, "value": {r["value"]}}}\n' for r in rows))
        return af.read_jsonl(path, DT, read_size=READ), _ids_of_rows
    if kind == "records":
        path = tmp_path / "in.bin"
        path.write_bytes(rows.tobytes())
        return af.read_records(path, DT, read_size=READ), _ids_of_rows
    assert kind == "npy"
    np.save(tmp_path / "in.npy", rows)
    return af.read_npy(tmp_path / "in.npy", read_size=READ), _ids_of_rows


def _flow(tmp_path: Path, kind: str) -> tuple[Any, Callable[..., Any], int]:
    """A reader of ``kind`` over its input, how to number its rows, how many rows."""
    if kind == "lines":
        return (*_lines_flow(tmp_path, 1), ROWS)
    if kind == "lines-gzip":
        return (*_lines_flow(tmp_path, 1, compress=True), ROWS)
    if kind == "lines-4-files":
        return (*_lines_flow(tmp_path, 4), 4 * ROWS)
    if kind == "lines-mixed":  # plain files read one after another, a gzip one beside them
        for k in range(3):
            _write_lines(tmp_path / f"in{k}.log", k * ROWS, compress=k == 1)
        return af.read_lines(str(tmp_path / "in*.log"), read_size=READ), _ids_of_lines, 3 * ROWS
    return (*_blocks_flow(tmp_path, kind), ROWS)


def _count(item: Any) -> int:
    return len(item) if isinstance(item, np.ndarray) else 1


async def stopped_run(flow: Any, after: int, checkpoint: Path | None) -> af.RunResult[Any]:
    """Run ``flow`` into ``collect()`` and stop it once ``after`` rows went through."""
    holder: dict[str, Any] = {}
    seen = 0

    def watch(item: Any) -> Any:
        nonlocal seen
        seen += _count(item)
        run = holder.get("run")
        if seen >= after and run is not None:
            run.stop()
        return item

    async with (flow | af.map(watch, name="watch") | af.collect()).open(
        checkpoint=checkpoint, commit_interval=0.05
    ) as run:
        holder["run"] = run
        return await run.wait()


async def full_run(flow: Any, checkpoint: Path) -> af.RunResult[Any]:
    return await stopped_run(flow, 1 << 62, checkpoint)


def _check_prefixes(ids: list[int], files: int) -> None:
    """Each file's rows in order from its first, none twice (files read at once
    interleave)."""
    for k in range(files):
        own = [i - k * ROWS for i in ids if k * ROWS <= i < (k + 1) * ROWS]
        assert own == list(range(len(own))), f"file {k}: rows twice, out of order or missing"


KINDS = ["lines", "lines-gzip", "lines-4-files", "lines-mixed", "csv", "jsonl", "records", "npy"]
FILES = {"lines-4-files": 4, "lines-mixed": 3}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stop_inside_a_file_hands_on_whole_rows_and_the_restart_the_rest(
    anyio_backend: str, tmp_path: Path, kind: str
) -> None:
    flow, ids_of, total = _flow(tmp_path, kind)
    files = FILES.get(kind, 1)
    ck = tmp_path / "ck.db"
    first = await stopped_run(flow, 3000, ck)
    assert first.ended == "stopped"
    before = ids_of(first.value)
    assert 3000 <= len(before) < total  # stopped inside the input
    _check_prefixes(before, files)
    assert first.statistics.errors == 0
    second = await full_run(flow, ck)
    assert second.ended == "completed"
    after = ids_of(second.value)  # collect's result goes on from the checkpoint's
    assert after[: len(before)] == before
    assert sorted(after) == list(range(total))  # every row once: none torn, lost or twice
    assert second.statistics.errors == 0


async def test_a_stop_without_checkpoint_hands_on_no_part_of_a_line(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flow, ids_of, total = _flow(tmp_path, "lines")
    with caplog.at_level("INFO", logger="aflow"):
        result = await stopped_run(flow, 3000, None)
    ids = ids_of(result.value)  # no row cut at the stop
    assert 3000 <= len(ids) < total
    _check_prefixes(ids, 1)
    assert result.statistics.errors == 0  # a stop is not an end of file: nothing failed
    assert "has no newline after it" not in caplog.text
    assert f"stopped inside line {len(ids) + 1} " in caplog.text


def _loop_flow(tmp_path: Path, kind: str) -> tuple[Any, Callable[[Any], list[int]], int]:
    """A reader of ``kind``, how to number what it gave, how much there is to give."""
    if kind == "bytes":
        data = np.arange(ROWS * 16, dtype=np.uint32).astype(np.uint8).tobytes()
        data = bytes(np.frombuffer(data, np.uint8) ^ np.uint8(0x5A))
        path = tmp_path / "in.bin"
        path.write_bytes(data)

        def offsets(value: Any) -> list[int]:
            got = _array(value)
            assert got.tobytes() == data[: len(got)], "bytes that are not the file's prefix"
            return list(range(len(got)))

        return af.read_bytes(path, read_size=READ), offsets, len(data)
    flow, ids_of, total = _flow(tmp_path, kind)
    return flow, ids_of, total


@pytest.mark.parametrize("kind", ["bytes", "records", "npy", "lines", "lines-4-files", "csv"])
@pytest.mark.parametrize("stops", [5, pytest.param(25, marks=pytest.mark.slow, id="25")])
async def test_stops_at_random_moments_never_hand_on_a_read_twice(
    anyio_backend: str, tmp_path: Path, kind: str, stops: int
) -> None:
    """Many runs, each stopped at another moment: what each gave before it ended is the
    start of the input, exactly (a stop during a read once handed the previous read on
    again: rows twice, others missing, a line made of two). The slow pass stops at more
    moments (other ones: the seed differs)."""
    flow, ids_of, total = _loop_flow(tmp_path, kind)
    rng = random.Random(f"{kind}-{anyio_backend}-{stops}")
    for _ in range(stops):
        result = await stopped_run(flow, rng.randrange(total // 50, total // 2), None)
        _check_prefixes(ids_of(result.value), 4 if kind == "lines-4-files" else 1)


async def fifo_stopped(fifo: Path, data: str, last: str) -> af.RunResult[Any]:
    """Read ``fifo`` while a writer sends ``data`` and then goes quiet (the pipe stays
    open); stop once the line ``last`` went through and the reader waits for more."""
    os.mkfifo(fifo)
    done = threading.Event()

    def write() -> None:
        with open(fifo, "w") as f:
            f.write(data)
            f.flush()
            done.wait(10)

    seen = anyio.Event()

    def watch(item: Any) -> Any:
        if item == last:
            seen.set()
        return item

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, write)
        try:
            flow = af.read_lines(str(fifo)) | af.map(watch) | af.collect()
            with anyio.fail_after(10):
                async with flow.open() as run:
                    await seen.wait()
                    await anyio.sleep(0.1)  # the reader waits for more data by now
                    run.stop()
                    return await run.wait()
        finally:
            done.set()


async def test_a_stop_while_a_fifo_waits_for_data_hands_nothing_on_twice(
    anyio_backend: str, tmp_path: Path
) -> None:
    result = await fifo_stopped(tmp_path / "pipe", "1\n2\n3\n", "3")
    assert result.value == ["1", "2", "3"]
    assert result.statistics.errors == 0


async def test_a_stop_while_a_fifo_writer_is_inside_a_line_reports_it(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="aflow"):
        result = await fifo_stopped(tmp_path / "pipe", "1\n2\n3", "2")
    assert result.value == ["1", "2"]  # "3" may be the start of a longer line
    assert result.statistics.errors == 1  # what the writer sent is not read again: counted
    assert "stopped inside line 3" in caplog.text

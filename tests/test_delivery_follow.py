"""Following a file under a checkpoint: a stop while the writer is inside a line (the
line is never handed on half), and line numbers that go on across a restart."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af

backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
DT = np.dtype([("id", "<i8"), ("value", "<i8")])

# A writer process: appends each line of its stdin (a Python bytes literal) to the file
# at once, unbuffered, and answers "ok" once it is written.
WRITER = """
import ast, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for command in sys.stdin:
    os.write(fd, ast.literal_eval(command))
    print("ok", flush=True)
os.close(fd)
"""


class Writer:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(repr(data) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Callable[[Path], Writer]]:
    made: list[Writer] = []

    def make(path: Path) -> Writer:
        made.append(Writer(path))
        return made[-1]

    yield make
    for w in made:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        for pipe in (w.proc.stdin, w.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - polls what the flow has delivered
            await anyio.sleep(0.01)


async def follow_until(
    path: Path, seen: list[Any], expect: int, checkpoint: Path | None, **options: Any
) -> Any:
    """Follow ``path`` as CSV until ``seen`` holds ``expect`` rows and a little longer
    (the half line has been read), then stop gracefully; the run's result."""
    flow = af.read_csv(str(path), DT, follow=True, poll_interval=0.01, **options)
    sink = af.for_each(lambda a: seen.extend(a.tolist()))
    async with (flow | sink).open(checkpoint=checkpoint, commit_interval=0.05) as run:
        await wait_for(lambda: len(seen) >= expect)
        await anyio.sleep(0.3)
        run.stop()
        return await run.wait()


@pytest.mark.anyio
@backends
async def test_a_line_half_written_at_a_stop_is_read_whole_by_the_next_run(
    anyio_backend: str, tmp_path: Path, writer: Callable[[Path], Writer]
) -> None:
    path, db = tmp_path / "m.csv", tmp_path / "cp.db"
    w = writer(path)
    w.write(b"1,10\n2,20\n3,3")  # the writer is inside line 3 ("3,30")
    seen: list[Any] = []
    await follow_until(path, seen, 2, db)
    assert seen == [(1, 10), (2, 20)]  # not (3, 3)
    w.write(b"0\n4,40\n")  # the rest of line 3, line 4
    await follow_until(path, seen, 4, db)
    w.close()
    assert seen == [(1, 10), (2, 20), (3, 30), (4, 40)]  # not (0, ...) either


@pytest.mark.anyio
@backends
async def test_a_line_half_written_at_a_stop_without_checkpoint_is_reported(
    anyio_backend: str,
    tmp_path: Path,
    writer: Callable[[Path], Writer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "m.csv"
    w = writer(path)
    w.write(b"1,10\n2,20\n3,3")
    seen: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="aflow"):
        result = await follow_until(path, seen, 2, None)
    assert seen == [(1, 10), (2, 20)]
    assert result.statistics.stages[0].errors == 1  # counted
    assert "stopped inside line 3" in caplog.text
    # last_line="report": an IncompleteFrameError with the bytes, to on_error
    dead: list[af.FailedItem] = []
    seen.clear()
    await follow_until(path, seen, 2, None, last_line="report", on_error=af.dead_letter(dead))
    assert seen == [(1, 10), (2, 20)]
    assert len(dead) == 1
    assert isinstance(dead[0].error, af.IncompleteFrameError)
    assert (dead[0].error.line, dead[0].item) == (3, b"3,3\n")
    w.write(b"0\n")
    w.close()


@pytest.mark.anyio
@backends
async def test_a_bad_line_after_a_restart_names_its_true_line(
    anyio_backend: str, tmp_path: Path, writer: Callable[[Path], Writer]
) -> None:
    path, db = tmp_path / "m.csv", tmp_path / "cp.db"
    w = writer(path)
    w.write(b"".join(b"%d,%d\n" % (i, i) for i in range(1, 6)))  # lines 1-5
    seen: list[Any] = []
    await follow_until(path, seen, 5, db)
    w.write(b"6,6\n7,7\nbad,line\n9,9\n")  # line 8 is bad
    w.close()
    dead: list[af.FailedItem] = []
    await follow_until(path, seen, 8, db, on_error=af.dead_letter(dead))
    assert [row[0] for row in seen] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert [d.error.line for d in dead] == [8]  # type: ignore[attr-defined]


class _Crash(af.abc.Operator):
    """Passes batches on; raises once ``after`` rows went by and ``ready()`` holds (by
    default at once), recording in ``passed`` how many rows went by before."""

    name = "crash"

    def __init__(
        self, after: int, ready: Callable[[], bool] = lambda: True, passed: list[int] | None = None
    ) -> None:
        self.after, self.ready = after, ready
        self.passed = passed if passed is not None else []

    def start(self) -> af.abc.Processor:
        return _Crashing(self)


class _Crashing(af.abc.Processor):
    def __init__(self, op: _Crash) -> None:
        self.op, self.rows = op, 0

    def process(self, msg: Any) -> list[Any]:
        self.rows += len(msg)
        if self.rows > self.op.after:
            if self.op.ready():
                self.op.passed.append(self.rows - len(msg))
                raise RuntimeError("crash")
            time.sleep(0.05)  # waiting for ready(): slower still, for a commit to land
        time.sleep(0.002)
        return [msg]


@pytest.mark.anyio
@backends
@pytest.mark.parametrize("kind", ["csv", "lines"])
async def test_line_numbers_go_on_after_a_crash(
    anyio_backend: str, kind: str, tmp_path: Path
) -> None:
    path, db = tmp_path / "m.csv", tmp_path / "cp.db"
    n, bad = 3000, 2500
    bad_line = b"x,x\n" if kind == "csv" else b"\xff,x\n"  # not a number; not UTF-8
    path.write_bytes(b"".join(bad_line if i == bad else b"%d,1\n" % i for i in range(1, n + 1)))

    def committed() -> bool:  # a commit's sync can take long on a loaded machine
        store = af.SqliteStore(db)
        try:
            cp = store.load() if db.exists() else None
        finally:
            store.close()
        return cp is not None and any(cp.positions.values())  # past some lines

    passed: list[int] = []

    def flow(after: int, dead: list[af.FailedItem]) -> Any:
        crash = af.Stage(_Crash(after, committed, passed))
        if kind == "csv":
            read = af.read_csv(str(path), DT, read_size=1024, on_error=af.dead_letter(dead))
            return read | crash | af.to_aggregate(None, "value", ("count",))
        read = af.read_lines(str(path), read_size=1024, on_error=af.dead_letter(dead))
        return read | crash | af.discard()

    reports: list[Any] = []
    dead: list[af.FailedItem] = []
    with pytest.raises(RuntimeError, match="crash"):  # after 1000 lines, once committed
        await flow(1000, dead).run(checkpoint=db, commit_interval=0.01)
    (crashed_after,) = passed
    assert crashed_after < bad - 1  # before the bad line: its number is reported on resume
    reports += dead
    cp = af.SqliteStore(db).load()
    assert cp is not None
    (positions,) = [p for p in cp.positions.values() if p]
    (entry,) = positions.values()
    assert 1 < entry["line"] <= crashed_after + 1  # the next line after what was committed
    dead = []
    await flow(n, dead).run(checkpoint=db, commit_interval=0.01)
    reports += dead
    assert reports
    for d in reports:
        assert d.error.line == bad  # type: ignore[attr-defined]


class _CrashAt(af.abc.Operator):
    """Counts the rows of each input going by (``seen``); raises once ``after`` rows of
    input "b" went by."""

    name = "crash_at"

    def __init__(self, after: int, seen: dict[str, int]) -> None:
        self.after, self.seen = after, seen

    def start(self) -> af.abc.Processor:
        return _CrashingAt(self.after, self.seen)


class _CrashingAt(af.abc.Processor):
    def __init__(self, after: int, seen: dict[str, int]) -> None:
        self.after, self.seen = after, seen

    def process(self, msg: Any) -> list[Any]:
        for line in msg:
            self.seen[line[0]] += 1
        if self.seen["b"] > self.after:
            raise RuntimeError("crash")
        time.sleep(0.002)
        return [msg]


def _count(acc: tuple[int, int, int], line: str) -> tuple[int, int, int]:
    a, b, total = acc
    kind, value = line.split(",")
    return (a + (kind == "a"), b + (kind == "b"), total + int(value))


@pytest.mark.slow
@pytest.mark.anyio
@backends
@pytest.mark.parametrize("where", ["in_its_branch", "after_merge"])
async def test_a_source_that_ended_with_rows_in_flight_loses_none_after_a_crash(
    anyio_backend: str, where: str, tmp_path: Path
) -> None:
    """Source "a" ends at once, but its rows are held by a slow concurrent stage (in its
    branch of the merge, or after the merge, unordered) while source "b" goes on; epochs
    committed after a ended carry a's final position, then the run crashes. A barrier
    injected into b cannot complete its epoch before a's held rows reached the sink
    (the merge waits for a's branch to end; a concurrent stage emits everything it holds
    before a barrier), so the restart loses none of a's rows and counts none twice."""
    a, b, db = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cp.db"
    n_a, n_b = 20, 4000
    a.write_text("".join(f"a,{i}\n" for i in range(n_a)))
    b.write_text("".join(f"b,{i}\n" for i in range(n_b)))

    async def slow(line: str) -> str:
        if line.startswith("a"):
            await anyio.sleep(0.3)
        return line

    def flow(after: int, seen: dict[str, int]) -> Any:
        read_a = af.read_lines(str(a))
        read_b = af.read_lines(str(b), read_size=1024)
        if where == "in_its_branch":
            merged = af.merge(read_a | af.map(slow, concurrency=8, ordered=False), read_b)
        else:
            merged = af.merge(read_a, read_b) | af.map(slow, concurrency=8, ordered=False)
        return merged | af.Stage(_CrashAt(after, seen)) | af.reduce(_count, (0, 0, 0))

    seen = {"a": 0, "b": 0}
    with pytest.raises(RuntimeError, match="crash"):
        await flow(n_b // 2, seen).run(checkpoint=db, commit_interval=0.01)
    cp = af.SqliteStore(db).load()
    assert cp is not None
    a_pos = [p for m in cp.positions.values() for p in m.values() if p["path"] == str(a)]
    assert a_pos[0]["offset"] == a.stat().st_size  # committed with a's final position
    result = await flow(n_b, {"a": 0, "b": 0}).run(checkpoint=db, commit_interval=0.01)
    assert result.value == (n_a, n_b, sum(range(n_a)) + sum(range(n_b)))


@pytest.mark.anyio
@backends
async def test_a_checkpoint_belongs_to_the_options_of_its_file_sources(
    anyio_backend: str, tmp_path: Path
) -> None:
    path, db = tmp_path / "m.bin", tmp_path / "cp.db"
    path.write_bytes(np.arange(40, dtype="<i8").tobytes())
    dt = np.dtype([("a", "<i8"), ("b", "<i8")])
    first = await (af.read_records(str(path), dt) | af.collect()).run(checkpoint=db)
    assert len(first.value) == 20
    # the same flow, built again: the same checkpoint, read to its end (nothing again)
    again = await (af.read_records(str(path), dt) | af.collect()).run(checkpoint=db)
    assert len(again.value) == 20
    others = [
        af.read_records(str(path), dt, follow=True),  # following: positions mean more
        af.read_records(str(path), np.dtype("<i8")),  # another framing
        af.read_records(str(tmp_path / "*.bin"), dt),  # a glob
        af.read_blocks(str(path)),
    ]
    for other in others:
        with anyio.fail_after(10), pytest.raises(af.CheckpointMismatch, match="another flow"):
            await (other | af.collect()).run(checkpoint=db)

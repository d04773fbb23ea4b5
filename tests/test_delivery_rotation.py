"""Resuming a followed log across rotations done while the pipeline was down: each
logrotate mode (create, copytruncate, compress, delaycompress) with real files, real
renames, copies, truncations and gzip; every line read exactly once, oldest first."""

from __future__ import annotations

import gzip
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.sources._rotation import plan_catch_up, rotated_siblings

backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - polls what the flow has delivered
            await anyio.sleep(0.01)


def append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        f.writelines(f"{line}\n" for line in lines)
    time.sleep(0.02)  # the next change gets a later modification time


def _compress(path: Path) -> None:
    with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


def logrotate(path: Path, mode: str) -> None:
    """Rotate ``path`` as logrotate does (numbered, newest ``.1``), in ``mode``."""
    directory, name = path.parent, path.name
    rotated = sorted(
        (int(p.name[len(name) + 1 :].split(".")[0]), p)
        for p in directory.iterdir()
        if p.name.startswith(name + ".")
    )
    for n, p in reversed(rotated):  # .2 -> .3, .1.gz -> .2.gz ...
        p.rename(directory / p.name.replace(f"{name}.{n}", f"{name}.{n + 1}", 1))
    first = directory / f"{name}.1"
    if mode == "copytruncate":
        shutil.copyfile(path, first)
        with path.open("r+") as f:
            f.truncate(0)
    else:  # create (and the compressing modes): rename, create a new empty file
        path.rename(first)
        path.touch()
    if mode == "compress":
        _compress(first)
    if mode == "delaycompress" and (directory / f"{name}.2").exists():
        _compress(directory / f"{name}.2")
    time.sleep(0.02)


async def follow(path: Path, db: Path, seen: list[str], expect: int) -> None:
    """Run the followed pipeline until ``seen`` holds ``expect`` lines, then a little
    longer (nothing more may come), and stop it gracefully."""
    flow = af.read_lines(str(path), follow=True, poll_interval=0.01, rotate_wait=0.1) | af.for_each(
        seen.append
    )
    async with flow.open(checkpoint=db, commit_interval=0.05) as run:
        await wait_for(lambda: len(seen) >= expect)
        await anyio.sleep(0.3)
        run.stop()


@pytest.mark.anyio
@backends
@pytest.mark.parametrize("mode", ["create", "copytruncate", "compress", "delaycompress"])
async def test_rotations_while_down_are_caught_up(
    anyio_backend: str, tmp_path: Path, mode: str
) -> None:
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    old = tmp_path / "app.log.1"  # last week's rotation: before the first run, not ours
    old.write_text("old1\nold2\n")
    past = time.time() - 3600
    os.utime(old, (past, past))
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    assert seen == ["a1", "a2", "a3"]
    # down: the file goes on (a4, a5), is rotated, a new one fills (b1, b2) and is rotated
    # too before any run saw it, then the live file gets c1
    append(log, "a4", "a5")
    logrotate(log, mode)
    append(log, "b1", "b2")
    logrotate(log, mode)
    append(log, "c1")
    seen.clear()
    await follow(log, db, seen, 5)
    assert seen == ["a4", "a5", "b1", "b2", "c1"]
    # once more with nothing rotated: nothing again, then only what is new
    append(log, "c2")
    seen.clear()
    await follow(log, db, seen, 1)
    assert seen == ["c2"]


@pytest.mark.anyio
@backends
@pytest.mark.parametrize(
    "moment", ["before the plan", "before the open", "path missing", "compressed before the open"]
)
async def test_a_rotation_during_the_resume_loses_nothing(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """The log is rotated while a resumed run starts: after it found the checkpoint's file
    at the path and before it planned the rotated files to catch up, or before it opened
    the path, or with the new file not created yet when it opens it, or compressed at
    once before that open. The checkpoint's file is read on from its committed position
    under its new name (its compressed content), once; the new one
    from its start; no file is reported missed. (The run opened the new file at the old
    file's offset, and the watch counted it as a file never opened: a DataLossError,
    seen under load in the kill/restart proof.)"""
    import aflow.sources._follow as follow_module
    import aflow.sources._source as source_module

    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    append(log, "a4", "a5")  # written while down: the checkpoint has not seen them
    rotated: list[str] = []

    def rotate(create: bool = True) -> None:
        if not rotated:
            rotated.append(moment)
            if create:
                logrotate(log, "compress" if moment.startswith("compressed") else "create")
                append(log, "b1", "b2")
            else:
                log.rename(tmp_path / "app.log.1")

    real_plan, real_open = source_module.plan_catch_up, follow_module._open_fd

    def plan_after_a_rotation(*args: Any) -> Any:
        rotate()
        return real_plan(*args)

    def open_after_a_rotation(path: str) -> Any:
        if path == str(log):
            rotate(create=moment != "path missing")
        return real_open(path)

    if moment == "before the plan":
        monkeypatch.setattr(source_module, "plan_catch_up", plan_after_a_rotation)
    else:
        monkeypatch.setattr(follow_module, "_open_fd", open_after_a_rotation)
    if moment == "path missing":

        async def create_later() -> None:
            await wait_for(lambda: bool(rotated))
            await anyio.sleep(0.1)
            append(log, "b1", "b2")

        async with anyio.create_task_group() as tg:
            tg.start_soon(create_later)
            await follow(log, db, seen, 7)
    else:
        await follow(log, db, seen, 7)
    assert rotated
    assert seen == ["a1", "a2", "a3", "a4", "a5", "b1", "b2"]


@pytest.mark.anyio
@backends
@pytest.mark.parametrize("written", ["less", "more"])
async def test_a_copytruncate_during_the_resume_loses_nothing(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    """The log is copied and truncated (logrotate's ``copytruncate``) after the resume
    found the checkpoint's file at the path and before the first open, and new lines are
    written: fewer bytes than the committed offset, or more. The same file (inode) is
    there, holding other bytes: the rest of the old ones is read from the copy, the new
    ones from the start. (The run read the new lines from the old offset on, and never
    the old file's rest.)"""
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    append(log, "a4", "a5")  # written while down: the checkpoint has not seen them
    new = ["b1", "b2"] if written == "less" else [f"b{i}-{'x' * 20}" for i in range(3)]
    rotated = before_open(
        monkeypatch, log, lambda: (logrotate(log, "copytruncate"), append(log, *new))
    )
    seen.clear()
    await follow(log, db, seen, 2 + len(new))
    assert rotated
    assert seen == ["a4", "a5", *new]


def before_open(monkeypatch: pytest.MonkeyPatch, path: Path, act: Callable[[], Any]) -> list[str]:
    """Run ``act`` once, when the follower first opens ``path``; the list of when it ran."""
    import aflow.sources._follow as follow_module

    done: list[str] = []
    real_open = follow_module._open_fd

    def open_after(at: str) -> Any:
        if at == str(path) and not done:
            done.append(at)
            act()
        return real_open(at)

    monkeypatch.setattr(follow_module, "_open_fd", open_after)
    return done


@pytest.mark.anyio
@backends
@pytest.mark.parametrize("mode", ["create", "delaycompress"])
async def test_a_numbered_rotation_during_the_catch_up_loses_nothing(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Resumed with a rotated file to catch up (``app.log.1``), the log is rotated again
    (``.1`` -> ``.2``, the live file -> ``.1``, a new one; ``.2`` compressed with
    ``delaycompress``) after the plan and before the catch-up opens ``app.log.1``. That
    name is another file's by then: the planned file is read on under ``app.log.2`` (or
    from ``app.log.2.gz``). (It was skipped, its unread lines lost.)"""
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    append(log, "a4", "a5")  # written while down, then rotated away
    logrotate(log, "create")
    append(log, "b1", "b2")
    rotated = before_open(
        monkeypatch, tmp_path / "app.log.1", lambda: (logrotate(log, mode), append(log, "c1"))
    )
    seen.clear()
    await follow(log, db, seen, 5)
    assert rotated
    assert seen == ["a4", "a5", "b1", "b2", "c1"]


@pytest.mark.anyio
@backends
@pytest.mark.parametrize("b_lines", [3, 10])
async def test_compress_at_once_with_an_older_gz_planned(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, b_lines: int
) -> None:
    """logrotate's ``compress``: every resume plans ``app.log.1.gz`` again (read to its
    end). The checkpoint's file is rotated and compressed at once before the first open
    (``.1.gz`` -> ``.2.gz``, the checkpoint's file -> ``.1.gz``): its rest is read from
    the new ``.1.gz``, and the older file (found by its inode) from its end, so nothing
    twice. (A review found the rest lost, or lines read again, when the checkpoint's file
    was shorter or longer than the older one.)"""
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    append(log, "a4", "a5")
    logrotate(log, "compress")  # app.log.1.gz: a1..a5
    bs = [f"b{i}" for i in range(1, b_lines + 1)]
    append(log, *bs[:-1])
    seen.clear()
    await follow(log, db, seen, 2 + len(bs) - 1)
    assert seen == ["a4", "a5", *bs[:-1]]
    append(log, bs[-1])  # written while down
    rotated = before_open(monkeypatch, log, lambda: (logrotate(log, "compress"), append(log, "c1")))
    seen.clear()
    await follow(log, db, seen, 2)
    assert rotated
    assert seen == [bs[-1], "c1"]


@pytest.mark.anyio
@backends
async def test_a_planned_gz_renamed_before_its_open_is_found_by_its_inode(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delaycompress``: every resume plans ``app.log.2.gz`` again (read to its end). A
    rotation before the first open renames it ``.3.gz`` and compresses a longer file into
    ``.2.gz``: the planned file is found under its new name by its inode, not read at its
    old name (another file's, at the old file's end offset: lines read again)."""
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    append(log, "a4", "a5")
    logrotate(log, "delaycompress")  # .1 = a (15 bytes)
    bs = [f"b{i}" for i in range(1, 10)]  # 27 bytes: longer than a
    append(log, *bs)
    seen.clear()
    await follow(log, db, seen, 2 + len(bs))
    assert seen == ["a4", "a5", *bs]
    logrotate(log, "delaycompress")  # .2.gz = a, .1 = b
    append(log, "c1")
    seen.clear()
    await follow(log, db, seen, 1)
    assert seen == ["c1"]
    append(log, "c2")  # written while down
    rotated = before_open(
        monkeypatch, log, lambda: (logrotate(log, "delaycompress"), append(log, "d1"))
    )
    seen.clear()
    await follow(log, db, seen, 2)
    assert rotated
    assert seen == ["c2", "d1"]


@pytest.mark.anyio
@backends
async def test_a_copytruncate_before_the_plan_is_read_once(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copytruncate after the resume looked at the path and before it planned: the plan
    reads the copy on from the committed offset, and the live file, whose content is no
    longer the checkpoint's, from its start. (The live file was also compared with what
    the look saw, so the same rest was read from the copy twice.)"""
    import aflow.sources._source as source_module

    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1", "a2", "a3")
    seen: list[str] = []
    await follow(log, db, seen, 3)
    append(log, "a4", "a5")
    done: list[int] = []
    real_plan = source_module.plan_catch_up

    def plan_after_a_copy(*args: Any) -> Any:
        if not done:
            done.append(1)
            logrotate(log, "copytruncate")
            append(log, "b1", "b2")
        return real_plan(*args)

    monkeypatch.setattr(source_module, "plan_catch_up", plan_after_a_copy)
    seen.clear()
    await follow(log, db, seen, 4)
    assert done
    assert seen == ["a4", "a5", "b1", "b2"]


@pytest.mark.anyio
@backends
async def test_a_copytruncate_before_the_open_at_offset_zero(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint knows the live file at offset 0 (empty at the first run). Written
    while down, then copied and truncated before the first open: the copy is read (it
    was not, at offset 0)."""
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    log.touch()
    seen: list[str] = []
    await follow(log, db, seen, 0)
    append(log, "a1", "a2")
    rotated = before_open(
        monkeypatch, log, lambda: (logrotate(log, "copytruncate"), append(log, "b1"))
    )
    await follow(log, db, seen, 3)
    assert rotated
    assert seen == ["a1", "a2", "b1"]


@pytest.mark.anyio
@backends
async def test_a_rotated_file_still_written_is_drained(anyio_backend: str, tmp_path: Path) -> None:
    log, db = tmp_path / "app.log", tmp_path / "cp.db"
    append(log, "a1")
    seen: list[str] = []
    await follow(log, db, seen, 1)
    append(log, "a2")
    os.rename(log, tmp_path / "app.log-20260101")  # dateext
    append(log, "b1")
    seen.clear()
    flow = af.read_lines(str(log), follow=True, poll_interval=0.01, rotate_wait=0.5) | af.for_each(
        seen.append
    )
    async with flow.open(checkpoint=db, commit_interval=0.05) as run:
        await wait_for(lambda: len(seen) >= 2)
        # the writer had not reopened yet: it writes once more to the rotated file
        append(tmp_path / "app.log-20260101", "a3")
        await wait_for(lambda: len(seen) >= 3)
        await anyio.sleep(0.2)
        run.stop()
    assert seen == ["a2", "b1", "a3"]


def test_siblings_are_the_names_rotation_makes(tmp_path: Path) -> None:
    names = ["app.log", "app.log.1", "app.log.2.gz", "app.log-20260101", "app.log_2026-01-01"]
    others = ["app.logger", "app.log.bak", "app.log.swp", "other.log.1", "app.log.1.d"]
    for n in names + others:
        if n == "app.log.1.d":
            (tmp_path / n).mkdir()
        else:
            (tmp_path / n).write_text("x\n")
    got = [Path(p).name for p in rotated_siblings(str(tmp_path / "app.log"))]
    assert got == sorted(names[1:])


def test_a_first_run_records_what_is_beside_the_path_as_read(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("live\n")
    (tmp_path / "app.log.1").write_text("older\n")
    plan, changes = plan_catch_up(str(log), {})
    assert plan == []
    entries = sorted(changes.values(), key=lambda e: e.get("done", False))
    assert [e.get("done", False) for e in entries] == [False, True]
    assert entries[0]["offset"] == 0  # the live file, from its start
    # resumed with those entries only: nothing to catch up
    assert plan_catch_up(str(log), changes) == ([], {})
    # a new rotation: the live file is read, renamed; a new one appears
    os.rename(log, tmp_path / "app.log.2")
    log.write_text("newest\n")
    plan, _ = plan_catch_up(str(log), changes)
    assert [(Path(c.path).name, c.offset) for c in plan] == [("app.log.2", 0)]


def test_entries_of_files_gone_are_removed(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("live\n")
    (tmp_path / "app.log.1").write_text("older\n")
    _, entries = plan_catch_up(str(log), {})
    (tmp_path / "app.log.1").unlink()
    other = {"7:7": {"path": str(tmp_path / "b.log"), "fp": "00", "len": 1, "offset": 1}}
    plan, changes = plan_catch_up(str(log), {**entries, **other})
    assert plan == []
    assert [k for k, v in changes.items() if v is None] == [
        k for k, e in entries.items() if e.get("done")
    ]


class _Crash(af.abc.Operator):
    """Passes batches on; raises once ``after`` rows went by (a crash mid-way) and
    ``ready()`` holds (by default at once)."""

    name = "crash"

    def __init__(self, after: int, ready: Callable[[], bool] = lambda: True) -> None:
        self.after, self.ready = after, ready

    def start(self) -> af.abc.Processor:
        return _Crashing(self.after, self.ready)


class _Crashing(af.abc.Processor):
    def __init__(self, after: int, ready: Callable[[], bool]) -> None:
        self.after, self.ready, self.rows = after, ready, 0

    def process(self, msg: Any) -> list[Any]:
        self.rows += len(msg)
        if self.rows > self.after:
            if self.ready():
                raise RuntimeError("crash")
            time.sleep(0.02)  # waiting for ready(): slower still, for commits to land
        time.sleep(0.002)  # slow enough for barriers to fall between the files
        return [msg]


def _committed_repetition(db: Path) -> int | None:
    """The ``@repetition`` of the checkpoint committed in ``db`` (``None``: none yet)."""
    store = af.SqliteStore(db)
    try:
        cp = store.load() if db.exists() else None
    finally:
        store.close()
    if cp is None:
        return None
    reps = [p["@repetition"] for p in cp.positions.values() if p and "@repetition" in p]
    return reps[0] if reps else None


_DT = np.dtype([("key", "<i8"), ("value", "<i8")])
_LOG = r"k=(?P<key>\d+) v=(?P<value>\d+)"


def _write_part(path: Path, kind: str, rows: np.ndarray[Any, Any]) -> None:
    pairs = rows.tolist()
    if kind == "records":
        path.write_bytes(rows.tobytes())
    elif kind == "npy":
        np.save(path, rows)
    elif kind == "jsonl":
        path.write_text("".join(f'{{"key": {k}, "value": {v}}}\n' for k, v in pairs))
    elif kind == "log":
        path.write_text("".join(f"k={k} v={v}\n" for k, v in pairs))
    else:  # csv, csv threads=1, lines
        path.write_text("".join(f"{k},{v}\n" for k, v in pairs))


def _read(kind: str, pattern: str, small: bool) -> Any:
    """The flow reading the glob with ``kind``'s read_* (``small``: small reads and few
    files open, so barriers fall between the blocks of one file)."""
    opts: dict[str, Any] = {"read_size": 1024, "max_open": 2} if small else {}
    if kind == "records":
        return af.read_records(pattern, _DT, **opts)
    if kind == "npy":
        return af.read_npy(pattern, **opts)
    if kind == "csv":
        return af.read_csv(pattern, _DT, threads=3, **opts)
    if kind == "csv1":
        return af.read_csv(pattern, _DT, threads=1, **opts)
    if kind == "csv0":
        return af.read_csv(pattern, _DT, threads=0, **opts)
    if kind == "jsonl":
        return af.read_jsonl(pattern, _DT, threads=2, **opts)
    if kind == "log":
        columns = {"key": "int", "value": "int"}
        return af.read_log(pattern, _LOG, columns, threads=2, **opts)
    assert kind == "lines"
    return af.read_lines(pattern, **opts)


def _sink(kind: str) -> Any:
    if kind == "lines":  # str elements: count and sum by hand (a committed reduce)
        return af.reduce(lambda acc, line: (acc[0] + 1, acc[1] + int(line.split(",")[1])), (0, 0))
    return af.to_aggregate("key", "value", ("count", "sum"))


def _totals(kind: str, result: Any) -> Any:
    if kind == "lines":
        return result.value
    return result.value.tolist()


@pytest.mark.anyio
@backends
@pytest.mark.parametrize(
    "kind",
    [
        "records",
        "npy",
        "csv",
        "csv1",
        "csv0",
        pytest.param("jsonl", marks=pytest.mark.slow),
        "log",
        "lines",
    ],
)
async def test_a_glob_of_many_files_crashed_mid_way_reads_each_file_once(
    anyio_backend: str, kind: str, tmp_path: Path
) -> None:
    n_files, per_file = 50, 400
    suffix = {"records": "bin", "npy": "npy"}.get(kind, "txt")
    for f in range(n_files):
        rows = np.zeros(per_file, _DT)
        rows["value"] = np.arange(f * per_file, (f + 1) * per_file)
        rows["key"] = rows["value"] % 7
        _write_part(tmp_path / f"part{f:02d}.{suffix}", kind, rows)
    db = tmp_path / "cp.db"
    pattern = str(tmp_path / f"part*.{suffix}")

    def flow(after: int) -> Any:
        return _read(kind, pattern, True) | af.Stage(_Crash(after)) | _sink(kind)

    total = n_files * per_file
    for after in (total // 3, 2 * total // 3):  # crash twice, then run to the end
        with pytest.raises(RuntimeError, match="crash"):
            await flow(after).run(checkpoint=db, commit_interval=0.01)
        cp = af.SqliteStore(db).load()
        assert cp is not None
        assert cp.states  # some epochs were committed before it
    result = await flow(total).run(checkpoint=db, commit_interval=0.01)
    one_pass = await (_read(kind, pattern, False) | _sink(kind)).run()
    assert _totals(kind, result) == _totals(kind, one_pass)
    if kind == "lines":
        assert result.value[0] == total
    else:
        assert sum(c for _, c, _ in result.value.tolist()) == total


@pytest.mark.anyio
@backends
@pytest.mark.parametrize("kind", ["records", "csv"])
async def test_repeat_crashed_in_its_second_pass_resumes_that_pass(
    anyio_backend: str, kind: str, tmp_path: Path
) -> None:
    per_file, times = 3000, 3
    rows = np.zeros(per_file, _DT)
    rows["value"] = np.arange(per_file)
    rows["key"] = rows["value"] % 5
    suffix = "bin" if kind == "records" else "txt"
    _write_part(tmp_path / f"data.{suffix}", kind, rows)
    pattern = str(tmp_path / f"data.{suffix}")
    db = tmp_path / "cp.db"

    def flow(after: int, ready: Callable[[], bool] = lambda: True) -> Any:
        epochs = af.repeat(_read(kind, pattern, True), times)
        return epochs | af.Stage(_Crash(after, ready)) | _sink(kind)

    # in the middle of the 2nd pass, once a commit made in it has landed (a commit's
    # sync can take long on a loaded machine; the crash waits for it, not for a time)
    def in_second_pass() -> bool:
        return _committed_repetition(db) == 1

    with pytest.raises(RuntimeError, match="crash"):
        await flow(per_file * 3 // 2, in_second_pass).run(checkpoint=db, commit_interval=0.01)
    cp = af.SqliteStore(db).load()
    assert cp is not None
    (positions,) = [p for p in cp.positions.values() if p]
    assert positions["@repetition"] == 1  # the checkpoint is in the 2nd pass
    result = await flow(per_file * times).run(checkpoint=db, commit_interval=0.01)
    one_pass = (await (_read(kind, pattern, False) | _sink(kind)).run()).value.tolist()
    assert result.value.tolist() == [(k, c * times, s * times) for k, c, s in one_pass]

"""Opening and following files the way a log shipper must: globs, FIFOs, compressed files,
torn last lines, invalid UTF-8 (the rotation modes are in tests/test_rotation.py)."""

from __future__ import annotations

import bz2
import gzip
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import zstandard

import aflow as af
from aflow.sources import _watch
from aflow.sources._guardproc import RemoteGuard

pytestmark = pytest.mark.anyio


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - polls what the flow has delivered
            await anyio.sleep(0.01)


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
async def test_a_notified_follower_wakes_at_a_write_not_at_its_poll(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("one\n")
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=60) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: seen == ["one"])
        with path.open("a") as f:
            f.write("two\n")
        await wait_for(lambda: seen == ["one", "two"])  # long before the next poll
        run.stop()


async def _rename_and_recreate(tmp_path: Path, meanwhile: Any = None) -> af.RunStatistics:
    """Follow app.log; rename it away (the path is missing for a while: ``meanwhile`` is
    called then), write a new one; both files' lines are read."""
    path = tmp_path / "app.log"
    path.write_text("one\n")
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.01, rotate_wait=0.05)
    async with (flow | af.for_each(seen.append)).open() as run:
        await wait_for(lambda: seen == ["one"])
        if meanwhile is not None:
            meanwhile()
        os.rename(path, tmp_path / "app.log.1")
        await anyio.sleep(0.1)
        path.write_text("two\n")
        await wait_for(lambda: seen == ["one", "two"])
        run.stop()
    return run.statistics()


async def test_a_path_briefly_missing_does_not_end_the_run(tmp_path: Path) -> None:
    await _rename_and_recreate(tmp_path)


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify (the 'inotify' extra)")
async def test_a_file_created_while_the_path_is_looked_at_is_not_called_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower looks at its path in a worker thread while the watch's task counts
    the files that appear: one created after the look (a slow disk, a loaded machine)
    is opened next time, not reported as rotated away unread (it was, under load)."""
    from aflow.sources import _follow

    real_key_at = _follow._key_at

    def slow_key_at(path: str):  # type: ignore[no-untyped-def]
        key = real_key_at(path)
        time.sleep(0.3)  # the look is done; the file appears meanwhile
        return key

    slowed = lambda: monkeypatch.setattr(_follow, "_key_at", slow_key_at)  # noqa: E731
    assert (await _rename_and_recreate(tmp_path, slowed)).errors == 0


async def test_following_a_glob_picks_up_new_files(tmp_path: Path) -> None:
    seen: list[str] = []
    flow = af.read_lines(str(tmp_path / "*.log"), follow=True, poll_interval=0.01)
    async with (flow | af.for_each(seen.append)).open() as run:  # nothing matches yet: fine
        (tmp_path / "a.log").write_text("a1\n")
        await wait_for(lambda: seen == ["a1"])
        (tmp_path / "b.log").write_text("b1\n")
        await wait_for(lambda: sorted(seen) == ["a1", "b1"])
        with (tmp_path / "a.log").open("a") as f:
            f.write("a2\n")
        await wait_for(lambda: len(seen) == 3)
        run.stop()
    assert sorted(seen) == ["a1", "a2", "b1"]


@pytest.mark.parametrize("kind", ["str", "path", "list"])
async def test_an_empty_glob_raises_whatever_its_type(tmp_path: Path, kind: str) -> None:
    (tmp_path / "real.txt").write_text("x\n")
    pattern = tmp_path / "*.nothing"
    paths = {
        "str": str(pattern),
        "path": pattern,
        "list": [tmp_path / "real.txt", str(pattern)],
    }[kind]
    with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.nothing"):
        await af.read_lines(paths).run()  # type: ignore[arg-type]


async def test_a_fifo_without_a_writer_is_cancellable(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with anyio.move_on_after(0.2) as scope:
        await af.read_lines(str(fifo)).run()
    assert scope.cancelled_caught


async def test_a_fifo_is_read_once_a_writer_comes(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as f:
            f.write("one\ntwo\n")

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, write)
        with anyio.fail_after(5):
            result = await (af.read_lines(str(fifo)) | af.collect()).run()
    assert result.value == ["one", "two"]


def test_sigterm_ends_a_run_waiting_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    script = textwrap.dedent(
        f"""
        import signal, sys, anyio, aflow as af
        async def main():
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async with anyio.create_task_group() as tg:
                    async def stop():
                        async for _ in signals:
                            tg.cancel_scope.cancel()
                    tg.start_soon(stop)
                    print("ready", flush=True)
                    await af.read_lines({str(fifo)!r}).run()
        anyio.run(main, backend=sys.argv[1])
        print("ended", flush=True)
        """
    )
    for backend in ("asyncio", "trio"):
        env = {**os.environ, "PYTHONPATH": str(Path(af.__file__).parent.parent)}
        proc = subprocess.Popen(
            [sys.executable, "-c", script, backend], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        proc.stdout.close()
        assert out.strip() == "ended", backend


async def test_a_torn_last_line_is_reported_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.csv"
    path.write_text("1,1,1\n1000,1000,12")  # the writer is in the middle of a line
    dtype = [("ts", "i8"), ("sensor", "i4"), ("value", "f4")]
    dead: list[af.FailedItem] = []
    flow = af.read_csv(str(path), dtype, last_line="report", on_error=af.dead_letter(dead))
    result = await (flow | af.collect()).run()
    assert result.value["ts"].tolist() == [1]
    assert isinstance(dead[0].error, af.IncompleteFrameError)
    assert dead[0].item == b"1000,1000,12\n"
    assert dead[0].error.line == 2
    with caplog.at_level(logging.WARNING, logger="aflow"):
        kept = await (af.read_csv(str(path), dtype) | af.collect()).run()
    assert kept.value["ts"].tolist() == [1, 1000]
    assert "line 2 has no newline" in caplog.text


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gz":
        return gzip.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    return zstandard.ZstdCompressor().compress(data)


async def test_a_zstandard_file_without_the_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "small.zst").write_bytes(compress("zst", b"a\nb\n"))  # read whole
    big = b"".join(b"%d\n" % i for i in range(300_000))  # more than one read: streamed
    (tmp_path / "big.zst").write_bytes(compress("zst", big))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if not installed
    for name in ("small.zst", "big.zst"):
        flow = af.read_lines(str(tmp_path / name), read_size=1 << 16)
        with pytest.raises(RuntimeError, match=r"install the 'zstd' extra"):
            await (flow | af.collect()).run()


@pytest.mark.parametrize("kind", ["gz", "bz2", "zst"])
async def test_compressed_files_are_read_transparently(tmp_path: Path, kind: str) -> None:
    big = b"".join(b"%d\n" % i for i in range(300_000))  # more than one read
    (tmp_path / f"app.log.2.{kind}").write_bytes(compress(kind, big))
    (tmp_path / "app.log.1").write_bytes(compress(kind, b"x\ny\n"))  # by magic bytes alone
    (tmp_path / "app.log").write_bytes(b"z\n")
    # read_size 64 KiB: the big file is streamed, the small ones read whole
    flow = af.read_lines(str(tmp_path / "app.log*"), read_size=1 << 16)
    result = await (flow | af.collect()).run()
    assert result.value[:3] == ["z", "x", "y"]  # the glob's order: app.log, .1, .2.<kind>
    assert result.value[3:] == [str(i) for i in range(300_000)]


async def test_invalid_utf8_in_read_lines_goes_to_on_error(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"good\n\xff\xfebad\nalso good\n")
    dead: list[af.FailedItem] = []
    result = await (af.read_lines(str(path), on_error=af.dead_letter(dead)) | af.collect()).run()
    assert result.value == ["good", "also good"]
    assert dead[0].item == b"\xff\xfebad\n"
    assert dead[0].error.line == 2  # type: ignore[attr-defined]
    assert result.statistics.errors == 1
    with pytest.raises(af.DecodeError, match="not valid utf-8"):
        await af.read_lines(str(path)).run()


def numbered(lo: int, hi: int) -> str:
    return "".join(f"line {i:05d}\n" for i in range(lo, hi))


@pytest.mark.parametrize("notified", [True, False])
async def test_copytruncate_takes_what_was_unread_from_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notified: bool
) -> None:
    if notified and not _watch.have_inotify():
        pytest.skip("needs inotify")
    if not notified:
        monkeypatch.setattr(_watch, "have_inotify", lambda: False)  # the polling fallback
    path = tmp_path / "app.log"
    path.write_text(numbered(0, 100))
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.05) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: len(seen) == 100)
        await anyio.sleep(0.1)  # the follower waits for a change
        # copytruncate while the follower cannot run (no await): lines 100-199 are
        # written, copied with the rest, and truncated away before it reads them
        with path.open("a") as f:
            f.write(numbered(100, 200))
        shutil.copyfile(path, tmp_path / "app.log.1")
        os.truncate(path, 0)
        with path.open("a") as f:
            f.write(numbered(200, 210))
        await wait_for(lambda: len(seen) >= 210)
        await anyio.sleep(0.2)  # nothing more, nothing twice
        run.stop()
    assert seen == numbered(0, 210).splitlines()


HEADER = "".join(f"same header, every time the log starts: {i:02d}\n" for i in range(8))


@pytest.mark.parametrize("notified", [True, False])
async def test_a_file_truncated_and_written_past_the_offset_is_read_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notified: bool
) -> None:
    # The first 256 bytes are the same before and after the truncation (a log that starts
    # with a banner), and the file grows back past the follower's offset before it looks:
    # neither its size nor its first bytes tell; the bytes before the offset do.
    if notified and not _watch.have_inotify():
        pytest.skip("needs inotify")
    if not notified:
        monkeypatch.setattr(_watch, "have_inotify", lambda: False)  # the polling fallback
    path = tmp_path / "app.log"
    path.write_text(HEADER + numbered(0, 100))
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.05) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: len(seen) == 108)
        await anyio.sleep(0.1)  # the follower waits for a change
        # while the follower cannot run (no await): truncated (no copy: nothing was
        # unread), then written again, past the old offset
        os.truncate(path, 0)
        with path.open("a") as f:
            f.write(HEADER + numbered(100, 250))
        await wait_for(lambda: len(seen) >= 108 + 158)
        await anyio.sleep(0.2)  # nothing more, nothing twice
        run.stop()
    assert seen == (HEADER + numbered(0, 100) + HEADER + numbered(100, 250)).splitlines()


@pytest.fixture
def guards(monkeypatch: pytest.MonkeyPatch) -> list[RemoteGuard]:
    """The guards started by followers (in the guards' process)."""
    if not _watch.have_inotify():
        pytest.skip("needs inotify")
    started: list[RemoteGuard] = []
    start = RemoteGuard.start

    def recording(self: RemoteGuard) -> bool:
        started.append(self)
        return start(self)

    monkeypatch.setattr(RemoteGuard, "start", recording)
    return started


def block_until_guarded(guards: list[RemoteGuard], size: int) -> None:
    """Block the event loop (the follower cannot run) until a guard read ``size`` bytes."""
    deadline = time.monotonic() + 10
    while all(g.end != size for g in guards) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert any(g.end == size for g in guards), "the guard did not read the write"


async def test_what_a_truncation_removed_before_the_follower_read_it_comes_from_the_guard(
    tmp_path: Path, guards: list[RemoteGuard]
) -> None:
    # copytruncate's window: lines appended after the copy and truncated away before the
    # follower (busy: the event loop is blocked here) read them. Only a prompt reader has
    # them, as tail -F would: the guard (in the guards' process).
    path = tmp_path / "app.log"
    path.write_text(numbered(0, 100))
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.05, on_error="skip")
    async with (flow | af.for_each(seen.append)).open() as run:
        await wait_for(lambda: len(seen) == 100)
        await anyio.sleep(0.1)  # the follower waits for a change
        with path.open("a") as f:
            f.write(numbered(100, 150))  # in no copy: there is none
        block_until_guarded(guards, path.stat().st_size)
        os.truncate(path, 0)
        with path.open("a") as f:
            f.write(numbered(150, 160))
        await wait_for(lambda: len(seen) >= 160)
        await anyio.sleep(0.2)  # nothing more, nothing twice
        run.stop()
    assert seen == numbered(0, 160).splitlines()
    assert run.statistics().errors == 0


async def test_what_a_truncation_removed_and_the_guard_could_not_keep_is_counted(
    tmp_path: Path, guards: list[RemoteGuard]
) -> None:
    path = tmp_path / "app.log"
    path.write_text(numbered(0, 100))
    seen: list[str] = []
    # a guard keeps at most read_size bytes: 64, less than the 50 lines it misses
    flow = af.read_lines(str(path), follow=True, poll_interval=0.05, read_size=64, on_error="skip")
    async with (flow | af.for_each(seen.append)).open() as run:
        await wait_for(lambda: len(seen) == 100)
        await anyio.sleep(0.1)
        with path.open("a") as f:
            f.write(numbered(100, 150))
        block_until_guarded(guards, path.stat().st_size)
        os.truncate(path, 0)
        with path.open("a") as f:
            f.write(numbered(150, 160))
        await wait_for(lambda: len(seen) >= 110)
        await anyio.sleep(0.2)
        run.stop()
    assert seen[:100] == numbered(0, 100).splitlines()
    assert seen[-10:] == numbered(150, 160).splitlines()
    # a poll's read already in a worker thread when the loop was blocked may have taken
    # one read_size of the new lines (the last one torn, and reported): nothing more
    early = "\n".join(seen[100:-10])
    assert len(early) <= 64
    assert numbered(100, 150).startswith(early)
    assert run.statistics().errors == 1  # one truncation lost bytes (none twice)

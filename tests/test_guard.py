"""The guard: the newest bytes of a followed file, kept for when a truncation removes them
before the follower read them (the follower's side is in tests/test_follow.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aflow.sources import _guard, _watch
from aflow.sources._fileid import file_id
from aflow.sources._guard import GUARD_ENV, SWITCH_ENV, SWITCH_INTERVAL, Guard


def numbered(lo: int, hi: int) -> bytes:
    return b"".join(b"line %05d\n" % i for i in range(lo, hi))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "app.log"
    path.write_bytes(numbered(0, 100))
    fd = os.open(path, os.O_RDONLY)
    yield path, fd
    os.close(fd)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_keeps_what_was_appended_when_the_file_is_truncated(log: tuple[Path, int]) -> None:
    path, fd = log
    ident = file_id(str(path))
    assert ident is not None
    read = len(numbered(0, 100))  # what the follower read
    guard = Guard(fd, read, limit=1 << 20)
    try:
        guard.look()
        append(path, numbered(100, 150))
        guard.look()  # at the write
        os.truncate(path, 0)
        append(path, numbered(150, 400))  # past the old size: seen by the bytes before it
        kept, missing = guard.take(ident, read, numbered(90, 100))
        assert (kept, missing) == (numbered(100, 150), 0)
        assert guard.take(ident, read, numbered(90, 100)) == (b"", 0)  # given once
        assert guard.end == len(numbered(150, 400))  # the new content, from its start
    finally:
        guard.stop()
    assert guard.fd is None  # its duplicate descriptor is closed


def test_gives_nothing_for_another_content(log: tuple[Path, int]) -> None:
    path, fd = log
    ident = file_id(str(path))
    assert ident is not None
    guard = Guard(fd, 0, limit=1 << 20)
    try:
        guard.look()
        os.truncate(path, 0)
        # the follower read the same first bytes, but others before its offset
        assert guard.take(ident, 200, b"not what the guard kept") == (b"", 0)
    finally:
        guard.stop()


def test_counts_what_it_could_not_keep(log: tuple[Path, int]) -> None:
    path, fd = log
    ident = file_id(str(path))
    assert ident is not None
    read = len(numbered(0, 100))
    guard = Guard(fd, read, limit=55)  # five lines
    try:
        append(path, numbered(100, 150))
        guard.look()
        os.truncate(path, 0)
        kept, missing = guard.take(ident, read, numbered(90, 100))
    finally:
        guard.stop()
    assert kept == numbered(145, 150)
    assert missing == len(numbered(100, 145))


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_reads_each_write_before_the_truncation(log: tuple[Path, int]) -> None:
    path, fd = log
    ident = file_id(str(path))
    assert ident is not None
    read = len(numbered(0, 100))
    guard = Guard(fd, read, limit=1 << 20)
    thread = threading.Thread(target=guard.run)
    thread.start()
    try:
        for k in range(5):  # appended, then truncated: only a prompt reader has them
            time.sleep(0.02)
            append(path, numbered(100 + 10 * k, 110 + 10 * k))
        deadline = time.monotonic() + 10
        while guard.end < read + len(numbered(100, 150)) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.truncate(path, 0)
        kept, missing = guard.take(ident, read, numbered(90, 100))
    finally:
        guard.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()  # a stop ends it
    assert (kept, missing) == (numbered(100, 150), 0)
    assert guard.fd is None


def test_stopped_before_it_ran_it_releases_its_descriptor(log: tuple[Path, int]) -> None:
    _, fd = log
    guard = Guard(fd, 0, limit=1 << 20)
    dup = guard.fd
    assert dup is not None
    guard.stop()
    assert guard.fd is None
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(dup)
    guard.run()  # returns at once


def wait_until(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert check()


def inotify_instances() -> int:
    fds = os.listdir("/proc/self/fd")
    links = []
    for fd in fds:
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sum(link == "anon_inode:inotify" for link in links)


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_the_switch_interval_is_short_at_a_copy_and_after_a_truncation(
    log: tuple[Path, int],
) -> None:
    # an armed guard must not wait 5 ms (the default) for the GIL: the copytruncate window
    path, fd = log
    before = sys.getswitchinterval()
    guard = Guard(fd, 0, limit=1 << 20, always=False)
    assert guard.start()
    try:
        append(path, numbered(100, 110))
        wait_until(lambda: guard.end == path.stat().st_size)
        assert sys.getswitchinterval() == before  # following alone changes nothing
        assert not guard.armed
        guard.arm()  # the follower saw a copy
        assert guard.suspected
        assert guard.armed
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL))
        os.truncate(path, 0)  # the copy is done
        wait_until(lambda: not guard.suspected)
        assert guard.truncations == 1
        assert guard.armed  # it still reads at every write (learned)
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL))
        guard.arm()  # armed for good already: nothing more
        assert not guard.suspected
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL))
    finally:
        guard.stop()
    assert not guard.armed
    assert not guard.suspected
    assert sys.getswitchinterval() == before  # given back at a stop too


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_the_switch_interval_can_be_left_alone(
    log: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fd = log
    monkeypatch.setenv(SWITCH_ENV, "0")
    before = sys.getswitchinterval()
    guard = Guard(fd, 0, limit=1 << 20)
    assert guard.start()
    try:
        assert guard.armed
        assert sys.getswitchinterval() == before
    finally:
        guard.stop()


def watched_for_writes(guard: Guard) -> bool:
    """Whether the guards' thread has an inotify watch on the guard's file for writes."""
    return guard in _guard._hub._files.get(guard.wd, []) if guard.wd is not None else False


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_a_file_truncated_once_stays_armed(log: tuple[Path, int]) -> None:
    # a file rotated by copytruncate will be again: its guard reads at every write from
    # then on, and does not wait for the next sign of a copy to start
    path, fd = log
    before = sys.getswitchinterval()
    guard = Guard(fd, 0, limit=1 << 20, always=False)
    assert guard.start()
    try:
        append(path, numbered(100, 110))
        wait_until(lambda: guard.end == path.stat().st_size)
        assert not guard.learned
        os.truncate(path, 0)  # no sign of a copy: nothing suspected it
        wait_until(lambda: guard.truncations == 1)
        assert guard.learned
        assert guard.armed
        assert not guard.suspected
        # the next window must not wait 5 ms for the GIL either: short for good
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL))
        wait_until(lambda: watched_for_writes(guard))
        time.sleep(3 * _guard.IDLE + _guard.ARMED)  # long after: still armed
        assert guard.armed
        assert watched_for_writes(guard)
        append(path, numbered(200, 210))  # read (woken by the write)
        wait_until(lambda: guard.end == path.stat().st_size)
    finally:
        guard.stop()
    assert not guard.armed
    assert guard.wd is None
    assert sys.getswitchinterval() == before  # given back at the stop


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_a_file_never_truncated_is_not_armed_in_auto_mode(
    log: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = log
    monkeypatch.setenv(GUARD_ENV, "auto")
    before = sys.getswitchinterval()
    guard = Guard(fd, 0, limit=1 << 20)
    assert guard.start()
    try:
        for k in range(5):
            append(path, numbered(100 + k, 101 + k))
            time.sleep(0.02)
        wait_until(lambda: guard.end == path.stat().st_size)
        time.sleep(2 * _guard.IDLE)
        assert guard.truncations == 0
        assert not guard.armed
        assert not guard.learned
        assert guard.wd is None  # its writes wake nobody
        assert not watched_for_writes(guard)
        assert sys.getswitchinterval() == before  # and the interpreter is left alone
    finally:
        guard.stop()


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
@pytest.mark.parametrize("setting", [None, "Always"])
def test_guards_are_armed_from_their_start_by_default(
    log: tuple[Path, int], monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    # armed at a sign of a copy only, the first copytruncate of a file lost a writer's
    # burst more than tail -F under load: armed from the start, as tail -F reads
    _, fd = log
    before = sys.getswitchinterval()
    if setting is None:
        monkeypatch.delenv(GUARD_ENV, raising=False)
    else:
        monkeypatch.setenv(GUARD_ENV, setting)
    guard = Guard(fd, 0, limit=1 << 20)
    assert guard.start()
    try:
        assert guard.armed
        assert guard.learned
        assert not guard.suspected
        wait_until(lambda: watched_for_writes(guard))
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL))
    finally:
        guard.stop()
    assert sys.getswitchinterval() == before
    monkeypatch.setenv(GUARD_ENV, "auto")
    guard = Guard(fd, 0, limit=1 << 20)
    assert not guard.armed
    guard.stop()


def test_a_bad_guard_setting_is_an_error(
    log: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fd = log
    monkeypatch.setenv(GUARD_ENV, "sometimes")
    opened = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=f"{GUARD_ENV}='sometimes'"):
        Guard(fd, 0, limit=1 << 20)
    assert len(os.listdir("/proc/self/fd")) == opened  # no descriptor left behind


def test_a_bad_switch_interval_is_an_error(
    log: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SWITCH_ENV, "fast")
    with pytest.raises(ValueError, match=SWITCH_ENV):
        _guard._switch_interval()


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_all_guards_share_one_thread_and_one_inotify_instance(tmp_path: Path) -> None:
    before = inotify_instances()
    paths = [tmp_path / f"d{i % 3}" / f"app{i}.log" for i in range(200)]
    fds = []
    for p in paths:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"")
        fds.append(os.open(p, os.O_RDONLY))
    guards = [Guard(fd, 0, limit=1 << 20) for fd in fds]
    try:
        assert all(g.start() for g in guards)  # more than the kernel's 128 instances
        assert inotify_instances() == before + 1
        assert sum(t.name == "aflow-guards" for t in threading.enumerate()) == 1
        for k, p in enumerate(paths):
            append(p, numbered(k, k + 1))
        for g, p in zip(guards, paths, strict=True):  # each write to its own guard
            wait_until(lambda g=g, p=p: g.end == p.stat().st_size)
    finally:
        for g in guards:
            g.stop()
        for fd in fds:
            os.close(fd)
    wait_until(lambda: not any(t.name == "aflow-guards" for t in threading.enumerate()))
    assert inotify_instances() == before  # the last stop releases it


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_a_guard_refused_by_the_kernel_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    hub = _guard._Hub()  # a fresh one: the process's may hold an instance already
    monkeypatch.setattr(_guard, "_hub", hub)
    monkeypatch.setattr(_watch.inotify_simple, "INotify", refused)
    monkeypatch.setattr(_watch, "_refused", 0)  # the first refusal of the process
    fds = []
    for i in range(3):
        p = tmp_path / f"app{i}.log"
        p.write_bytes(b"")
        fds.append(os.open(p, os.O_RDONLY))
    try:
        guards = [Guard(fd, 0, limit=1 << 20) for fd in fds]
        with caplog.at_level(logging.WARNING, logger="aflow"):
            assert not any(g.start() for g in guards)
    finally:
        for fd in fds:
            os.close(fd)
    assert all(g.fd is None for g in guards)  # stopped: descriptors released
    assert _watch.refused() == 3
    assert all(isinstance(g.refusal, OSError) for g in guards)
    warnings = [r for r in caplog.records if "without inotify" in r.getMessage()]
    assert len(warnings) == 1
    assert "app0.log" in warnings[0].getMessage()
    assert "Too many open files" in warnings[0].getMessage()

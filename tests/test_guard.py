"""The guard: the newest bytes of a followed file, kept for when a truncation removes them
before the follower read them (the follower's side is in tests/test_follow.py)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aflow.sources import _watch
from aflow.sources._fileid import file_id
from aflow.sources._guard import SWITCH_INTERVAL, Guard


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


@pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")
def test_the_switch_interval_is_short_while_a_guard_runs(log: tuple[Path, int]) -> None:
    # a woken guard must not wait 5 ms (the default) for the GIL: the copytruncate window
    _, fd = log
    before = sys.getswitchinterval()
    guard = Guard(fd, 0, limit=1 << 20)
    thread = threading.Thread(target=guard.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while sys.getswitchinterval() == before and time.monotonic() < deadline:
            time.sleep(0.001)
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL))
    finally:
        guard.stop()
        thread.join(timeout=5)
    assert sys.getswitchinterval() == before  # given back

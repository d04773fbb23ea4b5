"""The guards' process: the guards of the followers of a process, out of its GIL's way."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import aflow as af
from aflow.sources import _watch
from aflow.sources._fileid import file_id
from aflow.sources._guardproc import RemoteGuard, _guards

pytestmark = pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")


def numbered(lo: int, hi: int) -> bytes:
    return b"".join(b"line %05d\n" % i for i in range(lo, hi))


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_remote_guard_keeps_what_a_truncation_removed(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(numbered(0, 100))
    ident = file_id(str(path))
    assert ident is not None
    read = len(numbered(0, 100))  # what the follower read
    fd = os.open(path, os.O_RDONLY)
    guard = RemoteGuard(fd, read, 1 << 20, str(path))
    try:
        assert guard.start()
        os.close(fd)  # the guards' process holds a descriptor of its own
        with path.open("ab") as f:
            f.write(numbered(100, 150))
        wait_until(lambda: guard.end == path.stat().st_size)  # read at the write
        os.truncate(path, 0)
        wait_until(lambda: guard.truncations == 1)
        assert guard.take(ident, read, numbered(90, 100)) == (numbered(100, 150), 0)
        assert guard.take(ident, read, numbered(90, 100)) == (b"", 0)  # given once
    finally:
        guard.stop()
        guard.stop()  # idempotent
    wait_until(lambda: guard.truncations == -1)  # given back (a stop is posted: soon)


@pytest.mark.anyio
async def test_followers_share_one_guards_process_and_leave_this_one_alone(
    tmp_path: Path,
) -> None:
    for i in range(3):
        (tmp_path / f"app{i}.log").write_text("first\n")
    seen: list[str] = []
    flow = af.read_lines(str(tmp_path / "app*.log"), follow=True, poll_interval=0.05)
    async with (flow | af.for_each(seen.append)).open() as run:
        with anyio.fail_after(10):
            while len(seen) < 3:  # noqa: ASYNC110 - polls what the flow delivered
                await anyio.sleep(0.01)
        child = _guards._child
        assert child is not None
        assert child.poll() is None  # running
        assert not any(t.name == "aflow-guards" for t in threading.enumerate())
        run.stop()
    assert run.statistics().stages[0].unwatched == 0
    assert _guards._child is child  # kept for the next run of this process


def test_arm_and_stop_never_wait_for_an_exchange_under_way(tmp_path: Path) -> None:
    """The event loop's thread calls arm() and stop(): while another thread's exchange
    holds the socket (here: the test holds its lock), they return at once (posted)."""
    path = tmp_path / "app.log"
    path.write_bytes(numbered(0, 10))
    fd = os.open(path, os.O_RDONLY)
    guard = RemoteGuard(fd, 0, 1 << 20, str(path))
    try:
        assert guard.start()
    finally:
        os.close(fd)
    assert guard.truncations == 0
    with _guards._lock:  # an exchange under way (the old code waited here for ever)
        guard.arm()
        guard.stop()
    wait_until(lambda: guard.truncations == -1)  # the posts went once the lock was free

"""The followers' shared watcher: one inotify instance, a watch per directory, a write
waking only the follower of the file written (real files, real inotify)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import aflow as af
from aflow.sources import _watch

pytestmark = pytest.mark.anyio

needs_inotify = pytest.mark.skipif(not _watch.have_inotify(), reason="needs inotify")


def inotify_instances() -> int:
    """The inotify descriptors open in this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        count += target == "anon_inode:inotify"
    return count


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - polls what the flow has delivered
            await anyio.sleep(0.01)


@needs_inotify
async def test_a_write_wakes_only_the_watcher_of_its_file(tmp_path: Path) -> None:
    names = [f"f{i:03d}.log" for i in range(300)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    before = inotify_instances()
    async with _watch.open_watch_hub() as hub:
        watchers = [hub.watcher(str(tmp_path), name, 60) for name in names]
        assert all(w.notified for w in watchers)
        assert inotify_instances() - before == 1  # one instance, one watch, 300 files
        with (tmp_path / names[7]).open("ab") as f:
            f.write(b"x\n")
        with anyio.fail_after(5):  # long before its poll (60 s): woken
            await watchers[7].wait()
        assert watchers[7].wakeups >= 1
        assert [i for i, w in enumerate(watchers) if w.wakeups] == [7]
        # a copy beside f042.log (copytruncate) is a sign for its watcher only
        (tmp_path / "f042.log.1").write_bytes(b"x\n")
        with anyio.fail_after(5):
            await watchers[42].wait()
        assert [i for i, w in enumerate(watchers) if w.take_copying()] == [42]
        # a file renamed into place appears under its name (and moves it)
        (tmp_path / "new").write_bytes(b"y\n")
        os.replace(tmp_path / "new", tmp_path / names[9])
        with anyio.fail_after(5):
            await watchers[9].wait()
        assert (watchers[9].appeared, watchers[9].take_moved()) == (1, True)
        assert watchers[8].appeared == 0
        for w in watchers:
            w.close()
    assert inotify_instances() == before


@needs_inotify
async def test_300_followed_files_share_one_inotify_instance(tmp_path: Path) -> None:
    paths = [tmp_path / f"app{i:03d}.log" for i in range(300)]
    for path in paths:
        path.write_text("first\n")
    before, refused = inotify_instances(), _watch.refused()
    seen: list[str] = []
    flow = af.read_lines(str(tmp_path / "app*.log"), follow=True, poll_interval=60)
    async with (flow | af.for_each(seen.append)).open() as run:
        await wait_for(lambda: len(seen) == 300)
        # the followers' one (the copytruncate guards' one is in their own process)
        assert inotify_instances() - before <= 1
        for i, path in enumerate(paths):  # seen at once: notified, not polled (60 s)
            with path.open("a") as f:
                f.write(f"second {i}\n")
        await wait_for(lambda: len(seen) == 600)
        run.stop()
    assert _watch.refused() == refused
    assert run.statistics().stages[0].unwatched == 0
    assert sorted(seen[300:]) == sorted(f"second {i}" for i in range(300))


@needs_inotify
async def test_files_the_kernel_refuses_to_watch_are_counted_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_watch.inotify_simple, "INotify", refused)
    monkeypatch.setattr(_watch, "_refused", 0)  # the first refusal of the process
    for i in range(3):
        (tmp_path / f"app{i}.log").write_text("first\n")
    seen: list[str] = []
    flow = af.read_lines(str(tmp_path / "app*.log"), follow=True, poll_interval=0.05)
    async with (flow | af.for_each(seen.append)).open() as run:
        await wait_for(lambda: len(seen) == 3)
        with (tmp_path / "app0.log").open("a") as f:
            f.write("second\n")  # polled: still read (appended: a rewrite could be seen
            # half done, truncated, and read again from the start)
        await wait_for(lambda: len(seen) == 4)
        await wait_for(lambda: run.statistics().stages[0].unwatched == 3)
        run.stop()
    assert "3 unwatched" in run.statistics().format()
    said = [r.getMessage() for r in caplog.records if "without inotify" in r.getMessage()]
    assert len(said) == 1
    assert "Too many open files" in said[0]


@pytest.mark.parametrize("existing", [True, False])
async def test_files_written_at_the_start_of_a_follow_are_read_whole(
    tmp_path: Path, existing: bool
) -> None:
    # Written the moment the follow starts, before its followers (or its glob's first
    # match) could have opened them: every line is read, once.
    paths = [tmp_path / f"app{i:03d}.log" for i in range(100)]
    if existing:
        for path in paths:
            path.write_bytes(b"")
    seen: list[str] = []
    flow = af.read_lines(str(tmp_path / "app*.log"), follow=True, poll_interval=0.05)
    async with (flow | af.for_each(seen.append)).open() as run:
        files = [path.open("a") for path in paths]
        try:
            for n in range(50):
                for i, f in enumerate(files):
                    f.write(f"{i} {n}\n")
                    f.flush()
                await anyio.lowlevel.checkpoint()
        finally:
            for f in files:
                f.close()
        await wait_for(lambda: len(seen) >= 5000)
        await anyio.sleep(0.2)  # nothing more, nothing twice
        run.stop()
    assert sorted(seen) == sorted(f"{i} {n}" for i in range(100) for n in range(50))

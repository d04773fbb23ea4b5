"""Following one path the way ``tail -F`` does, without its losses.

A :class:`Follower` keeps the file it reads open by descriptor, so a rotation by rename
never takes bytes away from it:

* **rename + create** (logrotate's ``create``, ``os.replace``): when the path names another
  file, the new file is opened at once (so a fast rotation cannot take it away first) and
  the old one keeps being drained until it has been quiet for ``rotate_wait`` seconds: a
  writer that reopens late (``delaycompress``, a slow ``postrotate``) loses nothing, and a
  drained file that is compressed and removed meanwhile is still read through its
  descriptor.
* **copytruncate**: every read first checks that the file still holds what was read (its
  size, its first bytes, and the last bytes read before the offset: a file truncated and
  written again past the offset is not read from the old offset on). What was not read
  yet is taken from the copy (a file beside it whose first bytes are the same). What the
  writer wrote between the copy and the truncation (logrotate fsyncs the copy in between:
  a millisecond, tens under load) is in no copy: only a reader that read it in that
  window has it. With inotify, a :class:`~aflow.sources._guard.Guard` reads the current
  file at every write, as ``tail -F`` does, and keeps its newest bytes: what it read
  before the truncation and the follower had not is taken from it. It runs in the
  guards' process (:mod:`aflow.sources._guardproc`), not waiting for this one's GIL.
  Bytes it saw but could not keep are reported (below). At a sign of a copy (a file
  named like the followed one created or written) the follower arms the guard (if it
  was not from its start) and stops reading until the guard saw the truncation
  (``COPY_WATCH`` seconds at most), leaving the CPU to it.
* **without inotify** where the kernel refuses it (its limits): the file is polled and
  unguarded; the source's ``unwatched`` statistic counts such files.
* **resumed from a checkpoint**: the rotated files beside the path that the checkpoint has
  not seen to their end (:mod:`aflow.sources._rotation`) are read first, oldest first:
  compressed ones to their end, the others as rotated files being drained. A rotation
  while the run starts is caught too: a file renamed on since the plan (``.1`` ->
  ``.2``) or compressed is found by its identity or its content's first bytes; the
  checkpoint's own file, rotated away or compressed before the first open, joins the
  files to catch up; copied and truncated, it is compared with what it held when the
  resume looked, and its rest taken from the copy.
* **losses that cannot be avoided** (files rotated away before they could be opened; bytes
  a truncation removed that neither a copy nor the guard held, where aflow knows of them)
  are reported as :class:`~aflow.errors.DataLossError` to the
  source's ``on_error``: ``"skip"`` counts them in its ``errors`` statistic.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from ..errors import DataLossError
from ..policies import Reporter, apply_policy
from ._fileid import (
    FINGERPRINT_BYTES,
    TAIL_BYTES,
    FileId,
    find_copy,
    read_checked,
    read_range,
)
from ._guardproc import RemoteGuard
from ._reader import Emit, FileReader, _Framer
from ._rotation import CatchUp, find_rotated, rotated_siblings
from ._watch import Watcher, WatchHub, have_inotify, open_watch_hub

__all__ = ["COPY_WATCH", "Follower"]

COPY_WATCH = 0.25
"""Seconds a follower steps aside at most, at a sign of a copy, for its guard."""

COPY_POLL = 0.02
"""Seconds between its questions to the guard meanwhile (each is a request the guards'
process answers: not so often that it competes with the guard's reads)."""


@dataclass(slots=True)
class Tracked:
    """One open file of a follower: its descriptor, identity and reading position."""

    fd: int
    ident: FileId
    framer: _Framer
    position: int
    last_data: float = field(default_factory=time.monotonic)
    before: bytes = b""  # the last bytes read (up to TAIL_BYTES), checked before a read
    guard: RemoteGuard | None = None  # the current file's, with inotify

    def advance(self, chunk: bytes) -> None:
        """Account for ``chunk``, read at ``position``."""
        self.position += len(chunk)
        self.before = (self.before + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]

    @property
    def key(self) -> tuple[int, int]:
        return self.ident.device, self.ident.inode


class Follower:
    """Follows ``reader.path`` until the run stops; see the module docstring.

    ``hub``: the :class:`~aflow.sources._watch.WatchHub` shared with the other followers
    of the source (by default one of its own).
    """

    def __init__(self, reader: FileReader, rotate_wait: float, hub: WatchHub | None = None) -> None:
        self.hub = hub
        self.reader = reader
        self.path = reader.path
        self.rotate_wait = rotate_wait
        self.current: Tracked | None = None
        self.draining: list[Tracked] = []
        self.opened = 0  # files opened that their appearance should account for
        self.reported_missed = 0
        self.refused = False  # the kernel refused inotify to its watcher or a guard
        self.counted_refused = False

    async def run(self, emit: Emit, report: Reporter, out: Any) -> None:
        """Read, wait for changes, and read again, until ``out.stopping``."""
        if self.hub is None:
            async with open_watch_hub() as self.hub:
                await self.run(emit, report, out)
            return
        directory, name = os.path.split(self.path)
        watcher = self.hub.watcher(directory, name, self.reader.poll_interval)
        self.refused = watcher.refused
        try:
            await self._open_current(first=True, watcher=watcher)
            await self._catch_up(emit, report, out)
            while not out.stopping:
                if watcher.take_copying() and self.current is not None:
                    await self._step_aside(self.current, watcher)
                got = await self._read_all(watcher, emit, report, out)
                await self._check_path(watcher, emit, report)
                await self._drop_quiet(emit, report)
                if self.refused and not self.counted_refused:
                    self.counted_refused = True
                    report.counters.unwatched += 1
                if not got and not out.stopping:
                    with out.pull_scope():
                        await watcher.wait()
        finally:
            watcher.close()
            for tracked in self._all():
                if tracked.guard is not None:
                    tracked.guard.stop()
                os.close(tracked.fd)
        checkpointed = bool(out.checkpointed)
        for tracked in self._all():  # stopped: a last line may be unfinished by its writer
            await self.reader.hold_back(tracked.framer, report, checkpointed)

    async def _catch_up(self, emit: Emit, report: Reporter, out: Any) -> None:
        """Resumed: read the rotated files the checkpoint has not seen to their end (the
        live file is open already, so a rotation meanwhile takes nothing away)."""
        for planned in self.reader.catch_up:
            if out.stopping:
                return
            cu: CatchUp | None = planned
            if planned.compressed:
                cu = await anyio.to_thread.run_sync(_compressed_by_inode, self.path, planned)
            else:
                found = await anyio.to_thread.run_sync(_open_planned, self.path, planned)
                if isinstance(found, tuple):
                    fd, ident, path = found
                    framer = self.reader.framer(planned.offset, path, planned.line)
                    self.draining.append(Tracked(fd, ident, framer, planned.offset))
                    continue
                cu = found  # compressed since the plan, or gone
            tries = 2  # a compressed file renamed on (.2.gz -> .3.gz) is found by content
            while cu is not None and tries:
                tries -= 1
                try:
                    await self._read_compressed(cu, emit, report, out)
                    break
                except FileNotFoundError:
                    cu = await anyio.to_thread.run_sync(_compressed_now, self.path, cu)

    async def _read_compressed(self, cu: CatchUp, emit: Emit, report: Reporter, out: Any) -> None:
        """Read the compressed rotated file ``cu`` to its end (nobody writes one)."""
        reader = FileReader(
            cu.path,
            shape=self.reader.shape,
            dtype=self.reader.dtype,
            row_shape=self.reader.row_shape,
            chunk_size=self.reader.chunk_size,
            max_line=self.reader.max_line,
            start=cu.offset,
            last_line=self.reader.last_line,
        )
        reader.start_line = cu.line
        reader.ident = cu.ident
        self.reader.ident = cu.ident  # for the positions of what it emits
        await reader.run(emit, report, out)

    def _all(self) -> list[Tracked]:
        return [*self.draining, *([self.current] if self.current else [])]

    async def _open_current(self, *, first: bool = False, watcher: Watcher | None = None) -> bool:
        """Open the file at the path as the current one; False if there is none now.

        ``first``: the start of the run (``watcher``: the path's, begun before). A resumed
        run starts the file its checkpoint was reading from the committed position; if a
        rotation took that file away since the resume looked (:meth:`_moved`), it is read
        from there as a rotated file, and the new one from its start."""
        seen = 0  # files that appeared at the path since the watch began, before the open
        if first and watcher is not None:
            watcher.take_events()
            seen = watcher.appeared
        opened = await anyio.to_thread.run_sync(_open_fd, self.path)
        start, line = (self.reader.start, self.reader.start_line) if first else (0, 1)
        resumed = self.reader.ident if first else None
        moved = False
        if resumed is not None and (
            opened is None or (opened[1].device, opened[1].inode) != (resumed.device, resumed.inode)
        ):
            try:
                await self._moved(resumed, start, line)
            except BaseException:  # cancelled: the live file is nobody's yet
                if opened is not None:
                    os.close(opened[0])
                raise
            start, line, moved = 0, 1, True
        if opened is None:
            return False
        fd, ident = opened
        if resumed is not None and not moved:
            # the checkpoint's file: compared with what it held when the resume looked, so
            # a copytruncate since is seen at the first read, its rest taken from the copy
            ident = resumed
        self.current = Tracked(fd, ident, self.reader.framer(start, line=line), start)
        if have_inotify():
            guard = RemoteGuard(fd, start, self.reader.chunk_size, self.path)
            try:
                started = await anyio.to_thread.run_sync(guard.start)
            except BaseException:  # cancelled: the guards' process must let it go too
                guard.stop()
                raise
            self.current.guard = guard if started else None
            self.refused |= not started
        # A file found at the start may predate the watch: its appearance was not seen,
        # unless the watch saw one before the open (a rotation since: this file); one seen
        # just after the open is this file's too while the path still names it.
        if first and watcher is not None and not seen:
            watcher.take_events()
            if watcher.appeared and await anyio.to_thread.run_sync(_key_at, self.path) == (
                ident.device,
                ident.inode,
            ):
                seen = 1
        self.opened += 1 if not first or seen else 0
        return True

    async def _moved(self, resumed: FileId, offset: int, line: int) -> None:
        """The file a checkpoint was reading, rotated away from the path between the
        resume's look and the first open: found beside the path by its identity, it joins
        the files to catch up (last: the newest of them), read from ``offset`` (line
        ``line``), unless the resume planned it already (rotated before it planned). Gone
        from beside the path too (rotated on out of the names kept, or compressed), it
        cannot be read."""
        key = (resumed.device, resumed.inode)
        if any((cu.ident.device, cu.ident.inode) == key for cu in self.reader.catch_up):
            return
        found = await anyio.to_thread.run_sync(find_rotated, self.path, resumed)
        if found is not None:
            path, ident, compressed, mtime_ns = found
            if compressed and any(
                (cu.ident.device, cu.ident.inode) == (ident.device, ident.inode)
                for cu in self.reader.catch_up
            ):
                return  # compressed before the plan: planned already
            ident = ident if compressed else resumed
            self.reader.catch_up.append(CatchUp(path, ident, offset, compressed, mtime_ns, line))

    async def _read_all(self, watcher: Watcher, emit: Emit, report: Reporter, out: Any) -> bool:
        """Read what every open file holds now (rotated ones first); True if any data."""
        got = False
        for tracked in self._all():
            while not out.stopping:
                chunk = await self._read_one(tracked, emit, report)
                if not chunk:
                    break
                got = True
                tracked.last_data = time.monotonic()
                self.reader.ident = tracked.ident  # for the positions of what it emits
                await self.reader.feed(tracked.framer, chunk, emit, report)
                watcher.take_events()
                if watcher.copying:
                    return got
                if len(chunk) < self.reader.chunk_size and watcher.notified:
                    break  # at its end a moment ago: a write since wakes the watcher
        return got

    async def _read_one(self, tracked: Tracked, emit: Emit, report: Reporter) -> bytes:
        # Every read checks first that the file was not truncated since the last one (in
        # the same thread call: a truncation between two reads must not be read past).
        size = self.reader.chunk_size
        chunk, ident = await anyio.to_thread.run_sync(
            read_checked, tracked.fd, size, tracked.position, tracked.ident, tracked.before
        )
        if chunk is None:  # truncated or rewritten
            await self._truncated(tracked, emit, report)
            return await self._read_one(tracked, emit, report)
        tracked.ident = ident
        tracked.advance(chunk)
        return chunk

    async def _step_aside(self, tracked: Tracked, watcher: Watcher) -> None:
        """A copy is being made: arm the guard, and leave the CPU to it (sleep) until it
        saw the truncation, for ``COPY_WATCH`` seconds at most (see the module
        docstring)."""
        guard = tracked.guard
        if guard is None:
            return
        guard.arm()

        def truncations() -> int:
            assert guard is not None
            return guard.truncations

        with anyio.move_on_after(COPY_WATCH):
            seen = await anyio.to_thread.run_sync(truncations)
            # the guards' process counts them: no event to wait for here (-1: it is gone)
            while seen >= 0 and seen == await anyio.to_thread.run_sync(truncations):  # noqa: ASYNC110
                await anyio.sleep(COPY_POLL)
        watcher.take_events()  # the signs of the copy queued meanwhile are old
        watcher.copying = False

    async def _truncated(self, tracked: Tracked, emit: Emit, report: Reporter) -> None:
        """Take the unread rest from a copy (``copytruncate``) and the guard, then read
        from 0 again."""
        self.reader.ident = tracked.ident  # for the positions of what it emits
        copy = await anyio.to_thread.run_sync(find_copy, self.path, tracked.ident)
        if copy is not None:
            while chunk := await anyio.to_thread.run_sync(
                read_range, copy, tracked.position, self.reader.chunk_size
            ):
                tracked.advance(chunk)
                await self.reader.feed(tracked.framer, chunk, emit, report)
        if tracked.guard is not None:
            kept, missing = await anyio.to_thread.run_sync(
                tracked.guard.take, tracked.ident, tracked.position, tracked.before
            )
            if missing:  # not contiguous with what was read: that is lost too
                await self._report_truncated(tracked, missing + len(kept), report)
            elif kept:
                tracked.advance(kept)
                await self.reader.feed(tracked.framer, kept, emit, report)
        await self.reader.finish(tracked.framer, emit, report)
        tracked.framer = self.reader.framer(0)
        tracked.position, tracked.before = 0, b""
        tracked.ident = FileId(tracked.ident.device, tracked.ident.inode, b"", 0)

    async def _report_truncated(self, tracked: Tracked, missing: int, report: Reporter) -> None:
        error = DataLossError(
            f"{self.path} was truncated (copytruncate?) with {missing} bytes from offset "
            f"{tracked.position} unread, in no copy, and written faster than they could be "
            "kept: they are lost. Rotate by rename (logrotate's 'create') if you can",
            source=self.path,
        )
        await apply_policy(report.policy, b"", error, report.stage, None, report.counters)

    async def _check_path(self, watcher: Watcher, emit: Emit, report: Reporter) -> None:
        """Has the path moved on to another file? Open it; count files missed."""
        watcher.take_events()  # before looking: every appearance counted is older
        # The hub's task may count an appearance while the stat below runs in its thread:
        # a file created after the stat looked is not missed, it is found next time.
        appeared = watcher.appeared
        if not watcher.take_moved() and self.current is not None:
            return  # nothing was created, moved or removed under the name: no stat
        key = await anyio.to_thread.run_sync(_key_at, self.path)
        if key is not None and (self.current is None or key != self.current.key):
            if self.current is not None:
                self.current.last_data = time.monotonic()
                if self.current.guard is not None:  # renamed away: not to be truncated
                    self.current.guard.stop()
                    self.current.guard = None
                self.draining.append(self.current)
                self.current = None
            await self._open_current()
        missed = appeared - self.opened - self.reported_missed
        if watcher.notified and missed > 0:
            self.reported_missed += missed
            error = DataLossError(
                f"{missed} file(s) appeared at {self.path} and were rotated away before they "
                "could be opened: whatever they held was not read. Rotate less often, or "
                "keep rotated files under a name the source also reads (a glob)",
                source=self.path,
                count=missed,
            )
            await apply_policy(
                report.policy, b"", error, report.stage, None, report.counters, count=missed
            )

    async def _drop_quiet(self, emit: Emit, report: Reporter) -> None:
        """Close rotated files that have been quiet for ``rotate_wait`` seconds."""
        now = time.monotonic()
        for tracked in [t for t in self.draining if now - t.last_data >= self.rotate_wait]:
            self.draining.remove(tracked)
            os.close(tracked.fd)
            self.reader.ident = tracked.ident  # for the positions of what it emits
            await self.reader.finish(tracked.framer, emit, report)


def _open_fd(path: str) -> tuple[int, FileId] | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, FINGERPRINT_BYTES, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, FileId.of(st, head)


def _open_planned(path: str, cu: CatchUp) -> tuple[int, FileId, str] | CatchUp | None:
    """The rotated file ``cu`` plans to catch up, opened: at its planned name, or found
    beside ``path`` by its identity when a rotation since gave it another (numbered
    rotation: ``.1`` became ``.2``, and ``.1`` is the next file's). Compressed since:
    the compressed file to read instead. None: gone."""
    key = (cu.ident.device, cu.ident.inode)
    at = cu.path
    for _ in range(2):
        opened = _open_fd(at)
        if opened is not None:
            fd, ident = opened
            if (ident.device, ident.inode) == key:
                return fd, ident, at
            os.close(fd)
        found = find_rotated(path, cu.ident)
        if found is None or found[0] == at:
            return None
        if found[2]:  # compressed
            return replace(cu, path=found[0], ident=found[1], compressed=True, mtime_ns=found[3])
        at = found[0]
    return None


def _compressed_by_inode(path: str, cu: CatchUp) -> CatchUp | None:
    """The planned compressed file ``cu`` where it is now: at its name if that is still
    its inode, else beside ``path`` under another name with its inode (None: gone)."""
    key = (cu.ident.device, cu.ident.inode)
    for at in [cu.path, *rotated_siblings(path)]:
        try:
            st = os.stat(at)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == key:
            return cu if at == cu.path else replace(cu, path=at)
    return None


def _compressed_now(path: str, cu: CatchUp) -> CatchUp | None:
    """The compressed file ``cu`` planned, under the name it has now (None: gone)."""
    found = find_rotated(path, cu.ident)
    if found is None or not found[2] or found[0] == cu.path:
        return None
    return replace(cu, path=found[0], ident=found[1], mtime_ns=found[3])


def _key_at(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino

"""Wake file followers when something happens to their files: one inotify instance for all.

On Linux with the ``inotify`` extra (``inotify_simple``, a ctypes wrapper of the kernel
calls) the followers of a source share one :class:`WatchHub`: one inotify descriptor,
one watch per directory (however many files of it are followed), and one task that awaits
the descriptor with :func:`anyio.wait_readable` (asyncio and trio alike, no thread). An
event is dispatched by its watch descriptor and file name to the :class:`Watcher` of that
file only: a write to ``a.log`` wakes the follower of ``a.log``, not the hundred others of
its directory. A glob of thousands of files costs one of the kernel's inotify instances
(128 per user by default), not one each.

Where inotify cannot be had (another system, no extra) followers poll every
``poll_interval`` seconds; where the kernel refuses it (its limits on instances or
watches) too: :func:`refuse` says so in a warning, once per process, and each follower
so refused (here or by the guards of :mod:`aflow.sources._guard`) counts one in its
source's ``unwatched`` statistic. A missing directory is polled, silently. Either way a
follower also wakes at least every ``poll_interval``.

A watcher also counts the files that *appeared* under its name (created or renamed into
place): a follower compares that with the files it opened to count the ones rotated away
before it could open them (see :class:`~aflow.sources._follow.Follower`). It notes when a
file named like its one (``app.log.1``, ``app.log-20240101``) is created or written: a
copy being made (``copytruncate``): the follower then arms its guard, if it was not
armed from its start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

try:  # the optional extra 'inotify'
    import inotify_simple
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    inotify_simple = None

__all__ = ["WatchHub", "Watcher", "have_inotify", "open_watch_hub", "refuse", "refused"]

logger = logging.getLogger("aflow")

_refused = 0  # followed files polled because the kernel refused inotify (this process)


def have_inotify() -> bool:
    """Whether change notifications are available here (else followers poll)."""
    return inotify_simple is not None and sys.platform.startswith("linux")


def refused() -> int:
    """How many followed files were polled because the kernel refused inotify (an
    instance or a watch), in this process so far."""
    return _refused


def refuse(what: str, exc: OSError) -> None:
    """Count a refusal of inotify by the kernel (the follower of ``what`` goes without);
    the first one in the process is said in a warning."""
    global _refused
    _refused += 1
    if _refused == 1:
        logger.warning(
            "following %s without inotify (refused: %s): changes are seen every "
            "poll_interval instead of at once, and lines a copytruncate removes before "
            "they are read are lost; raise fs.inotify.max_user_instances / "
            "max_user_watches (the source's 'unwatched' statistic counts such files)",
            what,
            exc,
        )


_MASK_NAMES = ("MODIFY", "CREATE", "MOVED_TO", "MOVED_FROM", "DELETE", "ATTRIB", "CLOSE_WRITE")


class WatchHub:
    """One inotify instance for many followers: a watch per directory, events dispatched
    by watch descriptor and file name to the :class:`Watcher` of that file.

    :meth:`serve` (a task) reads the events as they come; :meth:`drain` reads the ones
    queued so far, from any task, without blocking. Use :func:`open_watch_hub`.
    """

    def __init__(self) -> None:
        self._ino: Any = None
        self._opened = False
        self._dirs: dict[str, int] = {}  # directory -> watch descriptor
        self._names: dict[int, dict[str, list[Watcher]]] = {}  # wd -> name -> watchers
        self._wakeup: anyio.Event | None = None  # set when the first watch is added
        self.refused = False  # the kernel refused its instance or a watch

    def watcher(self, directory: str, name: str, poll_interval: float) -> Watcher:
        """A watcher of the file ``name`` of ``directory`` (polling if it cannot be
        watched); :meth:`Watcher.close` gives it back."""
        directory = os.path.abspath(directory or ".")
        watcher = Watcher(directory, name, poll_interval, self)
        wd = self._watch(directory, os.path.join(directory, name))
        if wd is not None:
            watcher.wd = wd
            self._names[wd].setdefault(name, []).append(watcher)
        return watcher

    def _watch(self, directory: str, what: str) -> int | None:
        if not have_inotify():
            return None
        if directory in self._dirs:
            return self._dirs[directory]
        if self._ino is None:
            if self._opened:
                return None  # refused already: counted and said
            self._opened = True
            try:
                self._ino = inotify_simple.INotify(nonblocking=True)
            except OSError as exc:  # too many instances, a kernel without inotify
                self.refused = True
                refuse(what, exc)
                return None
        mask = 0
        for flag in _MASK_NAMES:
            mask |= getattr(inotify_simple.flags, flag)
        try:
            wd: int = self._ino.add_watch(directory, mask)
        except FileNotFoundError:
            return None  # no such directory (yet): polled
        except OSError as exc:  # the kernel's limit on watches, no permission
            self.refused = True
            refuse(what, exc)
            return None
        self._dirs[directory] = wd
        self._names.setdefault(wd, {})  # another path to a directory watched already
        if self._wakeup is not None:
            self._wakeup.set()
        return wd

    def _forget(self, watcher: Watcher) -> None:
        wd, watcher.wd = watcher.wd, None
        if wd is None or wd not in self._names:
            return
        names = self._names[wd]
        watchers = names.get(watcher.name, [])
        if watcher in watchers:
            watchers.remove(watcher)
        if not watchers:
            names.pop(watcher.name, None)
        if not names:
            del self._names[wd]
            self._dirs = {d: w for d, w in self._dirs.items() if w != wd}
            with contextlib.suppress(OSError):  # the directory may be gone
                self._ino.rm_watch(wd)

    async def serve(self) -> None:
        """Read and dispatch events as they come, until cancelled."""
        while True:
            if self._ino is None:  # nothing watched yet
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            await anyio.wait_readable(self._ino.fileno())
            self.drain()

    def drain(self) -> bool:
        """Read and dispatch the events queued so far (never blocks); True if any."""
        if self._ino is None:
            return False
        try:
            events = self._ino.read(timeout=0)
        except BlockingIOError:
            return False
        flags = inotify_simple.flags
        create = flags.CREATE | flags.MOVED_TO
        moves = create | flags.MOVED_FROM | flags.DELETE
        for event in events:
            if event.mask & flags.Q_OVERFLOW:  # events were lost: everyone looks again
                self._wake_all()
                continue
            names = self._names.get(event.wd)
            if names is None:
                continue
            if event.mask & (flags.CREATE | flags.MODIFY):
                self._copying(names, event.name)
            for watcher in names.get(event.name, ()):
                watcher.moved |= bool(event.mask & moves)
                if event.mask & create:
                    watcher.appeared += 1
                watcher.wake()
        return bool(events)

    def _wake_all(self) -> None:
        for names in self._names.values():
            for watchers in names.values():
                for watcher in watchers:
                    watcher.moved = True
                    watcher.wake()

    def _copying(self, names: dict[str, list[Watcher]], other: str) -> None:
        """``other`` was created or written: the watchers of the other names it starts
        with (``app.log`` for ``app.log.1``) see a copy being made."""
        for end in range(1, len(other)):
            for watcher in names.get(other[:end], ()):
                watcher.copying = True
                watcher.wake()

    def close(self) -> None:
        """Release the inotify descriptor (idempotent)."""
        if self._ino is not None:
            ino, self._ino = self._ino, None
            ino.close()
        self._dirs.clear()
        self._names.clear()


@asynccontextmanager
async def open_watch_hub() -> AsyncIterator[WatchHub]:
    """A :class:`WatchHub` served by a task while the block runs; closed after it."""
    hub = WatchHub()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.serve)
            try:
                yield hub
            finally:
                tg.cancel_scope.cancel()
    finally:
        hub.close()


class Watcher:
    """Waits for changes to one file (by name, in its directory), or polls.

    Made by :meth:`WatchHub.watcher`. ``wakeups`` counts the times it was woken by an
    event concerning its file.
    """

    def __init__(self, directory: str, name: str, poll_interval: float, hub: WatchHub) -> None:
        self.directory = directory
        self.name = name
        self.poll_interval = poll_interval
        self.hub = hub
        self.wd: int | None = None  # the hub's watch of the directory; None: polling
        self.appeared = 0  # files that appeared under ``name``
        self.moved = True  # the name may name another file now: look again
        self.copying = False  # a file named like it was created or written
        self.wakeups = 0  # events concerning its file
        self._woken = False
        self._event: anyio.Event | None = None

    def wake(self) -> None:
        """An event concerning its file (called by the hub)."""
        self.wakeups += 1
        self._woken = True
        if self._event is not None:
            self._event.set()

    @property
    def refused(self) -> bool:
        """True when it polls because the kernel refused inotify (its limits)."""
        return self.wd is None and self.hub.refused

    @property
    def notified(self) -> bool:
        """True when changes are notified (inotify), False when polling."""
        return self.wd is not None

    async def wait(self) -> None:
        """Return at the next change to the file, or after ``poll_interval``.

        Blocks; cancellation interrupts the wait.
        """
        if self.wd is None:
            await anyio.sleep(self.poll_interval)
            return
        if not self._woken:
            self._event = anyio.Event()
            with anyio.move_on_after(self.poll_interval) as timer:
                await self._event.wait()
            self._event = None
            self.moved |= timer.cancelled_caught  # a poll, as a safety net
        self._woken = False
        self.take_events()

    def take_events(self) -> bool:
        """Read the hub's events queued so far (never blocks); True if there were any."""
        if self.wd is None:
            return False
        return self.hub.drain()

    def take_moved(self) -> bool:
        """Whether its name may name another file since the last call (always True when
        polling)."""
        if self.wd is None:
            return True
        moved, self.moved = self.moved, False
        return moved

    def take_copying(self) -> bool:
        """Whether a file named like its one (a copy?) was created or written since the
        last call (never when polling)."""
        copying, self.copying = self.copying, False
        return copying

    def close(self) -> None:
        """Give the watch back to the hub (idempotent)."""
        self.hub._forget(self)

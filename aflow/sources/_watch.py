"""Wake a file follower when something happens to the files of one directory.

On Linux with the ``inotify`` extra (``inotify_simple``, a ctypes wrapper of the kernel
calls) a follower sleeps on an inotify descriptor watching the file's directory and wakes
as soon as a file there is written, truncated, created, renamed or removed. The
descriptor is awaited with :func:`anyio.wait_readable`, so this works on asyncio and trio
alike and costs no thread. Elsewhere (or if the kernel refuses a watch) the follower polls every
``poll_interval`` seconds. Either way it also wakes at least every ``poll_interval``.

The watcher also counts the files that *appeared* under the followed name (created or
renamed into place): a follower compares that with the files it opened to count the ones
rotated away before it could open them (see :class:`~aflow.sources._follow.Follower`).
It notes when a file named like a followed one (``app.log.1``, ``app.log-20240101``) is
created or written: a copy being made (``copytruncate``). The guards of
:mod:`aflow.sources._guard` see the same signs in their own (shared) inotify instance.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import anyio

try:  # the optional extra 'inotify'
    import inotify_simple
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    inotify_simple = None

__all__ = ["Watcher", "have_inotify"]


def have_inotify() -> bool:
    """Whether change notifications are available here (else followers poll)."""
    return inotify_simple is not None and sys.platform.startswith("linux")


class Watcher:
    """Waits for changes to the files of one directory, or polls.

    Args:
        directory: the directory holding the followed files.
        names: the file names whose appearance (create, rename into place) is counted.
        poll_interval: the longest wait; the only wake-up without notifications.
    """

    def __init__(self, directory: str, names: Iterable[str], poll_interval: float) -> None:
        self.directory = directory or "."
        self.names = frozenset(names)
        self.poll_interval = poll_interval
        self.appeared = 0  # files that appeared under one of ``names``
        self.moved = True  # a name may name another file now: look again
        self.copying = False  # a file named like a followed one was created or written
        self._inotify: Any = None
        self._open()

    def _open(self) -> None:
        if not have_inotify():
            return
        flags = inotify_simple.flags
        mask = (
            flags.MODIFY
            | flags.CREATE
            | flags.MOVED_TO
            | flags.MOVED_FROM
            | flags.DELETE
            | flags.ATTRIB
            | flags.CLOSE_WRITE
        )
        try:
            ino = inotify_simple.INotify(nonblocking=True)
        except OSError:  # too many instances, a kernel without inotify: poll instead
            return
        try:
            ino.add_watch(self.directory, mask)
        except OSError:  # no such directory (yet), no permission: poll instead
            ino.close()
            return
        self._inotify = ino

    @property
    def notified(self) -> bool:
        """True when changes are notified (inotify), False when polling."""
        return self._inotify is not None

    async def wait(self) -> None:
        """Return at the next change in the directory, or after ``poll_interval``.

        Blocks; cancellation interrupts the wait.
        """
        if self._inotify is None:
            await anyio.sleep(self.poll_interval)
            return
        with anyio.move_on_after(self.poll_interval) as timer:
            await anyio.wait_readable(self._inotify.fileno())
        self.moved |= timer.cancelled_caught  # a poll, as a safety net
        self.take_events()

    def take_events(self) -> bool:
        """Read the events queued so far (never blocks); True if there were any."""
        if self._inotify is None:
            return False
        flags = inotify_simple.flags
        create = flags.CREATE | flags.MOVED_TO
        moves = create | flags.MOVED_FROM | flags.DELETE
        events = self._inotify.read(timeout=0)
        for event in events:
            if event.name not in self.names:
                if event.mask & (flags.CREATE | flags.MODIFY) and any(
                    event.name.startswith(name) for name in self.names
                ):
                    self.copying = True
                continue
            self.moved |= bool(event.mask & moves)
            if event.mask & create:
                self.appeared += 1
        return bool(events)

    def take_moved(self) -> bool:
        """Whether a followed name may name another file since the last call (always
        True when polling)."""
        if self._inotify is None:
            return True
        moved, self.moved = self.moved, False
        return moved

    def take_copying(self) -> bool:
        """Whether a file named like a followed one (a copy?) was created or written since
        the last call (never when polling)."""
        copying, self.copying = self.copying, False
        return copying

    def close(self) -> None:
        """Release the inotify descriptor (idempotent)."""
        if self._inotify is not None:
            ino, self._inotify = self._inotify, None
            ino.close()

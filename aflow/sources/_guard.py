"""Keeping the newest bytes of a followed file the moment they are written.

``copytruncate`` copies a log, then truncates it: what the writer appends between the end
of the copy and the truncation is in no copy, and only a reader that read it in between
has it (``tail -F`` reads at every write). A follower reads through a worker thread and
hands each chunk downstream before it reads again, so it can be a few milliseconds late:
enough, under load, to miss that window.

A :class:`Guard` is ``tail -F``'s promptness beside the follower: a thread blocked on an
inotify watch of the open file reads what each write appended and keeps the newest
``limit`` bytes. When it sees the file truncated (or rewritten: the checks of
:func:`~aflow.sources._fileid.read_checked`) it sets those bytes aside, and the follower,
once it sees the truncation too, takes from them what it had not read (see
:meth:`Guard.take`). It reads nothing downstream: the follower still reads every byte
itself, so a guard that falls behind costs nothing but what it could have saved.

Woken at a write, a thread must still take the GIL from the event loop's thread, which
gives it up every ``sys.getswitchinterval()`` seconds (5 ms by default): under load that
was the whole window. While a guard runs, the switch interval is at most
:data:`SWITCH_INTERVAL` (the previous value comes back when the last guard stops).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ._fileid import FINGERPRINT_BYTES, TAIL_BYTES, FileId
from ._watch import write_waiter

__all__ = ["Guard", "Kept"]

WAKE = 100
"""Milliseconds a guard sleeps at most without a write (it then looks for a stop)."""

KEPT = 4
"""Truncated contents a guard keeps for its follower (the oldest are dropped)."""

SWITCH_INTERVAL = 0.0002
"""The longest a guard waits for the GIL after a write (``sys.setswitchinterval``)."""

_switching = threading.Lock()
_guards = 0  # guards running
_saved = 0.0  # the switch interval before the first of them
_ours = 0.0  # the one set then (as the interpreter rounds it)


@contextmanager
def prompt_switching() -> Iterator[None]:
    """Hold the interpreter's switch interval at most :data:`SWITCH_INTERVAL`; the value
    before the first holder comes back after the last (unless changed meanwhile)."""
    global _guards, _saved, _ours
    with _switching:
        if not _guards:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, SWITCH_INTERVAL))
            _ours = sys.getswitchinterval()
        _guards += 1
    try:
        yield
    finally:
        with _switching:
            _guards -= 1
            if not _guards and sys.getswitchinterval() == _ours:
                sys.setswitchinterval(_saved)


@dataclass(frozen=True, slots=True)
class Kept:
    """The newest bytes of one content of the file, before a truncation: ``data`` was at
    offsets ``start`` to ``end``; ``head`` were its first bytes."""

    head: bytes
    start: int
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class Guard:
    """Reads the open file ``fd`` at every write and keeps its newest ``limit`` bytes.

    :meth:`run` blocks until :meth:`stop` (run it in a worker thread); :meth:`look` and
    :meth:`take` may be called from any thread.

    Args:
        fd: the followed file, open. The guard reads a duplicate of it, closed when
            :meth:`run` returns (or at :meth:`stop` if it never ran): the follower may
            close its own at any time.
        position: the offset reading starts at (what is before is read already).
        limit: the most bytes kept of one content.
    """

    def __init__(self, fd: int, position: int, limit: int) -> None:
        self.fd: int | None = os.dup(fd)
        self.limit = limit
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._started = False
        self._start = position  # offset of the first byte of _data
        self._data = bytearray()
        self._head = b""  # the first bytes of the content, read at the first look
        self._kept: list[Kept] = []
        self.truncations = 0  # seen so far

    @property
    def end(self) -> int:
        """The offset after the last byte read (of the content now in the file)."""
        with self._lock:
            return self._start + len(self._data)

    def run(self) -> None:
        """Look at every write (within a millisecond) until stopped. Blocks."""
        with self._lock:
            if self.fd is None:
                return  # stopped before it ran
            self._started = True
            waiter = write_waiter(self.fd, WAKE)
        try:
            with prompt_switching():
                while waiter is not None and not self._stopped.is_set():
                    self.look()
                    waiter[0]()
        finally:
            if waiter is not None:
                waiter[1]()
            self._close()

    def stop(self) -> None:
        """Make :meth:`run` return (within ``WAKE`` ms); idempotent."""
        self._stopped.set()
        with self._lock:
            if not self._started:
                self._close_locked()

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def look(self) -> None:
        """Read what was appended since the last look; set aside what a truncation ended.

        The appended bytes are read before the file is checked: a truncation meanwhile
        must not take them (they are what a guard is for)."""
        with self._lock:
            if self.fd is None:
                return
            at, fresh = self._append(os.fstat(self.fd).st_size)
            size = os.fstat(self.fd).st_size
            if self._changed(size):
                # Truncated before the read or after it. Before it, what was read is the
                # new content's (written past the old end): the file holds it still.
                if fresh and os.pread(self.fd, len(fresh), at) == fresh:
                    del self._data[len(self._data) - len(fresh) :]
                self.truncations += 1
                if self._data:
                    kept = Kept(self._head, self._start, bytes(self._data))
                    self._kept = [*self._kept[1 - KEPT :], kept]
                self._start, self._data, self._head = 0, bytearray(), b""
                self._append(size)
            if len(self._head) < FINGERPRINT_BYTES and size > len(self._head):
                self._head = os.pread(self.fd, FINGERPRINT_BYTES, 0)

    def _changed(self, size: int) -> bool:
        """Whether the file no longer holds what was read (as
        :func:`~aflow.sources._fileid.changed`, comparing bytes: no digest at each write)."""
        assert self.fd is not None
        end = self._start + len(self._data)
        if size < end or os.pread(self.fd, len(self._head), 0) != self._head:
            return True
        n = min(len(self._data), TAIL_BYTES)
        return bool(n) and os.pread(self.fd, n, end - n) != self._data[-n:]

    def _append(self, size: int) -> tuple[int, bytes]:
        """Read the bytes up to ``size`` not read yet (the newest ``limit`` of them); keep
        the newest ``limit`` bytes. Returns where the bytes read start, and them."""
        assert self.fd is not None
        end = self._start + len(self._data)
        if size <= end:
            return end, b""
        low = max(end, size - self.limit)
        if low > end:  # fell behind: only the newest bytes are worth keeping
            self._start, self._data = low, bytearray()
        fresh = os.pread(self.fd, size - low, low)
        self._data += fresh
        if len(self._data) > self.limit:
            cut = len(self._data) - self.limit
            del self._data[:cut]
            self._start += cut
        return low, fresh

    def take(self, ident: FileId, position: int, before: bytes) -> tuple[bytes, int]:
        """After a truncation of the content ``ident``, read up to ``position`` (the last
        bytes read: ``before``): the bytes kept of it from ``position`` on, and how many
        bytes from ``position`` on were not kept (the guard fell behind). ``(b"", 0)`` if
        it kept nothing after ``position``. Blocks (a look at the file first: the follower
        may have seen the truncation before the guard)."""
        self.look()
        with self._lock:
            for i, kept in enumerate(self._kept):
                if _same(kept, ident, position, before) and kept.end > position:
                    del self._kept[: i + 1]
                    missing = max(0, kept.start - position)
                    return kept.data[max(0, position - kept.start) :], missing
        return b"", 0


def _same(kept: Kept, ident: FileId, position: int, before: bytes) -> bool:
    """Whether ``kept`` is of the content ``ident`` read up to ``position`` (its first
    bytes, and the last bytes read where it kept them)."""
    if not ident.length or not ident.matches(kept.head):
        return False
    n = min(len(before), position - kept.start)
    return n <= 0 or kept.data[position - kept.start - n : position - kept.start] == before[-n:]

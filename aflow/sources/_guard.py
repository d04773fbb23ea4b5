"""Keeping the newest bytes of a followed file the moment they are written.

``copytruncate`` copies a log, then truncates it: what the writer appends between the end
of the copy and the truncation is in no copy, and only a reader that read it in between
has it (``tail -F`` reads at every write). A follower reads through a worker thread and
hands each chunk downstream before it reads again, so it can be a few milliseconds late:
enough, under load, to miss that window.

A :class:`Guard` is ``tail -F``'s promptness beside the follower: it reads what the
writes appended to the open file and keeps the newest ``limit`` bytes. When it sees the
file truncated (or rewritten: the checks of :func:`~aflow.sources._fileid.read_checked`)
it sets those bytes aside, and the follower, once it sees the truncation too, takes from
them what it had not read (see :meth:`Guard.take`). It reads nothing downstream: the
follower still reads every byte itself, so a guard that falls behind costs nothing but
what it could have saved.

All the guards of the process share one thread and one inotify instance (:class:`_Hub`,
started with the first guard, ended with the last): a glob of hundreds of files costs
one thread and one of the kernel's instances (128 per user by default), not hundreds.
If inotify cannot be had, the follower goes unguarded (counted and said:
:func:`~aflow.sources._watch.refuse`).

A guard reads at every write (*armed*) from its start (:data:`GUARD_ENV`): the window of
the first ``copytruncate`` of a file is as short as the next ones, and no sign of a copy
must be seen in time to be ready for it. With ``AFLOW_FOLLOW_GUARD=auto`` it is armed only
while a copy is suspected (the follower saw a file named like the followed one created or
written beside it, as logrotate's copy is, until the truncation), and for good once it saw
its file truncated; otherwise it looks at most every :data:`IDLE` seconds, the writes
between gathered into one read. Measured: armed at the sign of the copy only, the first
rotation of a file lost up to tens of lines more than ``tail -F`` under load.

Woken at a write, the thread must still take the GIL from the process's other threads.
Followers therefore run their guards in a process of their own
(:mod:`aflow.sources._guardproc`), whose main thread only waits for requests; there too,
a thread holding the GIL gives it up only every ``sys.getswitchinterval()`` seconds (5 ms
by default): while a guard is armed the switch interval is at most
:data:`SWITCH_INTERVAL` (process-wide; the previous value comes back when no guard needs
it; :data:`SWITCH_ENV` ``=0`` leaves it alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._fileid import FINGERPRINT_BYTES, TAIL_BYTES, FileId
from ._watch import have_inotify, refuse

try:  # the optional extra 'inotify'
    import inotify_simple
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    inotify_simple = None

__all__ = ["Guard", "Kept"]

WAKE = 100
"""Milliseconds the guards' thread sleeps at most without an event."""

KEPT = 4
"""Truncated contents a guard keeps for its follower (the oldest are dropped)."""

SWITCH_INTERVAL = 0.0002
"""The longest an armed guard waits for the GIL after a write (``sys.setswitchinterval``);
the environment variable :data:`SWITCH_ENV` overrides it (``0``: leave it alone)."""

SWITCH_ENV = "AFLOW_FOLLOW_SWITCH_INTERVAL"

GUARD_ENV = "AFLOW_FOLLOW_GUARD"
"""When guards read at every write: ``always`` (the default: from their start, the cost of
``tail -F`` for every followed file, and the switch interval short while any is followed)
or ``auto`` (while a copy is suspected, and for good once their file was truncated)."""

ARMED = 1.0
"""Seconds a guard stays armed after the last sign of a copy (or until a truncation)."""

IDLE = 0.05
"""Seconds between the looks of a guard not armed (the writes between gather)."""

logger = logging.getLogger("aflow")

_switching = threading.Lock()
_holders = 0  # holders of a short switch interval
_saved = 0.0  # the switch interval before the first of them
_ours = 0.0  # the one set then (as the interpreter rounds it)


def _switch_interval() -> float:
    value = os.environ.get(SWITCH_ENV, "").strip()
    if not value:
        return SWITCH_INTERVAL
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{SWITCH_ENV}={value!r}: expected seconds (0: off)") from None


def _always_armed() -> bool:
    value = os.environ.get(GUARD_ENV, "").strip().lower()
    if value in ("", "always"):
        return True
    if value == "auto":
        return False
    raise ValueError(f"{GUARD_ENV}={value!r}: expected 'always' (the default) or 'auto'")


def _hold() -> None:
    global _holders, _saved, _ours
    with _switching:
        if not _holders:
            _saved = sys.getswitchinterval()
            wanted = _switch_interval()
            if wanted:
                sys.setswitchinterval(min(_saved, wanted))
            _ours = sys.getswitchinterval()
        _holders += 1


def _release() -> None:
    global _holders
    with _switching:
        _holders -= 1
        if not _holders and sys.getswitchinterval() == _ours:
            sys.setswitchinterval(_saved)


class _Hub:
    """The one thread and the one inotify instance of all the guards of the process.

    The open file of an armed guard is watched for writes (a watch descriptor each, shared
    by the guards of one file); an event wakes the guards of its watch descriptor only.
    The guards not watched (not armed, or the kernel refused the watch) are looked at every
    :data:`IDLE` seconds: the writes between wake nobody."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ino: Any = None
        self._thread: threading.Thread | None = None
        self._guards: set[Guard] = set()
        self._files: dict[int, list[Guard]] = {}  # an armed file's watch descriptor -> ...

    def add(self, guard: Guard) -> OSError | None:
        """Take ``guard`` (watched for writes if armed); the kernel's refusal of inotify,
        if it refused."""
        with self._lock:
            try:
                if self._ino is None:
                    self._ino = inotify_simple.INotify(nonblocking=True)
            except OSError as exc:
                return exc
            self._guards.add(guard)
            if guard.armed:
                self._watch_locked(guard)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._ino,), name="aflow-guards", daemon=True
                )
                self._thread.start()
            return None

    def remove(self, guard: Guard) -> None:
        with self._lock:
            self._unwatch_locked(guard)
            self._guards.discard(guard)

    def watch(self, guard: Guard, armed: bool) -> None:
        """Watch the file of ``guard`` for writes while it is ``armed`` (any thread)."""
        with self._lock:
            if guard not in self._guards:
                return  # not started, or stopped
            if armed:
                self._watch_locked(guard)
            else:
                self._unwatch_locked(guard)

    def _watch_locked(self, guard: Guard) -> None:
        if guard.wd is not None or guard.fd is None:
            return
        try:  # the descriptor's own file, whatever its path names now
            wd = self._ino.add_watch(f"/proc/self/fd/{guard.fd}", inotify_simple.flags.MODIFY)
        except OSError:  # no more watches: it is looked at every IDLE seconds still
            return
        guard.wd = wd
        self._files.setdefault(wd, []).append(guard)

    def _unwatch_locked(self, guard: Guard) -> None:
        wd, guard.wd = guard.wd, None
        guards = self._files.get(wd, []) if wd is not None else []
        if guard in guards:
            guards.remove(guard)
        if wd is not None and not guards:
            self._files.pop(wd, None)
            with contextlib.suppress(OSError):  # removed with its file already
                self._ino.rm_watch(wd)

    def _run(self, ino: Any) -> None:
        poller = select.poll()
        poller.register(ino.fileno(), select.POLLIN)
        overflow = inotify_simple.flags.Q_OVERFLOW
        idle_at = time.monotonic() + IDLE
        while True:
            with self._lock:
                if not self._guards:  # the last one stopped: so does the thread
                    self._thread = None
                    self._ino = None
                    ino.close()
                    return
            woken: list[Guard] = []
            if poller.poll(max(0, int((idle_at - time.monotonic()) * 1000))):
                try:
                    events = ino.read(timeout=0)
                except BlockingIOError:
                    events = []
                with self._lock:
                    for event in events:
                        if event.mask & overflow:  # events lost: look at all
                            woken.extend(self._guards)
                        woken.extend(self._files.get(event.wd, ()))
            now = time.monotonic()
            if now >= idle_at:  # the guards not watched, and the copies suspected
                idle_at = now + IDLE
                with self._lock:
                    guards = list(self._guards)
                for g in guards:
                    g.disarm_if_due(now)
                woken.extend(g for g in guards if g.wd is None)
            for g in dict.fromkeys(woken):  # each once, in order
                try:
                    g.look(quick=g.wd is None)
                except Exception:  # one file's trouble must not end every guard
                    logger.exception("the guard of %s failed: it stops", g.path)
                    g.stop()


_hub = _Hub()


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
    """Reads the open file ``fd`` at its writes and keeps its newest ``limit`` bytes.

    :meth:`start` hands it to the one thread of all guards (:class:`_Hub`), :meth:`stop`
    takes it back; :meth:`run` does both, blocking until stopped. :meth:`look` and
    :meth:`take` may be called from any thread. Armed, it reads at every write, the
    switch interval short; not armed, it looks at most every :data:`IDLE` seconds (the
    writes between gather: one read). It is armed for good (:attr:`learned`) from its
    start, or (:data:`GUARD_ENV` ``=auto``) once it saw its file truncated; with ``auto``
    it is also armed at a sign of a copy (:meth:`arm`) until it saw the truncation, or
    :data:`ARMED` seconds after the last sign. See the module docstring.

    Raises:
        ValueError: :data:`GUARD_ENV` is set to something else than ``always`` or
            ``auto``.

    Args:
        fd: the followed file, open. The guard reads a duplicate of it, closed at
            :meth:`stop`: the follower may close its own at any time.
        position: the offset reading starts at (what is before is read already).
        limit: the most bytes kept of one content.
        path: the followed path (by default the one ``fd`` was opened by).
        always: armed from the start (by default as :data:`GUARD_ENV` says).
    """

    def __init__(
        self,
        fd: int,
        position: int,
        limit: int,
        path: str | None = None,
        *,
        always: bool | None = None,
    ) -> None:
        # before the descriptor is duplicated: it may raise
        learned = _always_armed() if always is None else always
        self.path = path if path is not None else os.readlink(f"/proc/self/fd/{fd}")
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
        self.wd: int | None = None  # the watch of its file while armed (the hub's)
        self.refusal: OSError | None = None  # the kernel's, at the start
        self._suspected_until = 0.0  # 0: no copy suspected
        self._learned = learned  # armed for good (truncated once, or GUARD_ENV)
        self._holding = False  # of a short switch interval, for good (learned)

    @property
    def end(self) -> int:
        """The offset after the last byte read (of the content now in the file)."""
        with self._lock:
            return self._start + len(self._data)

    @property
    def armed(self) -> bool:
        """Whether the guard looks at every write: armed for good (:attr:`learned`), or
        a copy is suspected."""
        return self.fd is not None and (self._learned or self._suspected_until > 0)

    @property
    def suspected(self) -> bool:
        """Whether a copy is suspected (:meth:`arm`, until the truncation)."""
        return self._suspected_until > 0

    @property
    def learned(self) -> bool:
        """Whether the guard is armed for good: from its start (:data:`GUARD_ENV`
        ``=always``, the default), or since its file was truncated while it watched."""
        return self._learned

    def arm(self) -> None:
        """A sign of a copy (seen by the follower): look at every write, the switch
        interval short, until the truncation (or :data:`ARMED` seconds after the last
        sign). Nothing more if armed for good already."""
        with self._lock:
            if self.fd is None or self._learned:
                return
            if not self._suspected_until:
                _hold()
                _hub.watch(self, armed=True)
            self._suspected_until = time.monotonic() + ARMED

    def disarm_if_due(self, now: float) -> None:
        with self._lock:
            if self._suspected_until and now >= self._suspected_until:
                self._disarm_locked()

    def _disarm_locked(self) -> None:
        """No copy suspected any more (a guard armed for good stays armed)."""
        if self._suspected_until:
            self._suspected_until = 0.0
            _release()
            if not self._learned:
                _hub.watch(self, armed=False)

    def start(self, *, say: bool = True) -> bool:
        """Hand the guard to the guards' thread; False (and the guard stopped) without
        inotify. ``say``: a refusal by the kernel (kept in :attr:`refusal`) is counted
        and said (:func:`~aflow.sources._watch.refuse`)."""
        with self._lock:
            if self.fd is None:
                return False  # stopped before it started
            self._started = True
            if self._learned:
                self._learn_locked()
        if have_inotify():
            self.refusal = _hub.add(self)
            if self.refusal is None:
                return True
            if say:
                refuse(self.path, self.refusal)
        self.stop()
        return False

    def run(self) -> None:
        """:meth:`start`, then block until :meth:`stop`."""
        if self.start():
            self._stopped.wait()

    def stop(self) -> None:
        """Take the guard back from the guards' thread and close its descriptor;
        idempotent."""
        self._stopped.set()
        with self._lock:
            started = self._started
        if started:
            _hub.remove(self)
        self._close()

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _learn_locked(self) -> None:
        """Armed for good, the switch interval short until the stop."""
        self._learned = True
        if not self._holding:
            self._holding = True
            _hold()
            _hub.watch(self, armed=True)

    def _close_locked(self) -> None:
        self._disarm_locked()
        if self._holding:
            self._holding = False
            _release()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def look(self, *, quick: bool = False) -> None:
        """Read what was appended since the last look; set aside what a truncation ended.
        ``quick``: not if the file has the size it had (one ``fstat``).

        The appended bytes are read before the file is checked: a truncation meanwhile
        must not take them (they are what a guard is for)."""
        with self._lock:
            if self.fd is None:
                return
            before = os.fstat(self.fd).st_size
            if quick and before == self._start + len(self._data):
                return
            if self._suspected_until and time.monotonic() >= self._suspected_until:
                self._disarm_locked()
            at, fresh = self._append(before)
            size = os.fstat(self.fd).st_size
            if self._changed(size):
                # Truncated before the read or after it. Before it, what was read is the
                # new content's (written past the old end): the file holds it still.
                if fresh and os.pread(self.fd, len(fresh), at) == fresh:
                    del self._data[len(self._data) - len(fresh) :]
                self.truncations += 1
                self._learn_locked()  # it will be done again
                self._disarm_locked()  # the copy is done
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

"""The guards in a process of their own: reading at every write without waiting for a GIL.

A :class:`~aflow.sources._guard.Guard` must read what the writer appends between
logrotate's copy and its truncation (a millisecond or a few) before the truncation. In
the following process its thread must first take the GIL from the event loop's thread
(busy with the lines, and under load itself waiting for a CPU while it holds the GIL):
measured at 20,000 lines/s on a loaded 2-core machine, guards armed from their start
still lost a writer's burst (40 lines) before some truncations that ``tail -F`` had read.
In a process of their own, whose main thread only waits for requests, their thread waits
for nobody's GIL: it is woken by the kernel as ``tail -F`` is.

One such process serves all the followers of the process that started it
(:data:`_guards`), from the first :meth:`RemoteGuard.start` until that process exits (it
ends when its socket closes; a child forked meanwhile starts its own). Each followed
file's descriptor is handed over (``SCM_RIGHTS``); requests and answers are pickled over
a private socket pair, one at a time (a lock). It imports only the modules it runs (no
NumPy): about 20 MB, started in well under a second. If the process
cannot be had, the files are followed unguarded, with a warning.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

from ._fileid import FileId
from ._guard import Guard, _always_armed
from ._watch import refuse

__all__ = ["RemoteGuard", "main"]

logger = logging.getLogger("aflow")

_LENGTH = struct.Struct("!I")

PATIENCE = 30.0
"""Seconds an exchange with the guards' process may take: past them it counts as gone
(the files are followed unguarded) rather than holding a follower."""

# The guards' process imports only the modules it runs, not the packages' __init__ (numpy
# and every stage): the packages are made empty, with their paths.
_MAIN = """
import sys, types
if sys.path and sys.path[0] == "":
    del sys.path[0]  # not the working directory's modules (a logging.py there)
for name, path in (("aflow", sys.argv[2]), ("aflow.sources", sys.argv[3])):
    sys.modules[name] = package = types.ModuleType(name)
    package.__path__ = [path]
from aflow.sources._guardproc import main
main(int(sys.argv[1]))
"""


def _send(sock: socket.socket, message: Any, fd: int | None = None) -> None:
    data = pickle.dumps(message)
    data = _LENGTH.pack(len(data)) + data
    if fd is None:
        sock.sendall(data)
        return
    sent = socket.send_fds(sock, [data], [fd])
    sock.sendall(data[sent:])


def _receive(sock: socket.socket) -> tuple[Any, list[int]]:
    """One message, and the descriptors that came with it; EOFError at the end."""
    head, fds = b"", list[int]()
    while len(head) < _LENGTH.size:
        more, got, _, _ = socket.recv_fds(sock, _LENGTH.size - len(head), 1)
        if not more:
            raise EOFError
        head, fds = head + more, fds + got
    (n,) = _LENGTH.unpack(head)
    data = bytearray()
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise EOFError
        data += more
    return pickle.loads(data), fds


class _Process:
    """The guards' process of this process, started at the first request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._broken: BaseException | None = None
        self._posts: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._poster: threading.Thread | None = None
        self._poster_lock = threading.Lock()
        self.ids = itertools.count()

    def _spawn(self) -> socket.socket:
        if not sys.executable or getattr(sys, "frozen", False):
            raise OSError("no Python interpreter to start it with (sys.executable)")
        ours, theirs = socket.socketpair()
        ours.settimeout(PATIENCE)
        sources = os.path.dirname(os.path.abspath(__file__))
        args = [str(theirs.fileno()), os.path.dirname(sources), sources]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # anyio, inotify
        with theirs:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _MAIN, *args],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        atexit.register(self.close)
        return ours

    def call(self, message: Any, fd: int | None = None, *, answer: bool = True) -> Any:
        """Send ``message`` (with ``fd``) and return the answer; OSError if the process
        cannot be had or is gone."""
        with self._lock:
            if self._broken is not None:
                raise OSError(f"the guards' process is gone ({self._broken!r})")
            try:
                if self._sock is None:
                    self._sock = self._spawn()
                _send(self._sock, message, fd)
                return _receive(self._sock)[0] if answer else None
            except (OSError, EOFError, ValueError, TypeError) as exc:  # also a bad interpreter
                self._broken = exc
                if self._child is not None:
                    self._child.poll()  # reaped if it died
                logger.warning("the guards' process failed (%r): files are followed unguarded", exc)
                raise OSError(str(exc)) from exc

    def post(self, message: Any) -> None:
        """Send ``message``, which wants no answer, without waiting for the socket (the
        event loop's thread calls this): a thread of its own sends the posts in order."""
        self._posts.put(message)
        with self._poster_lock:  # not the socket's lock: an exchange may hold that one
            if self._poster is None:
                self._poster = threading.Thread(
                    target=self._send_posts, name="aflow-guards-post", daemon=True
                )
                self._poster.start()

    def _send_posts(self) -> None:
        while True:
            message = self._posts.get()
            with contextlib.suppress(OSError):
                self.call(message, answer=False)

    def forked(self) -> None:
        """In a child forked from this process: the guards' process is its parent's."""
        self._lock = threading.Lock()
        if self._sock is not None:
            self._sock.close()
        self._sock, self._child, self._broken = None, None, None
        self._posts, self._poster = queue.SimpleQueue(), None
        self._poster_lock = threading.Lock()

    def close(self) -> None:
        """End the process (it ends when its socket closes); idempotent. Nothing starts
        it again in this process afterwards."""
        with self._lock:
            self._broken = self._broken or OSError("closed at exit")
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child.wait(5)
                self._child = None


_guards = _Process()
os.register_at_fork(after_in_child=_guards.forked)


class RemoteGuard:
    """A :class:`~aflow.sources._guard.Guard` in the guards' process: the same
    :meth:`start`, :meth:`arm`, :attr:`truncations`, :meth:`take` and :meth:`stop`, each
    a request (blocking: call them in a worker thread), but :meth:`arm` and :meth:`stop`,
    which are posted (they never block: see :meth:`_Process.post`)."""

    def __init__(self, fd: int, position: int, limit: int, path: str) -> None:
        self.path = path
        self._id = next(_guards.ids)
        self._args = (fd, position, limit, _always_armed())  # may raise: a bad setting
        self._started = False

    def start(self) -> bool:
        """Hand the file to the guards' process; False if it is not guarded there."""
        fd, position, limit, always = self._args
        self._started = True  # from now on the guards' process may hold it
        try:
            why = _guards.call(("start", self._id, position, limit, self.path, always), fd)
        except OSError:
            self._started = False
            return False
        if why is not None:
            self._started = False
            refuse(self.path, OSError(why))
            return False
        return True

    def _tell(self, op: str) -> None:
        if self._started:
            _guards.post((op, self._id))

    def arm(self) -> None:
        """A sign of a copy (see :meth:`Guard.arm`)."""
        self._tell("arm")

    def _ask(self, what: str) -> int:
        try:
            return int(_guards.call((what, self._id)))
        except OSError:
            return -1

    @property
    def truncations(self) -> int:
        """Truncations the guard saw so far (-1 if it is gone)."""
        return self._ask("truncations")

    @property
    def end(self) -> int:
        """The offset after the last byte it read (-1 if it is gone)."""
        return self._ask("end")

    def take(self, ident: FileId, position: int, before: bytes) -> tuple[bytes, int]:
        """See :meth:`Guard.take`."""
        try:
            kept, missing = _guards.call(("take", self._id, ident, position, before))
        except OSError:
            return b"", 0
        return kept, missing

    def stop(self) -> None:
        """Give the file back (idempotent; also after a :meth:`start` cut short)."""
        self._tell("stop")
        self._started = False


def _start(
    guards: dict[int, Guard], gid: int, fd: int, position: int, limit: int, path: str, always: bool
) -> str | None:
    """Start a guard of ``fd`` (closed here) as ``gid``; why not, if it did not start."""
    try:
        guard = Guard(fd, position, limit, path, always=always)
    except OSError as exc:  # no descriptor left to duplicate it
        return str(exc)
    finally:
        os.close(fd)
    if not guard.start(say=False):
        return str(guard.refusal or "no inotify")
    guards[gid] = guard
    return None


def main(fd: int) -> None:
    """The guards' process: answer the requests on the socket ``fd`` until it closes."""
    logging.getLogger("aflow").setLevel(logging.ERROR)  # the follower says what matters
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the follower: EOF ends it
    sock = socket.socket(fileno=fd)
    guards: dict[int, Guard] = {}
    try:
        while True:
            try:
                (op, gid, *args), fds = _receive(sock)
            except EOFError:
                return
            if op == "start" and len(fds) == 1:
                _send(sock, _start(guards, gid, fds[0], *args))
            elif op == "start":  # no descriptor came (or several): none is kept
                for fd in fds:
                    os.close(fd)
                _send(sock, "no file descriptor came with the request")
            elif op == "arm" and gid in guards:
                guards[gid].arm()
            elif op == "stop" and gid in guards:
                guards.pop(gid).stop()
            elif op in ("truncations", "end"):
                _send(sock, getattr(guards[gid], op) if gid in guards else -1)
            elif op == "take":
                _send(sock, guards[gid].take(*args) if gid in guards else (b"", 0))
    finally:
        for guard in guards.values():
            guard.stop()

"""Sample decoders for read_dataset(processes=True) tests: module-level, so worker
processes can unpickle them by name."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray


def decode_pid(data: bytes) -> NDArray[Any]:
    """The id of the process that decoded the file (whatever its bytes)."""
    return np.array([os.getpid()], np.int64)


class DieOn:
    """Decodes a file to its length, but ends its process at once on bytes ``marker``."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker

    def __call__(self, data: bytes) -> NDArray[Any]:
        if data == self.marker:
            os._exit(3)
        return np.array([len(data)], np.int64)


class Unpicklable(ValueError):
    """An error pickle cannot rebuild (its constructor wants two arguments)."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


def decode_or_odd_error(data: bytes) -> NDArray[Any]:
    """A file's length, or an :class:`Unpicklable` error for an empty file."""
    if not data:
        raise Unpicklable("empty file", "nothing to decode")
    return np.array([len(data)], np.int64)


def _refuse() -> Any:
    raise ImportError("this decoder cannot be rebuilt here")


class ArrivesBroken:
    """Pickles, but cannot be unpickled (as a decoder whose module the workers lack)."""

    def __call__(self, data: bytes) -> NDArray[Any]:
        return np.zeros(1)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def in_a_worker_process() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


class HangOn:
    """Decodes a file to the id of its process, but, in a worker process, on bytes
    ``marker`` writes that id to a file in ``folder`` and sleeps ``seconds`` (a stuck
    decoder). In the main process (threads decoding until the workers are up) it never
    hangs."""

    def __init__(self, marker: bytes, folder: str, seconds: float = 30.0) -> None:
        self.marker, self.folder, self.seconds = marker, folder, seconds

    def __call__(self, data: bytes) -> NDArray[Any]:
        if data == self.marker and in_a_worker_process():
            pid = os.getpid()
            with open(os.path.join(self.folder, str(pid)), "w") as f:
                f.write(str(pid))
            time.sleep(self.seconds)
        return np.array([os.getpid()], np.int64)


def _arrive_late(pickled_in: int) -> ArrivesNever:
    if os.getpid() != pickled_in:  # unpickled in a worker process, as it starts
        time.sleep(30)  # a worker that is not up in time
    return ArrivesNever()


class ArrivesNever:
    """Decodes a file to the id of its process (refuses an empty one); unpickling it in
    another process (a worker process starting) takes 30 s."""

    def __call__(self, data: bytes) -> NDArray[Any]:
        if not data:
            raise ValueError("an empty file")
        return np.array([os.getpid()], np.int64)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrive_late, (os.getpid(),))


def decode_lock_on(data: bytes) -> NDArray[Any]:
    """A file's length; for the bytes ``b"lock"`` an array holding a lock, which pickle
    cannot send back from a worker process (nor from anywhere)."""
    if data == b"lock":
        out = np.empty(1, object)
        out[0] = threading.Lock()
        return out
    return np.array([len(data)], np.int64)

"""Sample decoders for read_dataset(processes=True) tests: module-level, so worker
processes can unpickle them by name."""

from __future__ import annotations

import os
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

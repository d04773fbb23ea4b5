"""Counting the bytes of a block that match, without a block-sized mask.

``np.count_nonzero(data == 10)`` allocates a mask as large as the block for every call.
In a worker thread each such mask is fresh memory (glibc gives a thread's arena pages
back when their top is freed), so a 1 MiB block paid 256 page faults per comparison,
which cost more than the comparison. The masks here are one buffer per thread (256 KiB),
reused; the counts are the same.

:func:`lift_mmap_threshold` is the other half of keeping blocks out of page faults.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["count_bytes", "find_bytes", "lift_mmap_threshold"]

# Bytes compared per call: a 1 MiB block in four (each call lets go of the GIL). The
# mask stays resident in every thread that counts (the file reader's, each decoding
# thread's): 256 KiB each instead of 1 MiB, for 0.01-0.04 ms more a 1 MiB block.
_PIECE = 1 << 18
_local = threading.local()
_lifted = 0  # the largest block freed by lift_mmap_threshold so far


def lift_mmap_threshold(nbytes: int) -> None:
    """Free a block of ``nbytes`` once (if none as large was freed yet), so that glibc
    serves blocks up to that size from its heaps and keeps them there.

    glibc serves a block over its dynamic mmap threshold (128 KiB at first) from a new
    mapping, faulted in at every use, and gives the top of a heap back to the kernel when
    more than twice the threshold is free there; the threshold rises to the size of the
    largest such block freed. A run whose blocks live long (reused read buffers) or in
    another allocator never frees one: every temporary of a block's size was faulted in
    anew (150,000 page faults a 320 MB read; 70,000-100,000 a 2 M-line log decode). Other
    allocators are unaffected; the block is calloc'ed, never touched.
    """
    global _lifted
    if nbytes > _lifted:
        _lifted = nbytes
        bytes(nbytes)  # allocated from a mapping of its own and freed at once


def _mask() -> NDArray[np.bool_]:
    """This thread's mask buffer."""
    mask: NDArray[np.bool_] | None = getattr(_local, "mask", None)
    if mask is None:
        mask = _local.mask = np.empty(_PIECE, bool)
    return mask


def count_bytes(data: NDArray[np.uint8], value: int, *, below: bool = False) -> int:
    """How many bytes of ``data`` equal ``value`` (``below``: are less than it).

    Args:
        data: a 1-D ``uint8`` array.
        value: a byte value, 0-255.
        below: count the bytes less than ``value`` instead.

    Returns:
        The count, as ``np.count_nonzero`` gives it.
    """
    mask = _mask()
    compare: Any = np.less if below else np.equal
    total = 0
    for at in range(0, len(data), _PIECE):
        part = data[at : at + _PIECE]
        total += int(np.count_nonzero(compare(part, value, out=mask[: len(part)])))
    return total


def find_bytes(data: NDArray[np.uint8], value: int) -> NDArray[np.intp]:
    """Where the bytes of ``data`` equal ``value``, as ``np.flatnonzero(data == value)``
    gives them (with the thread's mask buffer).

    Args:
        data: a 1-D ``uint8`` array.
        value: a byte value, 0-255.

    Returns:
        The positions, ascending.
    """
    mask = _mask()
    parts = []
    for at in range(0, len(data), _PIECE):
        part = data[at : at + _PIECE]
        found = np.flatnonzero(np.equal(part, value, out=mask[: len(part)]))
        parts.append(found + at if at else found)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, np.intp)

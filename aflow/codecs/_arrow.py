"""pyarrow columns as NumPy arrays without pandas.

``Array.to_numpy`` imports pandas when it is installed (0.3 s on a run's first block, in
every worker process); the columns the decoders ask pyarrow for (numbers, booleans,
timestamps, strings) are read from their buffers instead."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

TRIM_AFTER = 4 << 20
"""Bytes of a block freed once, so that glibc keeps about twice as many free at the top
of a thread's heap before giving them back (see :func:`memory_pool`)."""


@cache
def memory_pool() -> Any:
    """The pyarrow memory pool the decoders allocate from: the system allocator's.

    Each decoding thread then takes pyarrow's buffers from the same malloc arena as its
    NumPy temporaries, and one arena holds the two at their peak. pyarrow's own pools
    keep memory of their own per thread on top: mimalloc (pyarrow's default) 34-46 MB
    resident against at most 7 MB allocated (three threads), jemalloc 10-17 MB for 5 MB
    (two threads); 2 M log lines: 106-107 MB peak RSS against jemalloc's 110-112 MB,
    with as many page faults.

    glibc gives the top of a thread's heap back to the system when more than twice its
    dynamic mmap threshold is free there; that threshold rises to the size of the
    largest block served from a mapping of its own and freed (about 1 MiB once a log
    block was freed). A decoding thread then gave back and faulted in again its 2-3 MB
    of each block: 70,000-100,000 page faults a run instead of 20,000-35,000, 0.2-0.4 s
    more system CPU. A block of :data:`TRIM_AFTER` is freed here once, which raises the
    threshold for the process as any free of such a block would (other allocators are
    unaffected). Only the decoders' own calls use the pool.
    """
    import pyarrow as pa

    bool(bytes(TRIM_AFTER))  # calloc'ed from a mapping of its own, untouched, and freed
    return pa.system_memory_pool()


def _bits(buffer: Any, offset: int, length: int) -> NDArray[np.bool_]:
    """``length`` bits of an arrow bitmap from bit ``offset``, as booleans."""
    raw = np.frombuffer(buffer, np.uint8)
    return np.unpackbits(raw, bitorder="little")[offset : offset + length].astype(bool)


def _chunk(chunk: Any, dtype: np.dtype[Any]) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
    """One arrow array of ``dtype``'s width, as a view of its buffer where it can be, and
    where its nulls are (None: none)."""
    n, off = len(chunk), chunk.offset
    validity, data = chunk.buffers()[:2]
    if dtype.kind == "b":
        values = _bits(data, off, n) if n else np.zeros(0, bool)
    else:
        values = np.frombuffer(data, dtype, count=n, offset=off * dtype.itemsize)
    if validity is None or not chunk.null_count:
        return values, None
    if dtype.kind != "f":
        raise ValueError(f"nulls in a {chunk.type} column")
    return values, ~_bits(validity, off, n)


def column(values: Any, dtype: np.dtype[Any], *, copy: bool = True) -> NDArray[Any]:
    """A pyarrow (chunked) array as NumPy (one copy: writable, owns its memory): numbers,
    booleans and timestamps of ``dtype`` (the type pyarrow was asked to parse into; a null
    float is NaN), strings as an object array of ``str``. ``copy=False``: a read-only view
    of pyarrow's buffer where it can be (one chunk of numbers, no nulls), for a caller
    that copies the values anyway."""
    if dtype.kind in "SUO":
        return np.array(values.to_pylist(), dtype=object)
    chunks = values.chunks if hasattr(values, "chunks") else [values]
    parts = [_chunk(c, dtype) for c in chunks]
    if not parts:
        return np.zeros(0, dtype)
    if len(parts) == 1 and parts[0][1] is None and not copy:
        return parts[0][0]
    out = np.concatenate([v for v, _ in parts]) if len(parts) > 1 else parts[0][0].copy()
    if any(nulls is not None for _, nulls in parts):
        out[np.concatenate([np.zeros(len(v), bool) if m is None else m for v, m in parts])] = np.nan
    return out

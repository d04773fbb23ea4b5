"""pyarrow columns as NumPy arrays without pandas.

``Array.to_numpy`` imports pandas when it is installed (0.3 s on a run's first block, in
every worker process); the columns the decoders ask pyarrow for (numbers, booleans,
timestamps, strings) are read from their buffers instead."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._scan import lift_mmap_threshold

TRIM_AFTER = 4 << 20  # bytes of a block freed once (see memory_pool)


@cache
def memory_pool() -> Any:
    """The pyarrow memory pool the decoders allocate from: the system allocator's.

    Each decoding thread then takes pyarrow's buffers from the same malloc arena as its
    NumPy temporaries, and one arena holds the two at their peak. pyarrow's own pools
    keep memory of their own per thread on top: mimalloc (pyarrow's default) 34-46 MB
    resident against at most 7 MB allocated (three threads), jemalloc 10-17 MB for 5 MB
    (two threads); 2 M log lines: 106-107 MB peak RSS against jemalloc's 110-112 MB,
    with as many page faults.

    glibc gave a decoding thread's 2-3 MB of each block back to the kernel and faulted
    them in again (70,000-100,000 page faults a run instead of 20,000-35,000, 0.2-0.4 s
    more system CPU) until a block of :data:`TRIM_AFTER` is freed: see
    :func:`~aflow.codecs._scan.lift_mmap_threshold`. Only the decoders' own calls use
    the pool.
    """
    import pyarrow as pa

    lift_mmap_threshold(TRIM_AFTER)
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

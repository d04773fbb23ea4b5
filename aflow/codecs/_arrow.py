"""pyarrow columns as NumPy arrays without pandas.

``Array.to_numpy`` imports pandas when it is installed (0.3 s on a run's first block, in
every worker process); the columns the decoders ask pyarrow for (numbers, booleans,
timestamps, strings) are read from their buffers instead."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray


@cache
def memory_pool() -> Any:
    """The pyarrow memory pool the decoders allocate from: jemalloc where pyarrow has it,
    else pyarrow's default.

    pyarrow's default (mimalloc) keeps a heap per thread: decoding 1 MiB blocks in three
    worker threads held 34-46 MB of it in RSS against at most 7 MB allocated, 12-20 MB
    more than jemalloc's arenas for the same run. Only the decoders' own calls use it;
    no allocator setting of the process changes.
    """
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc (Windows, some wheels)
        return pa.default_memory_pool()


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

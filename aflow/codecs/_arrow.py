"""pyarrow columns as NumPy arrays without pandas.

``Array.to_numpy`` imports pandas when it is installed (0.3 s on a run's first block, in
every worker process); the columns the decoders ask pyarrow for (numbers, booleans,
timestamps, strings) are read from their buffers instead."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def _bits(buffer: Any, offset: int, length: int) -> NDArray[np.bool_]:
    """``length`` bits of an arrow bitmap from bit ``offset``, as booleans."""
    raw = np.frombuffer(buffer, np.uint8)
    return np.unpackbits(raw, bitorder="little")[offset : offset + length].astype(bool)


def _chunk(chunk: Any, dtype: np.dtype[Any]) -> NDArray[Any]:
    """One arrow array of ``dtype``'s width (a copy: writable, owns its memory)."""
    n, off = len(chunk), chunk.offset
    validity, data = chunk.buffers()[:2]
    if dtype.kind == "b":
        out = _bits(data, off, n) if n else np.zeros(0, bool)
    else:
        out = np.frombuffer(data, dtype, count=n, offset=off * dtype.itemsize).copy()
    if validity is not None and chunk.null_count:
        if dtype.kind != "f":
            raise ValueError(f"nulls in a {chunk.type} column")
        out[~_bits(validity, off, n)] = np.nan
    return out


def column(values: Any, dtype: np.dtype[Any]) -> NDArray[Any]:
    """A pyarrow (chunked) array as NumPy: numbers, booleans and timestamps of ``dtype``
    (the type pyarrow was asked to parse into; a null float is NaN), strings as an object
    array of ``str``."""
    chunks = values.chunks if hasattr(values, "chunks") else [values]
    if dtype.kind in "SUO":
        return np.array(values.to_pylist(), dtype=object)
    parts = [_chunk(c, dtype) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)

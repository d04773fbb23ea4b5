"""Arrays to text lines, a column at a time: what the CSV and JSON lines encoders share.

Text is built with NumPy string ufuncs (``astype(str)``, ``np.strings.add``), then joined
once per batch: Python runs per batch and per column, never per row.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["as_text", "columns", "join_rows"]


def columns(data: NDArray[Any]) -> list[tuple[str, NDArray[Any]]]:
    """The named columns of a batch, as the text encoders and Parquet write them.

    Args:
        data: a structured array (its fields, each a scalar), a 1-D array (one column,
            ``value``) or a 2-D array (columns ``"0"`` .. ``"k-1"``).

    Returns:
        ``(name, column)`` pairs, each column 1-D with one element per row.

    Raises:
        TypeError: a field holding a sub-array, or an array of more than two dimensions.
    """
    if data.dtype.names:
        cols = [(name, data[name]) for name in data.dtype.names]
        for name, col in cols:
            if col.ndim != 1:
                raise TypeError(f"field {name!r} of shape {col.shape[1:]}: write scalar fields")
        return cols
    if data.ndim == 1:
        return [("value", data)]
    if data.ndim == 2:
        return [(str(j), data[:, j]) for j in range(data.shape[1])]
    raise TypeError(f"batches of shape {data.shape}: write 1-D, 2-D or structured arrays")


def as_text(col: NDArray[Any]) -> NDArray[np.str_]:
    """A column's default text: numbers in the shortest form that reads back the same
    value, bytes decoded as UTF-8, ``True``/``False``, ISO 8601 datetimes."""
    if col.dtype.kind == "S":
        return np.strings.decode(col, "utf-8")
    return col.astype(str)


def join_rows(parts: list[Any]) -> bytes:
    """Concatenate per-row string columns and literals, one ``\\n``-ended line per row,
    UTF-8."""
    rows = functools.reduce(np.strings.add, parts)
    return ("\n".join(np.atleast_1d(rows).tolist()) + "\n").encode()

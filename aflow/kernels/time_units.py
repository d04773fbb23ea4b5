"""Timestamps and durations as plain numbers, for the vectorized time arithmetic.

Windows, the sensor operators and the as-of join compare timestamps of an int, float or
``datetime64`` column. They work on numbers: a ``datetime64`` column is read as int64
counts of its own unit (a view, no copy), a duration is converted to that unit, and
numbers computed from them (window bounds, grid points) go back to the column's dtype.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = ["TimeSpan", "as_numbers", "as_timestamps", "as_units"]

TimeSpan: TypeAlias = "int | float | np.timedelta64"
"""A duration: in the timestamp column's units (an int for int64 nanoseconds, a
``np.timedelta64`` for ``datetime64`` columns), seconds of processing time, or rows."""


def as_units(value: TimeSpan, ts_dtype: np.dtype[Any]) -> float:
    """``value`` as a number in the units of timestamps of ``ts_dtype``.

    Raises:
        TypeError: a ``np.timedelta64`` for a numeric column, or a nonzero number for a
            ``datetime64`` one.

    Examples:
        >>> as_units(np.timedelta64(2, "s"), np.dtype("M8[ms]"))
        2000
        >>> as_units(2.5, np.dtype("f8"))
        2.5
    """
    if ts_dtype.kind == "M":
        unit, _ = np.datetime_data(ts_dtype)
        if isinstance(value, int | float) and value == 0:
            return 0
        if not isinstance(value, np.timedelta64):
            raise TypeError(f"durations for a {ts_dtype} column must be np.timedelta64")
        return int(value.astype(f"m8[{unit}]").astype(np.int64))
    if isinstance(value, np.timedelta64):
        raise TypeError(f"np.timedelta64 durations need a datetime64 column, not {ts_dtype}")
    return value


def as_numbers(ts: NDArray[Any]) -> NDArray[Any]:
    """Timestamps as numbers: a ``datetime64`` array as an int64 view (counts of its unit,
    NaT the smallest int64); int and float arrays as they are. Same shape."""
    return ts.view(np.int64) if ts.dtype.kind == "M" else ts


def as_timestamps(values: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """Numbers from :func:`as_numbers` arithmetic back as timestamps of ``dtype`` (a
    ``datetime64`` dtype takes whole counts of its unit). Same shape."""
    if dtype.kind == "M":
        return values.astype(np.int64).view(dtype)
    return values.astype(dtype)

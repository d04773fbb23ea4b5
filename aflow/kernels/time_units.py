"""Timestamps and durations as plain numbers, for the vectorized time arithmetic.

Windows, the sensor operators and the as-of join compare timestamps of an int, float or
``datetime64`` column. They work on numbers: a ``datetime64`` column is read as int64
counts of its own unit (a view, no copy), a duration is converted to that unit, and
numbers computed from them (window bounds, grid points) go back to the column's dtype.

This module is the one place durations are converted. A duration is either

* a plain number, in the column's own units (an int column's units, seconds of a float
  column or of processing time, rows of a count window), or
* a duration *with units*: a string (``"1min"``, ``"250ms"``, ``"1.5s"``), a
  ``datetime.timedelta`` or a ``np.timedelta64``. It is converted to the column's unit:
  a ``datetime64`` column's own, seconds for a float column, and for an int column the
  unit its values show as epoch timestamps (seconds, milliseconds, microseconds or
  nanoseconds since 1970, told apart by their magnitude: dates from 1990 to 2100).

A plain number that is surely meant in other units is an error, never a silent single
window: on an int column whose values look like epoch seconds, milliseconds or
microseconds, a number of at least 10**9 that would last a day or more in that unit (the
usual slip: nanoseconds, ``60_000_000_000`` for a minute, on millisecond data) raises a
``ValueError`` that names the unit and how to write the duration.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TimeSpan",
    "as_numbers",
    "as_timestamps",
    "as_units",
    "check_duration",
    "duration_ns",
    "epoch_unit",
]

TimeSpan: TypeAlias = "int | float | str | datetime.timedelta | np.timedelta64"
"""A duration: a plain number in the timestamp column's units, or a duration with units
(``"1min"``, ``"250ms"``, ``datetime.timedelta``, ``np.timedelta64``) converted to them."""

_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "sec": 10**9,
    "min": 60 * 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "D": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
    "W": 7 * 86400 * 10**9,
}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_TEXT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Zµ]+)\s*$")
_DAY_NS = 86400 * 10**9
_EPOCH_1990, _EPOCH_2100 = 631_152_000, 4_102_444_800  # seconds since 1970


def duration_ns(value: TimeSpan) -> int | None:
    """Nanoseconds of a duration with units; ``None`` for a plain number.

    Raises:
        ValueError: a string that is not a duration, or not a whole number of ns.
        TypeError: a ``np.timedelta64`` in months or years (no fixed length).

    Examples:
        >>> duration_ns("1min"), duration_ns("250ms"), duration_ns(7)
        (60000000000, 250000000, None)
        >>> duration_ns(datetime.timedelta(seconds=1.5))
        1500000000
    """
    if isinstance(value, str):
        match = _TEXT.match(value)
        if match is None or match.group(2) not in _NS:
            raise ValueError(
                f"{value!r} is not a duration: write a number and a unit, one of "
                f"{', '.join(_NS)} (e.g. '1min', '250ms', '1.5s')"
            )
        number, unit = match.groups()
        return _whole_ns(
            float(number) * _NS[unit] if "." in number else int(number) * _NS[unit], value
        )
    if isinstance(value, datetime.timedelta):
        return (value.days * 86400 + value.seconds) * 10**9 + value.microseconds * 1000
    if isinstance(value, np.timedelta64):
        unit, _ = np.datetime_data(value.dtype)
        if unit in ("Y", "M"):
            raise TypeError(f"{value!r}: months and years have no fixed length; use days")
        if unit == "generic":
            raise TypeError(f"{value!r} has no unit: write np.timedelta64(n, 's') or similar")
        return int(value.astype("m8[ns]").astype(np.int64))
    return None


def _whole_ns(ns: float | int, text: str) -> int:
    if ns != int(ns):
        raise ValueError(f"{text!r} is not a whole number of nanoseconds")
    return int(ns)


def check_duration(value: TimeSpan | None, what: str, *, zero: bool = False) -> None:
    """Check a duration argument when the stage is defined (its units come later).

    Raises:
        ValueError: not a duration, negative, or zero (unless ``zero``).
    """
    if value is None:
        return
    ns = duration_ns(value)
    amount = ns if ns is not None else value
    if not isinstance(amount, int | float | np.integer | np.floating):
        raise TypeError(f"{what}={value!r}: give a number or a duration such as '1min'")
    if amount < 0 or (amount == 0 and not zero):
        raise ValueError(f"{what}={value!r}: must be {'>=' if zero else '>'} 0")


def epoch_unit(ts: NDArray[Any]) -> str | None:
    """The unit (``"s"``, ``"ms"``, ``"us"`` or ``"ns"``) in which all of the int
    timestamps ``ts`` (shape (n,)) read as dates from 1990 to 2100, or ``None`` (row
    numbers, offsets from a start, test data). The four ranges do not overlap.

    Examples:
        >>> epoch_unit(np.array([1_700_000_000_000])), epoch_unit(np.array([3, 17]))
        ('ms', None)
        >>> epoch_unit(np.array([0, 300_000_000_000]))  # nanoseconds from a start
    """
    if not len(ts):
        return None
    low, high = float(ts.min()), float(ts.max())
    for unit, per in (("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)):
        if _EPOCH_1990 * per <= low and high <= _EPOCH_2100 * per:
            return unit
    return None


def as_units(
    value: TimeSpan,
    ts_dtype: np.dtype[Any],
    ts: NDArray[Any] | None = None,
    *,
    what: str = "duration",
) -> Any:
    """``value`` as a number in the units of timestamps of ``ts_dtype``.

    Args:
        value: the duration (see the module docstring).
        ts_dtype: the timestamp column's dtype.
        ts: some of the column's values as numbers (shape (n,)): an int column's epoch
            unit is read from them.
        what: the argument's name, for error messages (``"window(size=)"``).

    Raises:
        TypeError: a plain nonzero number for a ``datetime64`` column, or a duration with
            units for an int column whose values are not epoch timestamps.
        ValueError: a duration that is not a whole number of the column's unit, or a plain
            number surely meant in other units (see the module docstring).

    Examples:
        >>> as_units(np.timedelta64(2, "s"), np.dtype("M8[ms]"))
        2000
        >>> as_units("1min", np.dtype("i8"), np.array([1_700_000_000_000]))
        60000
        >>> as_units(2.5, np.dtype("f8"))
        2.5
    """
    ns = duration_ns(value)
    if ts_dtype.kind == "M":
        if ns is None:
            if value == 0:
                return 0
            raise TypeError(
                f"{what}={value!r}: durations for a {ts_dtype} column need units: "
                "'1min', datetime.timedelta or np.timedelta64"
            )
        unit, _ = np.datetime_data(ts_dtype)
        return _in_unit(ns, _NS[unit], value, what, str(ts_dtype))
    if ns is None:
        if ts_dtype.kind in "iu" and ts is not None:
            _check_plain(value, ts, what)
        return value
    if ts_dtype.kind == "f":
        return ns / 1e9
    epoch = epoch_unit(ts) if ts is not None and ts_dtype.kind in "iu" else None
    if epoch is None:
        raise TypeError(
            f"{what}={value!r}: a duration with units needs a datetime64 column or epoch "
            f"timestamps (s, ms, us or ns since 1970); these {ts_dtype} timestamps are "
            "neither, so give the duration as a number in their units"
        )
    return _in_unit(ns, _NS[epoch], value, what, f"epoch {_UNIT_NAMES[epoch]}")


def _in_unit(ns: int, per: int, value: TimeSpan, what: str, unit: str) -> int:
    if ns % per:
        raise ValueError(f"{what}={value!r} is not a whole number of {unit}")
    return ns // per


def _check_plain(value: Any, ts: NDArray[Any], what: str) -> None:
    """Refuse a plain number surely written in nanoseconds for coarser epoch data."""
    unit = epoch_unit(ts)
    if unit in (None, "ns") or value < 10**9:
        return
    assert unit is not None
    per = _NS[unit]
    if value * per < _DAY_NS:
        return
    days = value * per / _DAY_NS
    name = _UNIT_NAMES[unit]
    raise ValueError(
        f"{what}={value!r}: the timestamps look like epoch {name} (e.g. {int(ts[0])}), so "
        f"this lasts {days:,.0f} days. If you meant {value!r} nanoseconds, write "
        f"{value // per if value % per == 0 else value / per} ({name}) or give units: "
        f"'{_human(int(value))}', datetime.timedelta or np.timedelta64"
    )


def _human(ns: int) -> str:
    for unit in ("d", "h", "min", "s", "ms", "us"):
        if ns % _NS[unit] == 0:
            return f"{ns // _NS[unit]}{unit}"
    return f"{ns}ns"


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

"""Per-key minimum and maximum of one batch, over the rows that can still change them.

Once an accumulator has seen a few batches, most rows of the next one lie strictly inside
the extremes already kept: below the smallest of the keys' maxima, say, no row can raise
any key's maximum. :func:`beyond` finds the few rows that can (one comparison over the
batch's float64 copy), so that ``ufunc.at`` runs over those alone: on 43,000 readings of
1,000 sensors, ~300 rows instead of 43,000 (measured 13 us instead of 58 us a statistic).

The result is the same, bit for bit, as over every row: the rows left out lie strictly
inside the bounds, so (for maxima) strictly below their key's kept maximum, which the
merge of the batch's extreme with the kept one keeps whatever ``ufunc.at`` picks among
the other rows; ties are kept (a row equal to a bound is looked at, so signed zeros come
out as before), and NaN rows always are (a comparison with NaN is false).
"""

from __future__ import annotations

import functools
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from ._grouping import Groups

__all__ = ["MIN_ROWS", "beyond", "blank", "extreme"]

MIN_ROWS: Final = 8192
"""Batches shorter than this take every row: the comparison would cost about what it saves."""

_FEW: Final = 4  # the rows beyond the bound must be at most 1/_FEW of the batch
_SAMPLE: Final = 16  # every 16th row is looked at first, to give up early and cheaply


def blank(name: str, dtype: np.dtype[Any], n: int | np.integer[Any]) -> NDArray[Any]:
    """State for ``n`` keys not seen yet: the identity of the statistic ``name``."""
    return np.full(int(n), _identity(name, dtype), dtype)


@functools.cache
def _identity(name: str, dtype: np.dtype[Any]) -> Any:
    """``name``'s identity in ``dtype``: the greatest value for ``min``, the least for
    ``max`` (infinities for floats), 0 for the other statistics."""
    if name not in ("min", "max") or dtype.kind not in "iuf":
        return 0
    if dtype.kind == "f":
        return np.inf if name == "min" else -np.inf
    info = np.iinfo(dtype)
    return info.max if name == "min" else info.min


def extreme(
    ufunc: np.ufunc, g: Groups, vals: NDArray[Any], rows: NDArray[np.intp] | None = None
) -> NDArray[Any]:
    """``ufunc`` (``np.minimum`` or ``np.maximum``) of ``vals`` per slot of ``g``, shape
    ``(g.size,)``, over ``rows`` only when given (the other slots keep the identity)."""
    out = blank("min" if ufunc is np.minimum else "max", vals.dtype, g.size)
    if rows is None:
        ufunc.at(out, g.index, vals)
    else:
        ufunc.at(out, g.index[rows], vals[rows])
    return out


def beyond(
    v64: NDArray[np.float64], lower: float = -np.inf, upper: float = np.inf
) -> NDArray[np.intp] | None:
    """The rows that may change a key's minimum or maximum: those not strictly between
    ``lower`` and ``upper`` (NaN included).

    Args:
        v64: shape ``(n,)``: the batch's values converted to float64 (rounded to nearest
            when they do not fit: the comparisons stay on the safe side).
        lower: at least every kept minimum of the batch's keys (the largest of them will
            do), as float64: a row above it lowers none; ``-inf`` when minima are not kept.
        upper: at most every kept maximum (the smallest of them), as float64: a row below
            it raises none; ``inf`` when maxima are not kept.

    Returns:
        The indices of those rows, ascending; ``None`` when they are too many to be worth
        picking out (take every row).
    """
    if _many_beyond(v64[::_SAMPLE], lower, upper):
        return None
    inside = _inside(v64, lower, upper)
    if len(v64) - np.count_nonzero(inside) > len(v64) // _FEW:
        return None
    return np.flatnonzero(np.logical_not(inside, out=inside))


def _many_beyond(sample: NDArray[np.float64], lower: float, upper: float) -> bool:
    """Whether more than ``1/_FEW`` of a sample of the rows lie beyond the bounds."""
    return bool(len(sample) - np.count_nonzero(_inside(sample, lower, upper)) > len(sample) // _FEW)


def _inside(v64: NDArray[np.float64], lower: float, upper: float) -> NDArray[np.bool_]:
    """Per row: strictly between ``lower`` and ``upper`` (false for NaN)."""
    if lower == -np.inf:
        return np.less(v64, upper)
    inside = np.greater(v64, lower)
    if upper != np.inf:
        inside &= v64 < upper
    return inside

"""CSV blocks of numbers read by the compiled scanner (``_csvscan.c``), when it was built.

The scanner reads each line once, in C with the GIL released, and writes the rows of the
lines in the plain shape straight into the structured array: as many fields as columns,
integers as ``-?\\d{1,19}`` in the column's range, floats as decimal numbers (or ``nan``,
``inf``) read to the correctly rounded double, an empty float field as NaN and an empty
integer field as the fill value. Every other line (quotes, spaces around a number, a
``+``, an integer too large for its column, a wrong field count, text, a byte order mark)
is left to the NumPy engine, which decides it alone or with the other lines left over, as
it would in the whole block; the rows come out in the block's order. So rows and bad
lines never depend on the engine, and a block of clean lines never imports pyarrow.

Without a C compiler at install the module is absent and :func:`native_parser` gives
``None``: the pyarrow or NumPy engines take the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..kernels.rows import empty_rows
from ._blocks import Decoded, Parse, RejectedLines

try:
    from . import _csvscan  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler
    _csvscan = None

__all__ = ["has_native", "native_dtype", "native_parser"]

_KINDS = {"i": 1, "u": 2}
_FLOAT = {8: 3, 4: 4}
_ROW, _EMPTY, _LEFT = 0, 1, 2
_NOT_DELIMITERS = set('+-."\r\n\x00')
_INT64 = np.iinfo(np.int64)


def has_native() -> bool:
    """Whether the compiled scanner was built."""
    return _csvscan is not None


def native_dtype(dtype: np.dtype[Any], delimiter: str) -> bool:
    """Whether the scanner reads lines of ``dtype`` (every field an integer of 1 to 8
    bytes, a ``float32`` or a ``float64``, in the machine's byte order) separated by
    ``delimiter`` (one ASCII byte that cannot be part of a number)."""
    if (
        len(delimiter) != 1
        or not delimiter.isascii()
        or delimiter.isalnum()
        or delimiter in _NOT_DELIMITERS
    ):
        return False
    fields: Any = dtype.fields or {}
    for name in dtype.names or ():
        dt = fields[name][0]
        if dt.shape or not dt.isnative or dt.kind not in "iuf":
            return False
        if dt.kind == "f" and dt.itemsize not in _FLOAT:
            return False
    return bool(dtype.names)


def _spec(dtype: np.dtype[Any], fill_int: int | None) -> NDArray[np.int64]:
    """7 numbers a column (see ``_csvscan.c``)."""
    fields: Any = dtype.fields
    spec: list[int] = []
    for name in dtype.names or ():
        dt, offset = fields[name][:2]
        if dt.kind == "f":
            spec += [_FLOAT[dt.itemsize], dt.itemsize, offset, 0, 0, 0, 0]
            continue
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), int(_INT64.min)), min(int(info.max), int(_INT64.max))
        fill = fill_int is not None and int(_INT64.min) <= fill_int <= int(_INT64.max)
        spec += [_KINDS[dt.kind], dt.itemsize, offset, lo, hi, int(fill), fill_int if fill else 0]  # type: ignore[list-item]
    return np.array(spec, np.int64)


def native_parser(
    dtype: np.dtype[Any],
    delimiter: str,
    fill_int: int | None,
    rest: Callable[[bytes], Decoded],
) -> Parse | None:
    """The compiled scanner's parse of blocks of ``dtype`` (``None``: not built); the
    lines it leaves over are decoded by ``rest`` (a block of them, in order: the NumPy
    engine with its isolation of bad lines), and bad ones raised as
    :class:`~aflow.codecs._blocks.RejectedLines`."""
    if _csvscan is None or not native_dtype(dtype, delimiter):
        return None
    scan = _csvscan.scan
    spec = _spec(dtype, fill_int)
    delim = ord(delimiter)
    itemsize = dtype.itemsize

    def parse(blob: bytes) -> NDArray[Any]:
        capacity = blob.count(b"\n") + (1 if blob and not blob.endswith(b"\n") else 0)
        out = empty_rows(capacity, dtype)
        state = np.empty(capacity, np.uint8)
        lines, rows = scan(blob, spec, delim, itemsize, out, state)
        if rows == capacity:
            return out
        state = state[:lines]
        left = np.flatnonzero(state == _LEFT)
        if not len(left):
            return out[:rows].copy() if rows < capacity // 2 else out[:rows]
        return _with_rest(blob, out[:rows], state, left, rest)

    return parse


def _with_rest(
    blob: bytes,
    rows: NDArray[Any],
    state: NDArray[np.uint8],
    left: NDArray[np.intp],
    rest: Callable[[bytes], Decoded],
) -> NDArray[Any]:
    """``rows`` (of the lines read) with the rows of the lines ``left`` over, decoded by
    ``rest``, in the block's order; their bad lines raised as
    :class:`~aflow.codecs._blocks.RejectedLines`."""
    ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) + 1
    if len(ends) < len(state):
        ends = np.append(ends, len(blob))
    starts = np.concatenate(([0], ends[:-1]))
    lines = [blob[starts[i] : ends[i]] for i in left.tolist()]
    # a byte order mark is dropped at the start of a block only: the lines left over
    # start after an empty line unless the first of them is the block's first
    lead = 0 if left[0] == 0 else 1
    decoded = rest(b"\n" * lead + b"".join(lines))
    bad = {b.index - lead: b.error for b in decoded.bad}
    # the lines giving a row, in order: those not blank as the NumPy engine reads them
    # (text without white space; a byte order mark dropped at the block's start)
    solid = [
        k
        for k, line in enumerate(lines)
        if k not in bad
        and line.decode("utf-8-sig" if k == lead == 0 else "utf-8", "replace").strip()
    ]
    if len(solid) != len(decoded.rows):
        raise ValueError(f"{len(decoded.rows)} rows from {len(solid)} lines")  # bisection decides
    given = np.concatenate((np.flatnonzero(state == _ROW), left[solid]))
    order = np.argsort(given, kind="stable")
    merged = np.concatenate((rows, decoded.rows))[order]
    if bad:
        raise RejectedLines(merged, [(int(left[k]), e) for k, e in sorted(bad.items())])
    return merged

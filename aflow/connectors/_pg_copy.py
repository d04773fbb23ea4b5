"""Structured arrays to PostgreSQL's binary COPY format, built with NumPy (no row loop).

The format (``COPY ... FROM STDIN (FORMAT binary)``): a 19-byte header, then per row an
``int16`` field count and per field an ``int32`` length (``-1``: NULL) followed by that many
bytes of the type's binary representation (big-endian numbers; UTF-8 for text; for
timestamps ``int64`` microseconds and for dates ``int32`` days since 2000-01-01), then an
``int16`` ``-1``. When every column has a fixed width and no NULL, a batch is one packed
record array (one assignment per column); otherwise each cell is scattered into the
buffer by fancy indexing over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Cell", "create_columns", "encode_copy", "plan_cells", "quote_ident"]

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
PG_EPOCH_DAYS = 10_957

_INT_TYPES = {"int2": ">i2", "int4": ">i4", "int8": ">i8"}
_FLOAT_TYPES = {"float4": ">f4", "float8": ">f8"}
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "bytea", "citext"})
_TIME_TYPES = frozenset({"timestamp", "timestamptz"})
SUPPORTED = (
    "smallint, integer, bigint, real, double precision, boolean, text, varchar, char, "
    "bytea, timestamp, timestamptz, date"
)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def create_columns(dtype: np.dtype[Any]) -> list[tuple[str, str]]:
    """``(column, SQL type)`` per field of ``dtype``, for ``CREATE TABLE``.

    Raises:
        TypeError: ``dtype`` is not structured, or a field has no PostgreSQL type.
    """
    if dtype.names is None:
        raise TypeError(f"to_postgres: needs structured arrays (one field per column), not {dtype}")
    out = []
    for name in dtype.names:
        field = dtype.fields[name][0]  # type: ignore[index]
        out.append((name, _sql_type(name, field)))
    return out


def _sql_type(name: str, dt: np.dtype[Any]) -> str:
    kind, size = dt.kind, dt.itemsize
    if kind == "b":
        return "boolean"
    if (kind == "i" and size <= 2) or (kind == "u" and size == 1):
        return "smallint"
    if (kind == "i" and size == 4) or (kind == "u" and size == 2):
        return "integer"
    if (kind == "i" and size == 8) or (kind == "u" and size == 4):
        return "bigint"
    if kind == "f" and size <= 4:
        return "real"
    if kind == "f" and size == 8:
        return "double precision"
    if kind == "U":
        return "text"
    if kind == "S":
        return "bytea"
    if kind == "M":
        return "date" if np.datetime_data(dt)[0] == "D" else "timestamp"
    hint = " (cast it to int64, or to float64)" if kind == "u" else ""
    raise TypeError(
        f"to_postgres: field {name!r} of dtype {dt} has no PostgreSQL type{hint}; "
        f"supported: booleans, integers up to int64 and uint32, float16/32/64, fixed strings "
        f"(U: text, S: bytea) and datetime64 (timestamp; [D]: date)"
    )


@dataclass(frozen=True, slots=True)
class Cell:
    """How one field of the batches becomes one column of the COPY rows.

    ``encode(column)`` returns either ``(values, None)``: an array of a fixed-width
    big-endian dtype, every row non-NULL; or ``(lengths, data)``: each row's byte length
    (``-1`` for NULL) and the bytes of every non-NULL row, concatenated.
    """

    field: str
    column: str
    pgtype: str
    encode: Callable[[NDArray[Any]], tuple[NDArray[Any], NDArray[np.uint8] | None]]


def plan_cells(dtype: np.dtype[Any], columns: dict[str, str], table: str) -> list[Cell]:
    """A :class:`Cell` per field of ``dtype``, for the table's ``columns`` (name -> type
    name as in ``pg_type.typname``).

    Raises:
        TypeError: a field names no column of the table, or its dtype cannot be written
            to that column's type.
    """
    if dtype.names is None:
        raise TypeError(f"to_postgres: needs structured arrays (one field per column), not {dtype}")
    missing = [n for n in dtype.names if n not in columns]
    if missing:
        raise TypeError(
            f"to_postgres: table {table} has no column {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(columns)}); rename the fields or alter the table"
        )
    cells = []
    for name in dtype.names:
        field = dtype.fields[name][0]  # type: ignore[index]
        pgtype = columns[name]
        cells.append(Cell(name, name, pgtype, _encoder(name, field, pgtype, table)))
    return cells


def _encoder(
    name: str, dt: np.dtype[Any], pgtype: str, table: str
) -> Callable[[NDArray[Any]], tuple[NDArray[Any], NDArray[np.uint8] | None]]:
    kind = dt.kind
    if pgtype in _INT_TYPES and kind in "biu":
        target = np.dtype(_INT_TYPES[pgtype])
        return lambda col: (_checked_int(col, target, name, pgtype), None)
    if pgtype in _FLOAT_TYPES and kind in "iuf":
        target = np.dtype(_FLOAT_TYPES[pgtype])
        return lambda col: (col.astype(target), None)
    if pgtype == "bool" and kind == "b":
        return lambda col: (col.astype(np.uint8), None)
    if pgtype in _TIME_TYPES and kind == "M":
        return _time_cells
    if pgtype == "date" and kind == "M":
        return _date_cells
    if pgtype in _TEXT_TYPES and kind in "US":
        return _text_cells
    raise TypeError(
        f"to_postgres: field {name!r} of dtype {dt} cannot be written to column {name!r} "
        f"of type {pgtype} in table {table}; writable types: {SUPPORTED} (integers to "
        "integer types, numbers to float types, datetime64 to timestamp and date, U/S strings "
        "to text and bytea)"
    )


def _checked_int(col: NDArray[Any], target: np.dtype[Any], name: str, pgtype: str) -> NDArray[Any]:
    if not np.can_cast(col.dtype, target.newbyteorder("=")) and len(col):
        info = np.iinfo(target)
        low, high = col.min(), col.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise ValueError(
                f"to_postgres: column {name!r}: value {bad} is out of the range of "
                f"PostgreSQL {pgtype} ({info.min}..{info.max})"
            )
    return col.astype(target)


def _nulls_to_cells(
    values: NDArray[Any], null: NDArray[np.bool_]
) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    if not null.any():
        return values, None
    width = values.dtype.itemsize
    lengths = np.where(null, -1, width).astype(np.int64)
    data = values.view(np.uint8).reshape(len(values), width)[~null].ravel()
    return lengths, data


def _time_cells(col: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    us = col.astype("M8[us]").view(np.int64)
    return _nulls_to_cells((us - PG_EPOCH_US).astype(">i8"), np.isnat(col))


def _date_cells(col: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    days = col.astype("M8[D]").view(np.int64)
    return _nulls_to_cells((days - PG_EPOCH_DAYS).astype(">i4"), np.isnat(col))


def _text_cells(col: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    raw = np.char.encode(col, "utf-8") if col.dtype.kind == "U" else col
    width = raw.dtype.itemsize
    n = len(raw)
    if width == 0:
        return np.zeros(n, np.int64), np.empty(0, np.uint8)
    grid = np.ascontiguousarray(raw).view(np.uint8).reshape(n, width)
    # a fixed string ends at its last non-NUL byte (NumPy strips trailing NULs too)
    nonzero = grid != 0
    lengths = np.where(nonzero.any(axis=1), width - np.argmax(nonzero[:, ::-1], axis=1), 0)
    data = grid[np.arange(width) < lengths[:, None]]
    return lengths.astype(np.int64), data


def encode_copy(data: NDArray[Any], cells: list[Cell]) -> bytes:
    """The binary COPY stream (header, rows, trailer) of ``data``'s rows.

    Raises:
        ValueError: a value does not fit its column (an integer out of range).
    """
    n = len(data)
    encoded = [cell.encode(data[cell.field]) for cell in cells]
    if all(extra is None for _, extra in encoded):
        layout: list[tuple[str, Any]] = [("count", ">i2")]
        for i, (values, _) in enumerate(encoded):
            layout += [(f"l{i}", ">i4"), (f"v{i}", values.dtype)]
        rows = np.empty(n, layout)
        rows["count"] = len(cells)
        for i, (values, _) in enumerate(encoded):
            rows[f"l{i}"] = values.dtype.itemsize
            rows[f"v{i}"] = values
        return b"".join((HEADER, rows.tobytes(), TRAILER))
    return _scattered(n, encoded, len(cells))


def _scattered(
    n: int, encoded: list[tuple[NDArray[Any], NDArray[np.uint8] | None]], fields: int
) -> bytes:
    lengths = []
    for values, extra in encoded:
        if extra is None:
            lengths.append(np.full(n, values.dtype.itemsize, np.int64))
        else:
            lengths.append(values)
    sizes = 2 + sum(4 + np.maximum(length, 0) for length in lengths)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    total = int(ends[-1]) if n else 0
    buf = np.empty(total, np.uint8)
    _put(buf, starts, np.full(n, fields, ">i2"))
    at = starts + 2
    for (values, extra), length in zip(encoded, lengths, strict=True):
        _put(buf, at, length.astype(">i4"))
        if extra is None:
            _put(buf, at + 4, values)
        else:
            keep = np.maximum(length, 0)
            if len(extra):
                offsets = np.repeat(at + 4 - (np.cumsum(keep) - keep), keep)
                buf[offsets + np.arange(len(extra))] = extra
        at = at + 4 + np.maximum(length, 0)
    return b"".join((HEADER, buf.tobytes(), TRAILER))


def _put(buf: NDArray[np.uint8], at: NDArray[Any], values: NDArray[Any]) -> None:
    width = values.dtype.itemsize
    grid = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), width)
    buf[at[:, None] + np.arange(width)] = grid

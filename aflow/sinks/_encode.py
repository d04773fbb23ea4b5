"""Vectorized encoders for the file sinks: ``.npy`` headers, CSV rows and JSON lines.

Text is built a column at a time with NumPy string ufuncs (``astype(str)``,
``np.strings.add``, ``np.strings.replace``), then joined once per batch: Python runs per
batch and per column, never per row (except JSON strings holding control characters).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["columns", "csv_header", "csv_lines", "jsonl_lines", "npy_header"]

Fmt = str | Sequence[str | None] | None


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` header for ``shape`` whose length does not depend on ``shape[0]``.

    NumPy pads the header with room for ``shape[0]`` to grow to 21 digits, so rewriting it
    in place as rows are appended never moves the data. Version 1.0, or 2.0 when the dtype
    description is too long for 1.0.
    """
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def columns(data: NDArray[Any]) -> list[tuple[str, NDArray[Any]]]:
    """The columns of a batch: fields of records, ``value`` of 1-D, ``0..k-1`` of 2-D."""
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


def _join_rows(parts: list[Any]) -> bytes:
    """Concatenate per-row string columns and literals, one line per row, UTF-8."""
    rows = functools.reduce(np.strings.add, parts)
    return ("\n".join(np.atleast_1d(rows).tolist()) + "\n").encode()


def _as_text(col: NDArray[Any]) -> NDArray[np.str_]:
    if col.dtype.kind == "S":
        return np.strings.decode(col, "utf-8")
    return col.astype(str)


def csv_header(data: NDArray[Any]) -> bytes:
    """The header line: the column names, quoted where needed."""
    names = np.array([name for name, _ in columns(data)])
    return (",".join(_csv_quote(names).tolist()) + "\n").encode()


def csv_lines(data: NDArray[Any], fmt: Fmt = None) -> bytes:
    """The rows of ``data`` as CSV lines (RFC 4180 quoting of text fields).

    Args:
        data: a batch: 1-D, 2-D or structured, shape ``(n, ...)``.
        fmt: ``None`` (shortest round-trip text), one ``%``-format for every column, or
            one per column (``None`` entries keep the default).
    """
    cols = columns(data)
    fmts = [fmt] * len(cols) if fmt is None or isinstance(fmt, str) else list(fmt)
    if len(fmts) != len(cols):
        raise ValueError(f"fmt has {len(fmts)} entries for {len(cols)} columns")
    parts: list[Any] = []
    for (_, col), f in zip(cols, fmts, strict=True):
        text = _as_text(col) if f is None else np.char.mod(f, col)
        parts += [_csv_quote(text) if col.dtype.kind in "US" else text, ","]
    return _join_rows(parts[:-1])


def _csv_quote(text: NDArray[np.str_]) -> NDArray[np.str_]:
    """Quote the fields holding a comma, a quote or a line break; double the quotes."""
    special = np.zeros(text.shape, bool)
    for ch in (",", '"', "\n", "\r"):
        special |= np.strings.find(text, ch) >= 0
    if not special.any():
        return text
    quoted = np.strings.add(np.strings.add('"', np.strings.replace(text, '"', '""')), '"')
    out: NDArray[np.str_] = np.where(special, quoted, text)
    return out


def jsonl_lines(data: NDArray[Any]) -> bytes:
    """The rows as JSON lines: objects for records, values for 1-D, arrays for 2-D.

    NaN and infinities become ``null`` (JSON has no such numbers).
    """
    cols = columns(data)
    if not data.dtype.names and data.ndim == 1:
        return _join_rows([_json_values(data)])
    if not data.dtype.names:
        parts: list[Any] = ["["]
        for _, col in cols:
            parts += [_json_values(col), ", "]
        return _join_rows([*parts[:-1], "]"])
    parts = []
    for i, (name, col) in enumerate(cols):
        parts += [("{" if i == 0 else ", ") + json.dumps(name) + ": ", _json_values(col)]
    return _join_rows([*parts, "}"])


def _json_values(col: NDArray[Any]) -> NDArray[np.str_]:
    """One column as JSON text, one element per row."""
    kind = col.dtype.kind
    if kind == "b":
        return np.where(col, "true", "false")
    if kind in "iu":
        return col.astype(str)
    if kind == "f":
        out: NDArray[np.str_] = np.where(np.isfinite(col), col.astype(str), "null")
        return out
    if kind in "USM":
        return _json_strings(_as_text(col))
    raise TypeError(f"cannot write {col.dtype} columns as JSON")


def _json_strings(text: NDArray[np.str_]) -> NDArray[np.str_]:
    """JSON string literals: quotes and backslashes escaped; control characters via json."""
    escaped = np.strings.replace(np.strings.replace(text, "\\", "\\\\"), '"', '\\"')
    out = np.strings.add(np.strings.add('"', escaped), '"')
    codes = text.view(np.uint32).reshape(len(text), -1) if text.dtype.itemsize else None
    if codes is not None and codes.size:
        bad = ((codes < 0x20) & (codes != 0)).any(axis=1)
        if bad.any():  # rare: let json escape the few rows holding control characters
            out = out.astype(object)
            out[bad] = [json.dumps(s, ensure_ascii=False) for s in text[bad].tolist()]
            out = out.astype(str)
    return out

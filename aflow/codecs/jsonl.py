"""JSON lines both ways: one object per line into structured arrays, and arrays into
JSON lines.

The reference engine (``"python"``) parses line by line with orjson (when installed, else
the standard json). The ``"pyarrow"`` engine first gives a block to pyarrow's JSON reader
and takes its result only when it is clean (one row per line, no missing value, no NaN
or infinity, which are not JSON); anything else is decoded again by the reference engine,
so both give the same rows and the same bad lines.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..kernels.rows import empty_rows
from ._arrow import column as arrow_column
from ._arrow import memory_pool
from ._blocks import (
    SMALL_BLOCK,
    LineDecoder,
    Parse,
    RejectedLines,
    by_size,
    by_suspects,
    fit,
    structured,
)
from ._text import as_text, columns, join_rows
from .csv import arrow_type, text_column

__all__ = ["JsonEngine", "JsonlDecoder", "JsonlEncoder"]

JsonEngine: TypeAlias = Literal["auto", "python", "pyarrow"]


class JsonlDecoder(LineDecoder):
    """Decodes blocks of JSON lines (one object per line) into a structured array.

    Each object must have a key per field of ``dtype`` (other keys are ignored). Empty
    lines are skipped. ``NaN`` and ``Infinity`` are not JSON and make a line bad. A line
    that is not valid JSON, not an object, lacks a field or holds a value of the wrong
    kind (a non-integer for an integer field, a non-number for a float field, a finite
    number beyond a float field's range) is one bad line; the rest of its block is
    decoded. A key given twice takes its last value.

    Args:
        dtype: a structured dtype, one field per key.
        engine: ``"python"`` (orjson or json, line by line), ``"pyarrow"`` (pyarrow's
            reader for clean blocks, the python engine for the others; needs
            the ``arrow`` extra, and numeric fields only), or ``"auto"``: pyarrow when
            installed and every field is a number, for blocks of
            :data:`~aflow.codecs.SMALL_BLOCK` bytes and more. Every engine gives the
            same result.

    Attributes:
        dtype: the rows' dtype.
        engine: the engine chosen, ``"python"`` or ``"pyarrow"``.
        small_block: blocks of fewer bytes are parsed by the python engine, cheap enough
            to call without a worker thread (0: no such switch).

    Raises:
        TypeError: ``dtype`` is not structured.
        ValueError: ``engine="pyarrow"`` with a field that is not a number.
        ImportError: ``engine="pyarrow"`` without pyarrow installed.

    Examples:
        >>> decoder = JsonlDecoder([("id", "i8"), ("x", "f8")])
        >>> rows, bad = decoder.decode(b'{"id": 1, "x": 2.5}\\n{"id": "one"}\\n')
        >>> rows.tolist(), [b.index for b in bad]
        ([(1, 2.5)], [1])
    """

    def __init__(
        self, dtype: DTypeLike, *, engine: JsonEngine = "auto", fill_int: int | None = None
    ) -> None:
        self.dtype = structured(dtype, "JsonlDecoder", "key")
        reference = _python_parser(self.dtype, fill_int)
        self.engine = _choose(engine, self.dtype)
        self._parse = reference
        if self.engine == "pyarrow":
            self._parse = _arrow_parser(self.dtype, reference)
            if engine == "auto":
                self._parse = by_size(self._parse, reference)
                self.small_block = SMALL_BLOCK


def _choose(engine: JsonEngine, dtype: np.dtype[Any]) -> Literal["python", "pyarrow"]:
    if engine not in ("auto", "python", "pyarrow"):
        raise ValueError(f"engine={engine!r}: use 'auto', 'python' or 'pyarrow'")
    numeric = all(dtype.fields[n][0].kind in "iuf" for n in dtype.names or ())  # type: ignore[index]
    if engine == "python":
        return "python"
    if engine == "pyarrow":
        if not numeric:
            raise ValueError(f"engine='pyarrow' reads number fields only, not {dtype}")
        return "pyarrow"
    if not numeric:
        return "python"
    try:
        import pyarrow.json  # noqa: F401
    except ImportError:
        return "python"
    return "pyarrow"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads() -> Any:
    try:
        import orjson
    except ImportError:
        return lambda line: json.loads(line, parse_constant=_reject_constant)
    return orjson.loads


def _python_parser(dtype: np.dtype[Any], fill_int: int | None) -> Parse:
    """Line by line: each line is judged alone (a bad one is rejected by its index, no
    bisection); the good lines' values are converted a column at a time."""
    loads = _loads()
    names = list(dtype.names or ())
    kinds = {n: dtype.fields[n][0] for n in names}  # type: ignore[index]

    def parse(blob: bytes) -> NDArray[Any]:
        values: list[list[Any]] = []
        where: list[int] = []
        bad: list[tuple[int, Exception]] = []
        for i, line in enumerate(blob.split(b"\n")):
            if not line.strip():
                continue
            try:
                values.append(_fields(loads(line), names, kinds, fill_int))
                where.append(i)
            except Exception as exc:
                bad.append((i, exc))
        try:
            rows = _rows(values, names, kinds)
        except _Unfit as unfit:
            rows = unfit.rows
            bad = sorted(
                bad + [(where[i], exc) for i, exc in unfit.errors.items()], key=lambda b: b[0]
            )
        if bad:
            raise RejectedLines(rows, bad)
        return rows

    return parse


def _fields(
    obj: Any, names: list[str], kinds: dict[str, np.dtype[Any]], fill_int: int | None
) -> list[Any]:
    """One object's values for ``names``, checked against the fields' kinds; raises for a
    bad line."""
    if type(obj) is not dict:
        raise TypeError(f"a JSON {type(obj).__name__}, not an object")
    out = []
    for name in names:
        value = obj[name]  # a missing key fails the line
        kind = kinds[name].kind
        if value is None and kind == "f":
            value = math.nan  # a null float: NaN
        elif value is None and kind in "iu" and fill_int is not None:
            value = fill_int
        elif kind in "iu" and type(value) is not int:
            raise TypeError(f"field {name!r} must hold integers, not {value!r}")
        elif kind in "fc" and type(value) not in (int, float):
            raise TypeError(f"field {name!r} must hold numbers, not {value!r}")
        elif kind in "SU" and type(value) is not str:
            raise TypeError(f"field {name!r} must hold strings, not {value!r}")
        out.append(value)
    return out


def _rows(
    values: list[list[Any]], names: list[str], kinds: dict[str, np.dtype[Any]]
) -> NDArray[Any]:
    """The checked values of good lines as rows; raises :class:`RejectedLines` for values
    that do not fit their field (an integer or a float beyond its range, a string longer
    than its field)."""
    out = empty_rows(len(values), [(n, kinds[n]) for n in names])
    if not values:
        return out
    ok = np.ones(len(values), bool)
    errors: dict[int, Exception] = {}
    for j, name in enumerate(names):
        column = [v[j] for v in values]
        try:
            out[name] = _column(column, kinds[name], name)
        except Exception:  # rare: find the values at fault one by one
            for i, value in enumerate(column):
                try:
                    out[name][i] = _column([value], kinds[name], name)[0]
                except Exception as exc:
                    ok[i] = False
                    errors.setdefault(i, exc)
    if ok.all():
        return out
    raise _Unfit(out[ok], errors)


class _Unfit(Exception):
    def __init__(self, rows: NDArray[Any], errors: dict[int, Exception]) -> None:
        super().__init__(f"{len(errors)} value(s) out of range")
        self.rows = rows
        self.errors = errors


def _column(column: list[Any], dt: np.dtype[Any], name: str) -> NDArray[Any]:
    if dt.kind == "f":
        return fit(np.array(column, np.float64), dt)
    if dt.kind in "SU":
        return text_column(np.array(column, dtype=str), dt, name)
    return np.array(column, dt)


MAX_FAST_LINE = 2048  # longer lines (which could nest past orjson's 1024 levels) to orjson


def _arrow_parser(dtype: np.dtype[Any], reference: Parse) -> Parse:
    """pyarrow's reader for clean blocks, else ``reference``."""
    try:
        import pyarrow as pa
        import pyarrow.json as pajson
    except ImportError as exc:
        raise ImportError(
            "engine='pyarrow' needs pyarrow: `pip install pyarrow` (the arrow extra)"
        ) from exc
    names = list(dtype.names or ())
    # floats are read as float64 and cast by NumPy, exactly as the reference decoder does
    # (parsing straight to float32 can round differently)
    schema = pa.schema([(n, arrow_type(pa, dtype.fields[n][0])) for n in names])  # type: ignore[index]
    read = pajson.ReadOptions(use_threads=False, block_size=1 << 30)
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    floats = [n for n in names if dtype.fields[n][0].kind == "f"]  # type: ignore[index]
    pool = memory_pool()  # not pyarrow's default: see memory_pool

    def strict(blob: bytes) -> NDArray[Any]:
        """pyarrow's rows for a clean block; raises for any other."""
        if not _plain(blob):
            raise ValueError("not plain")
        table = pajson.read_json(io.BytesIO(blob), read, options, memory_pool=pool)
        if not _one_object_per_line(blob, table.num_rows):
            raise ValueError("not one object per line")  # blank lines, two objects on a line
        if any(c.null_count for c in table.columns):
            raise ValueError("a missing key or a null")
        out = empty_rows(table.num_rows, dtype)
        for name in names:
            dt = dtype.fields[name][0]  # type: ignore[index]
            wide = np.dtype(np.float64) if dt.kind == "f" else dt
            values = arrow_column(table.column(name), wide)
            out[name] = text_column(values, dt, name) if dt.kind in "SU" else fit(values, dt)
        for n in floats:  # NaN or Infinity (not JSON); -0, an integer to the reference
            if not np.isfinite(out[n]).all() or (np.signbit(out[n]) & (out[n] == 0)).any():
                raise ValueError("NaN, Infinity or -0")
        return out

    def parse(blob: bytes) -> NDArray[Any]:
        try:
            return strict(blob)
        except Exception:
            pass
        # a few odd lines: pyarrow for the others, the reference for them
        found = by_suspects(blob, strict, dtype, _suspects, reference)
        if found is None:
            return reference(blob)
        if found.bad:
            raise RejectedLines(found.rows, [(b.index, b.error) for b in found.bad])
        return found.rows

    return parse


def _suspects(
    data: NDArray[np.uint8], starts: NDArray[np.intp], ends: NDArray[np.intp]
) -> NDArray[np.bool_] | None:
    """Lines that may be bad: not ``{...}``, an escape, or another count of quotes than
    most lines have (a string where a number belongs)."""
    if not len(starts) or not len(data):
        return None
    quotes = np.cumsum(data == ord('"'), dtype=np.int32)
    before = np.concatenate(([0], quotes))[starts]
    count = quotes[ends] - before
    mode = np.bincount(count).argmax()
    last = ends - 1 - ((ends > starts) & (data[np.maximum(ends - 1, 0)] == 13))
    odd = (count != mode) | (data[starts] != ord("{")) | (data[np.maximum(last, 0)] != ord("}"))
    escapes = np.flatnonzero(data == ord("\\"))
    if len(escapes):
        odd[np.searchsorted(starts, escapes, "right") - 1] = True
    out: NDArray[np.bool_] = np.asarray(odd, bool)
    return out


def _plain(blob: bytes) -> bool:
    """Whether pyarrow may read ``blob``: nothing it accepts in keys outside the dtype
    that the reference rejects (NaN, Infinity, invalid UTF-8)."""
    # one-byte searches first (memchr): a search for b"NaN" stops at every N, and cost
    # a 1 MiB block about 3 ms, more than its parse
    if (b"N" in blob and b"NaN" in blob) or (b"I" in blob and b"Infinity" in blob):
        return False
    if blob.isascii():
        return True
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _one_object_per_line(blob: bytes, rows: int) -> bool:
    """Whether ``rows`` objects parsed from ``blob`` are one per line: every line starts
    with ``{`` and ends with ``}`` (so none is blank, and no object spans lines: ``}`` then
    ``{`` can only be a boundary between two objects), there are as many, and no line is
    long enough to nest deeper than the reference decoder's limit."""
    data = np.frombuffer(blob, np.uint8)
    ends = np.flatnonzero(data == 10)
    if not blob.endswith(b"\n"):
        ends = np.append(ends, len(data))
    if rows != len(ends) or not rows:
        return False
    starts = np.concatenate(([0], ends[:-1] + 1))
    last = ends - 1 - (data[np.maximum(ends - 1, 0)] == 13)  # before "\r\n" or "\n"
    if (ends - starts).max() > MAX_FAST_LINE or (last < starts).any():
        return False
    return bool((data[starts] == ord("{")).all() and (data[last] == ord("}")).all())


class JsonlEncoder:
    """Encodes arrays as JSON lines: one value per row.

    A record is an object with a key per field, a row of a 2-D array a JSON array, an
    element of a 1-D array a value. Numbers are written in the shortest form that reads
    back the same value; NaN and infinities, which JSON lacks, as ``null``; booleans as
    ``true``/``false``; byte strings decoded as UTF-8, datetimes in ISO 8601, both as
    strings. An array of no rows is no bytes.

    Examples:
        >>> JsonlEncoder().encode(np.array([(1, np.nan)], [("id", "i4"), ("x", "f4")]))
        b'{"id": 1, "x": null}\\n'
    """

    def encode(self, data: NDArray[Any]) -> bytes:
        """The rows of ``data`` as JSON lines, UTF-8.

        Raises:
            TypeError: a column of another kind (complex numbers, objects), a field
                holding a sub-array, or more than two dimensions.
        """
        if not len(data):
            return b""
        cols = columns(data)
        if not data.dtype.names and data.ndim == 1:
            return join_rows([_json_values(data)])
        if not data.dtype.names:
            parts: list[Any] = ["["]
            for _, col in cols:
                parts += [_json_values(col), ", "]
            return join_rows([*parts[:-1], "]"])
        parts = []
        for i, (name, col) in enumerate(cols):
            parts += [("{" if i == 0 else ", ") + json.dumps(name) + ": ", _json_values(col)]
        return join_rows([*parts, "}"])


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
        return _json_strings(as_text(col))
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

"""JSON lines into structured arrays.

The reference decoder parses line by line with orjson (when installed, else the standard
json). When pyarrow is installed and every field is a number, blocks of 16 KiB and more
first go to pyarrow's JSON reader, in worker threads: its result is taken only when it
is clean (one row per line, no missing value, no NaN or infinity, which are not JSON);
anything else is decoded again by the reference decoder, so both give the same rows and
the same bad lines.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..flow import Stage
from ..policies import ErrorPolicy
from ._decode import DecodeOp, FastDecode, decode_stage, fit
from .csv import SMALL, _arrow_type

__all__ = ["decode_jsonl"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads() -> Any:
    try:
        import orjson
    except ImportError:
        return lambda line: json.loads(line, parse_constant=_reject_constant)
    return orjson.loads


def _decoder(dtype: np.dtype[Any]) -> FastDecode:
    loads = _loads()
    names = list(dtype.names or ())

    def decode(blob: bytes) -> NDArray[Any]:
        objects = [loads(line) for line in blob.split(b"\n") if line.strip()]
        out = np.empty(len(objects), dtype)
        for name in names:
            column = [obj[name] for obj in objects]  # a missing key fails the line
            kind = dtype.fields[name][0].kind  # type: ignore[index]
            if kind in "iu" and any(type(v) is not int for v in column):
                raise TypeError(f"field {name!r} must hold integers")
            if kind in "fc" and any(type(v) not in (int, float) for v in column):
                raise TypeError(f"field {name!r} must hold numbers")
            if kind == "f":
                out[name] = fit(np.array(column, np.float64), dtype.fields[name][0])  # type: ignore[index]
            else:
                out[name] = column
        return out

    return decode


MAX_FAST_LINE = 2048  # longer lines (which could nest past orjson's 1024 levels) to orjson


def _arrow_decoder(dtype: np.dtype[Any], reference: FastDecode) -> FastDecode | None:
    """pyarrow's reader for clean blocks, else ``reference``; None without pyarrow."""
    if any(dtype.fields[n][0].kind not in "iuf" for n in dtype.names or ()):  # type: ignore[index]
        return None
    try:
        import pyarrow as pa
        import pyarrow.json as pajson
    except ImportError:
        return None
    names = list(dtype.names or ())
    # floats are read as float64 and cast by NumPy, exactly as the reference decoder does
    # (parsing straight to float32 can round differently)
    schema = pa.schema([(n, _arrow_type(pa, dtype.fields[n][0])) for n in names])  # type: ignore[index]
    read = pajson.ReadOptions(use_threads=False, block_size=1 << 30)
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    floats = [n for n in names if dtype.fields[n][0].kind == "f"]  # type: ignore[index]

    def decode(blob: bytes) -> NDArray[Any]:
        if not _plain(blob):
            return reference(blob)
        try:
            table = pajson.read_json(io.BytesIO(blob), read, parse)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return reference(blob)
        if not _one_object_per_line(blob, table.num_rows):
            return reference(blob)  # blank lines, two objects on a line...
        if any(c.null_count for c in table.columns):
            return reference(blob)  # a missing key or a null
        out = np.empty(table.num_rows, dtype)
        for name in names:
            out[name] = fit(table.column(name).to_numpy(), dtype.fields[name][0])  # type: ignore[index]
        for n in floats:  # NaN or Infinity (not JSON); -0, an integer to the reference
            if not np.isfinite(out[n]).all() or (np.signbit(out[n]) & (out[n] == 0)).any():
                return reference(blob)
        return out

    return decode


def _plain(blob: bytes) -> bool:
    """Whether pyarrow may read ``blob``: nothing it accepts in keys outside the dtype
    that the reference rejects (NaN, Infinity, invalid UTF-8)."""
    if b"NaN" in blob or b"Infinity" in blob:
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


def decode_jsonl(
    dtype: DTypeLike, *, threads: int | None = None, on_error: ErrorPolicy = "raise"
) -> Stage[Any, NDArray[Any]]:
    """Decode blocks of JSON lines (one object per line) into a structured array.

    Each object must have a key per field of ``dtype`` (other keys are ignored). Empty
    lines are skipped. ``NaN`` and ``Infinity`` are not JSON and make a line bad. A
    line that is not valid JSON, not an object, lacks a field or holds
    a value of the wrong kind (a non-integer for an integer field, a non-number for a float
    field) is a bad line for ``on_error``; the rest of its block goes on. A key given
    twice takes its last value.

    With pyarrow installed (``aflow[arrow]``) and only numeric fields, blocks of 16 KiB
    and more are parsed by pyarrow's JSON reader in ``threads`` worker threads (default:
    one per core); the result is the same.
    """
    dt = np.dtype(dtype)
    if dt.names is None:
        raise TypeError(f"decode_jsonl: dtype {dt} must be structured (one field per key)")
    reference = _decoder(dt)
    fast = _arrow_decoder(dt, reference)
    if fast is None:
        return Stage(DecodeOp("decode_jsonl", reference, on_error))
    op = DecodeOp("decode_jsonl[pyarrow]", fast, on_error, small=reference, small_below=SMALL)
    return decode_stage(op, (os.cpu_count() or 1) if threads is None else threads)

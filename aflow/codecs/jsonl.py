"""JSON lines into structured arrays (orjson when installed, else the standard json)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..flow import Stage
from ..policies import ErrorPolicy
from ._decode import DecodeOp, FastDecode

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
            out[name] = column
        return out

    return decode


def decode_jsonl(dtype: DTypeLike, *, on_error: ErrorPolicy = "raise") -> Stage[Any, NDArray[Any]]:
    """Decode blocks of JSON lines (one object per line) into a structured array.

    Each object must have a key per field of ``dtype`` (other keys are ignored). Empty
    lines are skipped. ``NaN`` and ``Infinity`` are not JSON and make a line bad. A
    line that is not valid JSON, not an object, lacks a field or holds
    a value of the wrong kind (a non-integer for an integer field, a non-number for a float
    field) is a bad line for ``on_error``; the rest of its block goes on.
    """
    dt = np.dtype(dtype)
    if dt.names is None:
        raise TypeError(f"decode_jsonl: dtype {dt} must be structured (one field per key)")
    return Stage(DecodeOp("decode_jsonl", _decoder(dt), on_error))

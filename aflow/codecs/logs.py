"""Log lines parsed by a regular expression with named groups into typed columns.

Columns are ``int`` and ``float`` (``"-"`` reads as 0 and NaN, as access logs write
missing numbers), ``str`` (Python strings, any length) or ``timestamp`` (parsed with a
``strftime`` format into ``datetime64[ns]`` UTC; each distinct text is parsed once per
block, so a block of one second's lines parses one timestamp).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..flow import Stage
from ..policies import ErrorPolicy
from ._decode import DecodeOp, FastDecode

__all__ = ["COMBINED", "COMBINED_COLUMNS", "decode_log"]

COMBINED = (
    r"(?P<remote_addr>\S+) \S+ (?P<remote_user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>[^"]+)" (?P<status>\d{3}) '
    r'(?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"'
    r"(?: (?P<request_time>[\d.]+|-))?"
)
"""The nginx/Apache "combined" access log format, optionally followed by a request time
in seconds (nginx ``$request_time``)."""

COMBINED_COLUMNS: dict[str, str] = {
    "remote_addr": "str",
    "time": "timestamp:%d/%b/%Y:%H:%M:%S %z",
    "method": "str",
    "path": "str",
    "status": "int",
    "bytes": "int",
    "request_time": "float",
}
"""Typed columns for :data:`COMBINED` (a subset of its groups)."""


def _column_dtype(kind: str) -> str:
    base = kind.split(":", 1)[0]
    try:
        return {"int": "i8", "float": "f8", "str": "O", "timestamp": "M8[ns]"}[base]
    except KeyError:
        raise ValueError(f"decode_log: unknown column type {kind!r}") from None


def _timestamps(texts: list[str], fmt: str) -> NDArray[Any]:
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    parsed = np.array([_to_ns(datetime.strptime(t, fmt)) for t in unique.tolist()], dtype="M8[ns]")
    return parsed[inverse]


def _to_ns(moment: datetime) -> np.datetime64:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "ns")


def _numbers(texts: list[str], dtype: str) -> NDArray[Any]:
    missing = "0" if dtype == "i8" else "nan"
    return np.array([missing if t in ("-", "", None) else t for t in texts]).astype(dtype)


def _decoder(pattern: re.Pattern[str], columns: dict[str, str]) -> tuple[FastDecode, np.dtype[Any]]:
    dtype = np.dtype([(name, _column_dtype(kind)) for name, kind in columns.items()])
    for name in columns:
        if name not in pattern.groupindex:
            raise ValueError(f"decode_log: column {name!r} is not a named group of the pattern")

    def decode(blob: bytes) -> NDArray[Any]:
        lines = [line for line in blob.decode("utf-8").split("\n") if line.strip()]
        matches = [pattern.fullmatch(line.rstrip("\r")) for line in lines]
        if any(m is None for m in matches):
            raise ValueError("line does not match the log pattern")
        out = np.empty(len(matches), dtype)
        for name, kind in columns.items():
            texts = [m[name] for m in matches]  # type: ignore[index]
            base, _, fmt = kind.partition(":")
            if base == "timestamp":
                out[name] = _timestamps(texts, fmt or "%Y-%m-%dT%H:%M:%S%z")
            elif base in ("int", "float"):
                out[name] = _numbers(texts, dtype.fields[name][0].str[1:])  # type: ignore[index]
            else:
                out[name] = texts
        return out

    return decode, dtype


def decode_log(
    pattern: str | re.Pattern[str] = COMBINED,
    columns: dict[str, str] | None = None,
    *,
    on_error: ErrorPolicy = "raise",
) -> Stage[Any, NDArray[Any]]:
    """Parse blocks of log lines into a structured array, one field per column.

    Args:
        pattern: a regular expression with named groups matching a whole line; by
            default the nginx/Apache combined format (:data:`COMBINED`).
        columns: group name -> ``"int"``, ``"float"``, ``"str"`` or
            ``"timestamp:<strftime format>"``; by default :data:`COMBINED_COLUMNS`.
        on_error: for lines that do not match or whose fields do not convert (also
            invalid UTF-8): ``"raise"``, ``"skip"`` or :func:`~aflow.dead_letter`.
    """
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    cols = dict(COMBINED_COLUMNS if columns is None else columns)
    decode, _ = _decoder(compiled, cols)
    return Stage(DecodeOp("decode_log", decode, on_error))

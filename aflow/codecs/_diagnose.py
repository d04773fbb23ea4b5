"""Why lines are bad, in words: the likely cause when a run's first lines all fail
(column count, header line, delimiter, dtype), and a hint when line 1 looks like a
header."""

from __future__ import annotations

import csv as stdcsv
import re
from collections import Counter
from typing import Any

import numpy as np

from ._blocks import BadLine

__all__ = ["diagnose", "header_hint", "looks_like_header"]

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*|\s*(?i:nan|[+-]?inf(inity)?)\s*")
_DELIMITERS = (",", ";", "\t", "|", " ")


def _fields(line: bytes, delimiter: str) -> list[str]:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    return next(stdcsv.reader([text], delimiter=delimiter), [])


def looks_like_header(line: bytes, dtype: np.dtype[Any] | None, delimiter: str = ",") -> bool:
    """Whether ``line`` looks like a header: no field is a number where the dtype has a
    numeric column, or its fields are the dtype's names."""
    if dtype is None or not dtype.names:
        return False
    fields = [f.strip() for f in _fields(line, delimiter)]
    if [f.lower() for f in fields] == [n.lower() for n in dtype.names]:
        return True
    numeric = [dtype.fields[n][0].kind in "iuf" for n in dtype.names]  # type: ignore[index]
    if len(fields) != len(numeric) or not any(numeric):
        return False
    return all(
        not _NUMBER.fullmatch(f) and f != "" for f, num in zip(fields, numeric, strict=True) if num
    )


def header_hint(line: bytes, dtype: np.dtype[Any] | None, delimiter: str = ",") -> str:
    """``"; line 1 looks like a header: ..."`` when it does, else ``""``."""
    if not looks_like_header(line, dtype, delimiter):
        return ""
    return (
        "; line 1 looks like a header: pass header=True to skip it, or header='names' to "
        "take the columns by name"
    )


def diagnose(bad: list[BadLine], dtype: np.dtype[Any] | None, delimiter: str | None) -> str:
    """The likely cause of a block's lines all being bad, in words."""
    first = bad[0]
    if dtype is None or not dtype.names or delimiter is None:
        return f"the first: {first.error} (is it the right format and pattern?)"
    ncols = len(dtype.names)
    if first.index == 0 and looks_like_header(first.line, dtype, delimiter):
        others = bad[1:]
        if not others:
            return "line 1 looks like a header: pass header=True (or header='names')"
    counts = Counter(len(_fields(b.line, delimiter)) for b in bad)
    common, _ = counts.most_common(1)[0]
    if common != ncols:
        for other in _DELIMITERS:
            if other != delimiter and len(_fields(first.line, other)) == ncols:
                return (
                    f"the lines look {other!r}-separated, not {delimiter!r}: pass "
                    f"delimiter={other!r}"
                )
        return (
            f"column count: the lines have {common} fields, the dtype {ncols} columns "
            f"({', '.join(dtype.names)})"
        )
    return f"dtype: the values do not convert, as in line {first.index + 1}: {first.error}"

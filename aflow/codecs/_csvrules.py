"""The CSV rules both engines share, checked on bytes a block at a time.

* :func:`suspects`: which lines of a block may be bad (a wrong field count, a byte a
  numeric column cannot hold, non-ASCII text), so a block with a few bad lines is parsed
  in one call without them and each suspect judged alone.
* :func:`check_overflow`: a number beyond float64's range (``1e400``) is an error, not
  infinity; ``inf`` written as such is accepted.
* :func:`fill_missing`: empty numeric fields, as the NumPy engine is given them: ``nan``
  for floats, the fill value for integers.
* :func:`aflow_message`: NumPy's error texts in aflow's words.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._blocks import RejectedLines

__all__ = ["aflow_message", "check_overflow", "fill_missing", "has_empty_field", "suspects_for"]

_DIGITS = b"0123456789+- \t"
_FLOAT = _DIGITS + b".eEnNaAiIfFtTyY"


def _allowed(dtype: np.dtype[Any]) -> NDArray[np.bool_]:
    """``(columns, 256)``: the bytes each column may hold without being suspect."""
    table = np.zeros((len(dtype.names or ()), 256), bool)
    for j, name in enumerate(dtype.names or ()):
        kind = dtype.fields[name][0].kind  # type: ignore[index]
        chars = _DIGITS if kind in "iu" else _FLOAT if kind == "f" else bytes(range(32, 128))
        table[j, list(chars)] = True
        table[j, 9] = True
    return table


def suspects_for(dtype: np.dtype[Any], delimiter: str) -> Any:
    """A :data:`~aflow.codecs._blocks.Suspects` check for CSV lines of ``dtype``, or None
    for a delimiter that is not one ASCII byte.

    A handful of passes over the bytes: a byte every column may hold is fine at once;
    only the others (the ``.`` of a float, the letters of text) are looked up by column.
    """
    if len(delimiter.encode()) != 1 or not delimiter.isascii():
        return None
    delim = delimiter.encode()[0]
    allowed = _allowed(dtype)
    ncols = len(allowed)
    anywhere: NDArray[np.bool_] = np.asarray(allowed.all(axis=0))  # fine in every column
    anywhere[[delim, 10]] = True
    somewhere: NDArray[np.bool_] = np.asarray(allowed.any(axis=0))
    somewhere[[delim, 10]] = True

    def suspects(
        data: NDArray[np.uint8], starts: NDArray[np.intp], ends: NDArray[np.intp]
    ) -> NDArray[np.bool_] | None:
        if not len(starts) or ord('"') in _present(data):
            return None  # quoted fields: delimiters cannot be counted byte-wise
        count = np.cumsum(data == delim, dtype=np.int32)
        before = np.concatenate(([0], count))[starts]  # delimiters before each line
        fields = count[ends] - before + 1 if len(data) else before
        mask = fields != ncols
        odd = np.flatnonzero(~anywhere[data])  # bytes some column may not hold
        if len(odd):
            line = np.searchsorted(starts, odd, "right") - 1
            column = np.minimum(count[odd] - before[line], ncols - 1)
            wrong = ~allowed[column, data[odd]] & somewhere[data[odd]] | ~somewhere[data[odd]]
            # a carriage return is fine just before the newline
            wrong &= ~((data[odd] == 13) & (odd + 1 == ends[line]))
            mask[line[wrong]] = True
        if mask.any():  # blank lines are no rows, not suspects
            for i in np.flatnonzero(mask & (fields == 1)).tolist():
                if not data[starts[i] : ends[i]].tobytes().strip():
                    mask[i] = False
        out: NDArray[np.bool_] = np.asarray(mask, bool)
        return out

    return suspects


def _present(data: NDArray[np.uint8]) -> NDArray[np.intp]:
    """The byte values present in ``data`` (a histogram's nonzero bins)."""
    return np.flatnonzero(np.bincount(data, minlength=256))


_INF = re.compile(rb"(?i)(?:^|[^a-z0-9.])[+-]?inf(?:inity)?(?![a-z0-9.])")


def check_overflow(blob: bytes, rows: NDArray[Any], floats: list[str]) -> None:
    """Raise if ``rows`` hold more infinities than ``blob`` writes: a number beyond
    float64's range was read as infinity. :class:`RejectedLines` names those lines when
    each row is one non-blank line of ``blob``."""
    if not floats or not len(rows):
        return
    total = sum(int(np.count_nonzero(np.isinf(rows[name]))) for name in floats)
    if not total or total <= len(_INF.findall(blob)):
        return
    infinite = np.zeros(len(rows), np.int64)
    for name in floats:
        infinite += np.isinf(rows[name])
    lines = blob.split(b"\n")
    solid = [i for i, line in enumerate(lines) if line.strip()]
    if len(solid) != len(rows):
        raise ValueError("a number beyond the range of float64")
    bad: list[tuple[int, Exception]] = [
        (solid[k], ValueError("a number beyond the range of float64"))
        for k in np.flatnonzero(infinite).tolist()
        if infinite[k] > len(_INF.findall(lines[solid[k]]))
    ]
    ok = np.ones(len(rows), bool)
    ok[[np.searchsorted(solid, i) for i, _ in bad]] = False
    raise RejectedLines(rows[ok], bad)


def fill_missing(text: str, dtype: np.dtype[Any], delimiter: str, fill_int: int | None) -> str:
    """``text`` with its empty numeric fields written out: ``nan`` for floats, ``fill_int``
    for integers (left empty, a bad line, when None). A quoted empty field (``""``) is
    not empty: it stays, a bad line in a numeric column (as pyarrow reads it)."""
    fills = []
    for name in dtype.names or ():
        kind = dtype.fields[name][0].kind  # type: ignore[index]
        fills.append(
            "nan"
            if kind == "f"
            else str(fill_int)
            if kind in "iu" and fill_int is not None
            else None
        )
    if all(f is None for f in fills):
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        body = line.removesuffix("\r")
        if not _has_empty(body, delimiter) or not body.strip():
            continue  # nothing empty, or a blank line (no row)
        fields = _split_quoted(body, delimiter) if '"' in body else body.split(delimiter)
        if fields is None or len(fields) != len(fills):
            continue  # a bad line either way
        fields = [(fills[j] or "") if f == "" else f for j, f in enumerate(fields)]
        lines[i] = delimiter.join(fields) + line[len(body) :]
    return "\n".join(lines)


def _split_quoted(line: str, delimiter: str) -> list[str] | None:
    """The fields of ``line`` as written (quotes kept), split at the delimiters outside
    quotes; None for a quote left open."""
    fields, start, quoted = [], 0, False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            fields.append(line[start:i])
            start = i + 1
    fields.append(line[start:])
    return None if quoted else fields


def _has_empty(line: str, delimiter: str) -> bool:
    d = delimiter
    return bool(line) and (line.startswith(d) or line.endswith(d) or d + d in line)


def has_empty_field(text: str, delimiter: str) -> bool:
    """Whether some line of ``text`` may have an empty field."""
    d = delimiter
    return (
        d + d in text
        or f"\n{d}" in text
        or f"{d}\n" in text
        or f"{d}\r" in text
        or text.startswith(d)
    )


_COLUMNS = re.compile(r"the dtype passed requires (\d+) columns but (\d+) were found")
_CONVERT = re.compile(r"could not convert string (.*) to (\w+) at row \d+, column (\d+)")


def aflow_message(exc: Exception, dtype: np.dtype[Any]) -> Exception:
    """``exc`` from NumPy's parser, in aflow's words (NumPy's text names its own options,
    such as ``usecols``, which aflow does not have)."""
    text = str(exc)
    if m := _COLUMNS.search(text):
        return ValueError(f"{m[2]} fields where the dtype has {m[1]} columns ({_names(dtype)})")
    if m := _CONVERT.search(text):
        names = dtype.names or ()
        column = int(m[3]) - 1
        name = names[column] if 0 <= column < len(names) else "?"
        return ValueError(f"{m[1]} is not a {m[2]} (column {name!r})")
    return exc


def _names(dtype: np.dtype[Any]) -> str:
    return ", ".join(dtype.names or ())

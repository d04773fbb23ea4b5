"""The breaks of a clean block's lines found by pyarrow's CSV reader (the ``arrow`` extra).

pyarrow splits a block into space-separated fields, quotes honoured, outside the GIL and
several times faster than finding every space and quote with NumPy. It does not say
where each field was, so that is rebuilt from the lengths of its values, assuming each
line has its layout's shape: a quoted token is its value between two quotes, any other
its value alone, one space between tokens. The assumption is then checked where it
matters: a quote at both ends of every quoted token, a newline at the end of every line,
and no other quote in the line. A line that passes has exactly the breaks its layout
gives (pyarrow began a quoted token at that quote and ended it at the next one, the
closing one, followed by the space it split at; a token without a quote holds no space),
so its fields are those the NumPy path would find; a line that fails is left to the
regular expression.

A block pyarrow cannot split into the layout's number of fields on every line (a field
missing or extra, a quote left open across lines) is left to the NumPy path whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._logfast import Token

__all__ = ["ArrowBreaks", "arrow_breaks", "has_arrow"]

ArrowBreaks = Callable[
    [bytes, NDArray[np.uint8], int],
    "tuple[int, NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]] | None",
]
"""``(blob, data, lines) -> (variant, m, starts, newlines, ok)``: which of the layout's variants
the block has, the break positions of its lines in plan order (rows of the lines that
passed the checks, see ``ok``), where each line starts, where each ends (its newline),
and which lines passed; ``None``: pyarrow cannot split the block by any variant."""


def has_arrow() -> bool:
    """Whether pyarrow's CSV reader can be imported."""
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def arrow_breaks(variants: Sequence[tuple[Token, ...]]) -> ArrowBreaks:
    """The pyarrow tokenizer for the layout ``variants`` (its tokens, then shorter)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    shapes = [_fields_of(tokens) for tokens in variants]
    parse = pacsv.ParseOptions(
        delimiter=" ",
        quote_char='"',
        double_quote=False,
        escape_char=False,
        newlines_in_values=False,
        ignore_empty_lines=False,
    )
    options = []
    for quoted in shapes:
        names = [f"f{i}" for i in range(len(quoted))]
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.binary()),
            check_utf8=False,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        options.append((names, convert))
    preferred = [0]  # the variant the last block had: tried first

    def breaks(blob: bytes, data: NDArray[np.uint8], lines: int) -> Any:
        order = [preferred[0], *(k for k in range(len(variants)) if k != preferred[0])]
        for k in order:
            names, convert = options[k]
            read = pacsv.ReadOptions(
                column_names=names, use_threads=False, block_size=max(len(blob) + 1, 1 << 20)
            )
            try:
                table = pacsv.read_csv(pa.py_buffer(blob), read, parse, convert)
            except pa.ArrowInvalid:
                continue  # another number of fields on some line
            preferred[0] = k
            lengths = [_lengths(table.column(i)) for i in range(len(names))]
            found = _locate(data, lines, shapes[k], lengths)
            return None if found is None else (k, *found)
        return None

    return breaks


def _fields_of(tokens: tuple[Token, ...]) -> list[bool]:
    """The layout's tokens as pyarrow's fields (a bracketed token with spaces is several):
    whether each is quoted."""
    quoted: list[bool] = []
    for t in tokens:
        quoted += [t.kind == "quoted"] + [False] * (t.spaces if t.kind == "bracket" else 0)
    return quoted


def _lengths(column: Any) -> NDArray[np.intp]:
    """The byte lengths of a binary column's values (from its offsets, no copy)."""
    parts = []
    for chunk in column.chunks:
        offsets = np.frombuffer(
            chunk.buffers()[1], np.int32, count=len(chunk) + 1, offset=chunk.offset * 4
        )
        parts.append(np.diff(offsets).astype(np.intp))
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _locate(
    data: NDArray[np.uint8], lines: int, quoted: list[bool], lengths: list[NDArray[np.intp]]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]] | None:
    """Where the breaks of each line are, if each line has the assumed shape (see the
    module's docstring), and which lines have it."""
    n = len(lengths[0])
    if n != lines:
        return None  # a quote left open ran over a newline
    pairs = quoted.count(True)
    m = np.empty((n, len(quoted) + 2 * pairs), np.intp, order="F")  # from line starts, first
    at = 0
    stop = np.full(n, -1, np.intp)  # the break before the next field
    for q, width in zip(quoted, lengths, strict=True):
        if q:
            m[:, at] = stop + 1  # the opening quote
            stop = stop + 2 + width
            m[:, at + 1] = stop  # the closing one
            at += 2
            stop = stop + 1
        else:
            stop = stop + 1 + width
        m[:, at] = stop  # the space or newline after it
        at += 1
    size = stop  # a line's bytes, its newline excluded
    newlines = np.cumsum(size + 1) - 1
    end = len(data) - 1
    ok = np.ones(n, bool)
    if newlines[-1] == end and (data[newlines] == 10).all():
        starts = newlines - size
    else:  # some line is not of the assumed shape: the lines as they are
        newlines = np.flatnonzero(data == 10)
        starts = np.concatenate(([0], newlines[:-1] + 1))
        ok &= newlines - starts == size
    m += starts[:, None]
    at = 0
    for q in quoted:
        if q:
            ok &= data[np.minimum(m[:, at], end)] == 34
            ok &= data[np.minimum(m[:, at + 1], end)] == 34
            at += 2
        at += 1
    if np.count_nonzero(data == 34) != 2 * pairs * n or not ok.all():  # other quotes
        quotes = np.flatnonzero(data == 34)
        ok &= np.bincount(np.searchsorted(newlines, quotes), minlength=n)[:n] == 2 * pairs
    if not ok.all():
        m = m[ok]
    return m, starts, newlines, ok

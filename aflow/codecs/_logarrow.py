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
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._arrow import column as arrow_column
from ._logfast import Token

__all__ = [
    "ArrowBreaks",
    "ArrowColumns",
    "Located",
    "arrow_breaks",
    "arrow_columns",
    "has_arrow",
    "plain",
]

ArrowBreaks = Callable[[bytes, NDArray[np.uint8], int], "Located | None"]
"""``(blob, data, lines) -> located``: the block's ``lines`` as pyarrow split them
(``lines``: the block's bytes below 32, each of which must be a line's newline);
``None``: pyarrow cannot split the block by any variant."""


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

    def breaks(blob: bytes, data: NDArray[np.uint8], lines: int) -> Located | None:
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
            if found is None:
                return None
            breaks, starts, newlines, ok = found
            return Located(k, starts, newlines, ok, breaks, lengths, table)
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


@dataclass(frozen=True)
class Located:
    """The lines of a block as pyarrow split them, checked (see :func:`_locate`)."""

    variant: int
    """Which of the layout's variants (its tokens, then shorter) the lines have."""
    starts: NDArray[np.intp]
    newlines: NDArray[np.intp]
    """Where each line starts, and where it ends (its newline)."""
    ok: NDArray[np.bool_]
    """Which lines have the shape assumed (their fields are the layout's)."""
    breaks: list[NDArray[np.intp]]
    """Every line's breaks in plan order, from its start."""
    lengths: list[NDArray[np.intp]]
    """The length of every field of every line."""
    table: Any
    """pyarrow's fields: binary columns ``f0``, ``f1``..."""

    def matrix(self) -> NDArray[np.intp]:
        """The break positions of the lines that have the shape (a row each)."""
        m = np.stack(self.breaks, axis=1)
        m += self.starts[:, None]
        return m if self.ok.all() else m[self.ok]


def _locate(
    data: NDArray[np.uint8], lines: int, quoted: list[bool], lengths: list[NDArray[np.intp]]
) -> tuple[list[NDArray[np.intp]], NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]] | None:
    """Where the breaks of each line are, from its start, if each line has the assumed
    shape (see the module's docstring); where lines start and end; which have it."""
    n = len(lengths[0])
    if n != lines:
        return None  # a quote left open ran over a newline, or a byte below 32 (a tab)
    breaks: list[NDArray[np.intp]] = []
    quotes: list[NDArray[np.intp]] = []
    stop = np.full(n, -1, np.intp)  # the break before the next field
    for q, width in zip(quoted, lengths, strict=True):
        if q:
            opening = stop + 1
            stop = stop + 2 + width  # the closing quote
            breaks += [opening, stop]
            quotes += [opening, stop]
            stop = stop + 1
        else:
            stop = stop + 1 + width
        breaks.append(stop)  # the space or newline after it
    size = stop  # a line's bytes, its newline excluded
    newlines = np.cumsum(size + 1) - 1
    end = len(data) - 1
    ok = np.ones(n, bool)
    if newlines[-1] == end and (data[newlines] == 10).all():
        starts = newlines - size
    else:  # some line is not of the assumed shape: the lines as they are
        newlines = np.flatnonzero(data == 10)
        if len(newlines) != n:
            return None  # another byte below 32 (``lines`` counts them all)
        starts = np.concatenate(([0], newlines[:-1] + 1))
        ok &= newlines - starts == size
    for at in quotes:
        ok &= data[np.minimum(at + starts, end)] == 34
    if np.count_nonzero(data == 34) != len(quotes) * n or not ok.all():  # other quotes
        found = np.flatnonzero(data == 34)
        ok &= np.bincount(np.searchsorted(newlines, found), minlength=n)[:n] == len(quotes)
    return breaks, starts, newlines, ok


ArrowColumns = Callable[[int, Any, "list[NDArray[np.intp]]"], "dict[str, NDArray[Any]] | None"]
"""``(variant, table, lengths) -> columns``: the wanted columns of a block whose every
line passed :func:`_locate` (pyarrow's fields and their lengths), or ``None`` if some
line or value needs the array path's rules."""


def _scalar(pa: Any, value: bytes) -> Any:
    """A pyarrow binary scalar (``pa.scalar`` would import pandas: half a second)."""
    offsets = np.array([0, len(value)], np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(value)]
    return pa.Array.from_buffers(pa.binary(), 1, buffers)[0]


def _places(tokens: tuple[Token, ...]) -> dict[str, int]:
    """Each named token's field in pyarrow's split (-1: a bracket with spaces, several)."""
    at, place = 0, {}
    for t in tokens:
        if t.name is not None:
            place[t.name] = at if t.kind != "bracket" or not t.spaces else -1
        at += 1 + (t.spaces if t.kind == "bracket" else 0)
    return place


def plain(tokens: tuple[Token, ...], columns: dict[str, str]) -> bool:
    """Whether every wanted column is one of pyarrow's fields read as ``int``, ``float``
    or ``str`` (the columns :func:`arrow_columns` takes)."""
    place = _places(tokens)
    return all(
        kind in ("int", "float", "str") and place.get(name, -1) >= 0
        for name, kind in columns.items()
    )


Check = Callable[["_Values"], bool]
"""Whether every value of a field has its token's shape (what the regular expression the
layout stands for asks of that token)."""


@dataclass(frozen=True)
class _Values:
    """A binary column's values as NumPy views (no copy): its bytes, where each value
    starts and its length."""

    data: NDArray[np.uint8]
    starts: NDArray[np.intp]
    lengths: NDArray[np.intp]

    @classmethod
    def of(cls, column: Any) -> _Values | None:
        """The values of a column of one chunk without nulls (else ``None``)."""
        if hasattr(column, "chunks"):  # a chunked array
            column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        chunk = column
        if chunk.null_count:
            return None
        n = len(chunk)
        _, offsets, data = chunk.buffers()
        at = np.frombuffer(offsets, np.int32, count=n + 1, offset=chunk.offset * 4)
        starts = at[:-1].astype(np.intp)
        raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
        return cls(raw[: int(at[-1])] if n else raw[:0], starts, np.diff(at).astype(np.intp))

    def body(self) -> NDArray[np.uint8]:
        """The bytes of all the values, in order."""
        return self.data[int(self.starts[0]) :] if len(self.starts) else self.data[:0]

    def dashes(self) -> int:
        """How many values are a lone ``-``."""
        one = self.starts[self.lengths == 1]
        return int(np.count_nonzero(self.data[one] == 45)) if len(one) else 0


_RANGES = {"d": (48, 57, 0), "a": (97, 122, 32), "s": (43, 45, 0)}  # low, high, OR mask


def _fixed(shape: str, literal: bool = False) -> Check:
    """Values of exactly ``len(shape)`` bytes: ``d`` a digit, ``a`` an ASCII letter, ``s``
    ``+`` or ``-``, any other character itself (``literal``: every character itself)."""
    w = len(shape)
    lo = np.empty(w, np.uint8)
    span = np.empty(w, np.uint8)
    fold = np.zeros(w, np.uint8)
    for i, ch in enumerate(shape):
        low, high, mask = _RANGES.get(ch, (ord(ch), ord(ch), 0)) if not literal else (0, 0, 0)
        if literal:
            low = high = ord(ch)
        lo[i], span[i], fold[i] = low, high - low, mask
    signs = [i for i, ch in enumerate(shape) if ch == "s" and not literal]

    def check(v: _Values) -> bool:
        n = len(v.lengths)
        if not n:
            return True
        if not (v.lengths == w).all():
            return False
        if int(v.starts[-1] - v.starts[0]) == (n - 1) * w:  # side by side
            m = v.body()[: n * w].reshape(n, w)
        else:
            m = np.lib.stride_tricks.sliding_window_view(v.data, w)[v.starts]
        folded = m | fold if fold.any() else m
        if not ((folded - lo) <= span).all():  # uint8: wraps below ``lo``
            return False
        return all(not (m[:, i] == 44).any() for i in signs)  # "," lies between + and -

    return check


def _chars(digits_only: bool, dash: bool) -> Check:
    """Values of digits (``digits_only=False``: digits and dots), at least one byte
    each; with ``dash``, also a lone ``-``."""

    def check(v: _Values) -> bool:
        if not v.lengths.all():
            return False
        body = v.body()
        odd = (body - np.uint8(48)) > 9
        if not digits_only:
            odd &= body != 46
        count = int(np.count_nonzero(odd))
        return count == 0 or (dash and count == v.dashes())

    return check


def _or_dash(check: Check) -> Check:
    """``check``, or a lone ``-``."""

    def either(v: _Values) -> bool:
        if not len(v.data):
            return check(v)
        dash = (v.lengths == 1) & (v.data[np.minimum(v.starts, len(v.data) - 1)] == 45)
        if not dash.any():
            return check(v)
        keep = ~dash
        return check(_Values(v.data, v.starts[keep], v.lengths[keep]))

    return either


def _ends(first: int | None, last: int | None) -> Check:
    """Values starting with byte ``first`` and ending with byte ``last`` (each may be
    ``None``: anything), two bytes at least when both are given."""

    def check(v: _Values) -> bool:
        need = (first is not None) + (last is not None)
        if not (v.lengths >= need).all():
            return False
        ok = True
        if first is not None:
            ok &= bool((v.data[v.starts] == first).all())
        if last is not None:
            ok &= bool((v.data[v.starts + v.lengths - 1] == last).all())
        return ok

    return check


_SHAPES: dict[str, Callable[[bool], Check]] = {
    "digits3": lambda dash: _fixed("ddd") if not dash else _or_dash(_fixed("ddd")),
    "digits": lambda dash: _chars(True, dash),
    "number": lambda dash: _chars(False, dash),
}
_TIME = (_fixed("[dd/aaa/dddd:dd:dd:dd"), _fixed("sdddd]"))  # [$time_local], split at its space


def _checks(tokens: tuple[Token, ...]) -> tuple[list[int], list[tuple[int, Check]]]:
    """What the array path checks of each token of a line whose breaks are the layout's
    (:func:`fast_parser`'s ``_fields``), as pyarrow's fields: those that must not be
    empty, and the checks (in NumPy, on pyarrow's buffers) that others must pass."""
    nonempty: list[int] = []
    checks: list[tuple[int, Check]] = []
    at = 0
    for t in tokens:
        if t.kind == "bracket" and t.time:
            checks += [(at, _TIME[0]), (at + 1, _TIME[1])]
        elif t.kind == "bracket":
            checks.append((at, _ends(91, 93) if not t.spaces else _ends(91, None)))
            if t.spaces:
                checks.append((at + t.spaces, _ends(None, 93)))
        elif t.kind == "literal":
            checks.append((at, _fixed(t.text, literal=True)))
        elif t.kind == "bare":
            nonempty.append(at)
            if t.shape != "any":
                checks.append((at, _SHAPES[t.shape](t.dash)))
        at += 1 + (t.spaces if t.kind == "bracket" else 0)
    return nonempty, checks


def arrow_columns(
    variants: Sequence[tuple[Token, ...]], columns: dict[str, str], fill_int: int
) -> ArrowColumns | None:
    """The wanted columns straight from pyarrow's fields: each field is checked as the
    array path checks its token (its shape, in NumPy on pyarrow's buffers: the digits of
    ``status``, the time...; quoted fields need nothing, their lines having no
    backslash), then it is its token's group (see the module's docstring); numbers of
    the plain shapes (``\\d+``, ``\\d*.\\d*``, ``-``) are cast by pyarrow (correctly
    rounded, as ``float`` is). ``None``: some wanted column is not one field read as
    ``int``, ``float`` or ``str`` (a timestamp, a bracket with spaces, the request's
    parts, a list of numbers): the array path converts those."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not plain(variants[0], columns):
        return None
    places = [_places(tokens) for tokens in variants]
    checks = [_checks(tokens) for tokens in variants]
    digits = [{t.name for t in tokens if t.shape in ("digits", "digits3")} for tokens in variants]
    brackets = {t.name for t in variants[0] if t.kind == "bracket"}  # [value]: one field
    dash, zero = _scalar(pa, b"-"), _scalar(pa, b"0")

    def number(values: Any, kind: str, checked: bool) -> NDArray[Any] | None:
        v = _Values.of(values)
        if v is None or (not checked and not _chars(kind == "int", True)(v)):
            return None  # pyarrow rejects the rest of r"\d*\.?\d*": "1.2.3", "."
        is_dash = pc.equal(values, dash) if v.dashes() else None
        if is_dash is not None:
            values = pc.if_else(is_dash, zero, values)
        cast = pc.cast(values, pa.int64() if kind == "int" else pa.float64())
        out = arrow_column(cast, np.dtype(np.int64 if kind == "int" else np.float64))
        if kind == "float" and is_dash is not None:
            out[arrow_column(is_dash, np.dtype(bool))] = np.nan
        return out

    def convert(k: int, table: Any, lengths: list[NDArray[np.intp]]) -> Any:
        nonempty, tests = checks[k]
        if not all(lengths[field].all() for field in nonempty):
            return None
        n = len(lengths[0])
        try:
            for field, check in tests:
                v = _Values.of(table.column(field))
                if v is None or not check(v):
                    return None
            out: dict[str, NDArray[Any]] = {}
            for name, kind in columns.items():
                at = places[k].get(name)
                if at is None:  # an optional token these lines lack
                    fill = {"int": fill_int, "float": np.nan, "str": ""}[kind]
                    out[name] = np.full(n, fill, object if kind == "str" else None)
                    continue
                values = table.column(at)
                if name in brackets:
                    values = pc.binary_slice(values, 1, -1)
                if kind == "str":
                    out[name] = np.empty(n, object)
                    out[name][:] = values.cast(pa.string()).to_pylist()
                    continue
                found = number(values, kind, kind == "int" and name in digits[k])
                if found is None:
                    return None
                out[name] = found
        except pa.ArrowInvalid:  # a number beyond int64
            return None
        return out

    return convert

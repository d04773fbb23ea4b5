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

pyarrow first converts only the unquoted fields and the wanted ones: the quoted fields
(the request, referer and user agent: most of a line's bytes) are located by the
block's quotes instead (:func:`_by_quotes`, the same checks). A block whose quotes are
not two per quoted field on every line, or not where the fields put them, is split again
with every field converted, and checked line by line as above.

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
from ._arrow import memory_pool
from ._logfast import Token
from ._scan import count_bytes, find_bytes

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


def arrow_breaks(
    variants: Sequence[tuple[Token, ...]], columns: dict[str, str] | None = None
) -> ArrowBreaks:
    """The pyarrow tokenizer for the layout ``variants`` (its tokens, then shorter);
    ``columns``: the wanted columns (pyarrow converts only the fields these need and the
    unquoted ones; the quoted ones are found in the block, see :func:`_by_quotes`)."""
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
    wanted = set(columns or ())
    options = []
    for tokens, quoted in zip(variants, shapes, strict=True):
        names = [f"f{i}" for i in range(len(quoted))]
        named = {at for name, at in _places(tokens).items() if name in wanted}
        slim = [i for i, q in enumerate(quoted) if not q or i in named or columns is None]
        kept = [] if len(slim) == len(quoted) else slim  # [] : every field
        reads = []
        for fields in [kept, []] if kept else [[]]:
            convert = pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.binary()),
                check_utf8=False,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                include_columns=[names[i] for i in fields],
            )
            reads.append((fields or list(range(len(quoted))), convert))
        options.append((names, reads))
    preferred = [0]  # the variant the last block had: tried first
    # blocks left to split with every field converted at once, after one whose quotes
    # were not the layout's (its split was paid twice): such logs are not split twice
    # a block
    whole = [0]
    pool = memory_pool()

    def breaks(blob: bytes, data: NDArray[np.uint8], lines: int) -> Located | None:
        order = [preferred[0], *(k for k in range(len(variants)) if k != preferred[0])]
        for k in order:
            names, reads = options[k]
            read = pacsv.ReadOptions(
                column_names=names, use_threads=False, block_size=max(len(blob) + 1, 1 << 20)
            )
            if whole[0] and len(reads) > 1:
                whole[0] -= 1
                reads = reads[1:]
            for attempt, (kept, convert) in enumerate(reads):
                try:
                    table = pacsv.read_csv(pa.py_buffer(blob), read, parse, convert, pool)
                except pa.ArrowInvalid:
                    break  # another number of fields on some line
                preferred[0] = k
                fields = _Fields.of(table, kept)
                if fields is None:
                    return None
                last = attempt == len(reads) - 1
                found = (_locate if last else _by_quotes)(data, lines, shapes[k], fields)
                if found is not None:
                    starts, newlines, ok = found
                    return Located(k, starts, newlines, ok, shapes[k], fields, table)
                if last:
                    return None
                whole[0] = WHOLE_AFTER_MISS
        return None

    return breaks


WHOLE_AFTER_MISS = 16
"""Blocks split with every field converted after one whose quotes were not where its
unquoted fields put them."""


def _fields_of(tokens: tuple[Token, ...]) -> list[bool]:
    """The layout's tokens as pyarrow's fields (a bracketed token with spaces is several):
    whether each is quoted."""
    quoted: list[bool] = []
    for t in tokens:
        quoted += [t.kind == "quoted"] + [False] * (t.spaces if t.kind == "bracket" else 0)
    return quoted


@dataclass(frozen=True)
class _Values:
    """A binary column's values as NumPy views (no copy): its bytes, where each value
    starts and its length."""

    data: NDArray[np.uint8]
    starts: NDArray[np.integer[Any]]
    lengths: NDArray[np.integer[Any]]

    @classmethod
    def of(cls, column: Any) -> _Values | None:
        """The values of a column without nulls (else ``None``)."""
        found = _buffers(column)
        if found is None:
            return None
        data, offsets = found
        return cls(data, offsets[:-1], np.diff(offsets))

    def body(self) -> NDArray[np.uint8]:
        """The bytes of all the values, in order."""
        return self.data[int(self.starts[0]) :] if len(self.starts) else self.data[:0]

    def dashes(self) -> int:
        """How many values are a lone ``-``."""
        one = self.starts[self.lengths == 1]
        return int(np.count_nonzero(self.data[one] == 45)) if len(one) else 0


def _buffers(column: Any) -> tuple[NDArray[np.uint8], NDArray[np.int32]] | None:
    """A binary (chunked) array's bytes and offsets as NumPy views (``None``: it has
    nulls)."""
    if hasattr(column, "chunks"):  # a chunked array
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if column.null_count:
        return None
    n = len(column)
    _, offsets, data = column.buffers()
    at = np.frombuffer(offsets, np.int32, count=n + 1, offset=column.offset * 4)
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return raw[: int(at[-1])], at


class _Fields:
    """pyarrow's binary columns of a block as NumPy views (no copy): each column's bytes
    and offsets, by field; the lengths of their values, found when first asked for (a
    quoted field pyarrow did not convert: from its quotes, see :func:`_by_quotes`)."""

    def __init__(
        self, lines: int, data: dict[int, NDArray[np.uint8]], offsets: dict[int, NDArray[np.int32]]
    ) -> None:
        self.data = data
        self.offsets = offsets
        self.lines = lines
        self._lengths: dict[int, NDArray[np.integer[Any]]] = {}

    @classmethod
    def of(cls, table: Any, fields: list[int]) -> _Fields | None:
        """The columns of ``table``, those of ``fields`` (``None``: some value is null)."""
        found = [_buffers(column) for column in table.columns]
        data, offsets = {}, {}
        for field, buffers in zip(fields, found, strict=True):
            if buffers is None:
                return None
            data[field], offsets[field] = buffers
        return cls(table.num_rows, data, offsets)

    def lengths(self, field: int) -> NDArray[np.integer[Any]]:
        """The length of every value of one field."""
        found = self._lengths.get(field)
        if found is None:
            found = self._lengths[field] = np.diff(self.offsets[field])
        return found

    def values(self, field: int) -> _Values:
        """The values of one field pyarrow converted (no copy)."""
        return _Values(self.data[field], self.offsets[field][:-1], self.lengths(field))


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
    quoted: list[bool]
    """Which of pyarrow's fields are quoted."""
    fields: _Fields
    """pyarrow's fields."""
    table: Any
    """pyarrow's fields as a table: binary columns ``f0``, ``f1``..."""

    def matrix(self) -> NDArray[np.intp]:
        """The break positions of the lines that have the shape (a row each), in plan
        order: each quoted field's two quotes, and the space or newline after every
        field."""
        rows: list[NDArray[np.intp]] = []
        stop = np.full(len(self.starts), -1, np.intp)  # the break before the next field
        for field, quoted in enumerate(self.quoted):
            width = self.fields.lengths(field)
            if quoted:
                rows.append(stop + 1)
                stop = stop + 2 + width
                rows.append(stop)
                stop = stop + 1
            else:
                stop = stop + 1 + width
            rows.append(stop)
        m = np.stack(rows, axis=1)
        m += self.starts[:, None]
        return m if self.ok.all() else m[self.ok]


def _by_quotes(
    data: NDArray[np.uint8], lines: int, quoted: list[bool], fields: _Fields
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]] | None:
    """Where lines start and end, when every line has the assumed shape, from the
    lengths of the unquoted fields and the quotes of the block (the quoted fields need
    not be converted by pyarrow); ``None``: some line has not, or the layout has no
    quoted field (then :func:`_locate` decides, from every field's length).

    The block must have exactly two quotes per quoted field on every line; taken in
    order, a line's quotes are then those of its quoted fields when its first opening
    quote lies where its unquoted fields before it put it, each following opening quote
    where the closing one before it and the unquoted fields between put it, a space
    follows every closing quote but a line's last, and its newline lies where its last
    quote and the fields after it put it. Then pyarrow began each quoted field at its
    opening quote and ended it at its closing one (the next quote of the block), followed
    by the space or newline it split at; the other fields hold no quote: the breaks are
    the layout's, as :func:`_locate` would find them.
    """
    n = fields.lines
    pairs = sum(quoted)
    if n != lines or not pairs:
        return None  # a quote left open ran over a newline, or a byte below 32 (a tab)
    found = find_bytes(data, 34)
    if len(found) != 2 * pairs * n:
        return None
    q = found.reshape(n, 2 * pairs)
    # the unquoted fields before, between and after the quoted ones: their widths, each
    # with the space after it
    runs: list[Any] = [0]
    for field, is_quoted in enumerate(quoted):
        if is_quoted:
            runs.append(0)
        else:
            runs[-1] = runs[-1] + fields.lengths(field) + 1
    end = len(data) - 1
    newlines = q[:, -1] + 1 + runs[-1]
    if newlines[-1] != end:
        return None
    starts = np.empty(n, np.intp)
    starts[0] = 0
    np.add(newlines[:-1], 1, out=starts[1:])
    if not (q[:, 0] == starts + runs[0]).all():
        return None
    for k in range(1, pairs):
        if not (q[:, 2 * k] == q[:, 2 * k - 1] + 2 + runs[k]).all():
            return None
    closing = q[:, 1::2] if not quoted[-1] else q[:, 1:-1:2]
    if closing.size and not (data[closing + 1] == 32).all():
        return None
    if not (data[np.minimum(newlines, end)] == 10).all():
        return None
    at = 0
    for field, is_quoted in enumerate(quoted):
        if is_quoted:
            if field not in fields.offsets:
                fields._lengths[field] = q[:, at + 1] - q[:, at] - 1
            at += 2
    return starts, newlines, np.ones(n, bool)


def _locate(
    data: NDArray[np.uint8], lines: int, quoted: list[bool], fields: _Fields
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]] | None:
    """Where lines start and end, and which have the assumed shape (see the module's
    docstring). One small array per field: matrices of all fields were fresh memory
    for every block (page faults in worker threads)."""
    n = fields.lines
    if n != lines:
        return None  # a quote left open ran over a newline, or a byte below 32 (a tab)
    quotes: list[NDArray[np.int32]] = []  # every quote, from its line's start
    stop = np.full(n, -1, np.int32)  # the break before the next field
    for field, q in enumerate(quoted):
        if q:
            quotes.append(stop + 1)  # the opening quote
        stop += fields.lengths(field)
        if q:
            stop += 2
            quotes.append(stop.copy())  # the closing one
        stop += 1  # the space or newline after the field
    size = stop.astype(np.intp)  # a line's bytes, its newline excluded
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
    at = np.empty(n, np.intp)
    for quote in quotes:
        np.add(quote, starts, out=at)
        np.minimum(at, end, out=at)
        ok &= data[at] == 34
    if count_bytes(data, 34) != len(quotes) * n or not ok.all():  # other quotes
        found = np.flatnonzero(data == 34)
        ok &= np.bincount(np.searchsorted(newlines, found), minlength=n)[:n] == len(quotes)
    return starts, newlines, ok


ArrowColumns = Callable[[Located], "dict[str, NDArray[Any]] | None"]
"""``located -> columns``: the wanted columns of a block whose every line passed
:func:`_locate`, or ``None`` if some line or value needs the array path's rules."""


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
    folds = bool(fold.any())
    tiled: list[NDArray[np.uint8]] = [lo, span, fold]  # the same, repeated (grown as needed)

    def check(v: _Values) -> bool:
        n = len(v.lengths)
        if not n:
            return True
        if not (v.lengths == w).all():
            return False
        if int(v.starts[-1] - v.starts[0]) == (n - 1) * w:  # side by side
            flat = v.body()[: n * w]
        else:
            flat = np.lib.stride_tricks.sliding_window_view(v.data, w)[v.starts].reshape(-1)
        # one pass each over the values' bytes, against the shape repeated: broadcasting
        # ``(n, w)`` against ``(w,)`` ran n loops of w bytes, several times slower. A
        # snapshot of the list: decoding threads share it, and one may grow it meanwhile
        # (reading it lazily could mix a grown array with a short one)
        current = list(tiled)
        if len(current[0]) < n * w:
            current = [
                np.tile(x, max(n, 8192)) if folds or x is not fold else x for x in (lo, span, fold)
            ]
            tiled[:] = current
        low, width, case = (x[: n * w] for x in current)
        folded = flat | case if folds else flat
        if not ((folded - low) <= width).all():  # uint8: wraps below ``lo``
            return False
        return all(not (flat[i::w] == 44).any() for i in signs)  # "," lies between + and -

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


def _fixed_point(v: _Values | None, floating: bool) -> NDArray[Any] | None:
    """The values of a number field when all have one shape: the same width (at most 15
    characters), digits, and for a ``float`` at most one dot, in the same place (an
    HTTP status, nginx's ``$request_time``): read from their bytes, exactly, one rounding
    as ``float`` does (``None``: they have not; pyarrow's cast decides)."""
    if v is None or not len(v.lengths):
        return None
    n, w = len(v.lengths), int(v.lengths[0])
    if not 1 <= w <= 15 or not (v.lengths == w).all():
        return None
    if int(v.starts[-1] - v.starts[0]) != (n - 1) * w:
        return None
    m = v.body()[: n * w].reshape(n, w)
    dots = np.flatnonzero(m[0] == 46).tolist()
    if len(dots) > int(floating) or (dots and not (m[:, dots[0]] == 46).all()):
        return None
    places = [i for i in range(w) if i not in dots]
    if not places:
        return None  # "." alone
    digits = m[:, places] - np.uint8(48)
    if not (digits <= 9).all():  # uint8: wraps below "0"
        return None
    value = digits[:, 0].astype(np.int64)
    for i in range(1, len(places)):
        value *= 10
        value += digits[:, i]
    if not floating:
        return value
    return value / 10.0 ** (w - 1 - dots[0] if dots else 0)  # both exact: one rounding


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

    if not plain(variants[0], columns):
        return None
    places = [_places(tokens) for tokens in variants]
    checks = [_checks(tokens) for tokens in variants]
    # numbers whose token's check already is the one a cast needs (r"[\d.]+|-" for a
    # float, r"\d+|-" for an int)
    sure = [
        {
            t.name
            for t in tokens
            if t.shape in ("digits", "digits3")
            or (t.shape == "number" and columns.get(t.name or "") == "float")
        }
        for tokens in variants
    ]
    brackets = {t.name for t in variants[0] if t.kind == "bracket"}  # [value]: one field
    dash, zero = _scalar(pa, b"-"), _scalar(pa, b"0")
    pool = memory_pool()

    def number(values: Any, v: _Values | None, kind: str, checked: bool) -> Any:
        if v is None or (not checked and not _chars(kind == "int", True)(v)):
            return None  # pyarrow rejects the rest of r"\d*\.?\d*": "1.2.3", "."
        import pyarrow.compute as pc  # only here: importing it costs 8 MB of memory

        is_dash = pc.equal(values, dash, memory_pool=pool) if v.dashes() else None
        if is_dash is not None:
            values = pc.if_else(is_dash, zero, values, memory_pool=pool)
        cast = pc.cast(values, pa.int64() if kind == "int" else pa.float64(), memory_pool=pool)
        out = arrow_column(cast, np.dtype(np.int64 if kind == "int" else np.float64))
        if kind == "float" and is_dash is not None:
            out[arrow_column(is_dash, np.dtype(bool))] = np.nan
        return out

    def convert(found: Located) -> Any:
        k, fields = found.variant, found.fields
        nonempty, tests = checks[k]
        if not all(fields.lengths(field).all() for field in nonempty):
            return None
        n = fields.lines
        try:
            if not all(check(fields.values(field)) for field, check in tests):
                return None
            out: dict[str, NDArray[Any]] = {}
            for name, kind in columns.items():
                at = places[k].get(name)
                if at is None:  # an optional token these lines lack
                    fill = {"int": fill_int, "float": np.nan, "str": ""}[kind]
                    out[name] = np.full(n, fill, object if kind == "str" else None)
                    continue
                values = found.table.column(f"f{at}")
                v: _Values | None = fields.values(at)
                if name in brackets:
                    import pyarrow.compute as pc

                    values = pc.binary_slice(values, 1, -1, memory_pool=pool)
                    v = _Values.of(values)
                if kind == "str":
                    import pyarrow.compute as pc

                    text = pc.cast(values, pa.string(), memory_pool=pool)
                    out[name] = arrow_column(text, np.dtype(object))
                    continue
                number_of = _fixed_point(v, kind == "float")
                if number_of is None:
                    number_of = number(values, v, kind, name in sure[k])
                if number_of is None:
                    return None
                out[name] = number_of
        except pa.ArrowInvalid:  # a number beyond int64
            return None
        return out

    return convert

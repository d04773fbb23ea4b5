"""Space-delimited access log lines parsed with array arithmetic instead of a regex per line.

A *layout* is a sequence of tokens separated by single spaces: bare fields (no space, no
quote), quoted fields (``"..."``, no quote inside), bracketed fields (``[...]``, a known
number of spaces inside) and literal text. In a block, the positions of every space,
quote and newline are found at once; the spaces inside quotes are set aside, and a line
is *canonical* when it has exactly the breaks its layout gives (so many quotes, so many
spaces outside them, in the expected order), only printable ASCII without a backslash,
and fields of the expected shape. Each field of a canonical line then sits between two
known breaks: fields are sliced, numbers computed digit by digit, timestamps parsed by
:class:`~aflow.codecs._timeparse.FixedFormat`, all column-wise.

Every line that is not canonical, or whose values do not convert by these simple rules
(a float with two dots, a timestamp of another width...), is left to the regular
expression the layout stands for, line by line: a canonical line's fields are, by
construction, the groups that expression gives, so results never depend on the path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._timeparse import FixedFormat

__all__ = ["TIME_SHAPE", "FastParse", "Layout", "Token", "fast_parser"]

Kind = Literal["bare", "quoted", "bracket", "literal"]
Shape = Literal["any", "digits", "digits3", "number"]

TIME_SHAPE = "dd/aaa/dddd:dd:dd:dd sdddd"
"""``[$time_local]``: ``d`` a digit, ``a`` an ASCII letter, ``s`` ``+`` or ``-``."""

_P10 = 10 ** np.arange(19, dtype=np.int64)
_WIDE = 18  # digits of the widest number read here (int64 and exact float mantissas)


@dataclass(frozen=True)
class Token:
    """One space-separated token of a layout."""

    kind: Kind
    name: str | None = None
    """Its group name (``None``: not captured)."""
    text: str = ""
    """A literal token's text."""
    shape: Shape = "any"
    """What a bare field must look like: ``digits`` (``\\d+``), ``digits3``
    (``\\d{3}``), ``number`` (``[\\d.]+``); ``dash``: or a lone ``-``."""
    dash: bool = False
    spaces: int = 0
    """Spaces inside a bracketed field."""
    time: bool = False
    """A bracketed field of :data:`TIME_SHAPE`."""
    request: bool = False
    """A quoted request line, split into ``method``, ``path`` and ``protocol``."""


@dataclass(frozen=True)
class Layout:
    """Tokens, of which the last ``optional`` may be absent (from the end)."""

    tokens: tuple[Token, ...]
    optional: int = 0
    names: frozenset[str] = field(default=frozenset())

    def groups(self) -> set[str]:
        """The group names a canonical line gives."""
        out = {t.name for t in self.tokens if t.name}
        if any(t.request for t in self.tokens):
            out |= {"method", "path", "protocol"}
        return out


FastParse = Callable[[bytes, NDArray[Any]], tuple[NDArray[np.bool_], NDArray[np.intp]]]
"""``(blob, out) -> (done, newlines)``: fills ``out[i]`` for each canonical line ``i``
of ``blob`` (``out`` has one row per line), says which lines it filled, and where each
line's newline is."""


def _gather(data: NDArray[np.uint8], start: NDArray[np.intp], width: int) -> NDArray[np.uint8]:
    """``data[start[i] : start[i] + width]`` for every ``i`` (clipped at the end)."""
    idx = start[:, None] + np.arange(width)
    np.minimum(idx, len(data) - 1, out=idx)
    return data[idx]


def _digits(
    data: NDArray[np.uint8], start: NDArray[np.intp], width: NDArray[np.intp], dot: bool
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
    """Fields of ``\\d+`` (``dot``: ``[\\d.]+`` with at most one dot) of up to
    :data:`_WIDE` characters: which are, the integer of their digits, and the digits
    after the dot."""
    n = len(start)
    if not n:
        z = np.zeros(0, np.int64)
        return np.zeros(0, bool), z, z
    w = int(min(width.max(), _WIDE + 1))
    g = _gather(data, start, w)
    pos = np.arange(w)
    inside = pos < width[:, None]
    d = g - np.uint8(48)
    isdig = d <= 9
    ok = (width >= 1) & (width <= _WIDE)
    if dot:
        isdot = (g == 46) & inside
        ndots = isdot.sum(1)
        ok &= (isdig | isdot | ~inside).all(1) & (ndots <= 1) & (width > ndots)
        # digits after the dot; the mantissa skips the dot
        where = np.where(ndots == 1, isdot.argmax(1), width)
        after = np.where(ndots == 1, width - 1 - where, 0)
        keep = inside & isdig
        rank = np.cumsum(keep, 1)  # 1-based rank of each digit
        total = rank[:, -1]
        power = np.clip(total[:, None] - rank, 0, 18)
    else:
        ok &= (isdig | ~inside).all(1)
        after = np.zeros(n, np.int64)
        keep = inside
        power = np.clip(width[:, None] - 1 - pos, 0, 18)
    value = np.where(keep, d.astype(np.int64) * _P10[power], 0).sum(1)
    return ok, value, after.astype(np.int64)


class _Breaks:
    """The spaces, quotes and newlines of a block; spaces inside quotes apart."""

    def __init__(self, data: NDArray[np.uint8]) -> None:
        mask = data == 32
        mask |= data == 34
        mask |= data == 10
        brk = np.flatnonzero(mask)
        c = data[brk]
        isq = c == 34
        isnl = c == 10
        qc = np.cumsum(isq, dtype=np.int64)
        nl = np.flatnonzero(isnl)
        line_of = np.cumsum(isnl, dtype=np.int64) - isnl
        qline = qc[nl]
        base = np.concatenate(([0], qline[:-1]))
        self.quotes = qline - base  # per line
        inside = (c == 32) & ((qc - base[line_of]) & 1 == 1)
        keep = ~inside
        kc = np.cumsum(keep, dtype=np.int64)[nl]
        self.counts = np.diff(kc, prepend=0)  # kept breaks per line, its newline included
        self.kept = brk[keep]
        self.kept_line = line_of[keep]
        self.kept_char = c[keep]
        self.inner = brk[inside]  # spaces inside quotes
        self.newlines = brk[nl]


def fast_parser(
    layout: Layout,
    columns: dict[str, str],
    dtype: np.dtype[Any],
    fill_int: int,
    formats: dict[str, str],
    fixed: dict[str, FixedFormat | None],
) -> FastParse:
    """The array path for ``layout`` (see the module's docstring)."""
    variants = [layout.tokens[: len(layout.tokens) - k] for k in range(layout.optional + 1)]
    plans = [_plan(tokens) for tokens in variants]
    need_text = any(kind.partition(":")[0] == "str" for kind in columns.values())

    def parse(blob: bytes, out: NDArray[Any]) -> NDArray[np.bool_]:
        data = np.frombuffer(blob, np.uint8)
        n = len(out)
        done = np.zeros(n, bool)
        b = _Breaks(data)
        starts = np.concatenate(([0], b.newlines[:-1] + 1))
        odd = data - np.uint8(32) > 94  # outside printable ASCII (newlines too)
        odd |= data == 92
        pos = np.flatnonzero(odd)
        pos = pos[data[pos] != 10]
        clean = np.ones(n, bool)
        if len(pos):
            clean[np.searchsorted(b.newlines, pos)] = False
        text: str | None = None
        for tokens, (expected, quotes) in zip(variants, plans, strict=True):
            k = len(expected)
            lines = np.flatnonzero(clean & (b.counts == k) & (b.quotes == quotes))
            if not len(lines):
                continue
            sel = np.zeros(n, bool)
            sel[lines] = True
            pick = sel[b.kept_line]
            m = b.kept[pick].reshape(-1, k)
            ok = (b.kept_char[pick].reshape(-1, k) == expected).all(1)
            if not ok.all():
                m, lines = m[ok], lines[ok]
            if not len(lines):
                continue
            if text is None and need_text:
                text = blob.decode("latin-1")  # canonical lines are ASCII
            good, values = _fields(
                data, text, b, tokens, m, starts[lines], columns, dtype, fill_int, formats, fixed
            )
            rows = lines[good]
            for name, col in values.items():
                out[name][rows] = col
            done[rows] = True
        return done, b.newlines

    return parse


def _plan(tokens: tuple[Token, ...]) -> tuple[NDArray[np.uint8], int]:
    """The breaks a canonical line of ``tokens`` has, in order, and its quote count."""
    seq: list[int] = []
    for i, t in enumerate(tokens):
        if t.kind == "quoted":
            seq += [34, 34]
        elif t.kind == "bracket":
            seq += [32] * t.spaces
        seq.append(32 if i < len(tokens) - 1 else 10)
    return np.array(seq, np.uint8), seq.count(34)


def _fields(
    data: NDArray[np.uint8],
    text: str | None,
    b: _Breaks,
    tokens: tuple[Token, ...],
    m: NDArray[np.intp],
    starts: NDArray[np.intp],
    columns: dict[str, str],
    dtype: np.dtype[Any],
    fill_int: int,
    formats: dict[str, str],
    fixed: dict[str, FixedFormat | None],
) -> tuple[NDArray[np.bool_], dict[str, NDArray[Any]]]:
    """Check each token of the canonical lines ``m`` (their break positions) and convert
    the wanted columns; returns which lines passed and the columns (all lines' values,
    or only the passing lines')."""
    n = len(m)
    ok = np.ones(n, bool)
    values: dict[str, NDArray[Any]] = {}
    prev = starts - 1  # the break before the current token
    col = 0
    spans: dict[str, tuple[NDArray[np.intp], NDArray[np.intp]]] = {}
    for t in tokens:
        if t.kind == "quoted":
            opening, closing = m[:, col], m[:, col + 1]
            ok &= opening == prev + 1
            lo, hi = opening + 1, closing
            col += 2
            ok &= m[:, col] == closing + 1
        elif t.kind == "bracket":
            col += t.spaces
            lo, hi = prev + 2, m[:, col] - 1
            ok &= (hi >= lo) & (data[prev + 1] == 91) & (data[np.maximum(hi, 0)] == 93)
        else:
            lo, hi = prev + 1, m[:, col]
            if t.kind == "literal":
                lit = np.frombuffer(t.text.encode(), np.uint8)
                ok &= hi - lo == len(lit)
                if len(lit):
                    ok &= (_gather(data, lo, len(lit)) == lit).all(1)
            else:
                ok &= hi > lo
        if t.time:
            ok &= hi - lo == len(TIME_SHAPE)
            if t.name not in columns or formats.get(t.name) != "%d/%b/%Y:%H:%M:%S %z":
                ok &= _time_shape(_gather(data, lo, len(TIME_SHAPE)))
        if t.shape != "any":
            ok &= _shape(data, lo, hi, t.shape, t.dash)
        if t.name is not None:
            spans[t.name] = (lo, hi)
        if t.request:
            parts, unsure = _request(data, b, lo, hi)
            spans.update(parts)
            ok &= ~unsure
        prev = m[:, col]
        col += 1
    strings = []
    for name, kind in columns.items():
        base = kind.partition(":")[0]
        if name not in spans:  # an optional token these lines lack
            code = dtype.fields[name][0]  # type: ignore[index]
            if code.kind == "i":
                values[name] = np.full(n, fill_int, np.int64)
            elif code.kind == "f":
                values[name] = np.full(n, np.nan)
            elif code.kind == "M":
                values[name] = np.full(n, np.datetime64("NaT"), "M8[ns]")
            else:
                values[name] = np.full(n, "", object)
            continue
        lo, hi = spans[name]
        if base in ("int", "float"):
            good, vals = _number(data, lo, hi, base == "float")
            ok &= good
            values[name] = vals
        elif base == "timestamp":
            fmt = fixed.get(name)
            width = fmt.width if fmt is not None else -1
            ok &= hi - lo == width
            if fmt is None or not ok.any():
                values[name] = np.full(n, np.datetime64("NaT"), "M8[ns]")
                continue
            ns, parsed = fmt.parse_codes(_gather(data, lo, width))
            ok &= parsed
            values[name] = ns.view("M8[ns]")
        else:
            strings.append(name)
    out = {name: v[ok] for name, v in values.items()}
    for name in strings:
        lo, hi = spans[name]
        assert text is not None
        out[name] = _strings(text, lo[ok], hi[ok])
    return ok, out


def _strings(text: str, lo: NDArray[np.intp], hi: NDArray[np.intp]) -> NDArray[Any]:
    out = np.empty(len(lo), object)
    out[:] = [text[a:z] for a, z in zip(lo.tolist(), hi.tolist(), strict=True)]
    return out


def _time_shape(g: NDArray[np.uint8]) -> NDArray[np.bool_]:
    ok = np.ones(len(g), bool)
    for i, ch in enumerate(TIME_SHAPE):
        c = g[:, i]
        if ch == "d":
            ok &= c - np.uint8(48) <= 9
        elif ch == "a":
            ok &= (c | np.uint8(0x20)) - np.uint8(97) <= 25
        elif ch == "s":
            ok &= (c == 43) | (c == 45)
        else:
            ok &= c == ord(ch)
    return ok


def _shape(
    data: NDArray[np.uint8], lo: NDArray[np.intp], hi: NDArray[np.intp], shape: Shape, dash: bool
) -> NDArray[np.bool_]:
    width = hi - lo
    if shape == "digits3":
        g = _gather(data, lo, 3)
        ok = (width == 3) & (g - np.uint8(48) <= 9).all(1)
    else:
        # [\d.]+ of any number of dots (the value may not convert: the regex decides)
        w = int(min(width.max(initial=1), _WIDE + 1))
        g = _gather(data, lo, w)
        allowed = g - np.uint8(48) <= 9
        if shape == "number":
            allowed |= g == 46
        allowed |= np.arange(w) >= width[:, None]
        ok = (width >= 1) & (width <= _WIDE) & allowed.all(1)
    if dash:
        ok |= (width == 1) & (data[lo] == 45)
    return ok


def _number(
    data: NDArray[np.uint8], lo: NDArray[np.intp], hi: NDArray[np.intp], floating: bool
) -> tuple[NDArray[np.bool_], NDArray[Any]]:
    """Values of ``\\d+`` (or ``\\d*.\\d*`` for floats) fields; ``-`` is 0 or NaN."""
    width = hi - lo
    ok, value, after = _digits(data, lo, width, floating)
    dash = (width == 1) & (data[lo] == 45)
    if floating:
        ok &= (width <= 16) | dash  # mantissas below 2**53: one exact division
        out = value / (10.0 ** after)
        out[dash] = np.nan
    else:
        out = np.where(dash, 0, value)
    return ok | dash, out


def _request(
    data: NDArray[np.uint8], b: _Breaks, lo: NDArray[np.intp], hi: NDArray[np.intp]
) -> tuple[dict[str, tuple[NDArray[np.intp], NDArray[np.intp]]], NDArray[np.bool_]]:
    """``method path protocol`` of a request line as the regex splits it: the method up
    to the first space, the protocol after the last space when it reads ``HTTP/[\\d.]+``
    (and that space is not the first), the path between; no space (or a leading one):
    all three empty. Also the lines left to the regex: a protocol longer than read here."""
    inner = b.inner
    i = np.searchsorted(inner, lo)
    first = inner[np.minimum(i, len(inner) - 1)] if len(inner) else np.full(len(lo), -1)
    has = (i < len(inner)) & (first < hi) & (first > lo)
    j = np.searchsorted(inner, hi) - 1
    last = inner[np.maximum(j, 0)] if len(inner) else np.full(len(lo), -1)
    width = hi - last - 1
    g = _gather(data, last + 1, 12)
    proto = has & (last > first) & (g[:, :5] == np.frombuffer(b"HTTP/", np.uint8)).all(1)
    unsure = proto & (width > 12)
    proto &= (width >= 6) & (width <= 12)
    inside = np.arange(12) < width[:, None]
    proto &= (((g - np.uint8(48) <= 9) | (g == 46)) | ~inside)[:, 5:].all(1)
    empty = lo.copy()
    method = (lo, np.where(has, first, empty))
    path = (np.where(has, first + 1, empty), np.where(has, np.where(proto, last, hi), empty))
    protocol = (np.where(proto, last + 1, empty), np.where(proto, hi, empty))
    return {"method": method, "path": path, "protocol": protocol}, unsure

"""Access log blocks split by the compiled scanner (``_logscan.c``), when it was built.

The scanner reads each line once, in C with the GIL released, and keeps the lines of the
layout's exact shape by the array path's rules (:mod:`._logfast`): printable ASCII without
a backslash, one space between tokens, a quoted token between two quotes with no quote
inside, a bracketed one with its number of spaces, each bare token of its shape
(``\\d{3}``, ``\\d+``, ``[\\d.]+``, or a lone ``-`` where allowed), the time of
:data:`~._logfast.TIME_SHAPE`, literal text as it is. It gives where each token lies and
reads the numbers as the array path does (``\\d+`` for an int, ``\\d*.\\d*`` for a float,
at most 15 characters, exact before one rounding; ``-`` is 0 or NaN); a number it cannot
read so leaves its line to the regular expression, as the array path does. The other
columns (timestamps, strings, the request's parts) are converted from the tokens' places
by the array path's own code, so rows never depend on the engine.

Without a C compiler at install the module is absent and :func:`native_split` gives
``None``: the pyarrow or NumPy engines take the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..kernels.rows import empty_rows
from ._logfast import PAD, Layout, Spans, Token, convert_spans, request_spans
from ._timeparse import FixedFormat

try:
    from . import _logscan  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler
    _logscan = None

__all__ = ["NativeParse", "has_native", "native_parser"]

NativeParse = Callable[[bytes], tuple[NDArray[Any], NDArray[np.bool_], NDArray[Any]]]
"""``blob -> (out, done, newlines)``, as :data:`~._logfast.FastParse` (``newlines``:
int64)."""

_KINDS = {"bare": 0, "quoted": 1, "bracket": 2, "literal": 3}
_SHAPES = {"any": 0, "digits": 1, "digits3": 2, "number": 3}


def has_native() -> bool:
    """Whether the compiled scanner was built."""
    return _logscan is not None


def _scanned(tokens: tuple[Token, ...], columns: dict[str, str]) -> list[str]:
    """The ``int``/``float`` columns the scanner reads: those that are a token of their
    own (not a part of the request line), in the order of ``columns``."""
    names = {t.name for t in tokens}
    return [
        name
        for name, kind in columns.items()
        if name in names and kind.partition(":")[0] in ("int", "float")
    ]


def _spec(tokens: tuple[Token, ...], columns: dict[str, str]) -> tuple[NDArray[np.int32], bytes]:
    """The scanner's spec of ``tokens`` (8 numbers a token, see ``_logscan.c``) and the
    literal tokens' text; the columns of :func:`_scanned` are read by the scanner, in
    that order."""
    numeric = _scanned(tokens, columns)
    literals = b""
    spec: list[int] = []
    for t in tokens:
        text = t.text.encode()
        number = 0
        if t.name in numeric:
            k = numeric.index(t.name)
            number = 2 * k + (1 if columns[t.name].startswith("int") else 2)
        spec += [
            _KINDS[t.kind],
            _SHAPES[t.shape],
            int(t.dash),
            t.spaces,
            int(t.time),
            len(literals),
            len(text),
            number,
        ]
        literals += text
    return np.array(spec, np.int32), literals


def native_parser(
    layout: Layout,
    columns: dict[str, str],
    dtype: np.dtype[Any],
    fill_int: int,
    fixed: dict[str, FixedFormat | None],
) -> NativeParse | None:
    """The compiled scanner's parse of blocks of ``layout`` (``None``: not built)."""
    if _logscan is None:
        return None
    scan, count = _logscan.scan, _logscan.lines
    tokens = layout.tokens
    ntok = len(tokens)
    spec, literals = _spec(tokens, columns)
    numeric = _scanned(tokens, columns)
    places = {t.name: j for j, t in enumerate(tokens) if t.name is not None}
    request = next((j for j, t in enumerate(tokens) if t.request), -1)
    parts = {"method", "path", "protocol"} & set(columns)
    text = len(numeric) < len(columns)  # some column is not read by the scanner
    none = np.zeros(0, np.uint8)

    def variant(
        blob: bytes,
        data: NDArray[np.uint8],
        bounds: NDArray[np.int32],
        numbers: NDArray[np.float64],
        lack: int,
    ) -> tuple[NDArray[np.bool_], dict[str, NDArray[Any]]]:
        """The columns of lines lacking ``lack`` tokens (their bounds and numbers), and
        which of them converted (the others go to the regular expression)."""
        there = ntok - lack
        ok = np.ones(len(bounds), bool)
        spans: Spans = {
            name: (bounds[:, j, 0].astype(np.intp), bounds[:, j, 1].astype(np.intp))
            for name, j in places.items()
            if j < there and name in columns and name not in numeric
        }
        if parts and 0 <= request < there:
            lo, hi = bounds[:, request, 0].astype(np.intp), bounds[:, request, 1].astype(np.intp)
            found, unsure = request_spans(data, len(blob), lo, hi)
            spans.update(found)
            ok &= ~unsure
        rest = {
            name: kind
            for name, kind in columns.items()
            if name not in numeric or places.get(name, ntok) >= there
        }
        ok, out = convert_spans(data, spans, rest, dtype, fill_int, fixed, ok)
        every = bool(ok.all())
        for k, name in enumerate(numeric):
            if name not in rest:
                col = numbers[:, k] if every else numbers[ok, k]
                out[name] = col.astype(np.int64) if columns[name].startswith("int") else col
        return ok, out

    def parse(blob: bytes) -> tuple[NDArray[Any], NDArray[np.bool_], NDArray[Any]]:
        n = count(blob)
        bounds = np.empty((n, ntok, 2), np.int32)
        numbers = np.empty((n, len(numeric)), np.float64)
        variants = np.empty(n, np.int8)
        newlines = np.empty(n, np.int64)
        scan(blob, spec, literals, layout.optional, bounds, numbers, variants, newlines)
        out = empty_rows(n, dtype)
        done = np.zeros(n, bool)
        # the block, padded for fixed-width windows, for the columns converted in NumPy
        data = np.frombuffer(blob + bytes(PAD), np.uint8) if text else none
        if not variants.any():  # every line has every token: no gathering
            ok, values = variant(blob, data, bounds, numbers, 0)
            rows = None if ok.all() else np.flatnonzero(ok)
            for name, col in values.items():
                if rows is None:
                    out[name] = col
                else:
                    out[name][rows] = col
            done[:] = ok
            return out, done, newlines
        for lack in range(layout.optional + 1):
            lines = np.flatnonzero(variants == lack)
            if not len(lines):
                continue
            ok, values = variant(blob, data, bounds[lines], numbers[lines], lack)
            rows = lines[ok]
            for name, col in values.items():
                out[name][rows] = col
            done[rows] = True
        return out, done, newlines

    return parse

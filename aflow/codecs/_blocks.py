"""What every decoder shares: blocks in, :class:`Decoded` out, bad lines isolated.

A decoder parses a whole block in one call (the fast path). When that fails, a decoder
that can tell cheaply which lines *may* be bad (its ``suspects``: a vectorized check over
the block's bytes, a superset of the bad lines) has the other lines parsed in one call and
each suspect judged alone: a block with ``k`` bad lines costs about two parses plus ``k``
one-line parses. Otherwise (or when the check missed a bad line) the block is halved and
each half tried again, down to single lines: about ``k * log2(lines)`` extra parses. Either
way the good lines of the block still come out, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SMALL_BLOCK",
    "BadLine",
    "Block",
    "Decoded",
    "LineDecoder",
    "Parse",
    "RejectedLines",
    "as_bytes",
    "by_size",
    "by_suspects",
    "decode_block",
    "fit",
    "structured",
    "widened",
]

Block: TypeAlias = "bytes | bytearray | memoryview | NDArray[np.uint8]"
"""Whole lines, each ending with ``b"\\n"`` (a last line without one is accepted): bytes,
or a 1-D ``uint8`` array such as a line block from :class:`~aflow.codecs.LineSplitter`."""

Parse = Callable[[bytes], NDArray[Any]]
"""Parses a block of lines into rows; raises on any bad line."""

Suspects = Callable[
    [NDArray[np.uint8], NDArray[np.intp], NDArray[np.intp]], "NDArray[np.bool_] | None"
]
"""``(data, starts, ends) -> mask``: the lines of a block (line ``i`` is
``data[starts[i]:ends[i]]``, its newline excluded) that may be bad; every line it leaves
out must parse. ``None``: cannot tell for this block."""

SMALL_BLOCK = 16 * 1024
"""Bytes: below this, the reference engines parse a block faster than pyarrow (whose fixed
cost per call is about 0.3 ms), and cheaply enough to run without a worker thread."""


class BadLine(NamedTuple):
    """A line a decoder rejected."""

    index: int  # type: ignore[assignment]  # a field, shadowing tuple.index
    """0-based index of the line in the block given to ``decode``."""
    line: bytes
    """The raw line, with its line ending (``\\n`` for a last line that had none)."""
    error: Exception
    """Why it was rejected."""


class Decoded(NamedTuple):
    """What a decoder made of one block."""

    rows: NDArray[Any]
    """The good lines' rows, in order: a 1-D structured array of the decoder's dtype."""
    bad: list[BadLine]
    """The bad lines, in order."""


class RejectedLines(ValueError):
    """Raised by a parser that can tell which lines of a block are bad: the rows of the
    good lines, and each bad line's index in the block with its error. Spares the
    bisection."""

    def __init__(self, rows: NDArray[Any], bad: list[tuple[int, Exception]]) -> None:
        super().__init__(f"{len(bad)} bad line(s)")
        self.rows = rows
        self.bad = bad


class LineDecoder:
    """What the decoders share: ``decode`` a block with a parser, isolating bad lines.

    Attributes:
        dtype: the rows' dtype.
        small_block: blocks of fewer bytes are parsed by an engine cheap enough to call
            without a worker thread (0: every block takes the same path).
    """

    dtype: np.dtype[Any]
    small_block: int = 0
    _parse: Parse
    _suspects: Suspects | None = None

    def decode(self, block: Block) -> Decoded:
        """The rows of a block's good lines, and its bad lines.

        Args:
            block: whole lines (see :data:`~aflow.codecs.Block`).

        Returns:
            ``Decoded(rows, bad)``: a 1-D array of ``dtype`` and a list of
            :class:`~aflow.codecs.BadLine`. Never raises on bad input.
        """
        return decode_block(as_bytes(block), self._parse, self.dtype, self._suspects)


def as_bytes(block: Block) -> bytes:
    """``block`` as ``bytes``: no copy for bytes, nor for an array that views the whole of
    a ``bytes`` object (as :class:`~aflow.codecs.LineSplitter`'s blocks do); one copy for
    any other array or buffer."""
    if isinstance(block, bytes):
        return block
    if isinstance(block, np.ndarray):
        base: Any = block.base
        while isinstance(base, np.ndarray):
            base = base.base
        if (
            type(base) is bytes
            and block.dtype == np.uint8
            and block.nbytes == len(base)
            and block.flags.c_contiguous
        ):
            return base
        return block.tobytes()
    return bytes(block)


def decode_block(
    blob: bytes, parse: Parse, dtype: np.dtype[Any], suspects: Suspects | None = None
) -> Decoded:
    """Decode a block of ``\\n``-terminated lines; isolate the lines ``parse`` rejects."""
    if blob and not blob.endswith(b"\n"):
        blob += b"\n"  # a last line without its newline
    try:
        return Decoded(parse(blob), [])
    except RejectedLines as rejected:
        ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) + 1
        starts = np.concatenate(([0], ends[:-1]))
        bad = [BadLine(i, blob[starts[i] : ends[i]], exc) for i, exc in rejected.bad]
        return Decoded(rejected.rows, bad)
    except Exception:
        pass
    ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) + 1
    if suspects is not None:
        found = by_suspects(blob, parse, dtype, suspects, ends=ends)
        if found is not None:
            return found
    parts: list[NDArray[Any]] = []
    bad = []
    _bisect(blob, ends, 0, len(ends), parse, parts, bad)
    rows = [p for p in parts if len(p)]
    if not rows:
        return Decoded(np.empty(0, dtype), bad)
    return Decoded(rows[0] if len(rows) == 1 else np.concatenate(rows), bad)


WHITESPACE = np.zeros(256, bool)
WHITESPACE[[9, 10, 13, 32]] = True


def by_suspects(
    blob: bytes,
    parse: Parse,
    dtype: np.dtype[Any],
    suspects: Suspects,
    judge: Parse | None = None,
    *,
    ends: NDArray[np.intp] | None = None,
) -> Decoded | None:
    """The lines ``suspects`` leaves out parsed in one call by ``parse``, each suspect
    alone by ``judge`` (default ``parse``); ``None`` when the check cannot tell, or missed
    a bad line (then bisection decides).

    Args:
        blob: whole lines, the last ending with ``\\n``.
        ends: one past each line's newline, when known.
    """
    data = np.frombuffer(blob, np.uint8)
    if ends is None:
        ends = np.flatnonzero(data == 10) + 1
    judge = judge or parse
    starts = np.concatenate(([0], ends[:-1])).astype(np.intp)
    mask = suspects(data, starts, ends - 1)
    if mask is None or not mask.any():
        return None
    odd = np.flatnonzero(mask).tolist()
    # the clean lines: the block between the suspects, a few slices joined
    pieces, at = [], 0
    for i in odd:
        pieces.append(blob[at : starts[i]])
        at = int(ends[i])
    pieces.append(blob[at:])
    given = np.flatnonzero(~mask)
    late: list[BadLine] = []
    try:
        rows = parse(b"".join(pieces))
    except RejectedLines as rejected:  # by index among the clean lines
        rows = rejected.rows
        late = [
            BadLine(int(given[k]), blob[starts[given[k]] : ends[given[k]]], e)
            for k, e in rejected.bad
        ]
        given = np.setdiff1d(given, [b.index for b in late])
    except Exception:
        return None
    blank = [
        i
        for i in np.flatnonzero(WHITESPACE[data[starts]] & ~mask).tolist()
        if not blob[starts[i] : ends[i]].strip()
    ]
    if blank:
        given = np.setdiff1d(given, blank)
    if len(rows) != len(given):
        return None
    parts, where, bad = [rows], [given], []
    for i in odd:
        line = blob[starts[i] : ends[i]]
        try:
            row = judge(line)
        except RejectedLines as rejected:  # the reason, not the count
            bad.append(BadLine(i, line, rejected.bad[0][1] if rejected.bad else rejected))
            continue
        except Exception as exc:
            bad.append(BadLine(i, line, exc))
            continue
        parts.append(row)
        where.append(np.full(len(row), i))
    if late:
        bad = sorted(bad + late, key=lambda b: b.index)
    if len(parts) == 1:
        return Decoded(rows, bad)
    order = np.argsort(np.concatenate(where), kind="stable")
    return Decoded(np.concatenate(parts)[order], bad)


def _bisect(
    blob: bytes,
    ends: NDArray[np.intp],
    lo: int,
    hi: int,
    parse: Parse,
    parts: list[NDArray[Any]],
    bad: list[BadLine],
) -> None:
    """Decode lines ``lo..hi`` of ``blob`` (``ends[i]`` is the end of line ``i``)."""
    start = int(ends[lo - 1]) if lo else 0
    piece = blob[start : int(ends[hi - 1])]
    try:
        parts.append(parse(piece))
        return
    except Exception as exc:
        if hi - lo == 1:
            bad.append(BadLine(lo, piece, exc))
            return
    mid = (lo + hi) // 2
    _bisect(blob, ends, lo, mid, parse, parts, bad)
    _bisect(blob, ends, mid, hi, parse, parts, bad)


def by_size(large: Parse, small: Parse) -> Parse:
    """``small`` for blocks under :data:`SMALL_BLOCK` bytes, ``large`` for the others."""

    def parse(blob: bytes) -> NDArray[Any]:
        return small(blob) if len(blob) < SMALL_BLOCK else large(blob)

    return parse


def fit(values: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """``values`` for a field of ``dtype``: a float narrower than ``values`` is cast, and a
    finite value beyond its range (``1e39`` for ``float32``) is an error, not infinity."""
    if dtype.kind != "f" or values.dtype.kind != "f" or dtype.itemsize >= values.dtype.itemsize:
        return values
    with np.errstate(over="ignore"):
        narrow = values.astype(dtype)
    infinite = np.isinf(narrow)
    if infinite.any():  # rare: look closer only then
        over = infinite & np.isfinite(values)
        if over.any():
            raise ValueError(f"{values[over][0]!r} is out of range for {dtype}")
    return narrow


def widened(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` with its float fields as float64, to parse into before :func:`fit`."""
    names = dtype.names or ()
    fields = [(n, "f8" if dtype.fields[n][0].kind == "f" else dtype.fields[n][0]) for n in names]  # type: ignore[index]
    return np.dtype(fields)


def structured(dtype: Any, what: str, per: str) -> np.dtype[Any]:
    """``dtype`` as a structured dtype.

    Raises:
        TypeError: it has no fields.
    """
    dt: np.dtype[Any] = np.dtype(dtype)
    if dt.names is None:
        raise TypeError(f"{what}: dtype {dt} must be structured (one field per {per})")
    return dt

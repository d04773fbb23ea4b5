"""Splitting a byte stream into blocks of complete lines.

A *block* is a 1-D ``uint8`` array holding whole lines, each ending with ``b"\\n"`` (a
final line without one gets one added), wrapped in a :class:`~aflow.Batch` whose
provenance gives the line numbers and byte offsets. Decoders take blocks, so they parse
thousands of lines per call; the splitter itself never loops over lines in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..abc import Batch, Provenance
from ..errors import LineTooLongError
from ._scan import count_bytes

__all__ = [
    "LineBlockProvenance",
    "LineSplitter",
    "block_lines",
    "cut_before",
    "is_line_block",
    "line_place",
    "split_block",
]

DEFAULT_MAX_LINE = 1 << 20
PREFIX = 4096
"""Bytes of an over-long line kept for its error report (the rest is skipped unseen)."""


class LineBlockProvenance(Provenance):
    """The provenance of a line block from which over-long lines were cut.

    ``removed`` holds, per line cut, ``(k, n)``: it stood before the block's line ``k``
    (the count of lines kept before it) and held ``n`` bytes, its newline included; so
    each kept line keeps its line number and byte offset (see :func:`line_place`).
    """

    __slots__ = ("removed",)

    def __init__(
        self,
        source: str,
        start: int,
        stop: int,
        offset: int | None,
        end_offset: int | None,
        removed: tuple[tuple[int, int], ...],
    ) -> None:
        super().__init__(source, start, stop, "line", offset, end_offset)
        self.removed = removed


def cut_before(prov: Provenance, index: int) -> tuple[int, int]:
    """Lines and bytes cut from a block before its line ``index``."""
    removed: tuple[tuple[int, int], ...] = getattr(prov, "removed", ())
    return sum(1 for k, _ in removed if k <= index), sum(n for k, n in removed if k <= index)


def line_place(
    prov: Provenance | None,
    data: np.ndarray[Any, Any],
    index: int,
    ends: np.ndarray[Any, Any] | None = None,
) -> Provenance | None:
    """The provenance of line ``index`` of the line block ``data`` alone: its line number
    and byte offsets in its source (``None`` for data without numbered lines).

    ``ends``: the positions of the block's newlines, when known (else found here).
    """
    if prov is None or prov.unit != "line":
        return None
    lines, skipped = cut_before(prov, index)
    number = prov.start + index + lines
    if prov.offset is None:
        return Provenance(prov.source, number, number + 1, "line")
    if ends is None:
        ends = np.flatnonzero(data == 10)
    start = int(ends[index - 1]) + 1 if index else 0
    stop = int(ends[index]) + 1 if index < len(ends) else len(data)
    offset = prov.offset + start + skipped
    end = offset + stop - start
    if prov.end_offset is not None:
        end = min(end, prov.end_offset)  # a last line given its newline by the splitter
    return Provenance(prov.source, number, number + 1, "line", offset, end)


class LineSplitter:
    """Feeds on chunks of bytes, returns blocks of complete lines.

    Correct across chunk boundaries, for ``\\n`` and ``\\r\\n`` endings (the ``\\r`` stays
    in the block; decoders strip it), and for a last line without a newline.

    Args:
        source: name for provenance and errors (a path, a peer address).
        max_line: most bytes a line may hold (memory stays bounded by it). A longer line
            is skipped to its end and reported in :attr:`errors` as a
            :class:`~aflow.LineTooLongError` (with its line number and offset) for the caller
            to raise, count or route; the lines around it are unaffected.
        first_line: number of the first line (1-based), for resuming.
        offset: byte offset of the first byte fed, for resuming.
    """

    def __init__(
        self,
        source: str,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        first_line: int = 1,
        offset: int = 0,
    ) -> None:
        self.source = source
        self.max_line = max_line
        self.errors: list[LineTooLongError] = []
        self._prefixes: list[bytes] = []
        self.line = first_line
        self.offset = offset
        self.overlong = 0
        self._rest: bytes | bytearray = b""
        self._skipping = False

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished line."""
        return len(self._rest)

    def feed(self, chunk: bytes) -> Batch | None:
        """Add ``chunk``; return the block of lines it completed, if any."""
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                self.offset += len(chunk)
                return None
            self._skipping = False
            self.offset += end + 1
            self.line += 1
            chunk = chunk[end + 1 :]
        cut = chunk.rfind(b"\n") + 1
        rest = self._rest
        if cut == 0:
            self._hold(chunk)
            return None
        # one copy at most: the held partial line and the chunk's complete lines, as one
        # ``bytes`` the decoders take without another copy (see ``as_bytes``)
        if rest:
            data = np.frombuffer(b"".join((rest, memoryview(chunk)[:cut])), np.uint8)
        else:
            data = np.frombuffer(chunk, np.uint8)[:cut]
        # a line longer than max_line needs max_line bytes without a newline: only the
        # first line (which may start in ``rest``) or a block part longer than that can
        first = len(rest) + chunk.find(b"\n")
        may_be_long = first > self.max_line or cut - (first - len(rest)) - 1 > self.max_line
        self._rest = chunk[cut:]
        block = self._block(data, may_be_long)
        if len(self._rest) > self.max_line:
            self._overlong(self._rest)
        return block

    def finish(self) -> Batch | None:
        """The last line, if the input ended without a newline."""
        if not self._rest or self._skipping:
            return None
        tail, self._rest = self._rest, b""
        block = self._block(np.frombuffer(tail + b"\n", np.uint8), len(tail) > self.max_line)
        self.offset -= 1  # the added newline is not in the source
        prov = block.provenance
        assert prov is not None
        return Batch(
            block.data,
            block.reason,
            Provenance(prov.source, prov.start, prov.stop, "line", prov.offset, self.offset),
        )

    def _block(self, data: np.ndarray[Any, np.dtype[np.uint8]], may_be_long: bool) -> Batch:
        n = count_bytes(data, 10)  # several times faster than bytes.count
        size = len(data)
        prov = Provenance(
            self.source, self.line, self.line + n, "line", self.offset, self.offset + size
        )
        if may_be_long:
            data, removed = self._drop_overlong(data)
            if removed:
                prov = LineBlockProvenance(
                    self.source, self.line, self.line + n, self.offset, self.offset + size, removed
                )
        self.line += n
        self.offset += size
        return Batch(data, "source", prov)

    def _drop_overlong(
        self, data: np.ndarray[Any, np.dtype[np.uint8]]
    ) -> tuple[Any, tuple[tuple[int, int], ...]]:
        """``data`` with its lines longer than ``max_line`` left empty (each one reported),
        and the index and bytes removed of each."""
        ends = np.flatnonzero(data == 10)
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts
        long = lengths > self.max_line
        if not long.any():
            return data, ()
        removed: list[tuple[int, int]] = []
        for k in np.flatnonzero(long).tolist():
            self.overlong += 1
            removed.append((k - len(removed), int(lengths[k]) + 1))
            self._prefixes.append(data[starts[k] : starts[k] + min(PREFIX, lengths[k])].tobytes())
            self.errors.append(
                LineTooLongError(
                    f"line longer than {self.max_line} bytes was skipped (raise max_line to "
                    "accept longer lines)",
                    source=self.source,
                    line=self.line + k,
                    offset=self.offset + int(starts[k]),
                )
            )
        return data[np.repeat(~long, lengths + 1)], tuple(removed)

    def _hold(self, chunk: bytes) -> None:
        """Keep ``chunk``, which has no newline, as more of the unfinished line; cut the line
        once it passes ``max_line``. Appends in place (a ``bytearray``), so an endless line
        costs time linear in its length, never a copy of all of it per chunk."""
        rest = self._rest
        if not rest:
            self._rest = chunk
        elif isinstance(rest, bytearray):
            rest += chunk
        else:
            self._rest = bytearray(rest) + chunk
        if len(self._rest) > self.max_line:
            self._overlong(self._rest)

    def _overlong(self, data: bytes | bytearray) -> None:
        line, offset = self.line, self.offset
        self.offset += len(data)
        self._rest = b""
        self._skipping = True
        self.overlong += 1
        self._prefixes.append(bytes(data[:PREFIX]))
        self.errors.append(
            LineTooLongError(
                f"line longer than {self.max_line} bytes was skipped (raise max_line to "
                "accept longer lines)",
                source=self.source,
                line=line,
                offset=offset,
            )
        )

    def take_errors(self) -> list[LineTooLongError]:
        """The errors found since the last call (and forget them)."""
        errors, self.errors = self.errors, []
        self._prefixes = []
        return errors

    def take_failures(self) -> list[tuple[bytes, LineTooLongError]]:
        """The errors found since the last call, each with the first :data:`PREFIX` bytes
        of its line (and forget them)."""
        prefixes = self._prefixes
        return list(zip(prefixes, self.take_errors(), strict=True))


def is_line_block(batch: Batch) -> bool:
    """Whether ``batch`` is a block of text lines (1-D ``uint8`` bytes counted in lines),
    as :class:`LineSplitter` and the file and socket sources make."""
    prov = batch.provenance
    data = batch.data
    return prov is not None and prov.unit == "line" and data.dtype == np.uint8 and data.ndim == 1


def block_lines(batch: Batch) -> int:
    """Number of lines in a line block."""
    return count_bytes(batch.data, 10)


def split_block(batch: Batch, lines: int) -> tuple[Batch, Batch]:
    """A line block cut after its first ``lines`` lines (0 < lines < its line count)."""
    data, prov = batch.data, batch.provenance
    assert prov is not None
    cut = int(np.flatnonzero(data == 10)[lines - 1]) + 1
    removed: tuple[tuple[int, int], ...] = getattr(prov, "removed", ())
    skipped_lines, skipped = cut_before(prov, lines)
    middle = prov.start + lines + skipped_lines
    offset = None if prov.offset is None else prov.offset + cut + skipped
    head = _numbered(prov.source, prov.start, middle, prov.offset, offset, removed, 0, lines)
    tail = _numbered(prov.source, middle, prov.stop, offset, prov.end_offset, removed, lines, None)
    return Batch(data[:cut], batch.reason, head), Batch(data[cut:], batch.reason, tail)


def _numbered(
    source: str,
    start: int,
    stop: int,
    offset: int | None,
    end: int | None,
    removed: tuple[tuple[int, int], ...],
    lo: int,
    hi: int | None,
) -> Provenance:
    """The provenance of lines ``lo..hi`` of a block (keeping what was cut among them)."""
    own = tuple((k - lo, n) for k, n in removed if k > lo and (hi is None or k < hi))
    if own:
        return LineBlockProvenance(source, start, stop, offset, end, own)
    return Provenance(source, start, stop, "line", offset, end)

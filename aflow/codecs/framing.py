"""Framing a byte stream into messages, and messages back into bytes.

Three framings, shared by the socket sources and sinks (and, for records, the file
sources):

* ``"lines"``: ``\\n``-terminated lines, received as blocks of complete lines (``uint8``
  batches with line provenance, see :mod:`aflow.codecs.lines`) for the decoders.
* ``"length_prefixed"``: each frame is a 4-byte big-endian unsigned length followed by
  that many bytes; received as ``bytes`` elements.
* ``"records"``: fixed-size binary records of a NumPy dtype, received as arrays of that
  dtype (``np.frombuffer``, no copy); a trailing partial record waits for the next bytes.

A :class:`Framer` holds the state of one stream (one connection): what it has of an
unfinished line, frame or record. Its memory is bounded by ``max_size`` plus one read.

Sinks encode with :func:`encode_items` and :func:`encode_array`: text lines are CSV lines
by :class:`~aflow.codecs.CsvEncoder`'s rules, the same the file sinks write.
"""

from __future__ import annotations

import struct
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Message, Provenance
from ..errors import DecodeError, FrameTooLongError, IncompleteFrameError
from .csv import CsvEncoder
from .lines import LineSplitter, is_line_block

__all__ = [
    "HEADER",
    "Framer",
    "Framing",
    "LengthPrefixedFramer",
    "LineFramer",
    "RecordFramer",
    "check_framing",
    "encode_array",
    "encode_items",
    "is_line_block",
    "make_framer",
    "split_datagrams",
]

Framing = Literal["lines", "length_prefixed", "records"]
FRAMINGS = ("lines", "length_prefixed", "records")

HEADER = struct.Struct("!I")
"""The length prefix of a frame: 4 bytes, big-endian (network order), unsigned."""


class Framer(Protocol):
    """Cuts one byte stream into messages.

    ``feed`` returns what a chunk completed. ``take_failures`` returns errors after which
    the stream cannot go on (the caller closes it), each with the first bytes of what
    failed (an over-long line's prefix; ``b""`` for a frame that is not kept). ``finish``
    returns the unfinished rest as an error with its raw bytes and provenance, or None
    when nothing was pending.
    """

    def feed(self, data: bytes) -> Message | None: ...

    def take_failures(self) -> list[tuple[bytes, DecodeError]]: ...

    def finish(self, why: str) -> tuple[DecodeError, bytes, Provenance | None] | None: ...


def check_framing(
    framing: str, dtype: Any = None, allowed: tuple[str, ...] = FRAMINGS, *, decoding: bool = True
) -> None:
    """Validate ``framing`` (and, for decoding, ``dtype``) at build time.

    Raises:
        ValueError: an unknown framing; when decoding, ``"records"`` without a dtype or a
            dtype given with another framing.
    """
    if framing not in allowed:
        raise ValueError(f"framing={framing!r}: use one of {', '.join(map(repr, allowed))}")
    if not decoding:
        return
    if framing == "records" and dtype is None:
        raise ValueError("framing='records' needs dtype= (the record's NumPy dtype)")
    if framing != "records" and dtype is not None:
        raise ValueError(f"dtype= applies to framing='records', not {framing!r}")


def make_framer(
    framing: Framing, source: str, *, dtype: np.dtype[Any] | None, max_size: int
) -> Framer:
    """A fresh framer for one stream named ``source`` (used in provenance and errors)."""
    if framing == "lines":
        return LineFramer(source, max_size)
    if framing == "length_prefixed":
        return LengthPrefixedFramer(source, max_size)
    assert dtype is not None
    return RecordFramer(source, dtype)


class LineFramer:
    """Blocks of complete lines, numbered from 1 in each stream (a :class:`LineSplitter`)."""

    def __init__(self, source: str, max_size: int) -> None:
        self.splitter = LineSplitter(source, max_line=max_size)

    def feed(self, data: bytes) -> Batch | None:
        return self.splitter.feed(data)

    def take_failures(self) -> list[tuple[bytes, DecodeError]]:
        return list(self.splitter.take_failures())

    def finish(self, why: str) -> tuple[DecodeError, bytes, Provenance | None] | None:
        tail = self.splitter.finish()
        if tail is None:
            return None
        raw = tail.data[:-1].tobytes()  # without the newline the splitter added
        prov = tail.provenance
        assert prov is not None
        error = IncompleteFrameError(
            f"{why} inside a line; its {len(raw)} bytes were dropped",
            source=prov.source,
            line=prov.start,
            offset=prov.offset,
        )
        return error, raw, prov


class LengthPrefixedFramer:
    """Frames of a 4-byte big-endian length and a payload, as ``bytes`` elements."""

    def __init__(self, source: str, max_size: int) -> None:
        self.source = source
        self.max_size = max_size
        self.offset = 0  # stream offset of the first byte held in _buf
        self.errors: list[DecodeError] = []
        self._buf = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> list[Any] | None:
        if self._broken:
            return None
        buf = self._buf
        buf += data
        frames: list[Any] = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.max_size:
                self._fail(size, pos)
                return frames or None
            if end - pos - HEADER.size < size:
                break
            start = pos + HEADER.size
            frames.append(bytes(buf[start : start + size]))
            pos = start + size
        del buf[:pos]
        self.offset += pos
        return frames or None

    def _fail(self, size: int, pos: int) -> None:
        self.errors.append(
            FrameTooLongError(
                f"frame of {size} bytes announced, more than max_size={self.max_size}",
                source=self.source,
                offset=self.offset + pos,
            )
        )
        self._broken = True
        self._buf = bytearray()

    def take_failures(self) -> list[tuple[bytes, DecodeError]]:
        errors, self.errors = self.errors, []
        return [(b"", error) for error in errors]  # a frame too long is never read

    def finish(self, why: str) -> tuple[DecodeError, bytes, Provenance | None] | None:
        if not self._buf:
            return None
        raw, self._buf = bytes(self._buf), bytearray()
        error = IncompleteFrameError(
            f"{why} inside a frame; its {len(raw)} bytes were dropped",
            source=self.source,
            offset=self.offset,
        )
        return error, raw, Provenance(self.source, self.offset, self.offset + len(raw), "byte")


class RecordFramer:
    """Whole records of ``dtype``; the bytes of a partial record wait for the next chunk.

    Args:
        source: name for provenance and errors (a path, a peer address).
        dtype: each record's dtype.
        row_shape: the shape of a row of records (``()``: a row is one record).
        offset: byte offset of the first byte fed (rows are numbered from 0 there).
    """

    def __init__(
        self, source: str, dtype: np.dtype[Any], *, row_shape: tuple[int, ...] = (), offset: int = 0
    ) -> None:
        self.source = source
        self.dtype = dtype
        self.row_shape = row_shape
        self.row_size = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        self.row = 0
        self.offset = offset
        self._rest = b""

    def feed(self, data: bytes) -> Batch | None:
        if self._rest:
            data = self._rest + data
        size = self.row_size
        n = len(data) // size
        self._rest = bytes(data[n * size :])  # bytes, also of a read buffer (error items)
        if not n:
            return None
        rows = np.frombuffer(data, self.dtype, count=n * (size // self.dtype.itemsize))
        if self.row_shape:
            rows = rows.reshape(n, *self.row_shape)
        start, self.row = self.row, self.row + n
        offset, self.offset = self.offset, self.offset + n * size
        prov = Provenance(self.source, start, self.row, "row", offset, self.offset)
        return Batch(rows, "source", prov)

    def take_failures(self) -> list[tuple[bytes, DecodeError]]:
        return []

    def finish(self, why: str) -> tuple[DecodeError, bytes, Provenance | None] | None:
        if not self._rest:
            return None
        raw, self._rest = self._rest, b""
        error = IncompleteFrameError(
            f"{why} inside row {self.row}: a partial record of {len(raw)} bytes (records are "
            f"{self.row_size} bytes) was dropped",
            source=self.source,
            offset=self.offset,
        )
        return error, raw, Provenance(self.source, self.offset, self.offset + len(raw), "byte")


# -- encoding, for the sinks ------------------------------------------------------------


def encode_items(items: list[Any], framing: Framing, text: CsvEncoder) -> bytes:
    """Encode a chunk of elements.

    ``"lines"``: a ``str`` is encoded as UTF-8 and ``bytes`` go as they are (a newline
    added where missing), a tuple or list is one CSV line of its values and anything else
    a line of one value (:meth:`CsvEncoder.line`). ``"length_prefixed"``: each
    ``str``/``bytes``/array becomes one frame. ``"records"``: ``bytes`` and arrays
    (``tobytes()``) go as they are.

    Raises:
        TypeError: an element that the framing cannot send.
    """
    if framing == "lines":
        return b"".join(_line(x, text) for x in items)
    if framing == "length_prefixed":
        return b"".join(HEADER.pack(len(raw)) + raw for raw in map(_raw, items))
    return b"".join(map(_raw, items))


def encode_array(data: NDArray[Any], framing: Framing, text: CsvEncoder) -> bytes:
    """Encode a batch's array: CSV lines (``text.encode``, one line per row), one frame,
    or the raw records (``tobytes()``)."""
    if framing == "lines":
        return text.encode(data)
    raw = np.ascontiguousarray(data).tobytes()
    return HEADER.pack(len(raw)) + raw if framing == "length_prefixed" else raw


def _line(x: Any, text: CsvEncoder) -> bytes:
    if isinstance(x, str | bytes | bytearray | memoryview):
        raw = x.encode() if isinstance(x, str) else bytes(x)
        return raw if raw.endswith(b"\n") else raw + b"\n"
    return text.line(x if isinstance(x, tuple | list) else (x,))


def _raw(x: Any) -> bytes:
    if isinstance(x, bytes | bytearray | memoryview):
        return bytes(x)
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, np.ndarray | np.generic):
        return np.ascontiguousarray(x).tobytes()
    raise TypeError(f"cannot send {type(x).__name__} {x!r} as raw bytes; send bytes or arrays")


def split_datagrams(payload: bytes, max_size: int, record_size: int | None) -> list[bytes]:
    """Cut ``payload`` into datagrams of at most ``max_size`` bytes, each holding whole
    lines (``record_size`` None) or whole records of ``record_size`` bytes.

    Raises:
        ValueError: one line or record is longer than ``max_size``.
    """
    if record_size is not None:
        if record_size > max_size:
            raise ValueError(f"records of {record_size} bytes do not fit max_datagram={max_size}")
        step = max_size // record_size * record_size
        return [payload[i : i + step] for i in range(0, len(payload), step)]
    out: list[bytes] = []
    start = 0
    while len(payload) - start > max_size:
        cut = payload.rfind(b"\n", start, start + max_size) + 1
        if cut <= start:
            raise ValueError(
                f"a line at byte {start} is longer than max_datagram={max_size}; raise "
                "max_datagram or send shorter lines"
            )
        out.append(payload[start:cut])
        start = cut
    if start < len(payload):
        out.append(payload[start:])
    return out

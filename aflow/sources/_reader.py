"""Reading one file: large reads, shapes of output, and follow mode (``tail -F``).

Files are opened with :func:`aflow.sources._open.open_stream`: regular files are read with
one thread hop per read, so reads are large (1 MiB by default) to amortize it; FIFOs
without a thread (every wait cancellable); ``.gz``/``.bz2``/``.zst`` content is
decompressed on the fly. Follow mode is :class:`aflow.sources._follow.Follower`, which
uses a :class:`FileReader`'s framing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import numpy as np

from ..abc import Batch, Message, Provenance
from ..codecs import LineSplitter, RecordFramer
from ..errors import DecodeError, IncompleteFrameError
from ..policies import Reporter
from ._fileid import FINGERPRINT_BYTES, FileId, file_id
from ._open import BufferPool, ByteStream, open_stream
from ._rotation import CatchUp

__all__ = [
    "FINGERPRINT_BYTES",
    "FileId",
    "FileReader",
    "LastLine",
    "Reading",
    "Shape",
    "file_id",
    "position_of",
]

Shape = Literal["bytes", "lines", "records"]
LastLine = Literal["keep", "report"]
logger = logging.getLogger("aflow")


class _Framer:
    """Turns raw chunks of one file into messages of the wanted shape: blocks of lines
    (a :class:`~aflow.codecs.LineSplitter`; a last line without a newline is kept), whole
    records (a :class:`~aflow.codecs.RecordFramer`), or the chunks as they are."""

    def __init__(
        self,
        path: str,
        shape: Shape,
        dtype: np.dtype[Any] | None,
        row_shape: tuple[int, ...],
        max_line: int,
        offset: int,
        line: int = 1,
    ) -> None:
        self.path = path
        self.shape = shape
        self.start = offset  # byte offset of the first byte fed
        self.offset = offset  # byte offset of the next chunk (shape "bytes")
        self.lines = LineSplitter(path, max_line=max_line, offset=offset, first_line=line)
        self.records: RecordFramer | None = None
        if shape == "records":
            assert dtype is not None
            self.records = RecordFramer(path, dtype, row_shape=row_shape, offset=offset)

    def feed(self, chunk: bytes) -> Message | None:
        if self.records is not None:
            return self.records.feed(chunk)
        if self.shape == "lines":
            return self.lines.feed(chunk)
        start = self.offset
        self.offset += len(chunk)
        prov = Provenance(self.path, start, self.offset, "byte", start, self.offset)
        return Batch(np.frombuffer(chunk, np.uint8), "source", prov)

    def finish(self) -> tuple[Message | None, tuple[DecodeError, bytes, Provenance | None] | None]:
        """The last line (without a newline); or the error of a partial trailing record,
        with its bytes and provenance."""
        if self.records is not None:
            return None, self.records.finish("the file ended")
        if self.shape == "lines":
            return self.lines.finish(), None
        return None, None

    def take_errors(self) -> list[tuple[bytes, DecodeError]]:
        """Over-long lines since the last call: the first bytes of each, its error."""
        return list(self.lines.take_failures()) if self.shape == "lines" else []


Emit = Callable[[Message], Awaitable[None]]


class FileReader:
    """Reads one path to its end (or follows it) and emits messages of one shape.

    ``last_line`` says what becomes of a last line without a newline (a file still being
    written, a writer that died mid-line): ``"keep"`` it as a line (and log a warning on
    the ``"aflow"`` logger naming the file and line), or ``"report"`` it to ``on_error`` as
    an :class:`~aflow.errors.IncompleteFrameError` with its bytes.
    """

    def __init__(
        self,
        path: str,
        *,
        shape: Shape,
        dtype: np.dtype[Any] | None = None,
        row_shape: tuple[int, ...] = (),
        chunk_size: int = 1 << 20,
        max_line: int = 1 << 20,
        start: int = 0,
        follow: bool = False,
        poll_interval: float = 0.25,
        rotate_wait: float = 1.0,
        last_line: LastLine = "keep",
    ) -> None:
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self.row_shape = row_shape
        self.chunk_size = chunk_size
        self.max_line = max_line
        self.start = start
        self.follow = follow
        self.poll_interval = poll_interval
        self.rotate_wait = rotate_wait
        self.last_line = last_line
        self.start_line = 1  # the number of the line at ``start`` (resumed: from the position)
        self.ident: FileId | None = None  # the file being read (for checkpoint positions)
        # Followed, resumed: rotated files to read before the live one (oldest first).
        self.catch_up: list[CatchUp] = []

    def framer(self, offset: int, path: str | None = None, line: int = 1) -> _Framer:
        """A fresh framer for this file's bytes from ``offset`` on, whose first line is
        number ``line`` (``path``: the file its provenance names, if not this reader's)."""
        path = self.path if path is None else path
        return _Framer(path, self.shape, self.dtype, self.row_shape, self.max_line, offset, line)

    async def run(self, emit: Emit, report: Reporter, out: Any) -> None:
        """Read to the end (follow mode is :class:`~aflow.sources._follow.Follower`)."""
        reading = await self.open()
        try:
            while not out.stopping and await reading.step(emit, report, out):
                pass
        finally:
            await reading.close()
        await reading.end(emit, report, out)

    async def open(self, pool: BufferPool | None = None) -> Reading:
        """Open the file for :class:`Reading` it a chunk at a time; records and raw bytes
        of a regular file are read into the buffers of ``pool`` (by default its own)."""
        # records and raw bytes are framed by np.frombuffer: they may come as bytearrays
        buffers = self.shape != "lines" and (pool or True)
        stream = await open_stream(self.path, self.start, buffers=buffers)
        try:
            if self.ident is None:  # never open a FIFO twice: its open blocks for a writer
                self.ident = await anyio.to_thread.run_sync(_regular_id, self.path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return Reading(self, stream)

    async def feed(self, framer: _Framer, chunk: bytes, emit: Emit, report: Reporter) -> None:
        """Frame ``chunk``, report over-long lines, emit what is complete."""
        await self.framed(framer, framer.feed(chunk), emit, report)

    async def framed(
        self, framer: _Framer, msg: Message | None, emit: Emit, report: Reporter
    ) -> None:
        """After ``framer`` framed a chunk into ``msg``: report over-long lines, emit
        ``msg`` if something was complete."""
        for raw, error in framer.take_errors():
            await report(raw, error)  # an over-long line: its first bytes
        if msg is not None:
            await emit(msg)

    async def finish(self, framer: _Framer, emit: Emit, report: Reporter) -> None:
        """The end of one file: its partial last record or line."""
        msg, failed = framer.finish()
        if failed is not None:
            error, raw, prov = failed
            await report(raw, error, prov)
        if not isinstance(msg, Batch):
            return
        prov = msg.provenance
        line = prov.start if prov is not None else None
        if self.last_line == "report":
            error = IncompleteFrameError(
                "the file ended inside a line (no newline after it): it may still be being "
                "written; read it again later, or pass last_line='keep' to take the line",
                source=self.path,
                line=line,
                offset=prov.offset if prov is not None else None,
            )
            await report(bytes(msg.data), error, prov)
            return
        logger.warning(
            "%s: line %s has no newline after it (a file still being written?); kept as a "
            "line (pass last_line='report' to hand it to on_error instead)",
            self.path,
            line,
        )
        await emit(msg)

    def leave_unread(self, framer: _Framer, checkpointed: bool) -> None:
        """A graceful stop before the end of a file that is not followed: the line (or
        record) ``framer`` holds only the first bytes of is not a last line, its rest is
        still unread in the file. It is not handed on (nor reported: a stop is not an end
        of file); with a checkpoint the position stays before it and the next run reads
        it whole; without one it stays unread with the rest of the file."""
        held = _unfinished(framer)
        if held is None:
            return
        msg, raw, prov = held
        numbered = prov is not None and prov.unit == "line"
        logger.info(
            "%s: the run stopped inside %s (offset %s, %d bytes read of it), which is not "
            "handed on: %s",
            self.path,
            f"line {prov.start}" if numbered and prov is not None else "a record",
            prov.offset if prov is not None else None,
            len(raw) - (1 if msg is not None else 0),  # the splitter added a newline
            "the next run from the checkpoint reads it whole"
            if checkpointed
            else "it stays unread with the rest of the file",
        )

    async def hold_back(self, framer: _Framer, report: Reporter, checkpointed: bool) -> None:
        """A graceful stop while following (or reading a FIFO): the last line (or record)
        of ``framer``'s file may be one its writer has not finished, so it is not handed on. With a
        checkpoint the position stays before it (the next run reads it whole); without
        one it is reported: counted in the source's ``errors`` and logged as a warning
        (``last_line="keep"``), or handed to ``on_error`` as an
        :class:`~aflow.errors.IncompleteFrameError` (``last_line="report"``)."""
        held = _unfinished(framer)
        if held is None:
            return
        _, raw, prov = held
        line = prov.start if prov is not None and prov.unit == "line" else None
        offset = prov.offset if prov is not None else None
        if checkpointed:
            logger.info(
                "%s: the run stopped inside line %s (offset %s), which is not handed on: "
                "the next run from the checkpoint reads it whole",
                self.path,
                line,
                offset,
            )
            return
        if self.last_line == "report":
            error = IncompleteFrameError(
                "the run stopped while the last line (or record) had no end yet (its "
                "writer may not have finished it): not handed on; run with a checkpoint "
                "for the next run to read it whole",
                source=self.path,
                line=line,
                offset=offset,
            )
            await report(raw, error, prov)
            return
        report.counters.errors += 1
        logger.warning(
            "%s: the run stopped inside line %s (offset %s, %d bytes without an end yet: "
            "its writer may not have finished it); not handed on, counted in errors (run "
            "with a checkpoint for the next run to read it whole)",
            self.path,
            line,
            offset,
            len(raw),
        )


class Reading:
    """One opened file of a :class:`FileReader`, read a chunk per :meth:`step`: several
    can be read in turn by one task. Always :meth:`close` it, then :meth:`end` it."""

    def __init__(self, reader: FileReader, stream: ByteStream) -> None:
        self.reader = reader
        self.stream = stream
        self.framer = reader.framer(reader.start, line=reader.start_line)
        self.ended = False  # the end of the file was read (else a graceful stop came first)

    async def step(self, emit: Emit, report: Reporter, out: Any) -> bool:
        """Read, frame and emit one chunk; False at the end of the file or on a stop."""
        # A stop cancels this scope (a FIFO waits for its writer here): then nothing was
        # read (never the previous chunk again). A file's read ends soon by itself: the
        # stop is seen before the next one (a scope per read cost ~10 us).
        chunk: bytes | None = None
        read_now = getattr(self.stream, "read_now", None)
        if read_now is not None and not getattr(self.stream, "cached", False):
            # a regular file: read and framed in one thread hop (counting a block's lines
            # is a pass over its bytes, which the event loop need not wait for); one read
            # from the page cache on the loop's thread (records, bytes) is not
            chunk, msg = await anyio.to_thread.run_sync(self._read_framed, read_now)
            if not chunk:
                self.ended = True
                return False
            await self.reader.framed(self.framer, msg, emit, report)
            return True
        if self.stream.prompt:
            chunk = await self.stream.read(self.reader.chunk_size)
        else:
            with out.pull_scope():
                chunk = await self.stream.read(self.reader.chunk_size)
        if chunk is None:
            return False
        if not chunk:
            self.ended = True
            return False
        await self.reader.feed(self.framer, chunk, emit, report)
        return True

    def _read_framed(self, read_now: Callable[[int], bytes]) -> tuple[bytes, Message | None]:
        """The next chunk, and the message it completes (blocks: call it in a thread)."""
        chunk = read_now(self.reader.chunk_size)
        return chunk, self.framer.feed(chunk) if chunk else None

    async def close(self) -> None:
        """Release the file (shielded: also when cancelled)."""
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    async def end(self, emit: Emit, report: Reporter, out: Any) -> None:
        """After :meth:`close`: the last line or record at the end of the file; or, after
        a stop, the one begun and left unread (held back from a FIFO)."""
        reader, framer = self.reader, self.framer
        if self.ended:
            await reader.finish(framer, emit, report)
        elif reader.ident is None:  # a FIFO: what its writer sent is not read again
            await reader.hold_back(framer, report, False)
        else:
            reader.leave_unread(framer, bool(out.checkpointed))


def _regular_id(path: str) -> FileId | None:
    return file_id(path) if os.path.isfile(path) else None


def position_of(reader: FileReader, msg: Message) -> tuple[str, Any] | None:
    """The checkpoint position after ``msg`` of ``reader``'s file: key ``"dev:inode"``,
    value its path, fingerprint and the byte offset past the message (``None`` when the
    message does not say where it ends)."""
    ident = reader.ident
    prov = msg.provenance if isinstance(msg, Batch) else None
    if ident is None or prov is None:
        return None
    end = prov.end_offset if prov.end_offset is not None else None
    if end is None and prov.unit == "byte":
        end = prov.stop
    if end is None:
        return None
    value = {
        "path": reader.path,
        "fp": ident.fingerprint.hex(),
        "len": ident.length,
        "offset": end,
    }
    if prov.unit == "line":  # the number of the next line, for provenance after a resume
        value["line"] = prov.stop
    return f"{ident.device}:{ident.inode}", value


def _unfinished(framer: _Framer) -> tuple[Any, bytes, Provenance | None] | None:
    """What ``framer`` holds at a stop (its message, raw bytes and provenance), or None."""
    msg, failed = framer.finish()
    if failed is not None:
        _, raw, prov = failed
        return msg, raw, prov
    if isinstance(msg, Batch):
        return msg, bytes(msg.data), msg.provenance
    return None

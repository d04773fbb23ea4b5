"""Reading one file: large reads, shapes of output, and follow mode (``tail -F``).

Files are opened with :func:`aflow._aio.open_file` (aiofiles on asyncio, anyio's file API
on trio). Each read is one thread hop, so reads are large (1 MiB by default) to amortize it.

Follow mode keeps reading at end of file, polling. A file is identified by device, inode
and a fingerprint of its first bytes; when the path names another file (rotation), the old
one is drained to its end and the new one opened; when the file shrinks (truncation),
reading starts again at offset 0.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import numpy as np

from .._aio import AsyncFile, open_file
from ..abc import Batch, Message, Provenance
from ..codecs import LineSplitter, RecordFramer
from ..errors import DecodeError
from ..policies import Reporter

__all__ = ["FileReader", "Shape"]

Shape = Literal["bytes", "lines", "records"]
FINGERPRINT_BYTES = 256


@dataclass(frozen=True, slots=True)
class FileId:
    """What makes a file the same file: device, inode and its first bytes."""

    device: int
    inode: int
    fingerprint: bytes
    length: int  # bytes the fingerprint covers (fewer than FINGERPRINT_BYTES: small file)


def _fingerprint(path: str, head: bytes) -> bytes:
    return hashlib.blake2b(head[:FINGERPRINT_BYTES], digest_size=8).digest()


def file_id(path: str, length: int = FINGERPRINT_BYTES) -> FileId | None:
    """The identity of the file at ``path`` now (fingerprint over its first ``length``
    bytes), or None if there is none."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(length)
    except FileNotFoundError:
        return None
    return FileId(st.st_dev, st.st_ino, _fingerprint(path, head), len(head))


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
    ) -> None:
        self.path = path
        self.shape = shape
        self.start = offset  # byte offset of the first byte fed
        self.offset = offset  # byte offset of the next chunk (shape "bytes")
        self.lines = LineSplitter(path, max_line=max_line, offset=offset)
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
    """Reads one path to its end (or follows it) and emits messages of one shape."""

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

    def _framer(self, offset: int) -> _Framer:
        return _Framer(self.path, self.shape, self.dtype, self.row_shape, self.max_line, offset)

    async def run(self, emit: Emit, report: Reporter, out: Any) -> None:
        """Read until the end (or until stopped, in follow mode)."""
        offset = self.start
        while True:
            f = await open_file(self.path, "rb")
            try:
                ident = await self._identify(f)
                if offset:
                    await f.seek(offset)
                framer = self._framer(offset)
                reopen = await self._read(f, framer, ident, emit, report, out)
            finally:
                with anyio.CancelScope(shield=True):
                    await f.aclose()
            await self._finish(framer, emit, report)
            if not reopen:
                return
            offset = 0

    async def _identify(self, f: AsyncFile) -> FileId | None:
        if not self.follow:
            return None
        st = os.fstat(f.fileno())  # the file opened, even if the path moved on since
        head = await f.read(FINGERPRINT_BYTES)
        await f.seek(0)
        return FileId(st.st_dev, st.st_ino, _fingerprint(self.path, head), len(head))

    async def _read(
        self,
        f: AsyncFile,
        framer: _Framer,
        ident: FileId | None,
        emit: Emit,
        report: Reporter,
        out: Any,
    ) -> bool:
        """Read ``f`` to its end; in follow mode, True means: reopen the path."""
        position = framer.start
        resumed = False  # the last read hit end of file and we waited since
        while not out.stopping:
            chunk = b""
            with out.pull_scope():
                chunk = await f.read(self.chunk_size)
            if chunk and resumed:
                resumed = False
                # The file may have been rewritten between the check and this read: judge
                # again now, and drop what was read at the old offset if it was.
                change, ident = await anyio.to_thread.run_sync(self._changed, ident, position)
                if change == "truncated":
                    await f.seek(0)
                    await self._finish(framer, emit, report)
                    framer = self._framer(0)
                    position = 0
                    continue
            if chunk:  # what was read is processed, even when stopping
                position += len(chunk)
                msg = framer.feed(chunk)
                for raw, error in framer.take_errors():
                    await report(raw, error)  # an over-long line: its first bytes
                if msg is not None:
                    await emit(msg)
                continue
            if not self.follow:
                return False
            with out.pull_scope():
                await anyio.sleep(self.poll_interval)
            # Judge the path after the wait, before reading on: content replaced while we
            # slept must not be read from the old offset.
            change, ident = await anyio.to_thread.run_sync(self._changed, ident, position)
            if change == "rotated":
                await self._drain(f, framer, emit, report)  # written before the switch
                return True
            if change == "truncated":
                await f.seek(0)
                await self._finish(framer, emit, report)
                framer = self._framer(0)
                position = 0
            resumed = True
        return False

    async def _drain(self, f: AsyncFile, framer: _Framer, emit: Emit, report: Reporter) -> None:
        while chunk := await f.read(self.chunk_size):
            msg = framer.feed(chunk)
            for raw, error in framer.take_errors():
                await report(raw, error)  # an over-long line: its first bytes
            if msg is not None:
                await emit(msg)

    def _changed(self, ident: FileId | None, position: int) -> tuple[str | None, FileId | None]:
        """``"rotated"`` (another file at the path), ``"truncated"`` (same file, shrunk or
        rewritten from its start) or None; and the identity to compare with next time."""
        assert ident is not None
        now = file_id(self.path, ident.length)
        if now is None:
            return None, ident  # moved away and not yet replaced: wait on the old one
        if (now.device, now.inode) != (ident.device, ident.inode):
            return "rotated", ident
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return None, ident
        if size < position or now.fingerprint != ident.fingerprint:
            return "truncated", file_id(self.path) or ident
        if ident.length < FINGERPRINT_BYTES and size > ident.length:
            return None, file_id(self.path) or ident  # a small file grew: a fuller fingerprint
        return None, ident

    async def _finish(self, framer: _Framer, emit: Emit, report: Reporter) -> None:
        msg, failed = framer.finish()
        if failed is not None:
            error, raw, prov = failed
            await report(raw, error, prov)
        if msg is not None:
            await emit(msg)

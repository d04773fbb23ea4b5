"""File sinks: ``.npy``, CSV, JSON lines and Parquet.

Every file sink buffers encoded batches and writes them in chunks of at least
``chunk_bytes`` (one thread hop per chunk: aiofiles on asyncio, anyio's file API on trio,
as the file sources read), at end of input, on graceful stop, and when closed after an
error. A chunk holds whole batches only, so after a crash (even ``SIGKILL``) the file
holds a prefix of complete batches: ``.npy`` files stay loadable (their header is
rewritten after each chunk, see :func:`to_npy`); CSV and JSON lines files end at a line
break. Parquet is the exception: its footer is written on close, so only a cleanly
closed Parquet file is readable.

The sinks await I/O, so each runs in a task of its own behind a buffer: a slow disk
suspends the flow (backpressure). Text encoding runs in a worker thread.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from .._aio import AsyncFile, open_file
from ..abc import Batch, Context, SinkOperator, SinkWriter
from ..codecs import CsvEncoder, Fmt, JsonlEncoder, columns
from ..errors import CheckpointMismatch
from ..flow import Sink

__all__ = ["FileSummary", "to_csv", "to_jsonl", "to_npy", "to_parquet"]

CHUNK_BYTES = 4 << 20
"""Default size of a write: buffered batches go to the file once they reach it."""


class FileSummary(NamedTuple):
    """What a file sink wrote.

    Attributes:
        path: the file.
        rows: rows written (those still buffered when a run is killed are not).
    """

    path: str
    rows: int


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` header for ``shape`` whose length does not depend on ``shape[0]``.

    NumPy pads the header with room for ``shape[0]`` to grow to 21 digits, so rewriting it
    in place as rows are appended never moves the data. Version 1.0, or 2.0 when the dtype
    description is too long for 1.0.
    """
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


class _FileWriter(SinkWriter[Any, FileSummary]):
    """Buffers encoded batches; writes them in chunks; subclasses say how to encode."""

    def __init__(self, path: str, chunk_bytes: int, fsync: bool) -> None:
        self.path, self.chunk_bytes, self.fsync = path, chunk_bytes, fsync
        self.pending: list[bytes] = []
        self.pending_bytes = self.pending_rows = self.rows = 0
        self.file: AsyncFile | None = None
        self.close_file: Callable[[], Any] | None = None
        self.fileno = -1
        self.restored: dict[str, Any] | None = None
        self.written = 0  # bytes in the file

    async def open(self) -> None:
        state = self.restored
        if state is None:
            self.file = await open_file(self.path, "wb")
            self.close_file, self.fileno = self.file.aclose, self.file.fileno()
            return
        # Resumed from a checkpoint: cut what was written after the last commit (it will
        # be written again), so the file holds each row once.
        size = int(state["bytes"])
        try:
            self.file = await open_file(self.path, "r+b")
        except FileNotFoundError:
            raise CheckpointMismatch(
                f"{self.path}: the checkpoint says {size} bytes were committed to this file, "
                "but it is gone; use a new checkpoint or delete this one"
            ) from None
        self.close_file, self.fileno = self.file.aclose, self.file.fileno()
        length = (await anyio.Path(self.path).stat()).st_size
        if length < size:
            raise CheckpointMismatch(
                f"{self.path}: the checkpoint says {size} bytes were committed to this file, "
                f"but it holds {length}; use a new checkpoint or delete this one"
            )
        await anyio.to_thread.run_sync(os.ftruncate, self.fileno, size)
        await self.file.seek(size)
        self.rows, self.written = int(state["rows"]), size

    async def commit(self, epoch: int) -> Any:
        """Write what is pending, flush and sync: return the committed length and rows."""
        if self.file is None:
            return self.restored
        if self.pending:
            await self.write_out()
        await self.file.flush()
        await anyio.to_thread.run_sync(os.fsync, self.fileno)
        return {"bytes": self.written, "rows": self.rows, **self.format_state()}

    def format_state(self) -> dict[str, Any]:
        """What the format needs to go on after a restart (npy: the dtype)."""
        return {}

    def restore(self, state: Any) -> None:
        """A resumed run appends after the committed length (see :meth:`open`)."""
        self.restored = state

    async def write(self, item: Any) -> None:
        data = np.asarray(item)
        encoded = await self.encode(data)
        self.pending.append(encoded)
        self.pending_bytes += len(encoded)
        self.pending_rows += len(data)
        if self.pending_bytes >= self.chunk_bytes:
            await self.write_out()

    async def write_chunk(self, items: list[Any]) -> None:
        if items:
            await self.write(np.asarray(items))

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)

    async def encode(self, data: NDArray[Any]) -> bytes:
        """The bytes of one batch (runs on the event loop unless overridden)."""
        raise NotImplementedError

    async def write_out(self) -> None:
        """Write the pending batches as one chunk, then ``committed`` (npy: the header)."""
        assert self.file is not None
        chunk, self.pending = b"".join(self.pending), []
        await self.file.write(chunk)
        self.written += len(chunk)
        self.rows += self.pending_rows
        self.pending_bytes = self.pending_rows = 0
        await self.committed()

    async def committed(self) -> None:
        """Called after each chunk reached the file."""

    async def flush(self) -> None:
        if self.file is None:
            return
        if self.pending:
            await self.write_out()
        await self.file.flush()
        if self.fsync:
            await anyio.to_thread.run_sync(os.fsync, self.fileno)

    async def aclose(self) -> None:
        close, self.close_file = self.close_file, None
        if close is None:
            return
        try:
            await self.flush()  # after an error too: whole batches received are kept
        finally:
            self.file = None
            await close()

    def result(self) -> FileSummary:
        return FileSummary(self.path, self.rows)


class _NpyWriter(_FileWriter):
    def __init__(self, path: str, chunk_bytes: int, fsync: bool) -> None:
        super().__init__(path, chunk_bytes, fsync)
        self.dtype: np.dtype[Any] | None = None
        self.row_shape: tuple[int, ...] = ()
        self.header_len = 0

    def format_state(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "row_shape": self.row_shape, "header_len": self.header_len}

    def restore(self, state: Any) -> None:
        super().restore(state)
        self.dtype, self.row_shape = state["dtype"], tuple(state["row_shape"])
        self.header_len = state["header_len"]

    async def encode(self, data: NDArray[Any]) -> bytes:
        if self.dtype is None:
            if data.dtype.hasobject:
                raise TypeError(f"cannot write {data.dtype} to .npy: no Python objects")
            self.dtype, self.row_shape = data.dtype, data.shape[1:]
            header = npy_header(self.dtype, (0, *self.row_shape))
            self.header_len = len(header)
            self.pending.append(header)  # written with the first chunk
        elif data.shape[1:] != self.row_shape or not np.can_cast(data.dtype, self.dtype):
            raise TypeError(
                f"a batch of {data.dtype} {data.shape[1:]} rows for {self.path}, which holds "
                f"{self.dtype} {self.row_shape} rows"
            )
        return np.ascontiguousarray(data, self.dtype).tobytes()

    async def committed(self) -> None:
        """Rewrite the header in place with the rows now in the file."""
        assert self.file is not None
        assert self.dtype is not None
        if self.fsync:
            await anyio.to_thread.run_sync(os.fsync, self.fileno)
        header = npy_header(self.dtype, (self.rows, *self.row_shape))
        assert len(header) == self.header_len, "npy header grew"
        await self.file.seek(0)
        await self.file.write(header)
        await self.file.seek(0, os.SEEK_END)

    async def flush(self) -> None:
        if self.dtype is None and self.file is not None:  # no rows: an empty float64 array
            await self.encode(np.empty(0))
        await super().flush()


class _TextWriter(_FileWriter):
    def __init__(
        self, path: str, chunk_bytes: int, fsync: bool, encode: Callable[[NDArray[Any]], bytes]
    ) -> None:
        super().__init__(path, chunk_bytes, fsync)
        self._encode = encode

    def restore(self, state: Any) -> None:
        super().restore(state)
        if int(state["bytes"]) and hasattr(self._encode, "header"):
            self._encode.header = False  # written before the restart

    async def encode(self, data: NDArray[Any]) -> bytes:
        if not len(data):  # no rows, no line (not a blank one)
            return b""
        return await anyio.to_thread.run_sync(self._encode, data)


class _FileOp(SinkOperator[Any, FileSummary]):
    fused = False

    def __init__(self, kind: str, path: str | os.PathLike[str], make: Callable[[str], Any]):
        self.path = os.fspath(path)
        self.make = make
        self.name = f"{kind}({Path(self.path).name})"

    def writer(self, ctx: Context) -> SinkWriter[Any, FileSummary]:
        writer: SinkWriter[Any, FileSummary] = self.make(self.path)
        return writer


class _CsvFile:
    """CSV text of each batch, the header line before the first (one per writer)."""

    def __init__(self, header: bool, fmt: Fmt) -> None:
        self.header, self.encoder = header, CsvEncoder(fmt)

    def __call__(self, data: NDArray[Any]) -> bytes:
        lines = self.encoder.encode(data)
        if self.header:
            self.header = False
            return self.encoder.header(data) + lines
        return lines


class _ParquetWriter(SinkWriter[Any, FileSummary]):
    """Row groups of at least ``chunk_bytes``, written by pyarrow in a worker thread.

    Under a checkpoint each commit closes the file being written (its footer makes it
    readable) and later rows go to the next part: ``path``, then ``stem.1.parquet``,
    ``stem.2.parquet``... A restart removes the parts after the last commit (a part cut off
    by a crash has no footer) and goes on numbering from there.
    """

    def __init__(self, path: str, chunk_bytes: int) -> None:
        self.path, self.chunk_bytes = path, chunk_bytes
        self.pending: list[NDArray[Any]] = []
        self.pending_bytes = self.rows = 0
        self.writer: Any = None
        self.part = 0  # the part the next rows go to
        self.restored = False

    def part_path(self, part: int) -> str:
        """Where part ``part`` is written (part 0 is ``path`` itself)."""
        if part == 0:
            return self.path
        p = Path(self.path)
        return str(p.with_name(f"{p.stem}.{part}{p.suffix}"))

    async def open(self) -> None:
        if self.restored:  # remove what was written after the last commit
            await anyio.to_thread.run_sync(self._remove_parts_from, self.part)

    def _remove_parts_from(self, part: int) -> None:
        while True:
            try:
                os.unlink(self.part_path(part))
            except FileNotFoundError:
                return
            part += 1

    async def write(self, item: Any) -> None:
        data = np.asarray(item)
        self.pending.append(data.copy())  # batches may be views of reused buffers
        self.pending_bytes += data.nbytes
        if self.pending_bytes >= self.chunk_bytes:
            await self.write_out()

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)

    async def write_out(self) -> None:
        data, self.pending, self.pending_bytes = np.concatenate(self.pending), [], 0
        await anyio.to_thread.run_sync(self._write_table, data)
        self.rows += len(data)

    def _write_table(self, data: NDArray[Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(dict(columns(data)))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.part_path(self.part), table.schema)
        self.writer.write_table(table)

    async def commit(self, epoch: int) -> Any:
        """Close the part being written (rows since the last commit), so it is durable."""
        if self.pending:
            await self.write_out()
        writer, self.writer = self.writer, None
        if writer is not None:
            await anyio.to_thread.run_sync(self._close_part, writer)
            self.part += 1
        return {"parts": self.part, "rows": self.rows}

    def _close_part(self, writer: Any) -> None:
        writer.close()
        fd = os.open(self.part_path(self.part), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def restore(self, state: Any) -> None:
        self.part, self.rows, self.restored = int(state["parts"]), int(state["rows"]), True

    async def flush(self) -> None:
        if self.pending:
            await self.write_out()

    async def aclose(self) -> None:
        try:
            await self.flush()  # with the writer still in place: one file, one footer
        finally:
            writer, self.writer = self.writer, None
            if writer is not None:
                await anyio.to_thread.run_sync(writer.close)

    def result(self) -> FileSummary:
        return FileSummary(self.path, self.rows)


def to_npy(
    path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES, fsync: bool = False
) -> Sink[Any, FileSummary]:
    """Append every batch to one ``.npy`` file, loadable at every flush and after a crash.

    The file is created (or truncated) when the run starts. Its header is written with the
    first batch and padded (as NumPy does) so the row count can grow to 21 digits in place;
    after each chunk of rows reaches the file the header is rewritten with the new count.
    If the process dies, ``np.load`` reads the rows of every chunk whose header update
    happened: complete batches, never a torn one (NumPy ignores trailing bytes).

    Args:
        path: the file to write.
        chunk_bytes: buffer batches until this many bytes, then write them at once.
            Smaller means less lost in a crash; larger means fewer writes.
        fsync: also ``fsync`` the data before each header update and at flush (survive an
            OS crash, not only a process crash; slower).

    Returns:
        A sink whose result is a :class:`FileSummary` ``(path, rows)``. Batches must all
        have the first batch's dtype (or one that casts safely to it) and row shape.
    """
    return Sink(_FileOp("to_npy", path, lambda p: _NpyWriter(p, chunk_bytes, fsync)))


def to_csv(
    path: str | os.PathLike[str],
    *,
    header: bool = True,
    fmt: Fmt = None,
    chunk_bytes: int = CHUNK_BYTES,
    fsync: bool = False,
) -> Sink[Any, FileSummary]:
    """Write the rows as CSV (comma-separated, ``\\n`` line ends, RFC 4180 quoting).

    The text follows :class:`aflow.codecs.CsvEncoder`'s rules, as the socket sinks'
    lines do: the same batch gives the same bytes.

    Args:
        path: the file to write (created or truncated).
        header: write the column names first: the fields of records, ``value`` for 1-D
            batches, ``0..k-1`` for 2-D ones.
        fmt: ``None`` for the shortest text that reads back the same value, a ``%``-format
            for every column (``"%.3f"``), or a sequence with one per column.
        chunk_bytes: buffer this many bytes of text before a write.
        fsync: ``fsync`` at flush.

    Returns:
        A sink whose result is a :class:`FileSummary` ``(path, rows)``.
    """
    encoder = functools.partial(_CsvFile, header, fmt)
    return Sink(_FileOp("to_csv", path, lambda p: _TextWriter(p, chunk_bytes, fsync, encoder())))


def to_jsonl(
    path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES, fsync: bool = False
) -> Sink[Any, FileSummary]:
    """Write one JSON value per row: an object for a record, a number for 1-D batches.

    NaN and infinities are written as ``null``; strings as UTF-8 (the rules of
    :class:`aflow.codecs.JsonlEncoder`).

    Returns:
        A sink whose result is a :class:`FileSummary` ``(path, rows)``.
    """
    return Sink(
        _FileOp(
            "to_jsonl", path, lambda p: _TextWriter(p, chunk_bytes, fsync, JsonlEncoder().encode)
        )
    )


def to_parquet(
    path: str | os.PathLike[str], *, chunk_bytes: int = 64 << 20
) -> Sink[Any, FileSummary]:
    """Write the rows to a Parquet file with pyarrow (``pip install pyarrow``, the ``arrow`` extra).

    Each ``chunk_bytes`` of rows is one row group. Parquet's footer is written when the
    sink closes, so a run killed before that leaves no readable file.

    Under a checkpoint (``run(checkpoint=...)``) every commit closes the file and later rows
    go to the next part, ``stem.1.parquet``, ``stem.2.parquet``... beside ``path`` (read them
    together, e.g. ``pyarrow.dataset.dataset([...])``); a restart removes the parts written
    after the last commit and goes on: each row is in exactly one committed part. A longer
    ``commit_interval`` makes fewer, larger parts. ``rows`` in the result counts all parts.

    Raises:
        ImportError: pyarrow is not installed.

    Returns:
        A sink whose result is a :class:`FileSummary` ``(path, rows)``.
    """
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "to_parquet needs pyarrow: `pip install pyarrow` (the arrow extra)"
        ) from exc
    return Sink(_FileOp("to_parquet", path, lambda p: _ParquetWriter(p, chunk_bytes)))

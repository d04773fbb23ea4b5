"""File sources: one file, a list or a glob, read concurrently, in large reads.

Every batch carries its provenance (path, line numbers or record indexes, byte offsets),
so errors say where a record came from and a later run could resume exactly.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..abc import Context, Outlet
from ..codecs import COMBINED, LogFormat
from ..codecs.csv import Engine
from ..codecs.images import _NPY_HEADER_LOCK
from ..flow import Flow
from ..policies import ErrorPolicy, Reporter
from ..stages.decode import decode_csv, decode_jsonl, decode_log
from ._lines import split_lines
from ._reader import FileReader, LastLine
from ._source import FilesSource as _FilesSource
from ._source import MiB, Paths, read_concurrently

__all__ = [
    "read_blocks",
    "read_bytes",
    "read_csv",
    "read_jsonl",
    "read_lines",
    "read_log",
    "read_npy",
    "read_records",
]


def _name(kind: str, paths: Paths) -> str:
    if isinstance(paths, str | os.PathLike):
        return f"{kind}({os.fspath(paths)})"
    return f"{kind}({len(paths)} files)"


def read_bytes(
    paths: Paths,
    *,
    read_size: int = MiB,
    max_open: int = 4,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
) -> Flow[NDArray[np.uint8]]:
    """Raw chunks of bytes as ``uint8`` batches (provenance: byte offsets).

    Args:
        paths: a path, a glob (``"logs/*.log"``, ``"data/**/*.bin"``) or a list of them;
            expanded at every run.
        read_size: bytes per read.
        max_open: files read at once.
        follow: keep reading at end of file (``tail -F``), surviving rotation and
            truncation, and following files that come to match a glob; the flow then
            ends only when stopped. A glob matching nothing yet is fine then.
        poll_interval: seconds between checks for new data when following (the longest
            sleep when change notifications, the ``inotify`` extra, wake the reader).
        rotate_wait: seconds a rotated file is still drained after its last write (a
            writer reopening its log late loses nothing).

    Raises:
        FileNotFoundError: a path does not exist, or a glob matches nothing (without
            ``follow``).
    """
    return Flow(
        _FilesSource(
            paths,
            shape="bytes",
            read_size=read_size,
            max_open=max_open,
            follow=follow,
            poll_interval=poll_interval,
            rotate_wait=rotate_wait,
            name=_name("read_bytes", paths),
        )
    )


def read_blocks(
    paths: Paths,
    *,
    read_size: int = MiB,
    max_open: int = 4,
    max_line: int = MiB,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
    last_line: LastLine = "keep",
    on_error: ErrorPolicy = "raise",
) -> Flow[NDArray[np.uint8]]:
    """Blocks of complete lines (``uint8`` batches) for the decoders.

    Provenance gives the path, line numbers and byte offsets of each block. A line
    longer than ``max_line`` bytes is skipped and reported (``on_error``). A last line
    without a newline is kept and logged as a warning (``last_line="keep"``) or reported
    to ``on_error`` as an :class:`~aflow.IncompleteFrameError` (``last_line="report"``).
    Files rotated away unread while following are reported as
    :class:`~aflow.DataLossError`. See :func:`read_bytes` for the other arguments.
    """
    return Flow(
        _FilesSource(
            paths,
            shape="lines",
            read_size=read_size,
            max_open=max_open,
            max_line=max_line,
            follow=follow,
            poll_interval=poll_interval,
            rotate_wait=rotate_wait,
            last_line=last_line,
            on_error=on_error,
            name=_name("read_blocks", paths),
        )
    )


def read_lines(
    paths: Paths,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    read_size: int = MiB,
    max_open: int = 4,
    max_line: int = MiB,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
    last_line: LastLine = "keep",
    on_error: ErrorPolicy = "raise",
) -> Flow[str]:
    """Lines as ``str`` elements, without their line endings (``\\n`` or ``\\r\\n``).

    Convenient for per-line Python work; for bulk decoding use :func:`read_blocks` and
    a decoder. ``errors`` is the text decoding's error handler (``"replace"`` to accept
    invalid UTF-8); with ``"strict"`` a line that does not decode goes to ``on_error`` as a
    :class:`~aflow.DecodeError` naming its line, and its neighbours go on. ``on_error``
    also handles lines longer than ``max_line`` (see :func:`read_blocks`).
    """
    blocks = read_blocks(
        paths,
        read_size=read_size,
        max_open=max_open,
        max_line=max_line,
        follow=follow,
        poll_interval=poll_interval,
        rotate_wait=rotate_wait,
        last_line=last_line,
        on_error=on_error,
    )

    return blocks | split_lines(encoding, errors, on_error)


def read_csv(
    paths: Paths,
    dtype: DTypeLike,
    *,
    delimiter: str = ",",
    header: bool | Literal["names"] = False,
    engine: Engine = "auto",
    fill_int: int | None = None,
    threads: int | None = None,
    fail_fast: float | None = 1.0,
    read_size: int = MiB,
    max_open: int = 4,
    max_line: int = MiB,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
    last_line: LastLine = "keep",
    on_error: ErrorPolicy = "raise",
) -> Flow[NDArray[Any]]:
    """CSV files into structured arrays: :func:`read_blocks` then :func:`decode_csv`
    (see there for ``delimiter``, ``header``, ``engine``, ``fill_int``, ``threads`` and
    ``fail_fast``, and :func:`read_bytes` for the other arguments)."""
    decode = decode_csv(
        dtype,
        delimiter=delimiter,
        header=header,
        engine=engine,
        fill_int=fill_int,
        threads=threads,
        on_error=on_error,
        fail_fast=fail_fast,
    )
    blocks = read_blocks(
        paths,
        read_size=read_size,
        max_open=max_open,
        max_line=max_line,
        follow=follow,
        poll_interval=poll_interval,
        rotate_wait=rotate_wait,
        last_line=last_line,
        on_error=on_error,
    )
    return blocks | decode


def read_jsonl(
    paths: Paths,
    dtype: DTypeLike,
    *,
    fill_int: int | None = None,
    threads: int | None = None,
    fail_fast: float | None = 1.0,
    read_size: int = MiB,
    max_open: int = 4,
    max_line: int = MiB,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
    last_line: LastLine = "keep",
    on_error: ErrorPolicy = "raise",
) -> Flow[NDArray[Any]]:
    """JSON lines files into structured arrays: :func:`read_blocks` then
    :func:`decode_jsonl` (see there for ``fill_int``, ``threads`` and ``fail_fast``, and
    :func:`read_bytes` for the other arguments)."""
    return read_blocks(
        paths,
        read_size=read_size,
        max_open=max_open,
        max_line=max_line,
        follow=follow,
        poll_interval=poll_interval,
        rotate_wait=rotate_wait,
        last_line=last_line,
        on_error=on_error,
    ) | decode_jsonl(
        dtype, fill_int=fill_int, threads=threads, on_error=on_error, fail_fast=fail_fast
    )


def read_log(
    paths: Paths,
    pattern: str | re.Pattern[str] | LogFormat = COMBINED,
    columns: dict[str, str] | None = None,
    *,
    errors: str | None = None,
    fill_int: int = -1,
    threads: int | None = None,
    fail_fast: float | None = 1.0,
    read_size: int = MiB,
    max_open: int = 4,
    max_line: int = MiB,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
    last_line: LastLine = "keep",
    on_error: ErrorPolicy = "raise",
) -> Flow[NDArray[Any]]:
    """Log files (by default nginx/Apache combined format) into typed columns:
    :func:`read_blocks` then :func:`decode_log` (see there for ``errors``, ``fill_int``,
    ``threads`` and ``fail_fast``). With ``follow=True`` this is ``tail -F`` of rotating
    logs."""
    return read_blocks(
        paths,
        read_size=read_size,
        max_open=max_open,
        max_line=max_line,
        follow=follow,
        poll_interval=poll_interval,
        rotate_wait=rotate_wait,
        last_line=last_line,
        on_error=on_error,
    ) | decode_log(
        pattern,
        columns,
        errors=errors,
        fill_int=fill_int,
        threads=threads,
        on_error=on_error,
        fail_fast=fail_fast,
    )


def read_records(
    paths: Paths,
    dtype: DTypeLike,
    *,
    read_size: int = 2 * MiB,
    max_open: int = 4,
    follow: bool = False,
    poll_interval: float = 0.25,
    rotate_wait: float = 1.0,
    on_error: ErrorPolicy = "raise",
) -> Flow[NDArray[Any]]:
    """Fixed-size binary records of ``dtype`` (give the byte order, e.g. ``"<i8"``).

    Each read becomes one batch of whole records (``np.frombuffer``, no copy); provenance
    gives record indexes and byte offsets. Reads are of 2 MiB by default (twice the other
    sources': records need no decoding, so the cost per batch weighs more). A partial
    record at the end of a file is reported with ``on_error`` (by default a
    :class:`~aflow.errors.DecodeError`), never dropped silently.
    """
    dt = np.dtype(dtype)
    size = max(dt.itemsize, read_size // dt.itemsize * dt.itemsize)
    return Flow(
        _FilesSource(
            paths,
            shape="records",
            dtype=dt,
            read_size=size,
            max_open=max_open,
            follow=follow,
            poll_interval=poll_interval,
            rotate_wait=rotate_wait,
            on_error=on_error,
            name=_name("read_records", paths),
        )
    )


class _NpySource(_FilesSource):
    """``.npy`` files: each file's header is read at run time (its own length, checked to
    hold the same dtype and row shape as the first file)."""

    async def produce(self, out: Outlet, ctx: Context) -> None:
        files = await anyio.to_thread.run_sync(self._expand)
        if not files:
            raise FileNotFoundError(f"{self.name}: no file in {self.paths!r}")
        headers = [await anyio.to_thread.run_sync(_npy_header, f) for f in files]
        dtype, row_shape, _ = headers[0]
        for path, (dt, shape, _) in zip(files, headers, strict=True):
            if (dt, shape) != (dtype, row_shape):
                raise ValueError(
                    f"{self.name}: {path} holds {dt} rows of shape {shape}, but {files[0]} "
                    f"holds {dtype} rows of shape {row_shape}"
                )
        size = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        options = {
            **self.options,
            "dtype": dtype,
            "row_shape": row_shape,
            "chunk_size": max(size, self.read_size // size * size),
        }
        readers = [
            FileReader(path, start=start, **options)
            for path, (_, _, start) in zip(files, headers, strict=True)
        ]
        resume = out.resume_positions
        if resume:  # start each file after its committed position, skip those read
            readers, changes = await anyio.to_thread.run_sync(
                self._resume, readers, resume, options
            )
            out.update_positions(changes)
        report = Reporter(self.on_error, self.name, out.counters)
        await read_concurrently(readers, self.max_open, report, out)


def read_npy(paths: Paths, *, read_size: int = MiB, max_open: int = 4) -> Flow[NDArray[Any]]:
    """Rows of ``.npy`` files, streamed (a file is never loaded whole).

    All files must hold the same dtype and row shape (C order); the glob is expanded and the
    headers read at every run.
    """
    return Flow(
        _NpySource(
            paths,
            shape="records",
            read_size=read_size,
            max_open=max_open,
            name=_name("read_npy", paths),
        )
    )


def _npy_header(path: str) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        with _NPY_HEADER_LOCK:  # see aflow.codecs.images
            shape, fortran, dtype = read_header(f)
        if fortran and len(shape) > 1:
            raise ValueError(f"read_npy: {path} is in Fortran order; only C order streams")
        return np.dtype(dtype), tuple(shape[1:]), f.tell()

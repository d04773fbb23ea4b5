"""Opening a path for reading, whatever it holds: a regular file, a FIFO, compressed data.

* **Regular files** are read with ``os.pread`` in a worker thread, one hop per read. A
  caller that frames bytes without bytes' methods (records, raw bytes: ``buffers=True``)
  reads into a reused ``bytearray``, handed on as a read-only view, on the event loop's
  thread where the page cache already holds the data (``preadv`` with ``RWF_NOWAIT`` on
  Linux, which never waits for the disk) and in a worker thread only where it does not:
  the hop and a read landing in another core's cache cost 10-25 % on a fast aggregate.
* **FIFOs** are opened non-blocking (an open never waits for a writer) and read with
  :func:`anyio.wait_readable` between reads, so every wait, including the one for the first
  writer, is cancellable: a cancel scope, SIGTERM or Ctrl-C ends it on asyncio and trio.
* **Compressed files** (gzip, bzip2 from the standard library; zstandard with the ``zstd``
  extra) are recognized by their magic bytes, whatever their name, and decompressed in the
  worker thread as they are read.
"""

from __future__ import annotations

import bz2
import gzip
import os
import stat
import sys
from typing import Any, BinaryIO, Protocol

import anyio

from ..codecs._scan import lift_mmap_threshold

__all__ = ["BufferPool", "ByteStream", "compression_of", "open_head", "open_stream", "read_small"]

MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}
MAGIC_BYTES = 4
SKIP_PIECE = 1 << 20  # decompressed bytes skipped per read when starting past the start


class ByteStream(Protocol):
    """Bytes of one opened path, read in pieces."""

    prompt: bool
    """A read never waits for a writer (a file, not a FIFO): no stop needs to cut it."""

    async def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end."""
        ...

    async def aclose(self) -> None:
        """Release the file (idempotent)."""
        ...


def compression_of(head: bytes) -> str | None:
    """``"gzip"``, ``"bzip2"``, ``"zstd"`` or None, from a file's first bytes."""
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


async def open_stream(
    path: str, start: int = 0, *, buffers: bool | BufferPool = False
) -> ByteStream:
    """Open ``path`` for reading from byte ``start`` (of the decompressed content).

    Does not block the event loop; never waits for a FIFO's writer. With ``buffers``, a
    regular file's reads may return read-only ``memoryview`` chunks of reused buffers (see
    the module's text): those of the given pool, shared with the other files one task
    reads, or (``True``) the stream's own.

    Raises:
        OSError: the path cannot be opened (``FileNotFoundError``, ``PermissionError``...).
        RuntimeError: a zstandard file without the ``zstd`` extra installed.
    """
    fd, kind = await anyio.to_thread.run_sync(_open, path)
    if kind == "fifo":
        return _FifoStream(fd)
    if kind is None:
        pool = buffers if isinstance(buffers, BufferPool) else None
        return _FileStream(fd, start, cached=bool(buffers) and _NOWAIT is not None, pool=pool)
    raw = os.fdopen(fd, "rb")
    stream = _DecompressingStream(_decompressor(kind, raw, path), raw)
    while start > 0:  # skip to ``start`` a piece at a time (no buffer of its size)
        skipped = await stream.read(min(start, SKIP_PIECE))
        if not skipped:
            break
        start -= len(skipped)
    return stream


def open_head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the content of ``path``, decompressed if it is
    compressed. Blocks: call it in a thread.

    Raises:
        OSError, EOFError: the file cannot be read (or a compressed one is cut short).
        RuntimeError: a zstandard file without the ``zstd`` extra installed.
    """
    raw = open(path, "rb")  # noqa: SIM115 - closed below, or by the decompressor
    try:
        kind = compression_of(os.pread(raw.fileno(), MAGIC_BYTES, 0))
        if kind is None:
            return raw.read(size)
        reader = _decompressor(kind, raw, path)
        try:
            head = b""
            while len(head) < size and (piece := reader.read(size - len(head))):
                head += piece
            return head
        finally:
            reader.close()
    finally:
        raw.close()


def _open(path: str) -> tuple[int, str | None]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            return fd, "fifo"
        os.set_blocking(fd, True)
        return fd, compression_of(os.pread(fd, MAGIC_BYTES, 0))
    except BaseException:
        os.close(fd)
        raise


def _decompressor(kind: str, raw: BinaryIO, path: str) -> BinaryIO:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    try:
        zstandard = _zstandard(path)
    except RuntimeError:
        raw.close()
        raise
    reader: BinaryIO = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return reader


def _zstandard(path: str) -> Any:
    """The optional extra 'zstd', imported when a file needs it (not with aflow: most
    processes read no zstandard file, and the import adds to every one's memory).

    Raises:
        RuntimeError: it is not installed.
    """
    try:
        import zstandard
    except ImportError:
        raise RuntimeError(
            f"{path} is zstandard-compressed: install the 'zstd' extra "
            "(pip install 'aflow-streams[zstd]') to read it"
        ) from None
    return zstandard


def decompress_all(data: bytes, path: str) -> bytes | None:
    """The decompressed content of a whole small file, or None if it is not compressed."""
    kind = compression_of(data[:MAGIC_BYTES])
    if kind is None:
        return None
    if kind == "gzip":
        return gzip.decompress(data)
    if kind == "bzip2":
        return bz2.decompress(data)
    out: bytes = _zstandard(path).ZstdDecompressor().decompressobj().decompress(data)
    return out


def read_small(paths: list[str], limit: int) -> list[tuple[os.stat_result, bytes | None]]:
    """Read whole regular files, in one worker-thread call for many small ones.

    Returns each file's ``stat`` (of the file read: its identity) with its content
    (decompressed), or None for a file that is not small after all (more than ``limit``
    bytes, or not a regular file): read it as a stream. Blocks: call it in a thread.
    """
    out: list[tuple[os.stat_result, bytes | None]] = []
    for path in paths:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO: not even opened here
            out.append((st, None))
            continue
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if st.st_size > limit:
                out.append((st, None))
                continue
            data = f.read() or b""
        plain = decompress_all(data, path)
        out.append((st, data if plain is None else plain))
    return out


_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+
SPARE_BUFFERS = 16  # per pool: more than a run's batches hold at once


def _refs(spare: list[bytearray], i: int) -> int:
    """The references to ``spare[i]``, as counted here (the count of a call's argument
    differs between CPython versions: 3.14 no longer counts the temporary)."""
    return sys.getrefcount(spare[i])


def _free_refs() -> int | None:
    """What :func:`_refs` says of a buffer only its list holds; None where a buffer a
    view holds does not count more (then no buffer is reused)."""
    probe = [bytearray(1)]
    free = _refs(probe, 0)
    view = memoryview(probe[0])
    held = _refs(probe, 0)
    view.release()
    return free if held > free else None


_FREE_REFS = _free_refs()


class BufferPool:
    """The buffers that cached reads read into, reused once nothing holds them (no batch,
    no view of one). One pool serves the files one task reads in turn: a run reading four
    files side by side then cycles through the one or two buffers the flow holds at a
    time, still in the CPU's cache, not through two per file (four files' own buffers
    cost 10-15 % of the CPU of a fast aggregate, as much as reading them one after
    another saves). Use a pool on one event loop's thread only: a buffer is taken and
    read into without a switch between, so no task can take it in between; another
    thread could."""

    def __init__(self) -> None:
        self.spare: list[bytearray] = []  # the one used last, last

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes: an earlier one that nothing holds any more, else a
        new one. Reusing them keeps the allocator from returning the memory to the kernel
        and faulting it in again at every read (~150,000 page faults per 320 MB read into
        new buffers: 2x the CPU)."""
        spare = self.spare
        for i in range(len(spare) - 1, -1, -1):  # the one used last first: in the cache
            if _FREE_REFS is not None and _refs(spare, i) == _FREE_REFS and len(spare[i]) == size:
                buf = spare.pop(i)
                spare.append(buf)  # the one used last, last
                return buf
        # the pool's blocks are not freed during a run: without a block of their size
        # freed, the aggregates' temporaries of that size were faulted in at every batch
        lift_mmap_threshold(size)
        buf = bytearray(size)
        if len(spare) < SPARE_BUFFERS:
            spare.append(buf)
        return buf

    def drop(self, buf: bytearray) -> None:
        """Take ``buf`` out of the pool (it was cut short: not reused)."""
        for i in range(len(self.spare) - 1, -1, -1):
            if self.spare[i] is buf:
                del self.spare[i]
                return


class _FileStream:
    """A regular file read with ``os.pread`` in a worker thread; with ``cached``, read
    into a buffer of ``pool`` on the event loop's thread where the page cache holds the
    data.
    """

    prompt = True

    def __init__(
        self, fd: int, position: int, cached: bool = False, pool: BufferPool | None = None
    ) -> None:
        self.fd: int | None = fd
        self.position = position
        self.cached = cached
        self.pool = pool if pool is not None else BufferPool()

    async def read(self, size: int) -> bytes:
        assert self.fd is not None
        if not self.cached:
            return await anyio.to_thread.run_sync(self.read_now, size)
        buf = self.pool.take(size)
        n = self._read_cached(buf)
        if n is None or (n == 0 and not self._at_end()):
            # not in the page cache: the disk is waited for in a thread. Nor is an empty
            # read taken for the end unless the file ends here: some file systems answer
            # RWF_NOWAIT with 0 bytes
            n = await anyio.to_thread.run_sync(os.preadv, self.fd, (buf,), self.position)
        else:
            await anyio.lowlevel.checkpoint()  # a loop of cached reads lets others run
        if not n:
            return b""  # the end: the buffer stays in the pool for the next file
        if n < size:
            self.pool.drop(buf)  # a shorter one is not reused
            del buf[n:]
        self.position += n
        # read-only, as bytes are (a batch's flag cannot be set back); framed by
        # np.frombuffer, and the view holds the buffer until no batch refers to it
        return memoryview(buf).toreadonly()  # type: ignore[return-value]

    def _at_end(self) -> bool:
        """The file holds nothing past the position (``fstat`` answers from the inode,
        without waiting for the disk): an empty read is the end, no thread need say so."""
        assert self.fd is not None
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            return False
        return 0 < size <= self.position  # 0: a file that does not say (/proc), or empty

    def _read_cached(self, buf: bytearray) -> int | None:
        """Bytes read into ``buf`` from the page cache (maybe fewer than it holds, 0 at
        the end), or None where a read would wait for the disk."""
        assert self.fd is not None
        assert _NOWAIT is not None
        try:
            return os.preadv(self.fd, (buf,), self.position, _NOWAIT)
        except BlockingIOError:
            return None
        except OSError:  # the file system does not take the flag (EOPNOTSUPP)
            self.cached = False
            return None

    def read_now(self, size: int) -> bytes:
        """The next ``size`` bytes at most (blocks: call it in a thread)."""
        assert self.fd is not None
        chunk = os.pread(self.fd, size, self.position)
        self.position += len(chunk)
        return chunk

    async def aclose(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class _FifoStream:
    """A FIFO (named pipe) read without threads; every wait is cancellable."""

    prompt = False

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.connected = False  # a writer came: an empty read is the end from now on

    async def read(self, size: int) -> bytes:
        assert self.fd is not None
        while True:
            if not self.connected:
                # With no writer yet an empty read would mean nothing: wait for one (the
                # kernel reports readable only once a writer wrote or left).
                await anyio.wait_readable(self.fd)
                self.connected = True
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)

    async def aclose(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class _DecompressingStream:
    """A compressed file decompressed in a worker thread as it is read."""

    prompt = True

    def __init__(self, file: Any, raw: BinaryIO) -> None:
        self.file = file
        self.raw = raw  # gzip and bz2 leave the file they read open: closed here

    async def read(self, size: int) -> bytes:
        data: bytes = await anyio.to_thread.run_sync(self.file.read, size)
        return data

    async def aclose(self) -> None:
        if not self.raw.closed:
            await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        try:
            self.file.close()
        finally:
            self.raw.close()

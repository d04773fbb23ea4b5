"""What makes a file the same file, and the blocking reads a follower runs in a thread.

A file is identified by device, inode and a fingerprint of its first bytes (the inode
alone is reused once a file is removed). Every function here blocks: call it through
``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FINGERPRINT_BYTES",
    "FileId",
    "file_id",
    "find_copy",
    "fingerprint",
    "read_checked",
    "read_range",
    "read_until_truncated",
]

FINGERPRINT_BYTES = 256


def _digest(head: bytes) -> bytes:
    return hashlib.blake2b(head[:FINGERPRINT_BYTES], digest_size=8).digest()


def fingerprint(head: bytes) -> str:
    """The fingerprint (hex) of a file whose first bytes are ``head`` (at most
    :data:`FINGERPRINT_BYTES` of them count), as checkpoint positions record it."""
    return _digest(head).hex()


@dataclass(frozen=True, slots=True)
class FileId:
    """What makes a file the same file: device, inode and its first bytes."""

    device: int
    inode: int
    fingerprint: bytes
    length: int  # bytes the fingerprint covers (fewer than FINGERPRINT_BYTES: small file)

    @classmethod
    def of(cls, st: os.stat_result, head: bytes) -> FileId:
        """The identity of a file from its ``stat`` and its first bytes."""
        head = head[:FINGERPRINT_BYTES]
        return cls(st.st_dev, st.st_ino, _digest(head), len(head))

    def matches(self, head: bytes) -> bool:
        """Whether ``head`` (a file's first bytes) starts as this file did."""
        return len(head) >= self.length and _digest(head[: self.length]) == self.fingerprint


def file_id(path: str, length: int = FINGERPRINT_BYTES) -> FileId | None:
    """The identity of the file at ``path`` now (fingerprint over its first ``length``
    bytes), or None if there is none."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(length)
    except FileNotFoundError:
        return None
    return FileId.of(st, head)


def read_checked(fd: int, size: int, position: int, ident: FileId) -> tuple[bytes | None, FileId]:
    """Read up to ``size`` bytes at ``position`` of the open file ``fd``.

    First make sure the file was not truncated or rewritten from its start since (one
    ``fstat`` and a read of its first bytes, from the page cache): then the result is
    ``(None, ident)``. Returns the bytes (``b""`` at end of
    file) and the identity to compare with next time (a fuller fingerprint once a small
    file grew).
    """
    st = os.fstat(fd)
    if st.st_size < position:
        return None, ident
    if ident.length and not ident.matches(os.pread(fd, ident.length, 0)):
        return None, ident
    if ident.length < FINGERPRINT_BYTES and st.st_size > ident.length:
        ident = FileId.of(st, os.pread(fd, FINGERPRINT_BYTES, 0))
    return os.pread(fd, size, position), ident


def read_until_truncated(
    fd: int,
    path: str,
    position: int,
    ident: FileId,
    seconds: float,
    limit: int,
    wait: Callable[[], None],
) -> tuple[list[bytes], FileId, bool]:
    """Read what is appended to the open file ``fd`` as soon as it is written (``wait()``
    blocks until the next write, briefly), while a copy of it is being made: until it is
    truncated or rewritten (then the third value is True), ``path`` names another file,
    ``limit`` bytes were read, or ``seconds`` passed. Lines written after the copy and
    before the truncation are in no copy: only a reader that read them in that window has
    them.

    Returns the chunks read from ``position`` on, the identity to compare with next time,
    and whether the file was truncated.
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    st = os.fstat(fd)
    here = (st.st_dev, st.st_ino)
    while limit > 0 and time.monotonic() < deadline:
        chunk, ident = read_checked(fd, limit, position, ident)
        if chunk is None:
            return chunks, ident, True
        if chunk:
            chunks.append(chunk)
            position += len(chunk)
            limit -= len(chunk)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            break
        if (st.st_dev, st.st_ino) != here:  # renamed away: not a copy, a rotation
            break
        wait()
    return chunks, ident, False


def find_copy(path: str, ident: FileId) -> str | None:
    """The copy ``copytruncate`` left of the file at ``path`` before truncating it: a
    regular file beside it, named like it (``app.log.1``, ``app.log-20240101``), another
    inode, starting with the same bytes; the newest if several. None if there is none."""
    if not ident.length:
        return None
    directory, name = os.path.split(path)
    best: tuple[float, str] | None = None
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return None
    for other in names:
        if other == name or not other.startswith(name):
            continue
        candidate = os.path.join(directory, other)
        try:
            with open(candidate, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_ino == ident.inode:
                    continue
                head = f.read(ident.length)
        except OSError:
            continue
        if ident.matches(head) and (best is None or st.st_mtime > best[0]):
            best = (st.st_mtime, candidate)
    return best[1] if best else None


def read_range(path: str, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``path`` at ``offset`` (``b""`` past its end or if gone)."""
    try:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), size, offset)
    except FileNotFoundError:
        return b""

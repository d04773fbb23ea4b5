"""What makes a file the same file, and the blocking reads a follower runs in a thread.

A file is identified by device, inode and a fingerprint of its first bytes (the inode
alone is reused once a file is removed). Every function here blocks: call it through
``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

try:  # hashlib's own blake2b, without OpenSSL's digests (1-3.6 MB resident, loaded)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter without the module
    from hashlib import blake2b

__all__ = [
    "FINGERPRINT_BYTES",
    "TAIL_BYTES",
    "FileId",
    "blake2b",
    "changed",
    "file_id",
    "find_copy",
    "fingerprint",
    "read_checked",
    "read_range",
]

FINGERPRINT_BYTES = 256
TAIL_BYTES = 64
"""How many of the last bytes read a follower compares before its next read."""


def _digest(head: bytes) -> bytes:
    return blake2b(head[:FINGERPRINT_BYTES], digest_size=8).digest()


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


def read_checked(
    fd: int, size: int, position: int, ident: FileId, before: bytes = b""
) -> tuple[bytes | None, FileId]:
    """Read up to ``size`` bytes at ``position`` of the open file ``fd``.

    First make sure the file was not truncated or rewritten since the last read (one
    ``fstat`` and two small reads from the page cache): it is shorter than ``position``,
    its first bytes are not those of ``ident``, or the bytes just before ``position`` are
    not ``before`` (the last ones read: a file truncated and written again past the
    position with the same first bytes). Then the result is ``(None, ident)``.

    Returns the bytes (``b""`` at end of file) and the identity to compare with next time
    (a fuller fingerprint once a small file grew).
    """
    st = os.fstat(fd)
    if changed(fd, st.st_size, position, ident, before):
        return None, ident
    if ident.length < FINGERPRINT_BYTES and st.st_size > ident.length:
        ident = FileId.of(st, os.pread(fd, FINGERPRINT_BYTES, 0))
    return os.pread(fd, size, position), ident


def changed(fd: int, size: int, position: int, ident: FileId, before: bytes) -> bool:
    """Whether the file ``fd`` (now ``size`` bytes long) no longer holds what was read
    from it up to ``position``: see :func:`read_checked`."""
    if size < position:
        return True
    if ident.length and not ident.matches(os.pread(fd, ident.length, 0)):
        return True
    n = min(len(before), position)
    return bool(n) and os.pread(fd, n, position - n) != before[-n:]


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

"""Resuming a followed path: the rotated files beside it that a checkpoint has not seen
to their end.

While a followed pipeline is down, its log goes on being written and rotated. On resume,
the files beside the path that rotation produced (``app.log.1``, ``app.log-20260101``,
``app.log.2.gz``...) are *caught up* before the live file, oldest first:

* a file the checkpoint was reading (its first bytes are those of a position) is read from
  the committed offset: renamed (``create``), copied (``copytruncate``: the copy starts
  with the bytes the original had) or compressed (``compress``, ``delaycompress``: the
  content is decompressed to compare and to read);
* a file the checkpoint does not know was rotated away before a committed run could read
  it: it is read from its start. The first run records the rotated files it finds as
  read (they predate it), so "unknown" means "new since".

Every function here blocks: call it in a worker thread.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from ._fileid import FINGERPRINT_BYTES, FileId, fingerprint
from ._open import MAGIC_BYTES, compression_of, open_head

__all__ = ["CatchUp", "find_rotated", "matches", "plan_catch_up", "rotated_siblings"]

# What rotation appends to a name: ".1", "-20260101", "_2026-01-01T10:00", ".1.gz"...
# a separator, then a digit first.
_ROTATED = re.compile(r"[._-]\d[\w.:+-]*")


@dataclass(frozen=True, slots=True)
class CatchUp:
    """One rotated file to read before the live one, from ``offset`` (of its content,
    decompressed when ``compressed``)."""

    path: str
    ident: FileId  # device and inode on disk; fingerprint of the content's first bytes
    offset: int
    compressed: bool
    mtime_ns: int
    line: int = 1  # the number of the line at ``offset``


@dataclass(frozen=True, slots=True)
class _Found:
    path: str
    ident: FileId
    head: bytes
    size: int  # of the content; -1 when compressed (unknown without decompressing)
    compressed: bool
    mtime_ns: int


def rotated_siblings(path: str) -> list[str]:
    """The regular files beside ``path`` whose names rotation produces from its name: the
    name, then a separator (``.``, ``-``, ``_``) and a digit, then anything (a date, a
    number, a compression suffix)."""
    directory, name = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    out = []
    for other in names:
        if not other.startswith(name) or not _ROTATED.fullmatch(other[len(name) :]):
            continue
        candidate = os.path.join(directory, other)
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):
                out.append(candidate)
        except OSError:
            continue
    return sorted(out)


def matches(head: bytes, pos: dict[str, Any]) -> bool:
    """Whether content starting with ``head`` is the file a checkpoint position recorded
    (its first ``pos["len"]`` bytes have the fingerprint ``pos["fp"]``)."""
    n = int(pos.get("len", 0))
    if len(head) < n or "fp" not in pos:
        return False
    return fingerprint(head[:n]) == str(pos["fp"])


def _found(path: str) -> _Found | None:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            kind = compression_of(os.pread(f.fileno(), MAGIC_BYTES, 0))
            if kind is None:
                head = os.pread(f.fileno(), FINGERPRINT_BYTES, 0)
                size = st.st_size
            else:
                head = open_head(path, FINGERPRINT_BYTES)
                size = -1
    except (OSError, EOFError, ValueError, RuntimeError):
        return None  # gone meanwhile, or a compressed file being written: not readable
    ident = FileId.of(st, head)
    return _Found(path, ident, head, size, kind is not None, st.st_mtime_ns)


def find_rotated(path: str, ident: FileId) -> tuple[str, FileId, bool, int] | None:
    """Where the file ``ident`` is now, rotated beside ``path``: the same file renamed
    (same device and inode, same first bytes), else a compressed copy of it (content
    starting with the same bytes). Its path, identity (a compressed file's: its own inode,
    its content's first bytes), whether compressed, and modification time."""
    compressed = None
    for candidate in rotated_siblings(path):
        f = _found(candidate)
        if f is None or not ident.matches(f.head):
            continue
        if not f.compressed and (f.ident.device, f.ident.inode) == (ident.device, ident.inode):
            return f.path, f.ident, False, f.mtime_ns
        if f.compressed and (compressed is None or f.mtime_ns > compressed[3]):
            compressed = (f.path, f.ident, True, f.mtime_ns)
    return compressed


def _key(ident: FileId) -> str:
    return f"{ident.device}:{ident.inode}"


def _entry(path: str, f: _Found, offset: int, **extra: Any) -> dict[str, Any]:
    n = min(len(f.head), FINGERPRINT_BYTES)
    return {"path": path, "fp": fingerprint(f.head[:n]), "len": n, "offset": offset, **extra}


def plan_catch_up(
    path: str, resume: dict[str, Any], exclude: set[str] | frozenset[str] = frozenset()
) -> tuple[list[CatchUp], dict[str, Any]]:
    """What to read before following ``path``, given the source's committed position map
    ``resume`` (see the module docstring): the rotated files beside it, oldest first, and
    the changes to make to the position map (``None``: remove the key).

    On a first run (no position of ``path``) nothing is read, and the rotated files there
    now are recorded as read (``"done"``): they predate the run. Later, a rotated file the
    map does not know was rotated away before a committed run read it: it is read from
    its start. Entries of files that are gone are removed; an entry whose file is found
    under another identity (copied, compressed) moves to it. ``exclude``: paths the
    source reads anyway (matched by its own glob).
    """
    found: list[_Found] = []
    for candidate in rotated_siblings(path):
        if candidate in exclude:
            continue
        f = _found(candidate)
        if f is not None:
            found.append(f)
    # A file being compressed exists twice (app.log.2 and app.log.2.gz): keep the plain.
    plain_heads = {f.head for f in found if not f.compressed}
    found = [f for f in found if not (f.compressed and f.head in plain_heads)]
    relevant = {k: p for k, p in resume.items() if isinstance(p, dict) and p.get("path") == path}
    changes: dict[str, Any] = {}
    live = _found(path)
    if not relevant:  # the first run: what is beside the path now is not ours to read
        for f in found:
            changes[_key(f.ident)] = _entry(path, f, max(f.size, 0), done=True)
        if live is not None:  # and the live file is known from its start on
            changes[_key(live.ident)] = _entry(path, live, 0)
        return [], changes

    def entry_of(f: _Found) -> str | None:
        own = relevant.get(_key(f.ident))
        if own is not None and matches(f.head, own):
            return _key(f.ident)
        # by content (an entry of an empty file matches by its own key only)
        return next((k for k, p in relevant.items() if p.get("len") and matches(f.head, p)), None)

    kept: set[str] = set()  # entries whose file is there under their own key
    plan: list[CatchUp] = []
    if live is not None and entry_of(live) == _key(live.ident):
        kept.add(_key(live.ident))
    for f in found:
        k = entry_of(f)
        if k is None:  # rotated away before a committed run read it: all of it
            if f.size != 0:
                plan.append(CatchUp(f.path, f.ident, 0, f.compressed, f.mtime_ns))
            continue
        pos = relevant[k]
        if k == _key(f.ident):
            kept.add(k)
        else:  # copied or compressed: the entry follows the content
            changes[_key(f.ident)] = dict(pos)
        offset = int(pos.get("offset", 0))
        if not pos.get("done") and (f.compressed or f.size > offset):
            line = int(pos.get("line", 1))
            plan.append(CatchUp(f.path, f.ident, offset, f.compressed, f.mtime_ns, line))
    for k in relevant:
        if k not in kept:
            changes.setdefault(k, None)  # gone, or its content is under another key now
    return sorted(plan, key=lambda c: (c.mtime_ns, c.path)), changes

"""Regular files read inline when their next bytes are page-cached, in a worker thread
otherwise: both give the file's bytes, in order, from any start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import aflow as af
from aflow.sources._open import open_stream, resident

MiB = 1 << 20
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="mincore: Linux only")


def _file(tmp_path: Path) -> tuple[Path, bytes]:
    """3 MiB written (in the page cache), then a 3 MiB hole never read (not in it)."""
    path = tmp_path / "data.bin"
    head = os.urandom(3 * MiB)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(6 * MiB)
    return path, head + bytes(3 * MiB)


def test_resident_tells_cached_bytes_from_the_others(tmp_path: Path) -> None:
    path, _ = _file(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        assert resident(fd, 0, MiB, size)
        assert resident(fd, 12_345, MiB, size)  # not page-aligned
        assert not resident(fd, 4 * MiB, MiB, size)  # the hole, never read
        assert not resident(fd, 3 * MiB - 10, MiB, size)  # cached, then not
        assert resident(fd, size, MiB, size)  # at the end: nothing to wait for
        assert resident(fd, size + 5, MiB, size)
    finally:
        os.close(fd)


@pytest.mark.anyio
@pytest.mark.parametrize("start", [0, 1000, 3 * MiB - 1, 6 * MiB])
async def test_file_stream_reads_cached_and_uncached_bytes_alike(
    anyio_backend: str, tmp_path: Path, start: int
) -> None:
    path, want = _file(tmp_path)
    stream = await open_stream(str(path), start)
    fd = os.open(path, os.O_RDONLY)
    got, inline = [], []
    try:
        while True:
            inline.append(resident(fd, start + len(b"".join(got)), MiB, 6 * MiB))
            chunk = await stream.read(MiB)
            if not chunk:
                break
            got.append(chunk)
    finally:
        os.close(fd)
        await stream.aclose()
    assert b"".join(got) == want[start:]
    if start < 3 * MiB - MiB:
        assert True in inline
    if start < 6 * MiB:
        assert False in inline


def test_read_records_gives_the_same_rows_from_cached_and_uncached_pages(
    tmp_path: Path,
) -> None:
    path, want = _file(tmp_path)
    rows = af.run(af.read_records(str(path), "<u8", read_size=MiB // 2)).value
    assert rows.tobytes() == want

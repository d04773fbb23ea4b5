"""Regular files read on the event loop's thread from the page cache (records and raw
bytes): the same data as a plain read, batches never overwritten while held, the disk
waited for in a worker thread."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.sources import _open
from aflow.sources._open import open_stream

pytestmark = pytest.mark.anyio

READING = np.dtype([("ts", "<i8"), ("sensor", "<i4"), ("value", "<f4")])
needs_nowait = pytest.mark.skipif(_open._NOWAIT is None, reason="no RWF_NOWAIT (not Linux)")


def write_records(path: Path, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rec = np.empty(n, READING)
    rec["ts"] = np.arange(n)
    rec["sensor"] = rng.integers(0, 50, n)
    rec["value"] = rng.normal(size=n).astype(np.float32)
    rec.tofile(path)
    return rec


async def test_batches_held_by_the_consumer_are_never_overwritten(tmp_path: Path) -> None:
    want = write_records(tmp_path / "r.bin", 100_000)
    # every batch kept: no read buffer is free, each read gets a new one
    got = (await af.read_records(str(tmp_path / "r.bin"), READING, read_size=32_000).run()).value
    assert got.tobytes() == want.tobytes()
    held = []
    async with af.read_records(str(tmp_path / "r.bin"), READING, read_size=16_000).open() as run:
        async for batch in run:
            assert not batch.flags.writeable  # as from bytes
            held.append(batch)
            if len(held) % 3 == 0:
                held[-2] = held[-2].copy()  # a dropped batch's buffer is reused...
    # ...and the copies and the batches still held are intact
    assert np.concatenate(held).tobytes() == want.tobytes()


async def test_aggregate_through_reused_buffers_matches_numpy(tmp_path: Path) -> None:
    want = write_records(tmp_path / "a.bin", 300_000, seed=3)
    flow = af.read_records(str(tmp_path / "a.bin"), READING, read_size=64_000) | af.to_aggregate(
        "sensor", "value", ("count", "sum")
    )
    got = (await flow.run()).value
    counts = np.bincount(want["sensor"], minlength=50)
    sums = np.bincount(want["sensor"], weights=want["value"].astype(np.float64), minlength=50)
    assert got["count"].tolist() == counts[got["sensor"]].tolist()
    np.testing.assert_allclose(got["sum"], sums[got["sensor"]], rtol=1e-9)


def write_past_the_page_cache(path: Path, data: bytes) -> None:
    """``data`` in a file whose pages are not in the page cache: written with O_DIRECT
    where the file system takes it (posix_fadvise(DONTNEED) alone is only advice: the
    kernel kept the pages once under load), then advised out of the cache too."""
    whole = len(data) // 4096 * 4096
    buf = mmap.mmap(-1, whole)  # page-aligned, as O_DIRECT needs
    buf.write(data[:whole])
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    except OSError:  # no O_DIRECT here: advice only
        path.write_bytes(data)
    else:
        try:
            assert os.write(fd, buf) == whole
        finally:
            os.close(fd)
        with path.open("ab") as f:  # the unaligned tail through the cache
            f.write(data[whole:])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@needs_nowait
async def test_a_file_not_in_the_page_cache_is_read_in_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "cold.bin"
    data = os.urandom(8 * 2**20) + os.urandom(123)
    write_past_the_page_cache(path, data)
    stream = await open_stream(str(path), buffers=True)
    try:
        assert isinstance(stream, _open._FileStream)
        assert stream.cached
        # far from the head (which the open read for its magic bytes, and the kernel
        # read ahead of it), a read would wait for the disk
        stream.position = 6 * 2**20
        assert stream._read_cached(bytearray(65_536)) is None
        stream.position = 0
        chunks = []
        while chunk := await stream.read(2**20):
            assert isinstance(chunk, memoryview)  # of a reused buffer
            assert chunk.readonly
            chunks.append(bytes(chunk))
    finally:
        await stream.aclose()
    # some reads came short (part of the range cached, say the head): none was taken
    # for the end of the file
    assert b"".join(chunks) == data


@needs_nowait
async def test_a_file_that_grows_between_reads_is_read_to_its_new_end(tmp_path: Path) -> None:
    path = tmp_path / "grow.bin"
    path.write_bytes(b"a" * 1000)
    stream = await open_stream(str(path), buffers=True)
    try:
        first = await stream.read(4096)
        with path.open("ab") as f:
            f.write(b"b" * 5000)
        rest = [bytes(c) for c in [await stream.read(4096), await stream.read(4096)]]
        assert await stream.read(4096) == b""
    finally:
        await stream.aclose()
    assert bytes(first) + b"".join(rest) == b"a" * 1000 + b"b" * 5000


async def test_lines_still_come_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_bytes(b"x\n" * 10)
    stream = await open_stream(str(path))  # lines: the framer uses bytes' methods
    try:
        assert type(await stream.read(100)) is bytes
    finally:
        await stream.aclose()


@needs_nowait
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm (tmpfs) here")
async def test_a_file_system_without_the_flag_is_read_in_threads() -> None:
    # tmpfs answers RWF_NOWAIT with EOPNOTSUPP: the stream reads in threads from then on
    data = os.urandom(300_000)
    path = f"/dev/shm/aflow-test-nowait-{os.getpid()}"
    with open(path, "wb") as f:  # noqa: ASYNC230
        f.write(data)
    try:
        stream = await open_stream(path, buffers=True)
        try:
            chunks = [bytes(await stream.read(100_000)) for _ in range(4)]
            assert isinstance(stream, _open._FileStream)
            assert not stream.cached
        finally:
            await stream.aclose()
    finally:
        os.unlink(path)
    assert b"".join(chunks) == data


@needs_nowait
async def test_an_empty_cached_read_is_not_taken_for_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # some file systems answer RWF_NOWAIT with 0 bytes where the data is not cached (none
    # here does): such an answer must not end the file
    path = tmp_path / "z.bin"
    path.write_bytes(b"q" * 5000)
    monkeypatch.setattr(_open._FileStream, "_read_cached", lambda self, buf: 0)
    stream = await open_stream(str(path), buffers=True)
    try:
        assert bytes(await stream.read(4096)) == b"q" * 4096
        assert bytes(await stream.read(4096)) == b"q" * 904
        assert await stream.read(4096) == b""
    finally:
        await stream.aclose()


def test_a_buffer_is_free_only_when_nothing_refers_to_it() -> None:
    spare = [bytearray(64)]
    assert _open._FREE_REFS is not None
    assert _open._refs(spare, 0) == _open._FREE_REFS
    rows = np.frombuffer(memoryview(spare[0]).toreadonly(), np.int32)
    field = rows[3:5]  # a view of a view
    del rows
    assert _open._refs(spare, 0) != _open._FREE_REFS
    del field
    assert _open._refs(spare, 0) == _open._FREE_REFS


async def test_one_small_view_kept_of_one_batch_keeps_its_buffer(tmp_path: Path) -> None:
    want = write_records(tmp_path / "v.bin", 200_000, seed=5)
    kept = None
    total = 0
    async with af.read_records(str(tmp_path / "v.bin"), READING, read_size=16_000).open() as run:
        async for batch in run:
            if kept is None:
                kept = batch["sensor"][10:20]  # only a field view of the first batch
            total += len(batch)
    assert total == len(want)
    assert kept is not None
    assert kept.tolist() == want["sensor"][10:20].tolist()  # not overwritten by later reads
    with pytest.raises(ValueError, match=r"(?i)writeable"):
        kept.flags.writeable = True  # read-only, as batches from bytes are


async def test_a_partial_last_record_reaches_the_dead_letters_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    path.write_bytes(write_records(tmp_path / "w.bin", 1000).tobytes() + b"\x01\x02\x03")
    dead: list[af.FailedItem] = []
    got = await af.read_records(
        str(path), READING, read_size=8192, on_error=af.dead_letter(dead)
    ).run()
    assert len(got.value) == 1000
    assert [type(d.item) for d in dead] == [bytes]
    assert dead[0].item == b"\x01\x02\x03"


@needs_nowait
async def test_files_read_side_by_side_share_their_buffers(tmp_path: Path) -> None:
    # whole reads only (50 of 16,000 bytes a file): no shorter last read, not reused
    wants = [write_records(tmp_path / f"s{k}.bin", 50_000, seed=k) for k in range(6)]
    for k, want in enumerate(wants):  # each file's records told apart by their ts
        want["ts"] += k * 1_000_000
        want.tofile(tmp_path / f"s{k}.bin")
    paths = [str(tmp_path / f"s{k}.bin") for k in range(6)]
    buffers: set[int] = set()
    held = []
    files_seen = []

    def look(batch: np.ndarray) -> None:
        files_seen.append(int(batch["ts"][0]) // 1_000_000)
        if len(files_seen) in (5, 10, 15):
            held.append(batch)  # held while the other files are read: never reused
        else:
            buffers.add(id(batch.base.obj))  # the pool keeps them alive: ids stay apart
            held.append(batch.copy())

    flow = af.read_records(paths, READING, read_size=16_000, max_open=6) | af.for_each(look)
    await flow.run()
    assert files_seen[:6] == [0, 1, 2, 3, 4, 5]  # still side by side
    # one or two at a time, whichever file they were read from, and a new one after each
    # of the three held: not one or more per file
    assert len(buffers) <= 2 + 3
    got = np.sort(np.concatenate(held), order="ts")
    assert got.tobytes() == np.concatenate(wants).tobytes()


@needs_nowait
async def test_the_end_of_a_cached_file_is_read_without_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.bin"
    path.write_bytes(b"r" * 10_000)
    stream = await open_stream(str(path), buffers=True)
    hops = []
    run_sync = anyio.to_thread.run_sync

    async def counted(*args: object, **kwargs: object) -> object:
        hops.append(args[0])
        return await run_sync(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    try:
        chunks = [bytes(await stream.read(4096)) for _ in range(3)]
        assert await stream.read(4096) == b""
    finally:
        await stream.aclose()
    assert b"".join(chunks) == b"r" * 10_000
    assert hops == []  # all in the page cache (just written), the end too

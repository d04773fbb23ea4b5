"""read_dataset and list_dataset on real folders of real PNG, JPEG and .npy files."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from PIL import Image

import aflow as af
from aflow.codecs.images import ImageDecoder, NpzDecoder, _plain_png, decode_npy
from aflow.sources._dataset_decode import BatchReader, ProcessDecoding

CLASSES = ("cat", "dog", "owl")


def make_folder(root: Path, per_class: int = 7, size: tuple[int, int] = (12, 10)) -> Path:
    """Images whose pixels encode (class, index): red = class, green = index."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.zeros((*size, 3), np.uint8)
            pixels[..., 0] = c * 50
            pixels[..., 1] = i
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i:03d}.{suffix}", quality=100)
    (root / "README.txt").write_text("not a sample")
    (root / ".hidden").mkdir()
    return root


async def read_all(flow: af.Flow[Any]) -> list[af.Batch]:
    batches: list[af.Batch] = []

    async def keep(batch: af.Batch) -> None:
        batches.append(batch)

    await (flow | af.Sink(_Envelopes(keep))).run()
    return batches


class _Envelopes(af.abc.SinkOperator[Any, None]):  # type: ignore[name-defined]
    """A sink that keeps whole batches (with their provenance)."""

    def __init__(self, keep: Any) -> None:
        self.keep = keep
        self.name = "envelopes"

    def writer(self, ctx: Any) -> Any:
        keep = self.keep

        class Writer(af.abc.SinkWriter[Any, None]):  # type: ignore[name-defined]
            async def write(self, item: Any) -> None:
                raise AssertionError("batches only")

            async def write_batch(self, batch: af.Batch) -> None:
                await keep(batch)

            def result(self) -> None:
                return None

        return Writer()


def test_list_dataset_reads_classes_from_folders(tmp_path: Path) -> None:
    table = af.list_dataset(make_folder(tmp_path))
    assert table.classes == CLASSES
    assert len(table) == 21
    assert table.counts() == {"cat": 7, "dog": 7, "owl": 7}
    assert table.paths[0] == "cat/000.jpg"
    assert [table.classes[y] for y in table.labels] == [p.split("/")[0] for p in table.paths]


def test_labels_from_a_label_file_a_mapping_and_a_function(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    label_file = tmp_path / "labels.csv"
    label_file.write_text("# path,label\ncat/000.jpg,small\ndog/001.png,big\n")
    assert af.list_dataset(root, labels=label_file).paths == ("cat/000.jpg", "dog/001.png")
    table = af.list_dataset(root, labels={"owl/002.jpg": "bird"})
    assert (table.paths, table.classes) == (("owl/002.jpg",), ("bird",))
    table = af.list_dataset(root, labels=lambda p: "even" if int(p[-7:-4]) % 2 == 0 else "odd")
    assert table.classes == ("even", "odd")
    assert len(table) == 21


def test_split_is_stable_and_disjoint(tmp_path: Path) -> None:
    table = af.list_dataset(make_folder(tmp_path / "a", per_class=40))
    train, val = table.split("train", 0.25), table.split("validation", 0.25)
    assert set(train.paths) | set(val.paths) == set(table.paths)
    assert not set(train.paths) & set(val.paths)
    assert 10 <= len(val) <= 50  # ~30 of 120
    # The same file lands in the same part in another folder with more files in it.
    other = af.list_dataset(make_folder(tmp_path / "b", per_class=60)).split("validation", 0.25)
    assert set(val.paths) <= set(other.paths)
    assert train.classes == val.classes == CLASSES


@pytest.mark.anyio
async def test_batches_hold_decoded_images_labels_and_their_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    batches = await read_all(af.read_dataset(root, batch_size=5, image_size=(8, 8), seed=3))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 1]
    seen: list[str] = []
    for b in batches:
        prov = b.provenance
        assert isinstance(prov, af.DatasetProvenance)
        assert prov.epoch == 0
        assert prov.source == str(root)
        assert (prov.start, prov.stop) == (len(seen), len(seen) + len(b))
        assert b.data.dtype == np.dtype([("x", np.uint8, (8, 8, 3)), ("y", np.int32)])
        for path, x, y in zip(prov.files, b.data["x"], b.data["y"], strict=True):
            assert CLASSES[y] == path.split("/")[0]
            assert abs(int(x[4, 4, 0]) - CLASSES.index(path.split("/")[0]) * 50) <= 3
            assert abs(int(x[4, 4, 1]) - int(path[-7:-4])) <= 3
        seen.extend(prov.files)
    assert sorted(seen) == sorted(af.list_dataset(root).paths)
    assert seen != sorted(seen)  # shuffled


@pytest.mark.anyio
async def test_each_epoch_has_a_new_order_repeated_by_the_seed(tmp_path: Path) -> None:
    root = make_folder(tmp_path)

    async def orders(seed: int, workers: int) -> list[list[str]]:
        flow = af.read_dataset(root, batch_size=4, epochs=3, seed=seed, workers=workers)
        epochs: list[list[str]] = [[], [], []]
        for b in await read_all(flow):
            epochs[b.provenance.epoch].extend(b.provenance.files)  # type: ignore[union-attr]
        return epochs

    first = await orders(1, 4)
    assert len({tuple(e) for e in first}) == 3  # three different orders
    assert all(sorted(e) == sorted(first[0]) for e in first)  # each a whole epoch
    assert await orders(1, 1) == first  # the seed decides, not the threads
    assert await orders(2, 4) != first


@pytest.mark.anyio
async def test_forever_until_take_and_no_shuffle(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    flow = af.read_dataset(root, batch_size=10, epochs=None, shuffle=False) | af.take(100)
    rows = (await (flow | af.collect()).run()).value
    assert len(rows) == 100  # five epochs of 21 rows, cut at 100
    assert rows["y"][:21].tolist() == sorted(rows["y"][:21].tolist())


@pytest.mark.anyio
async def test_npy_files_and_a_custom_decoder(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            np.save(tmp_path / c / f"{i}.npy", np.full(4, i, np.float32))
            (tmp_path / c / f"{i}.raw").write_bytes(np.full(2, i, "<i2").tobytes())
    rows = (await (af.read_dataset(tmp_path, batch_size=4) | af.collect()).run()).value
    assert rows.dtype["x"] == np.dtype((np.float32, (4,)))
    assert sorted(rows["x"][:, 0].tolist()) == [0, 0, 1, 1, 2, 2]

    def raw(data: bytes) -> Any:
        return np.frombuffer(data, "<i2")

    flow = af.read_dataset(
        af.list_dataset(tmp_path, suffixes={".raw"}), batch_size=4, decode={".raw": raw}
    )
    rows = (await (flow | af.collect()).run()).value
    assert rows.dtype["x"] == np.dtype(("<i2", (2,)))
    assert sorted(rows["y"].tolist()) == [0, 0, 0, 1, 1, 1]


@pytest.mark.anyio
async def test_a_bad_file_is_named_or_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="cannot identify image") as info:
        await read_all(af.read_dataset(root, image_size=(8, 8)))
    assert "broken.png" in str(info.value.__notes__)
    flow = af.read_dataset(root, image_size=(8, 8), on_error="skip")
    result = await (flow | af.collect()).run()
    assert len(result.value) == 21
    assert result.statistics.errors == 1


@pytest.mark.anyio
async def test_samples_of_another_shape_are_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    Image.new("RGB", (5, 5)).save(root / "owl" / "small.png")
    with pytest.raises(ValueError, match=r"small.png decodes to uint8 of shape \(5, 5, 3\)"):
        await read_all(af.read_dataset(root, batch_size=64))


@pytest.mark.anyio
async def test_memory_stays_within_the_runs_budget(tmp_path: Path) -> None:
    root = make_folder(tmp_path, per_class=30, size=(32, 32))
    flow = af.read_dataset(root, batch_size=8, epochs=2, workers=3) | af.map_batches(
        lambda b: b, thread=True
    )
    budget = 2 * 8 * (32 * 32 * 3 + 4)  # two batches
    result = await (flow | af.discard()).run(max_bytes_in_flight=budget)
    assert result.statistics.stage("discard").items_in == 180
    assert 0 < result.statistics.peak_bytes_in_flight <= budget
    assert result.statistics.peak_rss_bytes is not None


def open_files_under(root: Path) -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [p for p in links if p.startswith(str(root))]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.anyio
async def test_cancellation_closes_every_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path, per_class=30, size=(64, 64))
    got_one = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                flow = af.read_dataset(root, batch_size=4, epochs=None, workers=4)
                async with flow.open() as run:
                    async for _ in run:
                        got_one.set()
                        await anyio.sleep_forever()

            tg.start_soon(read)
            await got_one.wait()
            tg.cancel_scope.cancel()
    assert open_files_under(root) == []


def test_decoders_state_dtype_shape_and_channel_order() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20, 0] = 255  # red left half
    pixels[:, 20:, 2] = 255  # blue right half
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    png = buf.getvalue()
    for fit in ("resize", "crop", "pad"):
        out = ImageDecoder((10, 10), fit=fit)(png)
        assert (out.dtype, out.shape) == (np.uint8, (10, 10, 3))
        assert out[5, 1].tolist() == [255, 0, 0]  # RGB order: red at the left
    assert ImageDecoder((10, 10), fit="pad")(png)[0, 5].tolist() == [0, 0, 0]  # padded
    assert ImageDecoder(mode="L")(png).shape == (20, 40, 1)
    assert ImageDecoder()(png).shape == (20, 40, 3)
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3), b=np.ones(2))
    assert NpzDecoder("b")(buf.getvalue()).tolist() == [1.0, 1.0]
    assert NpzDecoder()(buf.getvalue()).tolist() == [0, 1, 2]
    buf = io.BytesIO()
    np.save(buf, np.eye(2))
    assert decode_npy(buf.getvalue()).tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="fit="):
        ImageDecoder((4, 4), fit="stretch")  # type: ignore[arg-type]


def png_bytes(pixels: np.ndarray[Any, Any], mode: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, "PNG", **options)
    return buf.getvalue()


ENGINES = [
    "pillow",
    pytest.param(
        "imagecodecs",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("imagecodecs") is None,
            reason="imagecodecs is not installed (the images-fast extra)",
        ),
    ),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("RGBA", 4), ("L", 1)])
def test_plain_png_fast_path_decodes_as_pillow_does(mode: str, channels: int, engine: Any) -> None:
    rng = np.random.default_rng(7)
    for shape in ((1, 1), (7, 13), (33, 20)):
        pixels = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
        if channels == 1:
            pixels = pixels[:, :, 0]
        for options in ({}, {"optimize": True}, {"compress_level": 0}):
            png = png_bytes(pixels, mode, **options)
            assert _plain_png(png, mode) is not None  # the fast path is taken
            with Image.open(io.BytesIO(png)) as img:
                slow = np.asarray(img.convert(mode))
            decoder = ImageDecoder(mode=mode, engine=engine)
            taken = decoder._decode_png(png, shape[1], shape[0]) is not None
            assert taken == (engine == "imagecodecs")  # that engine decodes it
            out = decoder(png)
            assert out.shape == (*shape, channels)
            assert out.tolist() == slow.reshape(out.shape).tolist()
            with Image.open(io.BytesIO(png)) as img:
                fitted = ImageDecoder((5, 9), mode=mode)._fit(img.convert(mode), (5, 9))
            want = np.asarray(fitted).reshape(5, 9, channels)
            got = ImageDecoder((5, 9), mode=mode, engine=engine)(png)
            assert got.tolist() == want.tolist()


def png_by_hand(pixels: np.ndarray[Any, Any], filters: list[int]) -> bytes:
    """An 8-bit RGB PNG file written here, row ``r`` filtered with ``filters[r]`` (0 none,
    1 sub, 2 up, 3 average, 4 Paeth; the PNG specification's section 9), so every filter
    type is decoded, whatever filters an encoder would choose."""
    import struct
    import zlib

    h, w, c = pixels.shape
    raw, prior = bytearray(), np.zeros(w * c, np.int64)
    for r in range(h):
        x = pixels[r].reshape(-1).astype(np.int64)
        left = np.concatenate([np.zeros(c, np.int64), x[:-c]])
        upleft = np.concatenate([np.zeros(c, np.int64), prior[:-c]])
        if filters[r] == 4:
            p = left + prior - upleft
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        else:
            pred = [0 * x, left, prior, (left + prior) // 2][filters[r]]
        raw += bytes([filters[r]]) + ((x - pred) % 256).astype(np.uint8).tobytes()
        prior = x

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_every_png_filter_type_decodes_to_the_pixels_written(engine: Any) -> None:
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (25, 9, 3), dtype=np.uint8)
    png = png_by_hand(pixels, [r % 5 for r in range(25)])
    assert _plain_png(png, "RGB") is not None
    assert ImageDecoder(engine=engine)(png).tolist() == pixels.tolist()
    with Image.open(io.BytesIO(png)) as img:  # and Pillow's own reading agrees
        assert np.asarray(img).tolist() == pixels.tolist()


def test_imagecodecs_engine_falls_back_to_pillow_where_its_layout_differs() -> None:
    rng = np.random.default_rng(12)
    pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    pixels[0, 0] = (1, 2, 3)
    # a transparent colour (tRNS): libpng may give an alpha channel; RGB asks for three
    png = png_bytes(pixels, "RGB", transparency=(1, 2, 3))
    assert _plain_png(png, "RGB") is not None
    out = ImageDecoder(engine="imagecodecs")(png)
    assert out.tolist() == pixels.tolist()
    decoder = ImageDecoder(engine="imagecodecs")
    assert "engine='imagecodecs'" in repr(decoder)
    import pickle

    assert pickle.loads(pickle.dumps(decoder)).engine == "imagecodecs"
    with pytest.raises(ValueError, match="engine"):
        ImageDecoder(engine="libpng")  # type: ignore[arg-type]


def with_chunk(png: bytes, kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    """``png`` with a chunk inserted after its IHDR (``crc``: a wrong one on purpose)."""
    import struct
    import zlib

    crc = zlib.crc32(kind + body) if crc is None else crc
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("engine", ENGINES)
def test_ancillary_chunks_are_ignored_without_a_word_on_stderr(
    engine: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(13)
    pixels = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    clean = png_by_hand(pixels, [4] * 9)
    fast = _plain_png(clean, "RGB")
    assert fast is not None
    assert fast.minimal(clean) is clean  # nothing to strip: the file itself
    odd = with_chunk(clean, b"iCCP", b"x\x00\x00")  # a colour profile too short
    odd = with_chunk(odd, b"gAMA", b"\x00\x00\xb1\x8f", crc=0)  # a wrong CRC
    plain = _plain_png(odd, "RGB")
    assert plain is not None
    assert plain.minimal(odd) == clean  # what imagecodecs is given
    capfd.readouterr()
    for _ in range(3):
        assert ImageDecoder(engine=engine)(odd).tolist() == pixels.tolist()
    assert capfd.readouterr().err == ""  # libpng warned once per image before


@pytest.mark.parametrize("engine", ENGINES)
def test_png_fast_path_errors_and_the_long_way(engine: Any) -> None:
    rng = np.random.default_rng(8)
    png = png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    for cut in range(40, len(png) - 30, 37):  # pixels cut short: an error, never pixels
        with pytest.raises((ValueError, OSError, SyntaxError)):
            ImageDecoder(engine=engine)(png[:cut])
    corrupt = bytearray(png)
    corrupt[len(png) // 2] ^= 0xFF  # inside the compressed pixels
    with pytest.raises((ValueError, OSError)):
        ImageDecoder(engine=engine)(bytes(corrupt))
    interlaced = bytearray(png)
    interlaced[28] = 1  # the IHDR's interlace byte
    assert _plain_png(bytes(interlaced), "RGB") is None
    palette = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).convert("P").save(
        palette, "PNG"
    )
    assert _plain_png(palette.getvalue(), "RGB") is None  # Pillow's long way
    assert ImageDecoder(engine=engine)(palette.getvalue()).shape == (6, 6, 3)
    assert _plain_png(png, "L") is None  # a conversion: Pillow's long way
    assert ImageDecoder(mode="L", engine=engine)(png).shape == (16, 16, 1)


# -- worker processes (read_dataset(processes=True)) --------------------------------------


def alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.anyio
async def test_worker_processes_give_the_batches_threads_give(tmp_path: Path) -> None:
    root = make_folder(tmp_path)  # PNG and JPEG files
    with anyio.fail_after(60):
        for epochs in (1, 2):
            flow = af.read_dataset(root, batch_size=4, image_size=(8, 8), epochs=epochs)
            threads = await read_all(flow)
            flow = af.read_dataset(
                root, batch_size=4, image_size=(8, 8), epochs=epochs, workers=2, processes=True
            )
            processes = await read_all(flow)
            assert len(processes) == len(threads) == 6 * epochs
            for p, t in zip(processes, threads, strict=True):
                assert p.provenance == t.provenance
                assert p.data.dtype == t.data.dtype
                assert np.array_equal(p.data, t.data)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.anyio
async def test_worker_processes_decode_and_stop_with_the_run(tmp_path: Path) -> None:
    from _dataset_workers import decode_pid

    root = make_folder(tmp_path, per_class=10)
    flow = af.read_dataset(
        root, batch_size=3, epochs=None, decode=decode_pid, workers=2, processes=True
    )
    pids: set[int] = set()
    with anyio.fail_after(60):
        async with flow.open() as run:
            async for batch in run:  # threads decode here until the processes are up
                pids.update(batch["x"][:, 0].tolist())
                if pids - {os.getpid()}:
                    break
    workers = pids - {os.getpid()}
    assert 1 <= len(workers) <= 2  # at most two processes decoded,
    assert not any(alive(pid) for pid in workers)  # and are gone once the run is closed


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.anyio
async def test_cancelling_a_run_stops_its_worker_processes(tmp_path: Path) -> None:
    from _dataset_workers import decode_pid

    root = make_folder(tmp_path, per_class=30)
    pids: set[int] = set()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                flow = af.read_dataset(
                    root, batch_size=4, epochs=None, decode=decode_pid, workers=2, processes=True
                )
                async with flow.open() as run:
                    async for batch in run:
                        pids.update(batch["x"][:, 0].tolist())
                        if len(pids - {os.getpid()}) == 2:
                            tg.cancel_scope.cancel()

            tg.start_soon(read)
    workers = pids - {os.getpid()}
    assert len(workers) == 2
    assert not any(alive(pid) for pid in workers)


def worker_processes() -> set[int]:
    """The live worker processes of this process: its children but the fork server and
    the resource tracker, and the fork server's children."""
    table: dict[int, tuple[int, str, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), fields[0], command)
    me = os.getpid()
    helpers = {
        pid
        for pid, (parent, _, command) in table.items()
        if parent == me and ("forkserver" in command or "resource_tracker" in command)
    }
    return {
        pid
        for pid, (parent, state, _) in table.items()
        if state not in ("Z", "X") and pid not in helpers and parent in helpers | {me}
    }


async def until_gone(workers: set[int]) -> None:
    """Wait until none of ``workers`` runs (the fork server reaps them as they end)."""
    while workers & worker_processes():  # noqa: ASYNC110  # no event tells it
        await anyio.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.anyio
async def test_cancelling_a_run_kills_a_decoder_stuck_in_a_worker_process(
    tmp_path: Path,
) -> None:
    from _dataset_workers import HangOn

    root = make_folder(tmp_path, per_class=10)
    (root / "cat" / "stuck.png").write_bytes(b"stuck")
    hung = tmp_path / "hung"
    hung.mkdir()
    before = worker_processes()
    decoder = HangOn(b"stuck", str(hung), seconds=30)
    flow = af.read_dataset(
        root, batch_size=2, epochs=None, decode=decoder, workers=2, processes=True
    )
    with anyio.fail_after(20):  # less than the stuck decoder sleeps
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                async with flow.open() as run:
                    async for _ in run:
                        pass

            tg.start_soon(read)
            while not any(hung.iterdir()):  # noqa: ASYNC110  # the decoder is stuck
                await anyio.sleep(0.01)
            workers = worker_processes() - before
            tg.cancel_scope.cancel()
        stuck = int(next(hung.iterdir()).name)
        assert stuck in workers
        await until_gone(workers)
    assert not alive(stuck)
    assert not worker_processes() - before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("end", ["end_of_input", "cancel", "error"])
@pytest.mark.anyio
async def test_a_run_does_not_wait_for_worker_processes_still_starting(
    tmp_path: Path, end: str
) -> None:
    """The workers' initializer takes 30 s: a run that ends before they are up (every
    batch decoded in threads), is cancelled or fails ends at once, and leaves none."""
    from _dataset_workers import ArrivesNever

    root = make_folder(tmp_path)  # 21 files
    if end == "error":
        (root / "cat" / "empty.npy").write_bytes(b"")
    before = worker_processes()
    flow = af.read_dataset(
        root,
        batch_size=4,
        epochs=None if end == "cancel" else 1,
        shuffle=False,
        decode=ArrivesNever(),
        workers=2,
        processes=True,
    )
    pids: set[int] = set()
    with anyio.fail_after(20):
        if end == "end_of_input":
            batches = await read_all(flow)
            assert len(batches) == 6
            pids.update(int(p) for b in batches for p in b.data["x"][:, 0])
        elif end == "cancel":
            with anyio.CancelScope() as scope:
                async with flow.open() as run:
                    async for batch in run:
                        pids.update(batch["x"][:, 0].tolist())
                        scope.cancel()
        else:
            with pytest.raises(ValueError, match="an empty file") as info:
                await read_all(flow)
            assert "empty.npy" in str(info.value.__notes__)
            pids.add(os.getpid())
        await until_gone(worker_processes() - before)
    assert pids == {os.getpid()}  # decoded in threads: no worker was ever up


@pytest.mark.anyio
async def test_a_bad_file_with_worker_processes_is_named_or_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with anyio.fail_after(60):
        with pytest.raises(Exception, match="cannot identify image") as info:
            await read_all(af.read_dataset(root, image_size=(8, 8), processes=True))
        assert f"broken.png under {root}" in str(info.value.__notes__)
        flow = af.read_dataset(root, image_size=(8, 8), on_error="skip", processes=True)
        result = await (flow | af.collect()).run()
        assert len(result.value) == 21
        assert result.statistics.errors == 1


def started_pool(root: Path, decode: Any) -> tuple[ProcessDecoding, af.DatasetFiles]:
    """Worker processes decoding ``root`` with ``decode``, started (so every batch goes
    to them, none to the calling thread)."""
    from aflow.sources.datasets import _Decoders

    table = af.list_dataset(root)
    reader = BatchReader(table.root, table.paths, table.labels, _Decoders(decode, None))
    pool = ProcessDecoding(reader, 2, "test")
    pool.start()
    return pool, table


def test_errors_come_back_from_worker_processes_with_their_notes(tmp_path: Path) -> None:
    from _dataset_workers import decode_or_odd_error

    root = make_folder(tmp_path)
    (root / "owl" / "empty.png").write_bytes(b"")
    pool, table = started_pool(root, decode_or_odd_error)
    try:
        samples, records = pool(np.arange(len(table)))
    finally:
        pool.close()
    assert records is None
    assert samples is not None
    bad = [s for s in samples if isinstance(s, Exception)]
    assert len(bad) == 1
    # its class needs two arguments, which pickle cannot give: a RuntimeError stands in
    assert isinstance(bad[0], RuntimeError)
    assert str(bad[0]) == "Unpicklable: empty file: nothing to decode"
    assert bad[0].__notes__ == [f"aflow: while reading and decoding owl/empty.png under {root}"]
    assert [int(s[0]) for s in samples if isinstance(s, np.ndarray)] == [
        (root / p).stat().st_size for p in table.paths if p != "owl/empty.png"
    ]


def test_an_array_pickle_cannot_send_back_is_that_files_error(tmp_path: Path) -> None:
    from _dataset_workers import decode_lock_on

    root = make_folder(tmp_path)
    (root / "dog" / "lock.png").write_bytes(b"lock")
    pool, table = started_pool(root, decode_lock_on)
    try:
        samples, records = pool(np.arange(len(table)))
    finally:
        pool.close()
    assert records is None
    assert samples is not None
    bad = [(table.paths[k], s) for k, s in enumerate(samples) if isinstance(s, Exception)]
    assert len(bad) == 1
    path, error = bad[0]
    assert path == "dog/lock.png"
    assert isinstance(error, TypeError)
    assert "dog/lock.png holds objects that cannot be sent back" in str(error)
    assert error.__notes__ == [f"aflow: while reading and decoding dog/lock.png under {root}"]
    assert [int(s[0]) for s in samples if isinstance(s, np.ndarray)] == [
        (root / p).stat().st_size for p in table.paths if p != "dog/lock.png"
    ]


def test_the_fork_servers_preload_list_is_set_only_when_the_program_left_it(
    tmp_path: Path,
) -> None:
    import multiprocessing.forkserver as forkserver

    from _dataset_workers import decode_pid

    from aflow.sources.datasets import _Decoders

    server: Any = forkserver._forkserver  # type: ignore[attr-defined]
    saved = server._preload_modules
    table = af.list_dataset(make_folder(tmp_path))
    reader = BatchReader(table.root, table.paths, table.labels, _Decoders(decode_pid, None))
    try:
        forkserver.set_forkserver_preload(["__main__", "json"])  # the program's own
        ProcessDecoding(reader, 1, "test").close()
        assert server._preload_modules == ["__main__", "json"]
        forkserver.set_forkserver_preload(["__main__"])  # multiprocessing's default
        ProcessDecoding(reader, 1, "test").close()
        assert server._preload_modules == ["__main__", "aflow.sources._dataset_decode"]
    finally:
        server._preload_modules = saved


def test_a_worker_process_that_dies_breaks_the_pool_naming_the_batch(tmp_path: Path) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from _dataset_workers import DieOn

    root = make_folder(tmp_path)
    (root / "cat" / "die.png").write_bytes(b"die")
    pool, table = started_pool(root, DieOn(b"die"))
    try:
        assert pool(np.array([1, 2]))[1] is not None  # decodes, until
        rows = np.array([table.paths.index("cat/die.png"), 0])
        with pytest.raises(BrokenProcessPool, match=r"the batch of cat/die\.png, cat/000\.jpg"):
            pool(rows)
    finally:
        pool.close()


@pytest.mark.anyio
async def test_worker_processes_that_cannot_start_fail_the_run(tmp_path: Path) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from _dataset_workers import ArrivesBroken

    root = make_folder(tmp_path)
    flow = af.read_dataset(root, decode=ArrivesBroken(), epochs=None, workers=2, processes=True)
    with anyio.fail_after(60), pytest.raises(BrokenProcessPool, match="could not start"):
        await read_all(flow)


@pytest.mark.anyio
async def test_worker_processes_refuse_a_decoder_pickle_cannot_send(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    flow = af.read_dataset(root, decode=lambda data: np.zeros(2), processes=True)
    with pytest.raises(TypeError, match=r"processes=True .* cannot be pickled"):
        await read_all(flow)


def test_image_decoders_pickle_by_their_settings() -> None:
    import pickle

    decoder = ImageDecoder((6, 4), mode="L", fit="pad", resample="nearest")
    copy = pickle.loads(pickle.dumps(decoder))
    assert (copy.size, copy.mode, copy.fit, copy.resample) == ((6, 4), "L", "pad", "nearest")
    data = png_bytes(np.arange(60, dtype=np.uint8).reshape(6, 10), "L")
    assert np.array_equal(copy(data), decoder(data))

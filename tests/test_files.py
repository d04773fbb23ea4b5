"""File sources on real files: globs read concurrently, provenance, records, npy, follow."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import settle

import aflow as af
from aflow.sources import _watch

pytestmark = pytest.mark.anyio

READING = np.dtype([("ts", "<i8"), ("sensor", "<i4"), ("value", "<f4")])


def write_csv(path: Path, start: int, n: int, sensor: int) -> None:
    path.write_text("".join(f"{start + i},{sensor},{i * 0.5}\n" for i in range(n)))


async def test_glob_of_csv_files_read_concurrently(tmp_path: Path) -> None:
    for k in range(6):
        write_csv(tmp_path / f"s{k}.csv", k * 10_000, 3000, k)
    (tmp_path / "ignored.txt").write_text("x\n")
    flow = af.read_csv(str(tmp_path / "*.csv"), READING, read_size=8192, max_open=3)
    result = await flow.run()
    got = np.sort(result.value, order="ts")
    assert len(got) == 18_000
    assert np.bincount(got["sensor"]).tolist() == [3000] * 6
    assert got["ts"][:3].tolist() == [0, 1, 2]


async def test_recursive_glob_and_header(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for path in (tmp_path / "a" / "x.csv", tmp_path / "a" / "b" / "y.csv"):
        path.write_text("ts,sensor,value\n1,2,3.5\n")
    flow = af.read_csv(str(tmp_path / "**" / "*.csv"), READING, header=True)
    assert (await flow.run()).value.tolist() == [(1, 2, 3.5), (1, 2, 3.5)]


async def test_bad_line_raises_with_path_and_line_number(tmp_path: Path) -> None:
    path = tmp_path / "meter.csv"
    path.write_text("1,1,1\n2,2,2\nbad\n4,4,4\n")
    with pytest.raises(af.DecodeError, match=r"meter.csv.*line 3"):
        await af.read_csv(path, READING).run()  # type: ignore[arg-type]


async def test_dead_letters_carry_raw_bytes_and_provenance(tmp_path: Path) -> None:
    path = tmp_path / "meter.csv"
    path.write_bytes(b"1,1,1\n2,2\n3,3,3\n\xff,4,4\n5,5,5")
    dead: list[af.FailedItem] = []
    flow = af.read_csv(str(path), READING, read_size=4, on_error=af.dead_letter(dead))
    result = await flow.run()
    assert result.value["ts"].tolist() == [1, 3, 5]  # the last line had no newline
    assert [d.item for d in dead] == [b"2,2\n", b"\xff,4,4\n"]
    assert [d.error.line for d in dead] == [2, 4]  # type: ignore[attr-defined]
    decode = next(s for s in result.statistics.stages if "decode_csv" in s.name)
    assert decode.errors == 2


async def test_lines_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "text.log"
    lines = [f"line {i} " + "x" * (i % 17) for i in range(500)]
    path.write_bytes("\r\n".join(lines).encode())  # CRLF, no final newline
    got = (await af.read_lines(str(path), read_size=7).run()).value
    assert got == lines


async def test_block_provenance_gives_lines_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a\nbb\nccc\n")
    async with af.read_blocks(str(path), read_size=5).open() as run:
        provs = [
            (b.provenance.start, b.provenance.stop, b.provenance.offset, b.provenance.end_offset)
            async for b in run.envelopes()
        ]  # type: ignore[union-attr]
    assert provs == [(1, 3, 0, 5), (3, 4, 5, 9)]  # reads of 5 bytes: "a\nbb\n", "ccc\n"


async def test_binary_records_and_partial_trailing_record(tmp_path: Path) -> None:
    data = np.zeros(10_000, READING)
    data["ts"] = np.arange(10_000)
    data["value"] = np.linspace(0, 1, 10_000)
    path = tmp_path / "r.bin"
    data.tofile(path)
    got = (await af.read_records(str(path), READING, read_size=4000).run()).value
    np.testing.assert_array_equal(got, data)
    with path.open("ab") as f:
        f.write(b"\x01\x02\x03")
    with pytest.raises(af.DecodeError, match="partial record of 3 bytes"):
        await af.read_records(str(path), READING).run()
    dead: list[af.FailedItem] = []
    flow = af.read_records(str(path), READING, on_error=af.dead_letter(dead))
    assert len((await flow.run()).value) == 10_000
    assert dead[0].item == b"\x01\x02\x03"
    assert dead[0].provenance is not None
    assert dead[0].provenance.start == data.nbytes


async def test_big_endian_records(tmp_path: Path) -> None:
    dt = np.dtype([("ts", ">i8"), ("value", ">f4")])
    data = np.array([(1, 1.5), (2, 2.5)], dt)
    (tmp_path / "be.bin").write_bytes(data.tobytes())
    got = (await af.read_records(str(tmp_path / "be.bin"), dt).run()).value
    assert got.tolist() == [(1, 1.5), (2, 2.5)]


async def test_npy_files_stream_in_rows(tmp_path: Path) -> None:
    a = np.arange(3000, dtype="f8").reshape(1000, 3)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", a + 3000)
    async with af.read_npy(str(tmp_path / "*.npy"), read_size=2400).open() as run:
        batches = [b async for b in run]
    assert all(b.shape[1:] == (3,) and len(b) <= 100 for b in batches)
    got = np.concatenate(batches)
    assert sorted(got[:, 0].tolist()) == sorted(np.concatenate([a, a + 3000])[:, 0].tolist())


async def test_missing_file_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await af.read_lines(str(tmp_path / "nope.txt")).run()
    with pytest.raises(FileNotFoundError, match="no file matches"):
        await af.read_lines(str(tmp_path / "*.nothing")).run()


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - polls what the flow has delivered
            await anyio.sleep(0.01)


async def test_follow_survives_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("one\ntwo\n")
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.01) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: seen == ["one", "two"])
        with path.open("a") as f:
            f.write("three\nfou")
        await wait_for(lambda: seen[-1:] == ["three"])
        with path.open("a") as f:
            f.write("r\n")
        await wait_for(lambda: seen[-1:] == ["four"])
        # rotation: the old file is renamed (and still written to once), a new one appears
        os.rename(path, tmp_path / "app.log.1")
        with (tmp_path / "app.log.1").open("a") as f:
            f.write("five\n")
        path.write_text("six\n")
        await wait_for(lambda: seen[-1:] == ["six"])
        # truncation: the file shrinks, reading starts again from 0
        path.write_text("")
        await anyio.sleep(0.05)
        path.write_text("seven\n")
        await wait_for(lambda: seen[-1:] == ["seven"])
        run.stop()
    assert seen == ["one", "two", "three", "four", "five", "six", "seven"]


async def test_an_overlong_line_left_in_a_rotated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("one\n")
    seen: list[str] = []
    dead: list[af.FailedItem] = []
    flow = af.read_lines(
        str(path), follow=True, poll_interval=0.01, max_line=50, on_error=af.dead_letter(dead)
    ) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: seen == ["one"])
        os.rename(path, tmp_path / "app.log.1")  # rotated, then written once more
        with (tmp_path / "app.log.1").open("a") as f:
            f.write("two\n" + "x" * 200 + "\nthree\n")
        path.write_text("four\n")
        await wait_for(lambda: seen[-1:] == ["four"])
        run.stop()
    assert seen == ["one", "two", "three", "four"]
    assert len(dead) == 1
    assert dead[0].error.line == 3  # type: ignore[attr-defined]
    assert "longer than 50 bytes" in str(dead[0].error)


async def test_follow_stops_gracefully_and_flushes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("1,1,1\n2,2,2\n")
    flow = af.read_csv(str(path), READING, follow=True) | af.batch(100) | af.collect()
    async with flow.open() as run:
        await wait_for(lambda: run.statistics().stage("batch(100)").items_in == 2)
        run.stop()
        result = await run.wait()
    assert result.value["ts"].tolist() == [1, 2]  # the partial batch was flushed


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_read_csv_and_jsonl_follow_at_their_poll_interval(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without change notifications (the polling fallback), a follower wakes at its
    # poll_interval only; with them it wakes at each write (tests/test_follow.py).
    monkeypatch.setattr(_watch, "have_inotify", lambda: False)
    path = tmp_path / f"m.{fmt}"
    line = {"csv": "{0},{0},0.5\n", "jsonl": '{{"ts": {0}, "sensor": {0}, "value": 0.5}}\n'}[fmt]
    read = {"csv": af.read_csv, "jsonl": af.read_jsonl}[fmt]

    async def seen_after_append(poll_interval: float) -> list[int]:
        path.write_text(line.format(1))
        seen: list[int] = []
        flow = read(str(path), READING, follow=True, poll_interval=poll_interval)
        async with (flow | af.for_each(lambda b: seen.extend(b["ts"].tolist()))).open() as run:
            await wait_for(lambda: seen == [1])
            await settle()
            await anyio.sleep(0.05)  # a real file: the read that found its end has returned
            with path.open("a") as f:
                f.write(line.format(2))
            if poll_interval < 1:
                await wait_for(lambda: len(seen) == 2)
            else:
                await anyio.sleep(0.5)
            run.stop()
        return seen

    assert await seen_after_append(0.01) == [1, 2]
    assert await seen_after_append(60.0) == [1]  # the next poll is a minute away


async def test_an_overlong_line_in_a_file_is_reported_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"1,1,1\n" + b"9" * 5000 + b"\n2,2,2\n")
    dead: list[af.FailedItem] = []
    flow = af.read_csv(
        str(path), READING, max_line=1000, read_size=700, on_error=af.dead_letter(dead)
    )
    result = await flow.run()
    assert result.value["ts"].tolist() == [1, 2]
    assert len(dead) == 1
    assert "longer than 1000 bytes" in str(dead[0].error)
    assert dead[0].error.line == 2  # type: ignore[attr-defined]
    with pytest.raises(af.DecodeError, match="line 2"):
        await af.read_csv(str(path), READING, max_line=1000).run()


async def test_an_error_downstream_of_several_files_is_raised_as_itself(tmp_path: Path) -> None:
    for k in range(2):
        write_csv(tmp_path / f"s{k}.csv", 0, 10, k)

    def boom(b: np.ndarray) -> None:
        raise IndexError("sink failed")

    with pytest.raises(IndexError, match="sink failed"):
        await (af.read_csv(str(tmp_path / "*.csv"), READING) | af.for_each(boom)).run()


async def test_an_error_while_files_are_opening_leaves_none_open(tmp_path: Path) -> None:
    for k in range(40):
        write_csv(tmp_path / f"s{k:02d}.csv", 0, 10, k)

    def boom(b: np.ndarray) -> None:
        raise IndexError("sink failed")

    flow = af.read_csv(str(tmp_path / "*.csv"), READING, max_open=40) | af.for_each(boom)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(10):  # the error cancels readers in the middle of their opens
            with pytest.raises(IndexError, match="sink failed"):
                await flow.run()
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_take_and_skip_count_lines_of_line_blocks(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    write_csv(path, 0, 100, 1)
    first = await (af.read_csv(str(path), READING) | af.take(5)).run()
    assert first.value["ts"].tolist() == [0, 1, 2, 3, 4]
    blocks = af.read_blocks(str(path), read_size=64) | af.skip(97) | af.take(2)
    async with blocks.open() as run:
        got = [b async for b in run.envelopes()]
    assert b"".join(bytes(b.data) for b in got) == b"97,1,48.5\n98,1,49.0\n"  # type: ignore[union-attr]
    assert got[0].provenance.start == 98  # type: ignore[union-attr]


async def test_follow_a_small_file_that_grows_reads_each_line_once(tmp_path: Path) -> None:
    path = tmp_path / "small.log"
    path.write_text("line 0\n")
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.01) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: seen == ["line 0"])
        with path.open("a") as f:
            f.writelines(f"line {i}\n" for i in range(1, 60))
        await wait_for(lambda: len(seen) >= 60)
        await anyio.sleep(0.1)
        run.stop()
    assert seen == [f"line {i}" for i in range(60)]


async def test_follow_a_file_rewritten_bigger_in_place_reads_the_new_content_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rewritten.log"
    path.write_text("".join(f"old {i:02d}\n" for i in range(40)))
    seen: list[str] = []
    flow = af.read_lines(str(path), follow=True, poll_interval=0.2) | af.for_each(seen.append)
    async with flow.open() as run:
        await wait_for(lambda: len(seen) == 40)
        path.write_text("".join(f"new {i:02d}\n" for i in range(60)))  # truncate + write
        await wait_for(lambda: len(seen) >= 100)
        await anyio.sleep(0.3)
        run.stop()
    assert seen[40:] == [f"new {i:02d}" for i in range(60)]


async def test_lines_split_only_on_newlines(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_text("a\x0cb\nc\u2028d\ne\x85f\r\ng\rh\n", encoding="utf-8", newline="")
    assert (await af.read_lines(str(path)).run()).value == [
        "a\x0cb",
        "c\u2028d",
        "e\x85f",
        "g\rh",
    ]


async def test_read_npy_reads_each_file_header_and_checks_it(tmp_path: Path) -> None:
    import numpy.lib.format as fmt

    a = np.arange(6.0).reshape(3, 2)
    np.save(tmp_path / "a.npy", a)
    with (tmp_path / "b.npy").open("wb") as f:  # a longer (version 2.0) header
        fmt.write_array(f, a + 10, version=(2, 0))
    got = (await af.read_npy(str(tmp_path / "*.npy")).run()).value
    assert sorted(got[:, 0].tolist()) == [0.0, 2.0, 4.0, 10.0, 12.0, 14.0]
    np.save(tmp_path / "c.npy", np.arange(3.0))
    with pytest.raises(ValueError, match="rows of shape"):
        await af.read_npy(str(tmp_path / "*.npy")).run()


async def test_max_line_holds_for_lines_inside_one_read(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"a\n" + b"x" * 50 + b"\nb\n")
    dead: list[af.FailedItem] = []
    flow = af.read_csv(
        str(path),
        [("v", "U4")],
        max_line=10,
        engine="numpy",
        on_error=af.dead_letter(dead),
    )
    got = (await flow.run()).value
    assert got["v"].tolist() == ["a", "b"]
    assert [d.error.line for d in dead] == [2]  # type: ignore[attr-defined]


def test_read_functions_pass_the_decoders_options_through(tmp_path: Path) -> None:
    """read_csv / read_jsonl / read_log take the decoders' options (header names, fill
    values, fail_fast, errors) like decode_* do."""
    (tmp_path / "a.csv").write_text("value,ts\n1.5,10\n,20\n")
    rows = af.run(
        af.read_csv(str(tmp_path / "a.csv"), [("ts", "i8"), ("value", "f8")], header="names")
    ).value
    assert rows["ts"].tolist() == [10, 20]
    assert rows["value"][0] == 1.5
    assert np.isnan(rows["value"][1])
    (tmp_path / "a.jsonl").write_text('{"ts": null, "value": 2.0}\n')
    got = af.run(
        af.read_jsonl(str(tmp_path / "a.jsonl"), [("ts", "i8"), ("value", "f8")], fill_int=-7)
    )
    assert got.value.tolist() == [(-7, 2.0)]
    (tmp_path / "bad.csv").write_text("x,y\n" * 20)
    with pytest.raises(af.DecodeError):
        af.run(af.read_csv(str(tmp_path / "bad.csv"), [("a", "i8"), ("b", "i8")], on_error="skip"))
    skipped = af.run(
        af.read_csv(
            str(tmp_path / "bad.csv"), [("a", "i8"), ("b", "i8")], on_error="skip", fail_fast=None
        )
    )
    assert len(skipped.value) == 0
    assert skipped.statistics.errors == 20


# -- plain files: read one after another, in the source's own task ----------------------


def _write_records(path: Path, first: int, n: int) -> np.ndarray:
    rows = np.zeros(n, READING)
    rows["ts"] = np.arange(first, first + n)
    rows["sensor"] = rows["ts"] % 7
    rows.tofile(path)
    return rows


@pytest.mark.parametrize("max_open", [1, 2, 3])
async def test_plain_files_are_read_max_open_at_a_time_a_read_of_each_in_turn(
    tmp_path: Path, max_open: int
) -> None:
    sizes = [5000, 3000, 4000]  # 50, 30 and 40 reads of 100 records
    parts = [_write_records(tmp_path / f"p{k}.bin", k * 10_000, n) for k, n in enumerate(sizes)]
    flow = af.read_records(str(tmp_path / "p*.bin"), READING, read_size=1600, max_open=max_open)
    order: list[int] = []
    rows: list[np.ndarray] = []
    async with flow.open() as run:
        async for env in run.envelopes():
            assert isinstance(env, af.Batch)
            assert env.provenance is not None
            order.append(int(Path(env.provenance.source).stem[1:]))
            rows.append(env.data)
    got = np.sort(np.concatenate(rows), order="ts")
    np.testing.assert_array_equal(got, np.concatenate(parts))
    # the turns of a round robin over at most max_open files at once; a file's last
    # turn finds its end (and gives nothing)
    want: list[int] = []
    turns, active, waiting = {k: n // 100 + 1 for k, n in enumerate(sizes)}, [], [0, 1, 2]
    while active or waiting:
        while waiting and len(active) < max_open:
            active.append(waiting.pop(0))
        k = active.pop(0)
        turns[k] -= 1
        if turns[k]:
            want.append(k)
            active.append(k)
    assert order == want


async def test_plain_files_beside_a_compressed_one_lose_nothing(tmp_path: Path) -> None:
    import gzip

    lines = [[f"{k}-{i}" for i in range(3000)] for k in range(3)]
    for k, text in enumerate(lines):
        data = "".join(f"{line}\n" for line in text).encode()
        (tmp_path / f"m{k}.log").write_bytes(gzip.compress(data) if k == 1 else data)
    got = (await af.read_lines(str(tmp_path / "m*.log"), read_size=512).run()).value
    for k, text in enumerate(lines):  # each file's lines whole and in order
        assert [line for line in got if line.startswith(f"{k}-")] == text
    assert len(got) == 9000
    assert got.index("2-0") < got.index("0-2999")  # the plain files side by side


async def test_a_stop_on_the_plain_path_flushes_what_the_stages_hold(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"{i}\n" for i in range(100_000)))
    seen: list[str] = []
    written: list[list[str]] = []
    holder: dict[str, af.Run[Any]] = {}

    def watch(line: str) -> str:
        seen.append(line)
        if len(seen) == 250:
            holder["run"].stop()
        return line

    flow = af.read_lines(path, read_size=300) | af.map(watch) | af.batch(100)
    async with (flow | af.for_each(written.append)).open() as run:
        holder["run"] = run
        result = await run.wait()
    assert result.ended == "stopped"
    flat = [line for batch in written for line in batch]
    assert 250 <= len(flat) < 100_000
    assert flat == seen == [str(i) for i in range(len(flat))]  # the partial batch came
    assert len(written[-1]) == len(flat) % 100 or len(flat) % 100 == 0


async def test_a_cancelled_run_on_the_plain_path_closes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"{i}\n" for i in range(100_000)))
    fds = len(os.listdir("/proc/self/fd"))
    got: list[str] = []
    slow = af.throttle(5000, burst=10)
    flow = af.read_lines(path, read_size=300) | slow | af.for_each(got.append)
    with anyio.move_on_after(0.3) as scope:
        await flow.run()
    assert scope.cancelled_caught
    assert 0 < len(got) < 100_000
    assert got == [str(i) for i in range(len(got))]
    await settle()
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("last_line", ["keep", "report"])
async def test_a_torn_last_line_of_a_plain_file_is_kept_or_reported(
    tmp_path: Path, last_line: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "torn.csv"
    path.write_text("".join(f"{i},{i % 3},0.5\n" for i in range(2000)) + "2000,1,0.")
    dead: list[af.FailedItem] = []
    flow = af.read_csv(
        path, READING, read_size=256, last_line=last_line, on_error=af.dead_letter(dead)
    )
    with caplog.at_level("WARNING", logger="aflow"):
        got = (await flow.run()).value
    if last_line == "keep":
        assert got["ts"].tolist() == list(range(2001))
        assert not dead
        assert "line 2001 has no newline after it" in caplog.text
    else:
        assert got["ts"].tolist() == list(range(2000))
        assert [d.item for d in dead] == [b"2000,1,0.\n"]  # the splitter ends every line
        assert isinstance(dead[0].error, af.IncompleteFrameError)
        assert dead[0].error.line == 2001

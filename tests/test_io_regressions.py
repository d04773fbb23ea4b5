"""Regressions found in the review of the I/O, sinks and time modules: one test per bug."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.kernels.keyed import KeyedStats

pytestmark = pytest.mark.anyio


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 - polls what the flow delivered
            await anyio.sleep(0.01)


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


async def test_asof_join_unmatched_rows_get_blanks() -> None:
    temp = np.array([(1, 20.5), (10, 21.0)], [("ts", "i8"), ("temp", "f4")])
    hum = np.array([(5, 0.4)], [("ts", "i8"), ("hum", "f4")])
    got = (await af.asof_join(af.from_array(temp), af.from_array(hum), on="ts").run()).value
    assert got["matched"].tolist() == [False, True]
    assert np.isnan(got["hum"][0])
    assert got["hum"][1] == pytest.approx(0.4)


def test_narrow_integer_keys_with_a_wide_span() -> None:
    stats = KeyedStats(("count", "sum"))
    stats.update(np.array([-100, 100, -100], np.int8), np.array([1.0, 2.0, 3.0]))
    out = stats.result("key")
    assert out["key"].tolist() == [-100, 100]
    assert out["sum"].tolist() == [4.0, 2.0]


async def test_lines_split_only_on_newlines(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_text("a\x0cb\nc\u2028d\ne\x85f\r\ng\rh\n", encoding="utf-8", newline="")
    assert (await af.read_lines(str(path)).run()).value == [
        "a\x0cb",
        "c\u2028d",
        "e\x85f",
        "g\rh",
    ]


async def test_numpy_csv_engine_keeps_hash_signs_and_isolates_open_quotes() -> None:
    dt = np.dtype([("a", "U10"), ("b", "i8")])
    dead: list[af.FailedItem] = []
    lines = [b"#x,1\n", b'"y,2\n', b'z",3\n', b"w,4\n"]
    stage = af.decode_csv(dt, engine="numpy", on_error=af.dead_letter(dead))
    got = (await (af.from_iterable(lines) | stage).run()).value
    # the open quote is reported on its own line; nothing is silently merged
    assert got.tolist() == [("#x", 1), ('z"', 3), ("w", 4)]
    assert [d.item for d in dead] == [b'"y,2\n']


async def test_jsonl_float_fields_take_numbers_only() -> None:
    dt = np.dtype([("v", "f8")])
    dead: list[af.FailedItem] = []
    lines = [b'{"v": 1}\n', b'{"v": "1.5"}\n', b'{"v": null}\n', b'{"v": true}\n', b'{"v": 2.5}\n']
    stage = af.decode_jsonl(dt, on_error=af.dead_letter(dead))
    got = (await (af.from_iterable(lines) | stage).run()).value
    assert got["v"].tolist() == [1.0, 2.5]
    assert len(dead) == 3


async def test_empty_batches_write_no_blank_lines(tmp_path: Path) -> None:
    rows = np.array([(1, "x"), (2, "y"), (3, "z")], [("a", "i8"), ("s", "U3")])
    drop_two = af.map_batches(lambda b: b[b["a"] != 2])
    await (af.from_array(rows, 1) | drop_two | af.to_csv(tmp_path / "o.csv")).run()
    assert (tmp_path / "o.csv").read_text() == "a,s\n1,x\n3,z\n"
    await (af.from_array(rows, 1) | drop_two | af.to_jsonl(tmp_path / "o.jsonl")).run()
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert [json.loads(line)["a"] for line in lines] == [1, 3]


async def test_parquet_is_readable_after_an_upstream_error(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")

    def fail_late(b: np.ndarray) -> np.ndarray:
        if b[0] >= 250:
            raise RuntimeError("upstream failure")
        return b

    path = tmp_path / "part.parquet"
    flow = af.from_array(np.arange(300.0), 50) | af.map_batches(fail_late)
    with pytest.raises(RuntimeError, match="upstream failure"):
        await (flow | af.to_parquet(path, chunk_bytes=1000)).run()
    if path.exists():  # whatever reached the sink before the error is a readable file
        rows = pq.read_table(path).num_rows
        assert rows <= 250
        assert rows % 50 == 0


async def test_epoch_nanosecond_rows_within_allowed_lateness_are_not_late() -> None:
    sec = 10**9
    epoch = 1_700_000_000 * sec
    rows = np.array(
        [(epoch + 5 * sec - 1, 1, 1.0), (epoch - 1, 1, 2.0)],
        [("ts", "i8"), ("key", "i4"), ("value", "f8")],
    )
    late: list[np.ndarray] = []
    flow = af.from_array(rows, 1) | af.window(
        sec,
        on="ts",
        key="key",
        value="value",
        stats=("count",),
        allowed_lateness=5 * sec,
        late=late.append,
    )
    result = await flow.run()
    assert late == []
    assert int(result.value["count"].sum()) == 2


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


async def test_header_of_lines_given_as_chunks() -> None:
    dt = np.dtype([("a", "i8"), ("b", "f8")])
    flow = af.from_iterable(["a,b", "1,2.5", "3,4.5"]) | af.decode_csv(dt, header=True)
    assert (await flow.run()).value.tolist() == [(1, 2.5), (3, 4.5)]

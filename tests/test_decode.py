"""Decoding stages (aflow/stages/decode.py): blocks in a flow, bad lines to the error
policy with their source and line number, per-run state, worker threads."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.codecs import COMBINED, CsvDecoder, JsonlDecoder, LineSplitter
from aflow.codecs._csvnative import has_native
from aflow.stages import decode as decode_module

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f8")])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _line_aligned(text: bytes, cuts: list[int]) -> list[bytes]:
    """``text`` cut at ``cuts``, then into whole lines by a splitter, as sources do."""
    splitter = LineSplitter("mem")
    blocks = [b for b in map(splitter.feed, split_at(text, cuts)) if b is not None]
    last = splitter.finish()
    return [bytes(b.data) for b in [*blocks, *([last] if last else [])]] or [b""]


def csv_text(rows: list[tuple[int, int, float]]) -> bytes:
    return b"".join(f"{a},{b},{c!r}\n".encode() for a, b, c in rows)


rows_strategy = st.lists(
    st.tuples(
        st.integers(-(2**62), 2**62),
        st.integers(-(2**31), 2**31 - 1),
        st.floats(allow_nan=False, allow_infinity=True),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows_strategy,
    bad_at=st.lists(st.integers(0, 60), max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    engine=st.sampled_from(["numpy", "pyarrow"]),
)
def test_csv_good_records_survive_any_split_and_bad_lines(
    rows: list[tuple[int, int, float]], bad_at: list[int], cuts: list[int], engine: str
) -> None:
    lines = [csv_text([r]) for r in rows]
    for i in sorted(set(bad_at), reverse=True):
        lines.insert(min(i, len(lines)), b"not,a,number\n")
    text = b"".join(lines)
    dead: list[af.FailedItem] = []
    flow = af.from_arrays(
        [np.frombuffer(c, np.uint8) for c in _line_aligned(text, cuts)]
    ) | af.decode_csv(READING, engine=engine, on_error=af.dead_letter(dead))  # type: ignore[arg-type]
    got = af.run(flow).value
    expected = np.array(rows, dtype=READING)
    assert len(got) == len(rows)
    if rows:
        np.testing.assert_array_equal(got, expected)
    assert [d.item for d in dead] == [b"not,a,number\n"] * len(set(bad_at))


@pytest.mark.parametrize("engine", ["numpy", "pyarrow"])
def test_a_float_beyond_its_field_s_range_is_a_bad_line_not_infinity(engine: str) -> None:
    dt = np.dtype([("a", "i8"), ("v", "f4"), ("h", "f2")])
    text = b"1,1e39,1\n2,inf,1\n3,1.5,70000\n4,-3.5e38,1\n5,2.5,-0.5\n"
    dead: list[af.FailedItem] = []
    decode = af.decode_csv(dt, engine=engine, on_error=af.dead_letter(dead))  # type: ignore[arg-type]
    got = af.run(af.from_arrays([np.frombuffer(text, np.uint8)]) | decode).value
    assert got["a"].tolist() == [2, 5]  # "inf" written as such is accepted
    assert got["v"].tolist() == [np.inf, 2.5]
    assert [d.item for d in dead] == [b"1,1e39,1\n", b"3,1.5,70000\n", b"4,-3.5e38,1\n"]
    jsonl = b'{"a": 1, "v": 1e39, "h": 1}\n{"a": 2, "v": 2.5, "h": 1}\n' * 600  # > 16 KiB
    # the reference decoder (two whole lines; a cut inside the third would make it a bad
    # line too, no longer dropped unseen), then pyarrow's fast path
    for blob in (jsonl[:55], jsonl):
        dead.clear()
        stage = af.decode_jsonl(dt, on_error=af.dead_letter(dead))
        rows = af.run(af.from_arrays([np.frombuffer(blob, np.uint8)]) | stage).value
        assert rows["a"].tolist() == [2] * (blob.count(b"\n") // 2)
        assert len(dead) == blob.count(b"\n") - len(rows)


def test_csv_empty_lines_nan_inf_quotes_and_crlf() -> None:
    text = [b"1,2,nan\r\n", b"\n", b'2,3,"inf"\n', b"3,4,-inf\n"]
    for engine in ("numpy", "pyarrow"):
        got = af.run(af.from_iterable(text) | af.decode_csv(READING, engine=engine)).value  # type: ignore[arg-type]
        assert got["ts"].tolist() == [1, 2, 3]
        assert np.isnan(got["value"][0])
        assert got["value"][1:].tolist() == [np.inf, -np.inf]


def test_jsonl_decodes_and_splits_off_bad_lines() -> None:
    text = [
        b'{"ts": 1, "sensor": 2, "value": 0.5}\n',
        b"\n",
        b'{"ts": 2, "sensor": 3}\n',
        b'{"ts": 3, "sensor": 4, "value": NaN}\n',
        b'{"ts": 4.5, "sensor": 4, "value": 1}\n',
        b"[1, 2, 3]\n",
        b'{"ts": 5, "sensor": 6, "value": 7, "extra": "ignored"}\n',
    ]
    dead: list[af.FailedItem] = []
    got = af.run(
        af.from_iterable(text) | af.decode_jsonl(READING, on_error=af.dead_letter(dead))
    ).value
    assert got.tolist() == [(1, 2, 0.5), (5, 6, 7.0)]
    assert len(dead) == 4


COMBINED_LINE = (
    '203.0.113.9 - alice [10/Oct/2000:13:55:36 -0700] "GET /index.html HTTP/1.1" 200 2326 '
    '"http://example.com/" "Mozilla/5.0" 0.012\n'
)


def test_log_combined_format() -> None:
    lines = [COMBINED_LINE, "garbage\n", COMBINED_LINE.replace(" 200 2326 ", " 404 - ")]
    dead: list[af.FailedItem] = []
    got = af.run(af.from_iterable(lines) | af.decode_log(on_error=af.dead_letter(dead))).value
    assert got["status"].tolist() == [200, 404]
    assert got["bytes"].tolist() == [2326, 0]
    assert got["path"].tolist() == ["/index.html"] * 2
    assert got["time"][0] == np.datetime64("2000-10-10T20:55:36", "ns")
    assert got["request_time"][0] == pytest.approx(0.012)
    assert [d.item for d in dead] == [b"garbage\n"]


def test_log_one_column_with_bad_lines_in_the_block(tmp_path: Path) -> None:
    lines = [COMBINED_LINE, "garbage\n", "\n", COMBINED_LINE.replace(" 200 ", " 503 ")] * 3
    (tmp_path / "access.log").write_text("".join(lines))
    dead: list[af.FailedItem] = []
    flow = af.read_log(
        str(tmp_path / "access.log"), columns={"status": "int"}, on_error=af.dead_letter(dead)
    )
    got = af.run(flow).value
    assert got["status"].tolist() == [200, 503] * 3
    assert [d.item for d in dead] == [b"garbage\n"] * 3
    assert [d.error.line for d in dead] == [2, 6, 10]  # type: ignore[attr-defined]


def test_log_groups_never_take_the_block_s_last_newline() -> None:
    stage = af.decode_log(r"(?P<key>\w+)=(?P<value>[^;]*)", {"key": "str", "value": "str"})
    for lines in ([b"a=1\n"], [b"a=1\n", b"b=2\n"]):
        got = af.run(af.from_arrays([np.frombuffer(b"".join(lines), np.uint8)]) | stage).value
        assert got["value"].tolist() == ["1", "2"][: len(lines)]


def test_log_patterns_with_global_flags_or_verbose_comments() -> None:
    verbose = re.compile(r"(?P<level>\w+) (?P<msg>.*)  # level, then the message", re.VERBOSE)
    for pattern in [r"(?i)(?P<level>info|warn) (?P<msg>.*)", verbose]:
        stage = af.decode_log(pattern, {"level": "str", "msg": "str"})
        got = af.run(af.from_iterable([b"INFO started\n", b"warn low disk\n"]) | stage).value
        assert got["level"].tolist() == ["INFO", "warn"]


def test_log_custom_pattern_and_invalid_utf8() -> None:
    pattern = r"(?P<level>[A-Z]+) (?P<ms>\d+) (?P<msg>.*)"
    columns = {"level": "str", "ms": "int", "msg": "str"}
    lines = [b"INFO 12 started\n", b"WARN 7 caf\xc3\xa9\n", b"ERROR 3 \xff\xfe\n"]
    dead: list[af.FailedItem] = []
    stage = af.decode_log(pattern, columns, on_error=af.dead_letter(dead))
    got = af.run(af.from_iterable(lines) | stage).value
    assert got["msg"].tolist() == ["started", "café"]
    assert [d.item for d in dead] == [b"ERROR 3 \xff\xfe\n"]


log_line = st.one_of(
    st.builds(
        lambda status, size, path, rt: (
            f'10.0.0.{status % 250} - - [10/Oct/2000:13:55:36 -0700] "GET /{path} HTTP/1.1" '
            f'{status} {size} "-" "agent"{rt}'
        ),
        st.integers(100, 599),
        st.one_of(st.integers(0, 10**9).map(str), st.just("-")),
        st.text("abc/.", max_size=6),
        st.one_of(st.just(""), st.just(" -"), st.floats(0, 60).map(lambda f: f" {f:.3f}")),
    ),
    st.sampled_from(
        [
            "",
            "   ",
            "garbage",
            '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /open-quote HTTP/1.1',  # spills over
            '" 200 5 "-" "-"',
            "1.2.3.4 - - [bad",
        ]
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.tuples(log_line, st.booleans()), max_size=30),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_log_blocks_decode_like_line_by_line(
    lines: list[tuple[str, bool]], cuts: list[int]
) -> None:
    raw = [(text + ("\r\n" if crlf else "\n")).encode() for text, crlf in lines]
    pattern = re.compile(COMBINED)
    good = [pattern.fullmatch(t) for t, _ in lines if t.strip()]
    bad = [
        r for (t, _), r in zip(lines, raw, strict=True) if t.strip() and not pattern.fullmatch(t)
    ]
    dead: list[af.FailedItem] = []
    flow = af.from_arrays(
        [np.frombuffer(c, np.uint8) for c in _line_aligned(b"".join(raw), cuts)]
    ) | af.decode_log(on_error=af.dead_letter(dead), fail_fast=None)  # all bad: no format guess
    got = af.run(flow).value
    rows = [m for m in good if m is not None]
    if not rows:  # nothing decoded: no batch, so collect() gives an empty list
        assert len(got) == 0
        got = np.empty(0, [("status", "i8"), ("bytes", "i8"), ("path", "O")])
    assert got["status"].tolist() == [int(m["status"]) for m in rows]
    assert got["bytes"].tolist() == [0 if m["bytes"] == "-" else int(m["bytes"]) for m in rows]
    assert got["path"].tolist() == [m["path"] for m in rows]
    assert [d.item for d in dead] == bad


def test_decoders_reject_unstructured_dtypes() -> None:
    with pytest.raises(TypeError, match="structured"):
        af.decode_csv("f8")
    with pytest.raises(ValueError, match="not a named group"):
        af.decode_log(r"(?P<a>\d+)", {"b": "int"})


HEADER_LINES = [b"ts,sensor,value\n"] + [f"{i},{i % 3},{i / 4}\n".encode() for i in range(300)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options",
    [{"engine": "numpy"}, {"engine": "numpy", "threads": 2}, {"engine": "pyarrow"}, {}],
    ids=["numpy-fused", "numpy-threads", "pyarrow-threads", "auto"],
)
async def test_a_flow_with_a_header_gives_the_same_rows_every_run(
    options: dict[str, object], tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_bytes(b"".join(HEADER_LINES))
    expected = np.array([(i, i % 3, i / 4) for i in range(300)], READING)
    decode = af.decode_csv(READING, header=True, **options)  # type: ignore[arg-type]
    blocks = [
        np.frombuffer(b"".join(HEADER_LINES[i : i + 40]), np.uint8) for i in range(0, 301, 40)
    ]
    flows = [
        af.from_iterable(HEADER_LINES) | decode,  # chunks of lines: no provenance
        af.from_arrays(blocks) | decode,  # arrays: rows, not lines
        af.read_blocks(str(tmp_path / "a.csv"), read_size=500) | decode,  # numbered lines
    ]
    for flow in flows:
        for _ in range(5):
            got = (await flow.run()).value
            np.testing.assert_array_equal(got, expected)
        results: list[np.ndarray] = []

        async def run_once(flow: af.Flow = flow, results: list[np.ndarray] = results) -> None:
            results.append((await flow.run()).value)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(run_once)
        assert len(results) == 5
        for got in results:
            np.testing.assert_array_equal(got, expected)


def test_log_decoded_in_threads_like_inline(tmp_path: Path) -> None:
    lines = [COMBINED_LINE, "garbage\n", COMBINED_LINE.replace(" 200 ", " 503 ")] * 300
    (tmp_path / "access.log").write_text("".join(lines))

    def decoded(threads: int | None) -> tuple[af.RunResult[Any], list[int]]:
        dead: list[af.FailedItem] = []
        flow = af.read_log(
            str(tmp_path / "access.log"),
            columns={"status": "int", "time": "timestamp:%d/%b/%Y:%H:%M:%S %z"},
            threads=threads,
            read_size=4096,
            on_error=af.dead_letter(dead),
        )
        return af.run(flow), [d.error.line for d in dead]  # type: ignore[attr-defined]

    # threads=0 is inline (the default for COMBINED is threaded since issue 13)
    (inline, inline_dead), (threaded, threaded_dead) = decoded(0), decoded(3)
    assert threaded.value.tolist() == inline.value.tolist()
    assert sorted(threaded_dead) == inline_dead == list(range(2, 900, 3))  # any order
    assert threaded.statistics.stage("decode_log[threads=3]").batches_out > 1
    with pytest.raises(KeyError):
        inline.statistics.stage("decode_log[threads=3]")
    default, default_dead = decoded(None)
    assert default.value.tolist() == inline.value.tolist()
    assert sorted(default_dead) == inline_dead
    name = f"decode_log[threads={len(os.sched_getaffinity(0))}]"  # one per usable core
    assert default.statistics.stage(name).batches_out > 1


def test_csv_and_jsonl_decode_in_one_thread_per_usable_core(tmp_path: Path) -> None:
    """One block per core at a time, and one queued: a thread more (the default until
    issue 13's memory work) decoded no faster and held one more block and its arena."""
    pytest.importorskip("pyarrow")
    dt = [("a", "i8"), ("b", "f8")]
    (tmp_path / "a.csv").write_text("".join(f"{i},{i / 4}\n" for i in range(50_000)))
    (tmp_path / "a.jsonl").write_text("".join(f'{{"a": {i}, "b": 0.5}}\n' for i in range(20_000)))
    cores = len(os.sched_getaffinity(0))
    csv_stage = f"decode_csv[{'native' if has_native() else 'pyarrow'}]"
    for flow, name, rows in (
        (af.read_csv(str(tmp_path / "a.csv"), dt, read_size=65536), csv_stage, 50_000),
        (
            af.read_jsonl(str(tmp_path / "a.jsonl"), dt, read_size=65536),
            "decode_jsonl[pyarrow]",
            20_000,
        ),
    ):
        result = af.run(flow)
        assert len(result.value) == rows
        assert result.statistics.stage(f"{name}[threads={cores}]").batches_out > 1


def test_threaded_decoding_waits_with_one_large_block_or_many_small(tmp_path: Path) -> None:
    """The input buffer of a threaded decoding stage holds the bytes of one merged unit:
    one 1 MiB block of a file (each more was 1 MiB more peak memory), several small ones
    (which are then decoded together)."""
    rows: list[int] = []
    pause = [0.0]

    async def slow(batch: Any) -> None:
        rows.append(len(batch))
        await anyio.sleep(pause[0])  # the decoded rows back up: blocks wait before the decoder

    def waited(lines: int, read_size: int, seconds: float) -> int:
        pause[0] = seconds
        path = tmp_path / f"{lines}.log"
        path.write_text(COMBINED_LINE * lines)
        rows.clear()
        flow = af.read_log(str(path), columns={"status": "int"}, read_size=read_size, threads=2)
        result = af.run(flow | af.for_each(slow, buffer=1))
        assert sum(rows) == lines
        return result.statistics.stage("decode_log[threads=2]").buffer_high_water

    assert waited(50_000, 1 << 20, 0.05) == 1  # 8 MiB (4 before: the run's buffer)
    assert waited(3000, 4096, 0.005) > 1


@pytest.mark.anyio
async def test_numpy_csv_engine_keeps_hash_signs_and_isolates_open_quotes() -> None:
    dt = np.dtype([("a", "U10"), ("b", "i8")])
    dead: list[af.FailedItem] = []
    lines = [b"#x,1\n", b'"y,2\n', b'z",3\n', b"w,4\n"]
    stage = af.decode_csv(dt, engine="numpy", on_error=af.dead_letter(dead))
    got = (await (af.from_iterable(lines) | stage).run()).value
    # the open quote is reported on its own line; nothing is silently merged
    assert got.tolist() == [("#x", 1), ('z"', 3), ("w", 4)]
    assert [d.item for d in dead] == [b'"y,2\n']


@pytest.mark.anyio
async def test_header_of_lines_given_as_chunks() -> None:
    dt = np.dtype([("a", "i8"), ("b", "f8")])
    flow = af.from_iterable(["a,b", "1,2.5", "3,4.5"]) | af.decode_csv(dt, header=True)
    assert (await flow.run()).value.tolist() == [(1, 2.5), (3, 4.5)]


@pytest.mark.anyio
async def test_jsonl_float_fields_take_numbers_only() -> None:
    dt = np.dtype([("v", "f8")])
    dead: list[af.FailedItem] = []
    lines = [b'{"v": 1}\n', b'{"v": "1.5"}\n', b'{"v": null}\n', b'{"v": true}\n', b'{"v": 2.5}\n']
    stage = af.decode_jsonl(dt, on_error=af.dead_letter(dead))
    got = (await (af.from_iterable(lines) | stage).run()).value
    assert got["v"].tolist()[::2] == [1.0, 2.5]  # a null is a missing value: NaN (issue 12)
    assert np.isnan(got["v"][1])
    assert [d.item for d in dead] == [lines[1], lines[3]]


# --- issue 12: decoders that real data cannot fool -------------------------------------
# Differential tests: each decoder against an independent reference (csv + float, json,
# re + strptime) on ugly real-world lines, read from a real file in blocks cut anywhere
# (read_size), over-long lines included: the same rows, and exactly the same dead letters
# (bytes, line number, byte offset).

MAX_LINE = 120


def _read_file(lines: list[bytes], read: Any) -> tuple[list[Any], list[af.FailedItem]]:
    dead: list[af.FailedItem] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data")
        with open(path, "wb") as f:
            f.write(b"".join(lines))
        result = af.run(read(path, af.dead_letter(dead)))
    return result.value, dead


def _expected_dead(lines: list[bytes], bad: list[int]) -> list[tuple[int, bytes, int]]:
    """``(line number, item, byte offset)`` per bad or over-long line."""
    offsets = np.cumsum([0, *map(len, lines)])
    out = []
    for i, line in enumerate(lines):
        body = line.rstrip(b"\n")
        if len(body) > MAX_LINE:
            out.append((i + 1, body, int(offsets[i])))  # its item: a prefix
        elif i in bad:
            out.append((i + 1, line if line.endswith(b"\n") else line + b"\n", int(offsets[i])))
    return out


def _same_dead(dead: list[af.FailedItem], lines: list[bytes], bad: list[int]) -> None:
    """The dead letters are the expected lines, with their numbers and offsets; an
    over-long line's item is a prefix of it, longer than ``MAX_LINE``."""
    got, want = _got_dead(dead), _expected_dead(lines, bad)
    assert [(n, o) for n, _, o in got] == [(n, o) for n, _, o in want]
    for (_, item, _), (n, line, _) in zip(got, want, strict=True):
        if len(line.rstrip(b"\n")) > MAX_LINE:
            assert line.startswith(item), n
            assert len(item) > MAX_LINE, n
        else:
            assert item == line, n


def _got_dead(dead: list[af.FailedItem]) -> list[tuple[int, bytes, int]]:
    out = []
    for d in dead:
        assert d.provenance is not None
        assert d.provenance.stop == d.provenance.start + 1
        assert d.error.line == d.provenance.start  # type: ignore[attr-defined]
        assert d.error.offset == d.provenance.offset  # type: ignore[attr-defined]
        out.append((d.provenance.start, d.item, d.provenance.offset))
    return sorted(out)


CSV_DTYPE = np.dtype([("i", "i8"), ("x", "f8"), ("s", "S8"), ("u", "U4")])
_CSV_TOKENS = st.sampled_from(
    [
        "0",
        "-7",
        "+3",
        " 12",
        "1.5",
        "-0.0",
        ".5",
        "5.",
        "1e3",
        "nan",
        "inf",
        "-Infinity",
        "",
        "1e400",
        "-" + "9" * 400,
        "abc",
        "1.2.3",
        "0x10",
        "99999999999999999999",
        "12 ",
    ]
)
_CSV_TEXT = st.sampled_from(["", "a", "café", "日本", "naïve", "abcdefghi", "日本語です", "x y"])


@st.composite
def csv_lines(draw: st.DrawFn) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 19))
        if kind == 0:
            lines.append(b"\n")
        elif kind == 1:
            lines.append(b"9," * 70 + b"\n")  # over-long
        elif kind == 2:
            lines.append(
                draw(st.sampled_from([b"1,2\n", b"1,2,a,b,c\n", b"\xff\xfe,1,a,b\n", b"i,x,s,u\n"]))
            )
        else:
            i = draw(st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), _CSV_TOKENS))
            x = draw(st.one_of(st.floats(allow_nan=False).map(repr), _CSV_TOKENS))
            s, u = draw(_CSV_TEXT), draw(_CSV_TEXT)
            lines.append(f"{i},{x},{s},{u}\n".encode())
    if lines and draw(st.booleans()):
        lines[-1] = lines[-1].rstrip(b"\n")  # a last line without its newline
    return lines


def _csv_reference(line: bytes, fill_int: int | None) -> tuple[Any, ...] | None:
    """A row by ``csv`` + ``int``/``float``; None for a bad line."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return None
    fields = next(csv.reader([text.rstrip("\r\n")]))
    if len(fields) != 4 or "_" in text:
        return None
    i, x, s, u = fields
    try:
        number = fill_int if i == "" and fill_int is not None else int(i)
        value = float("nan") if x == "" else float(x)
    except (TypeError, ValueError):
        return None
    if not -(2**63) <= number < 2**63 or (math.isinf(value) and "inf" not in x.lower()):
        return None
    if len(s.encode()) > 8 or len(u) > 4:
        return None
    return (number, value, s.encode(), u)


def _same_rows(got: Any, want: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(want)
    if not want:
        return
    assert [repr(tuple(r)) for r in got.tolist()] == [repr(r) for r in want]


@settings(max_examples=60, deadline=None)
@given(
    lines=csv_lines(),
    read_size=st.integers(1, 300),
    engine=st.sampled_from(["numpy", "pyarrow"]),
    fill_int=st.sampled_from([None, -1]),
)
def test_csv_decoder_agrees_with_csv_and_float(
    lines: list[bytes], read_size: int, engine: str, fill_int: int | None
) -> None:
    want, bad = [], []
    for k, line in enumerate(lines):
        if not line.strip() or len(line.rstrip(b"\n")) > MAX_LINE:
            continue
        row = _csv_reference(line, fill_int)
        if row is None:
            bad.append(k)
        else:
            want.append(row)
    got, dead = _read_file(
        lines,
        lambda path, policy: (
            af.read_blocks(path, read_size=read_size, max_line=MAX_LINE, on_error=policy)
            | af.decode_csv(
                CSV_DTYPE,
                engine=engine,
                fill_int=fill_int,
                on_error=policy,
                fail_fast=None,  # type: ignore[arg-type]
            )
        ),
    )
    _same_rows(got, want)
    _same_dead(dead, lines, bad)


JSON_DTYPE = np.dtype([("i", "i8"), ("x", "f8"), ("u", "U4")])
_JSON_VALUES = st.sampled_from(
    [
        "0",
        "-7",
        "1.5",
        "null",
        '"7"',
        "true",
        "1e400",
        "NaN",
        "Infinity",
        "99999999999999999999",
        '"café"',
        '"日本"',
        '"abcde"',
        '"a\\"b"',
        "[1]",
        "{}",
    ]
)


@st.composite
def json_lines(draw: st.DrawFn) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 19))
        if kind == 0:
            lines.append(b"\n")
        elif kind == 1:
            lines.append(b'{"i": 1, "pad": "' + b"x" * 150 + b'"}\n')  # over-long
        elif kind == 2:
            lines.append(
                draw(st.sampled_from([b"[1, 2]\n", b"{not json\n", b'{"i": 1}\n', b"\xff{}\n"]))
            )
        else:
            i = draw(st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), _JSON_VALUES))
            x = draw(
                st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr), _JSON_VALUES)
            )
            u = draw(st.one_of(st.sampled_from(['"ok"', '"né"', '"日本"']), _JSON_VALUES))
            lines.append(f'{{"i": {i}, "x": {x}, "u": {u}, "other": [1]}}\n'.encode())
    return lines


def _json_reference(line: bytes) -> tuple[Any, ...] | None:
    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        obj = json.loads(line, parse_constant=constant)
    except ValueError:
        return None
    if type(obj) is not dict or not {"i", "x", "u"} <= obj.keys():
        return None
    i, x, u = obj["i"], obj["x"], obj["u"]
    if type(i) is not int or not -(2**63) <= i < 2**63:
        return None
    x = float("nan") if x is None else x
    if type(x) not in (int, float) or math.isinf(x):
        return None
    if type(u) is not str or len(u) > 4:
        return None
    return (i, float(x), u)


@settings(max_examples=60, deadline=None)
@given(lines=json_lines(), read_size=st.integers(1, 300))
def test_jsonl_decoder_agrees_with_json(lines: list[bytes], read_size: int) -> None:
    want, bad = [], []
    for k, line in enumerate(lines):
        if not line.strip() or len(line.rstrip(b"\n")) > MAX_LINE:
            continue
        row = _json_reference(line)
        if row is None:
            bad.append(k)
        else:
            want.append(row)
    got, dead = _read_file(
        lines,
        lambda path, policy: (
            af.read_blocks(path, read_size=read_size, max_line=MAX_LINE, on_error=policy)
            | af.decode_jsonl(JSON_DTYPE, on_error=policy, fail_fast=None)
        ),
    )
    _same_rows(got, want)
    _same_dead(dead, lines, bad)


# Lines as nginx writes them in the combined format. nginx escapes '"', '\' and bytes
# below 0x20 or above 0x7e in variables as \xXX (escape=default); $remote_user is the raw
# name from the Authorization header; $request is the request line as received (a path
# may hold a raw space; garbage on a plain-text port is logged whole, escaped); 414 and
# 400 responses to a request line nginx could not parse may log it without a protocol.
NGINX_LINES = [
    ('"\\x16\\x03\\x01\\x00\\xCA\\x01\\x00\\x00\\xC6\\x03\\x03"', 400, ("", "", "")),
    ('"GET /"', 200, ("GET", "/", "")),  # HTTP/0.9
    (
        '"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"',
        414,
        ("GET", "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", ""),
    ),
    ('"M-SEARCH * HTTP/1.1"', 400, ("M-SEARCH", "*", "HTTP/1.1")),
    ('"get /lower HTTP/1.0"', 400, ("get", "/lower", "HTTP/1.0")),
    ('"GET /a b HTTP/1.1"', 200, ("GET", "/a b", "HTTP/1.1")),
    ('"GET /q?x=\\x22y\\x22 HTTP/1.1"', 200, ("GET", "/q?x=\\x22y\\x22", "HTTP/1.1")),
    ('""', 400, ("", "", "")),
    ('"-"', 400, ("", "", "")),
    ('"PRI * HTTP/2.0"', 400, ("PRI", "*", "HTTP/2.0")),
]


def _nginx_line(request: str, status: int, user: str = "-", agent: str = "curl/8.0") -> str:
    return f'127.0.0.1 - {user} [10/Oct/2000:13:55:36 -0700] {request} {status} 0 "-" "{agent}"\n'


def test_the_default_log_reader_parses_every_line_nginx_writes(tmp_path: Path) -> None:
    columns = {
        "remote_user": "str",
        "method": "str",
        "path": "str",
        "protocol": "str",
        "status": "int",
        "time": "timestamp:%d/%b/%Y:%H:%M:%S %z",
    }
    users = ["-", "alice", "bob smith", "[admin]", "a] [b"]
    text = "".join(
        _nginx_line(req, status, users[k % len(users)])
        for k, (req, status, _) in enumerate(NGINX_LINES)
    )
    raw = (
        text.encode()
        + b'127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /caf\xe9 HTTP/1.1" 200 0 "-" "-"\n'
    )
    (tmp_path / "access.log").write_bytes(raw)
    got = af.run(af.read_log(str(tmp_path / "access.log"), columns=columns)).value
    assert len(got) == len(NGINX_LINES) + 1
    fields = [
        (m, p, pr) for m, p, pr in zip(got["method"], got["path"], got["protocol"], strict=True)
    ]
    assert fields[:-1] == [want for _, _, want in NGINX_LINES]
    assert got["status"].tolist()[:-1] == [s for _, s, _ in NGINX_LINES]
    assert got["remote_user"].tolist()[:-1] == [
        users[k % len(users)] for k in range(len(NGINX_LINES))
    ]
    assert got["path"][-1] == "/caf\ufffd"  # raw bytes: kept, replaced (errors="replace")
    strict = af.decode_log(columns=columns, errors="strict", on_error="skip", fail_fast=None)
    assert len(af.run(af.read_blocks(str(tmp_path / "access.log")) | strict).value) == len(
        NGINX_LINES
    )


def test_nginx_lists_of_upstream_times_and_optional_groups() -> None:
    pattern = r"(?P<status>\d{3}) (?P<upstream>-|[\d.]+(?:(?:, | : )[\d.]+)*)(?: (?P<retries>\d+))?"
    columns = {"status": "int", "upstream": "float:sum", "retries": "int"}
    lines = [b"200 0.000, 0.001\n", b"502 0.010 : 0.020\n", b"200 - 0\n", b"200 0.5 3\n"]
    got = af.run(af.from_iterable(lines) | af.decode_log(pattern, columns)).value
    assert got["upstream"].tolist()[:2] == pytest.approx([0.001, 0.030])
    assert np.isnan(got["upstream"][2])
    assert got["retries"].tolist() == [-1, -1, 0, 3]  # no group: fill_int, not a real 0
    first = af.decode_log(pattern, {**columns, "upstream": "float:first"}, fill_int=-9)
    got = af.run(af.from_iterable(lines) | first).value
    assert got["upstream"][0] == 0.0
    assert got["retries"][0] == -9


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log combined;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    large_client_header_buffers 2 1k;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""

NGINX_REQUESTS = [
    b"\x16\x03\x01\x00\xca\x01\x00\x00\xc6\x03\x03garbage\r\n\r\n",
    b"GET /\r\n",
    b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get /lower HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b'GET /q?x="y"&z=\\ HTTP/1.1\r\nHost: x\r\nUser-Agent: a "quoted" \xe9 agent\r\n\r\n',
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YiBvYiBbeF06cA==\r\n\r\n",
    b"GET /ok HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\n\r\n",
    b"\r\n\r\n",
]


@pytest.mark.slow
def test_real_nginx_lines_parse(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    (tmp_path / "tmp").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port))
    server = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                assert server.poll() is None, (tmp_path / "error.log").read_text()
                time.sleep(0.05)
        log = tmp_path / "access.log"
        log.write_bytes(b"")  # the probe's line (a connection without a request) is not logged
        for request in NGINX_REQUESTS:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(request)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
        while log.read_bytes().count(b"\n") < len(NGINX_REQUESTS):
            assert time.monotonic() < deadline, log.read_bytes()
            time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(10)
    columns = {
        "remote_user": "str",
        "request": "str",
        "method": "str",
        "path": "str",
        "protocol": "str",
        "status": "int",
        "bytes": "int",
    }
    lines = log.read_bytes().splitlines(keepends=True)
    got = af.run(af.read_log(str(log), columns=columns)).value  # raises on a line it cannot parse
    assert len(got) == len(lines) == len(NGINX_REQUESTS)
    by_request = {
        r: (m, p, pr)
        for r, m, p, pr in zip(
            got["request"], got["method"], got["path"], got["protocol"], strict=True
        )
    }
    assert by_request["GET /a b HTTP/1.1"] == ("GET", "/a b", "HTTP/1.1")
    assert by_request["M-SEARCH * HTTP/1.1"] == ("M-SEARCH", "*", "HTTP/1.1")
    assert by_request["get /lower HTTP/1.1"] == ("get", "/lower", "HTTP/1.1")
    assert "b ob [x]" in got["remote_user"].tolist()
    # the reference: each line by re + strptime
    for line, status in zip(lines, got["status"].tolist(), strict=True):
        m = re.fullmatch(
            r'\S+ - .*? \[([^\]]+)\] "(?:[^"\\]|\\.)*" (\d{3}) .*', line.decode().rstrip("\n")
        )
        assert m is not None
        assert int(m[2]) == status
        datetime.strptime(m[1], "%d/%b/%Y:%H:%M:%S %z")


_TIMES = st.sampled_from(
    [
        "10/Oct/2000:13:55:36 -0700",
        "29/Feb/2024:00:00:00 +0000",
        "31/Dec/1999:23:59:59 +1400",
        "32/Oct/2000:13:55:36 -0700",
        "29/Feb/2023:00:00:00 +0000",
        "10/Foo/2000:13:55:36 -0700",
    ]
)


@st.composite
def log_lines(draw: st.DrawFn) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(
                draw(st.sampled_from([b"\n", b"garbage\n", b"\xff\xfe\n", b"x" * 150 + b"\n"]))
            )
        else:
            request, status, _ = draw(st.sampled_from(NGINX_LINES))
            user = draw(st.sampled_from(["-", "a b", "[x]"]))
            line = _nginx_line(request, status, user).replace(
                "10/Oct/2000:13:55:36 -0700", draw(_TIMES)
            )
            lines.append(line.encode())
    return lines


@settings(max_examples=60, deadline=None)
@given(lines=log_lines(), read_size=st.integers(1, 300))
def test_log_decoder_agrees_with_re_and_strptime(lines: list[bytes], read_size: int) -> None:
    pattern = re.compile(COMBINED)
    columns = {"time": "timestamp:%d/%b/%Y:%H:%M:%S %z", "status": "int", "path": "str"}
    want, bad = [], []
    for k, line in enumerate(lines):
        text = line.decode(errors="replace").rstrip("\n")
        if not text.strip() or len(line.rstrip(b"\n")) > MAX_LINE:
            continue
        m = pattern.fullmatch(text)
        try:
            assert m is not None
            moment = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z")
        except (AssertionError, ValueError):
            bad.append(k)
            continue
        ns = np.datetime64(moment.astimezone(UTC).replace(tzinfo=None), "ns")
        want.append((int(ns.astype("i8")), int(m["status"]), m["path"] or ""))
    got, dead = _read_file(
        lines,
        lambda path, policy: (
            af.read_blocks(path, read_size=read_size, max_line=MAX_LINE, on_error=policy)
            | af.decode_log(columns=columns, on_error=policy, fail_fast=None)
        ),
    )
    _same_rows(got, want)
    _same_dead(dead, lines, bad)


# --- issue 12, item by item -------------------------------------------------------------


@pytest.mark.parametrize("read_size", [64 * 1024, 1 << 20])
def test_dead_letters_after_an_overlong_line_carry_their_own_line(
    read_size: int, tmp_path: Path
) -> None:
    lines = []
    bad = []
    for i in range(20_000):
        if i % 997 == 5:
            lines.append(b"1," * 40_000 + b"\n")  # over-long (max_line 64 KiB)
        elif i % 101 == 7:
            lines.append(f"{i},oops,{i}\n".encode())
            bad.append(i)
        else:
            lines.append(f"{i},{i % 7},{i / 4}\n".encode())
    (tmp_path / "a.csv").write_bytes(b"".join(lines))
    dead: list[af.FailedItem] = []
    flow = af.read_csv(
        str(tmp_path / "a.csv"),
        READING,
        read_size=read_size,
        max_line=65536,
        on_error=af.dead_letter(dead),
    )
    got = af.run(flow).value
    assert len(got) == 20_000 - len(bad) - 21
    offsets = np.cumsum([0, *map(len, lines)])
    decoded = sorted(  # blocks decoded at once in threads: dead letters in any order
        (d for d in dead if not isinstance(d.error, af.LineTooLongError)),
        key=lambda d: d.provenance.start,  # type: ignore[union-attr]
    )
    assert [(d.provenance.start, d.provenance.offset, d.item) for d in decoded] == [  # type: ignore[union-attr]
        (i + 1, int(offsets[i]), lines[i]) for i in bad
    ]
    for d in decoded:  # the line alone, not its block
        assert d.provenance is not None
        assert d.provenance.stop == d.provenance.start + 1
        assert d.provenance.end_offset == d.provenance.offset + len(d.item)  # type: ignore[operator]
    long = [d for d in dead if isinstance(d.error, af.LineTooLongError)]
    assert len(long) == 21
    assert all(d.item and lines[d.error.line - 1].startswith(d.item) for d in long)  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ["numpy", "pyarrow", "auto"])
@pytest.mark.parametrize("width", ["f4", "f8"])
@pytest.mark.parametrize("copies", [50, pytest.param(2000, marks=pytest.mark.slow, id="2000")])
def test_numbers_beyond_float64_are_bad_lines_not_infinity(
    engine: str, width: str, copies: int
) -> None:
    dt = np.dtype([("a", "i8"), ("v", width)])
    huge = "9" * 2000
    lines = [b"1,1e400\n", b"2,-1e400\n", f"3,{huge}\n".encode(), b"4,inf\n", b"5,1.5\n"]
    # pyarrow's block sizes too: 50 copies are 100 kB, 2,000 (the slow pass) 4 MB
    blob = b"".join(lines) * (1 if engine == "numpy" else copies)
    rows, bad = CsvDecoder(dt, engine=engine).decode(blob)  # type: ignore[arg-type]
    assert rows["a"].tolist() == [4, 5] * (len(blob) // sum(map(len, lines)))
    assert {b.line for b in bad} == set(lines[:3])
    jsonl = JsonlDecoder(dt).decode(
        b'{"a": 1, "v": 1e400}\n{"a": 2, "v": ' + huge.encode() + b"}\n"
    )
    assert len(jsonl.rows) == 0
    assert len(jsonl.bad) == 2


@pytest.mark.anyio
async def test_rerunning_read_csv_with_a_header_on_the_default_engine(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"".join(HEADER_LINES) * 1)
    expected = np.array([(i, i % 3, i / 4) for i in range(300)], READING)
    flow = af.read_csv(str(tmp_path / "a.csv"), READING, header=True)  # threads, pyarrow
    for _ in range(20):
        np.testing.assert_array_equal((await flow.run()).value, expected)
    results: list[Any] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(lambda: _collect_into(flow, results))
    assert len(results) == 8
    for got in results:
        np.testing.assert_array_equal(got, expected)


async def _collect_into(flow: af.Flow[Any], results: list[Any]) -> None:
    results.append((await flow.run()).value)


@pytest.mark.parametrize(
    ("text", "dtype", "options", "cause"),
    [
        (b"1,2.5,x\n" * 200, READING, {}, "dtype"),
        (b"1;2;3.5\n" * 200, READING, {}, "';'-separated"),
        (b"1,2\n" * 200, READING, {}, "column count: the lines have 2 fields"),
        (b"a,b,c\n" + b"1,2.5\n" * 200, READING, {}, "column count"),
        (b"1,2,3.5\n" * 5 + b"1,x,1\n" * 195, READING, {"fail_fast": 0.9}, "dtype"),
    ],
)
def test_a_bad_start_fails_fast_with_its_likely_cause_even_under_skip(
    text: bytes, dtype: np.dtype[Any], options: dict[str, Any], cause: str
) -> None:
    for engine in ("numpy", "auto"):
        stage = af.decode_csv(dtype, engine=engine, on_error="skip", **options)  # type: ignore[arg-type]
        with pytest.raises(af.DecodeError, match="of the first 100 lines are bad") as caught:
            af.run(af.from_arrays([np.frombuffer(text, np.uint8)]) | stage)
        assert cause in str(caught.value)
    stage = af.decode_csv(dtype, on_error="skip", fail_fast=None)
    assert af.run(af.from_arrays([np.frombuffer(text, np.uint8)]) | stage).statistics.errors > 0


def test_a_header_line_gets_a_hint_and_aflow_s_own_words() -> None:
    lines = [b"ts,sensor,value\n", b"1,2,3.5\n"]
    with pytest.raises(af.DecodeError, match="looks like a header: pass header=True") as caught:
        af.run(af.from_iterable(lines) | af.decode_csv(READING))
    assert "usecols" not in str(caught.value)
    for engine in ("numpy", "pyarrow"):
        _rows, bad = CsvDecoder(READING, engine=engine).decode(b"1,2\n1,2,3,4\n")  # type: ignore[arg-type]
        assert [str(b.error) for b in bad] == [
            "2 fields where the dtype has 3 columns (ts, sensor, value)",
            "4 fields where the dtype has 3 columns (ts, sensor, value)",
        ]


@pytest.mark.anyio
async def test_header_names_map_columns_per_file(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"value,extra,ts,sensor\n0.5,x,1,2\n1.5,y,3,4\n")
    (tmp_path / "b.csv").write_bytes(b"ts,sensor,value\n5,6,2.5\n")
    flow = af.read_blocks(str(tmp_path / "*.csv")) | af.decode_csv(READING, header="names")
    got = (await flow.run()).value
    assert sorted(got.tolist()) == [(1, 2, 0.5), (3, 4, 1.5), (5, 6, 2.5)]
    (tmp_path / "c.csv").write_bytes(b"ts,value\n1,2\n")
    with pytest.raises(ValueError, match="has no column 'sensor'"):
        await (
            af.read_blocks(str(tmp_path / "c.csv")) | af.decode_csv(READING, header="names")
        ).run()


@pytest.mark.parametrize("engine", ["numpy", "pyarrow"])
def test_missing_values_and_non_ascii_text(engine: str) -> None:
    dt = np.dtype([("n", "i4"), ("x", "f4"), ("s", "S6"), ("u", "U2")])
    text = "1,,café,日本\n,2.5,x,é\n3,1,日本語,x\n".encode()
    rows, bad = CsvDecoder(dt, engine=engine, fill_int=-1).decode(text)  # type: ignore[arg-type]
    assert rows["n"].tolist() == [1, -1]
    assert np.isnan(rows["x"][0])
    assert rows["x"][1] == 2.5
    assert rows["s"].tolist() == ["café".encode(), b"x"]  # UTF-8, in every engine
    assert rows["u"].tolist() == ["日本", "é"]
    assert [b.index for b in bad] == [2]  # 9 bytes of UTF-8 do not fit S6: a bad line
    rows, bad = CsvDecoder(dt, engine=engine).decode(text)  # type: ignore[arg-type]
    assert [b.index for b in bad] == [1, 2]  # an empty integer without fill_int
    jsonl = JsonlDecoder(dt, fill_int=0).decode(
        '{"n": null, "x": null, "s": "café", "u": "日本"}\n'.encode()
    )
    assert jsonl.bad == []
    assert jsonl.rows["s"][0] == "café".encode()
    assert jsonl.rows["n"][0] == 0


def test_bad_lines_are_found_without_bisection() -> None:
    good = [f"{i},{i % 7},{i / 4}\n".encode() for i in range(20_000)]
    for i in range(0, 20_000, 100):
        good[i] = b"1,2,oops\n" if i % 200 else b"1,2\n"
    calls = 0
    for engine in ("numpy", "pyarrow"):
        decoder = CsvDecoder(READING, engine=engine)  # type: ignore[arg-type]
        parse = decoder._parse

        def counted(blob: bytes, parse: Any = parse) -> Any:
            nonlocal calls
            calls += 1
            return parse(blob)

        decoder._parse = counted
        calls = 0
        rows, bad = decoder.decode(b"".join(good))
        assert len(bad) == 200
        assert len(rows) == 19_800
        assert calls <= 2 + 200  # the block, its clean lines, each suspect: no halving


def many_small_files(root: Path, header: bool, empty: bool = True) -> None:
    """300 small CSV files in nested folders: some with empty lines (unless not ``empty``),
    bad lines, a last line without a newline; with ``header``, a header naming the columns
    in its own order."""
    for i in range(300):
        folder = root / f"d{i % 7}"
        folder.mkdir(exist_ok=True)
        names = ["value", "ts", "sensor"] if header and i >= 150 else ["ts", "sensor", "value"]
        lines = [",".join(names)] if header else []
        for j in range(5):
            row = {"ts": str(i * 10 + j), "sensor": str(j), "value": f"{j / 4}"}
            lines.append(",".join(row[n] for n in names))
        if empty and i % 37 == 3:
            lines.insert(2, "")  # an empty line
        if i % 53 == 5:
            lines.insert(3, "not,a,row")
        text = "\n".join(lines) + ("" if i % 61 == 7 else "\n")
        (folder / f"f{i:03d}.csv").write_text(text)


@pytest.mark.anyio
@pytest.mark.parametrize("header", [False, "names"])
@pytest.mark.parametrize("empty", [True, False])  # False: bad lines split off merged units
async def test_many_small_files_decode_in_merged_calls_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, header: Any, empty: bool
) -> None:
    many_small_files(tmp_path, header=bool(header), empty=empty)
    pattern = str(tmp_path / "**" / "*.csv")
    merged: list[int] = []
    real = decode_module._Merged.__init__

    def spy(self: Any, blocks: list[af.Batch]) -> None:
        merged.append(len(blocks))
        real(self, blocks)

    monkeypatch.setattr(decode_module._Merged, "__init__", spy)

    async def run(threads: int) -> tuple[list[Any], list[tuple[str, int | None]]]:
        dead: list[af.FailedItem] = []
        flow = af.read_csv(
            pattern, READING, header=header, threads=threads, on_error=af.dead_letter(dead)
        )
        batches: list[Any] = []
        async with flow.open() as opened:
            async for msg in opened.envelopes():
                batches.append((msg.provenance, msg.data.tolist()))
        return batches, [(d.error.source, d.error.line) for d in dead]  # type: ignore[attr-defined]

    one_by_one = await run(0)  # fused: one decode call per file
    assert not merged
    together = await run(2)
    assert merged
    assert max(merged) > 10  # small files were decoded many per call
    assert together == one_by_one  # the same rows, provenance and bad lines
    bad = [f for f, _ in one_by_one[1]]
    assert len(bad) == len([i for i in range(300) if i % 53 == 5])
    for source, line in one_by_one[1]:  # each bad line named by its file and number
        assert line is not None
        text = await anyio.Path(source).read_text()
        assert text.splitlines()[line - 1] == "not,a,row"

"""Line splitting and decoders: any split of the input gives the same records, bad lines
are split off one by one, good ones never lost."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.codecs._decode import decode_lines
from aflow.codecs.csv import _arrow_decoder, _checked_by_numpy, _numpy_decoder
from aflow.codecs.jsonl import _arrow_decoder as _arrow_json_decoder
from aflow.codecs.jsonl import _decoder as _json_decoder
from aflow.codecs.lines import LineSplitter, LineTooLongError
from aflow.codecs.logs import COMBINED

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f8")])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run_splitter(
    chunks: list[bytes], max_line: int = 1 << 20
) -> tuple[list[af.Batch], list[LineTooLongError]]:
    splitter = LineSplitter("mem", max_line=max_line)
    blocks = [b for b in map(splitter.feed, chunks) if b is not None]
    errors = splitter.take_errors()
    last = splitter.finish()
    return blocks + ([last] if last is not None else []), errors


lines_text = st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=40).map(
    lambda ls: b"".join(line + (b"\r\n" if i % 3 == 0 else b"\n") for i, line in enumerate(ls))
)


@settings(max_examples=200, deadline=None)
@given(
    data=lines_text, tail=st.binary(max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=10)
)
def test_splitter_gives_the_same_lines_for_any_chunking(
    data: bytes, tail: bytes, cuts: list[int]
) -> None:
    text = data + tail.replace(b"\n", b"")
    blocks, errors = run_splitter(split_at(text, cuts))
    assert errors == []
    joined = b"".join(bytes(b.data) for b in blocks)
    expected = text if text.endswith(b"\n") or not text else text + b"\n"
    assert joined == expected
    # provenance: consecutive line numbers and byte offsets that tile the input
    line, offset = 1, 0
    for b in blocks:
        prov = b.provenance
        assert prov is not None
        assert (prov.start, prov.offset) == (line, offset)
        assert prov.stop - prov.start == bytes(b.data).count(b"\n")
        line, offset = prov.stop, prov.end_offset
    assert offset == len(text)


def test_an_overlong_line_is_reported_and_skipped_alone() -> None:
    text = b"ok1\n" + b"x" * 100 + b"\nok2\n"
    blocks, errors = run_splitter(split_at(text, [2, 30, 60, 90, 104]), max_line=16)
    assert b"".join(bytes(b.data) for b in blocks) == b"ok1\nok2\n"
    assert len(errors) == 1
    assert (errors[0].line, errors[0].offset) == (2, 4)
    assert blocks[-1].provenance is not None
    assert blocks[-1].provenance.start == 3


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), max_size=30),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_overlong_lines_are_dropped_and_reported_for_any_chunking(
    lengths: list[int], cuts: list[int]
) -> None:
    max_line = 10
    lines = [bytes([97 + i % 26]) * n + b"\n" for i, n in enumerate(lengths)]
    blocks, errors = run_splitter(split_at(b"".join(lines), cuts), max_line=max_line)
    kept = b"".join(line for line in lines if len(line) - 1 <= max_line)
    assert b"".join(bytes(b.data) for b in blocks) == kept
    long = [i + 1 for i, n in enumerate(lengths) if n > max_line]
    assert [e.line for e in errors] == long
    starts = np.cumsum([0, *map(len, lines)])
    assert [e.offset for e in errors] == [int(starts[i - 1]) for i in long]


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


csv_token = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "+1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "",
            "-",
            "0x10",
            "1_000",
            ".5",
            "5.",
            '"1"',
            "1d5",
            "300",
            "-1",
            "1.0000000596046448",
        ]
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(csv_token, csv_token, csv_token), max_size=30),
    ending=st.sampled_from(["\n", "\r\n"]),
    dtype=st.sampled_from(
        [[("a", "i8"), ("b", "u1"), ("c", "f8")], [("a", "i4"), ("b", "f4"), ("c", "f2")]]
    ),
)
def test_csv_auto_engine_follows_numpy_rules_on_any_block(
    rows: list[tuple[str, str, str]], ending: str, dtype: list[tuple[str, str]]
) -> None:
    dt = np.dtype(dtype)
    blob = "".join(",".join(r) + ending for r in rows).encode()
    reference = _numpy_decoder(dt, ",")
    auto = _checked_by_numpy(_arrow_decoder(dt, ","), reference)

    def outcome(decode: Any) -> tuple[list[Any], list[int]]:
        parts, bad = decode_lines(blob, decode)
        got = [repr(r) for p in parts for r in p.tolist()]
        return got, [i for i, _, _ in bad]

    assert outcome(auto) == outcome(reference)


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
    for blob in (jsonl[:60], jsonl):  # the reference decoder, then pyarrow's fast path
        dead.clear()
        stage = af.decode_jsonl(dt, on_error=af.dead_letter(dead))
        rows = af.run(af.from_arrays([np.frombuffer(blob, np.uint8)]) | stage).value
        assert rows["a"].tolist() == [2] * (blob.count(b"\n") // 2)
        assert len(dead) == blob.count(b"\n") - len(rows)


def _line_aligned(text: bytes, cuts: list[int]) -> list[bytes]:
    blocks, _ = run_splitter(split_at(text, cuts))
    return [bytes(b.data) for b in blocks] or [b""]


def test_bisection_isolates_each_bad_line() -> None:
    good = csv_text([(i, i, float(i)) for i in range(1000)])
    lines = good.splitlines(keepends=True)
    lines[10] = b"1,2\n"
    lines[500] = b"\xff\xfe,1,1\n"
    lines[999] = b"1,2,3,4\n"
    parts, bad = decode_lines(b"".join(lines), _numpy_decoder(READING, ","))
    assert [index for index, _, _ in bad] == [10, 500, 999]
    assert sum(len(p) for p in parts) == 997


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

    (inline, inline_dead), (threaded, threaded_dead) = decoded(None), decoded(3)
    assert threaded.value.tolist() == inline.value.tolist()
    assert sorted(threaded_dead) == inline_dead == list(range(2, 900, 3))  # any order
    assert threaded.statistics.stage("decode_log[threads=3]").batches_out > 1
    with pytest.raises(KeyError):
        inline.statistics.stage("decode_log[threads=3]")


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
    ) | af.decode_log(on_error=af.dead_letter(dead))
    got = af.run(flow).value
    rows = [m for m in good if m is not None]
    if not rows:  # nothing decoded: no batch, so collect() gives an empty list
        assert len(got) == 0
        got = np.empty(0, [("status", "i8"), ("bytes", "i8"), ("path", "O")])
    assert got["status"].tolist() == [int(m["status"]) for m in rows]
    assert got["bytes"].tolist() == [0 if m["bytes"] == "-" else int(m["bytes"]) for m in rows]
    assert got["path"].tolist() == [m["path"] for m in rows]
    assert [d.item for d in dead] == bad


json_special = st.sampled_from(["NaN", "Infinity", "null", '"7"', "true", "1e400", "2.5e3", "-0"])


def json_field(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(good, good, good, json_special)  # mostly good, sometimes not


json_line = st.one_of(
    st.tuples(
        json_field(st.integers(-(2**63), 2**63 - 1).map(str)),
        json_field(st.integers(-(2**31), 2**31 - 1).map(str)),
        json_field(st.floats(allow_nan=False, allow_infinity=False).map(repr)),
    ).map(lambda v: '{{"ts": {}, "sensor": {}, "value": {}, "x": [1]}}'.format(*v)),
    st.sampled_from(
        [
            '{"ts": 1, "sensor": 2}',
            '{"ts": 1, "ts": 2, "sensor": 3, "value": 4}',
            "[1, 2]",
            '{"ts": 1, "sensor": 2, "value": 3}{"ts": 1, "sensor": 2, "value": 3}',
            "",
            "not json",
        ]
    ),
)


@settings(max_examples=120, deadline=None)
@given(lines=st.lists(json_line, min_size=1, max_size=40), f4=st.booleans())
@example(lines=['{"ts": 0, "sensor": 0, "value": 3.4028235677973366e+38}'], f4=True)  # rounding
@example(lines=['{"ts": 1, "sensor": 2, "value": 3, "x": NaN}'], f4=False)  # in another key
@example(lines=['{"ts": 1, "sensor": 2, "value": 3, "s": "\udcff"}'], f4=False)  # bad UTF-8
@example(lines=['{"ts": 1, "sensor": 2, "value": -0}'], f4=False)  # an integer -0
@example(
    lines=['{"ts": 1, "sensor": 2, "x":', '{}, "value": 3}{"ts": 1, "sensor": 2, "value": 3}'],
    f4=False,
)
def test_jsonl_pyarrow_fast_path_agrees_with_the_reference(lines: list[str], f4: bool) -> None:
    dtype = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4" if f4 else "f8")])
    blob = "".join(line + "\n" for line in lines).encode(errors="surrogateescape")
    reference = _json_decoder(dtype)
    fast = _arrow_json_decoder(dtype, reference)
    assert fast is not None

    def outcome(decode: Any) -> tuple[list[Any], list[bytes]]:
        parts, bad = decode_lines(blob, decode)
        rows = [r for p in parts for r in p.tolist()]
        return rows, [raw for _, raw, _ in bad]

    assert outcome(fast) == outcome(reference)  # same rows (no NaN passes), same bad lines


def test_decoders_reject_unstructured_dtypes() -> None:
    with pytest.raises(TypeError, match="structured"):
        af.decode_csv("f8")
    with pytest.raises(ValueError, match="not a named group"):
        af.decode_log(r"(?P<a>\d+)", {"b": "int"})

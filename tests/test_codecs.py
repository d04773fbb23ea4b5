"""Codecs (aflow/codecs/): line splitting, decoders and encoders, through their public
API, without a flow. Any split of the input gives the same records, bad lines are split
off one by one, good ones never lost."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.codecs import (
    COMBINED,
    SMALL_BLOCK,
    CsvDecoder,
    CsvEncoder,
    JsonlDecoder,
    JsonlEncoder,
    LineSplitter,
    LogDecoder,
)
from aflow.codecs._csvnative import has_native

NO_SCANNER = "aflow was installed without its compiled CSV scanner (no C compiler)"


def has_arrow() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f8")])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run_splitter(
    chunks: list[bytes], max_line: int = 1 << 20
) -> tuple[list[af.Batch], list[af.LineTooLongError]]:
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
            "nan(123)",  # pyarrow reads it as NaN, NumPy does not
            "NaN()",
        ]
    ),
)


csv_blocks = given(
    rows=st.lists(st.tuples(csv_token, csv_token, csv_token), max_size=30),
    ending=st.sampled_from(["\n", "\r\n"]),
    dtype=st.sampled_from(
        [
            [("a", "i8"), ("b", "u1"), ("c", "f8")],
            [("a", "i4"), ("b", "f4"), ("c", "f2")],
            [("a", "u8"), ("b", "i2"), ("c", "f4")],
        ]
    ),
)


CSV_ENGINES = [
    pytest.param("pyarrow", marks=pytest.mark.skipif(not has_arrow(), reason="no pyarrow")),
    pytest.param("native", marks=pytest.mark.skipif(not has_native(), reason=NO_SCANNER)),
]


@pytest.mark.parametrize("engine", CSV_ENGINES)
@settings(max_examples=40, deadline=None)
@csv_blocks
def test_csv_fast_engines_follow_numpy_rules_on_any_block(
    engine: str, rows: list[tuple[str, str, str]], ending: str, dtype: list[tuple[str, str]]
) -> None:
    csv_engines_agree(engine, rows, ending, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("engine", CSV_ENGINES)
@settings(max_examples=300, deadline=None)
@csv_blocks
def test_csv_fast_engines_follow_numpy_rules_on_many_more_blocks(
    engine: str, rows: list[tuple[str, str, str]], ending: str, dtype: list[tuple[str, str]]
) -> None:
    csv_engines_agree(engine, rows, ending, dtype)


def csv_engines_agree(
    engine: str, rows: list[tuple[str, str, str]], ending: str, dtype: list[tuple[str, str]]
) -> None:
    """A fast engine decodes a block with bad lines as the numpy engine does."""
    if engine == "native":  # float16 is not the scanner's: float64 in its place
        dtype = [(n, "f8" if t == "f2" else t) for n, t in dtype]
    dt = np.dtype(dtype)
    # good lines around the tokens make a block large enough for pyarrow, and halves of it
    # still large enough when bisection looks for the bad lines
    padding = ("0,0,0" + ending) * (SMALL_BLOCK // 5)
    blob = (padding + "".join(",".join(r) + ending for r in rows) + padding).encode()
    reference = CsvDecoder(dt, engine="numpy")
    fast = CsvDecoder(dt, engine=engine)  # type: ignore[arg-type]
    assert fast.engine == engine

    def outcome(decoder: CsvDecoder) -> tuple[list[Any], list[int]]:
        rows, bad = decoder.decode(blob)
        got = [repr(r) for r in rows.tolist()]
        return got, [i for i, _, _ in bad]

    assert outcome(fast) == outcome(reference)


def test_bisection_isolates_each_bad_line() -> None:
    good = csv_text([(i, i, float(i)) for i in range(1000)])
    lines = good.splitlines(keepends=True)
    lines[10] = b"1,2\n"
    lines[500] = b"\xff\xfe,1,1\n"
    lines[999] = b"1,2,3,4\n"
    for engine in ("numpy", "pyarrow", *(["native"] if has_native() else [])):
        rows, bad = CsvDecoder(READING, engine=engine).decode(b"".join(lines))  # type: ignore[arg-type]
        assert [index for index, _, _ in bad] == [10, 500, 999]
        assert len(rows) == 997


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
    reference = JsonlDecoder(dtype, engine="python")
    fast = JsonlDecoder(dtype, engine="pyarrow")  # on blocks of every size
    assert fast.engine == "pyarrow"

    def outcome(decoder: JsonlDecoder) -> tuple[list[Any], list[bytes]]:
        decoded = decoder.decode(blob)
        rows = [repr(r) for r in decoded.rows.tolist()]  # a null reads as NaN in both
        return rows, [raw for _, raw, _ in decoded.bad]

    assert outcome(fast) == outcome(reference)  # same rows (no NaN passes), same bad lines


def test_decoders_reject_unstructured_dtypes_and_unknown_engines() -> None:
    with pytest.raises(TypeError, match="structured"):
        CsvDecoder("f8")
    with pytest.raises(TypeError, match="structured"):
        JsonlDecoder("f8")
    with pytest.raises(ValueError, match="not a named group"):
        LogDecoder(r"(?P<a>\d+)", {"b": "int"})
    with pytest.raises(ValueError, match="engine="):
        CsvDecoder(READING, engine="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="number fields only"):
        JsonlDecoder([("name", "U8")], engine="pyarrow")
    assert JsonlDecoder([("name", "U8")]).engine == "python"


@pytest.mark.parametrize("engine", ["numpy", "pyarrow", "auto"])
def test_csv_decoder_takes_bytes_or_a_line_block_and_skips_a_header(engine: str) -> None:
    text = b"ts,sensor,value\n1,2,0.5\nbad\n3,4,1e3"  # no newline at the end
    decoder = CsvDecoder(READING, engine=engine)  # type: ignore[arg-type]
    for block in (text, np.frombuffer(text, np.uint8), bytearray(text)):
        rows, bad = decoder.decode(block, header=True)
        assert rows.dtype == READING
        assert rows.tolist() == [(1, 2, 0.5), (3, 4, 1000.0)]
        assert [(b.index, b.line) for b in bad] == [(2, b"bad\n")]
        assert isinstance(bad[0].error, ValueError)
    rows, bad = decoder.decode(text)  # without header=True, the header is a bad line
    assert len(rows) == 2
    assert [b.index for b in bad] == [0, 2]
    assert len(decoder.decode(b"").rows) == 0
    assert decoder.decode(b"bad\n").rows.dtype == READING


MIXED = np.dtype([("id", "i8"), ("x", "f4"), ("y", "f8"), ("n", "u1")])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(width=32, allow_nan=False),
            st.floats(allow_nan=False),
            st.integers(0, 255),
        ),
        max_size=40,
    )
)
def test_encoded_rows_decode_to_the_same_values(rows: list[tuple[Any, ...]]) -> None:
    data = np.array(rows, MIXED)
    text = CsvEncoder().encode(data)
    assert text.count(b"\n") == len(data)
    for engine in ("numpy", "pyarrow"):
        decoded = CsvDecoder(MIXED, engine=engine).decode(text)  # type: ignore[arg-type]
        assert decoded.bad == []
        assert decoded.rows.tobytes() == data.tobytes()
    finite = data[np.isfinite(data["x"]) & np.isfinite(data["y"])]  # JSON has no infinity
    decoded = JsonlDecoder(MIXED).decode(JsonlEncoder().encode(finite))
    assert decoded.bad == []
    assert decoded.rows.tobytes() == finite.tobytes()


def test_csv_encoder_rules() -> None:
    text = np.array(["a", "b;c", 'd"e', "f\ng"])
    assert CsvEncoder(delimiter=";").encode(text) == b'a\n"b;c"\n"d""e"\n"f\ng"\n'
    assert CsvEncoder().encode(np.array([b"caf\xc3\xa9", b"x,y"])) == 'café\n"x,y"\n'.encode()
    when = np.array(["2024-01-02T03:04:05"], "M8[s]")
    assert CsvEncoder().encode(when) == b"2024-01-02T03:04:05\n"
    assert CsvEncoder().encode(np.array([True, False])) == b"True\nFalse\n"
    assert CsvEncoder().encode(np.array([0.1, np.nan, -np.inf], "f4")) == b"0.1\nnan\n-inf\n"
    assert CsvEncoder().encode(np.empty(0)) == b""
    assert CsvEncoder().header(np.zeros((1, 2))) == b"0,1\n"
    assert CsvEncoder(delimiter=";").header(np.zeros(1, [("a;b", "i4"), ("c", "i4")])) == (
        b'"a;b";c\n'
    )
    assert CsvEncoder().line(("c", 1, 2.5, b"d,e")) == b'c,1,2.5,"d,e"\n'
    assert CsvEncoder("%.2f").line((1.0, "x")) == b"1.00,x\n"
    with pytest.raises(TypeError, match="scalar fields"):
        CsvEncoder().encode(np.zeros(2, [("v", "f4", (2,))]))


def test_log_decoder_without_a_flow() -> None:
    line = (
        '203.0.113.9 - alice [10/Oct/2000:13:55:36 -0700] "GET /index.html HTTP/1.1" 200 2326 '
        '"http://example.com/" "Mozilla/5.0" 0.012\n'
    )
    rows, bad = LogDecoder().decode((line + "garbage\n" + line).encode())
    assert rows["status"].tolist() == [200, 200]
    assert rows["time"][0] == np.datetime64("2000-10-10T20:55:36", "ns")
    assert [(b.index, b.line) for b in bad] == [(1, b"garbage\n")]
    assert re.fullmatch(COMBINED, line.strip()) is not None


def test_codec_errors_are_decode_errors_and_value_errors() -> None:
    for error in (af.LineTooLongError, af.FrameTooLongError, af.IncompleteFrameError):
        assert issubclass(error, af.DecodeError)
        assert issubclass(error, ValueError)


def test_pyarrow_engines_do_not_import_pandas() -> None:
    """pyarrow's ``to_numpy`` imports pandas (0.3 s per process on a run's first block):
    the decoders read pyarrow's buffers instead, nulls as NaN."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import aflow as af

        csv = b"1,2.5,x,true\\n2,,yy,false\\n3,4.0,zz,true\\n" * 3000
        dt = [("a", "i8"), ("b", "f4"), ("s", "U4"), ("t", "?")]
        blocks = af.from_arrays([np.frombuffer(csv, np.uint8)])
        got = af.run(blocks | af.decode_csv(dt, engine="pyarrow")).value
        assert got["a"].tolist() == [1, 2, 3] * 3000, got["a"][:6]
        assert np.isnan(got["b"][1::3]).all() and got["b"][0::3].tolist() == [2.5] * 3000
        assert got["s"].tolist() == ["x", "yy", "zz"] * 3000
        assert got["t"].tolist() == [True, False, True] * 3000
        jl = b'{"a": 1, "b": 0.5}\\n{"a": 2, "b": null}\\n' * 3000  # numbers: pyarrow
        blocks = af.from_arrays([np.frombuffer(jl, np.uint8)])
        got = af.run(blocks | af.decode_jsonl([("a", "i8"), ("b", "f8")])).value
        assert got["a"].tolist() == [1, 2] * 3000 and np.isnan(got["b"][1::2]).all()
        print("pandas" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_rows_with_object_fields_are_allocated_cleared_and_take_every_value() -> None:
    """Decoders allocate their rows with ``empty_rows``: cleared memory where the dtype
    holds objects (``np.empty`` set each object slot one at a time: 0.9 ms for a 1 MiB
    block of log rows), plain ``np.empty`` otherwise; either is then filled field by field."""
    from aflow.kernels.rows import empty_rows

    mixed = np.dtype([("path", object), ("status", "<i8"), ("time", "M8[ns]")])
    rows = empty_rows(3, mixed)
    assert rows.dtype == mixed
    assert rows.shape == (3,)
    assert rows["path"].tolist() == [0, 0, 0]  # valid objects, never stray pointers
    rows["path"] = ["/a", "", "/c"]
    rows["status"] = [200, 404, 500]
    rows["time"] = np.array([1, 2, 3], "M8[ns]")
    assert rows[1]["path"] == ""
    assert rows[1]["status"] == 404
    assert rows["time"][1] == np.datetime64(2, "ns")
    assert empty_rows(0, mixed).shape == (0,)
    assert empty_rows(4, "<f8").dtype == np.float64


def test_pyarrow_engines_allocate_from_the_system_pool_not_pyarrows_default() -> None:
    """pyarrow's default pool (mimalloc) kept 20-30 MB more resident than a CSV run used;
    every pyarrow decoder takes its buffers from the system allocator's pool instead."""
    pytest.importorskip("pyarrow")
    script = textwrap.dedent(
        """
        import numpy as np
        import pyarrow as pa
        import aflow as af

        csv = b"1,2.5\\n2,3.5\\n" * 20000
        blocks = af.from_arrays([np.frombuffer(csv, np.uint8)])
        got = af.run(blocks | af.decode_csv([("a", "i8"), ("b", "f4")])).value
        assert len(got) == 40000
        jl = b'{"a": 1, "b": 0.5}\\n' * 20000
        blocks = af.from_arrays([np.frombuffer(jl, np.uint8)])
        got = af.run(blocks | af.decode_jsonl([("a", "i8"), ("b", "f8")])).value
        assert len(got) == 20000
        print(pa.default_memory_pool().max_memory(), pa.system_memory_pool().max_memory())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    default, system = map(int, out.stdout.split())
    assert (default, system > 0) == (0, True)

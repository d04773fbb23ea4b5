"""The compiled CSV scanner (``engine="native"``, aflow/codecs/_csvscan.c): its rows are
Python's own reading of the same text (``csv`` and ``float``/``int``, an independent
reference), and on hostile lines it decides as the NumPy engine does, line for line."""

from __future__ import annotations

import csv
import io
import math
import random
import struct
import subprocess
import sys
import textwrap
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.codecs import CsvDecoder
from aflow.codecs._csvnative import has_native, native_dtype

pytestmark = pytest.mark.skipif(
    not has_native(),
    reason="aflow was installed without its compiled CSV scanner (no C compiler)",
)

DTYPES = [
    [("a", "i8"), ("b", "u1"), ("c", "f8")],
    [("a", "i1"), ("b", "u8"), ("c", "f4")],
    [("a", "u2"), ("b", "i4"), ("c", "f8"), ("d", "u4"), ("e", "i2")],
    [("v", "f8")],
]

# decimal text of every shape the scanner reads itself: short and long mantissas,
# exponents near float64's limits (strtod's part), subnormals, signs and zeros
digits = st.text("0123456789", min_size=1, max_size=30)
decimal = st.builds(
    lambda sign, whole, frac, dot, exp: (
        sign + whole + ("." + frac if dot else "") + (f"e{exp}" if exp is not None else "")
    ),
    st.sampled_from(["", "-"]),
    digits,
    st.text("0123456789", max_size=25),
    st.booleans(),
    st.none() | st.integers(-340, 320),
)


def near_tie(x: float, digits: int, up: bool) -> str:
    """The halfway point between ``x`` and the next double, rounded to ``digits``
    significant digits up or down: just above or below a tie, where the last bits of the
    division decide the rounding."""
    wide = Context(prec=2000)  # exact: a double has at most 767 significant digits
    lo, hi = Decimal(x), Decimal(math.nextafter(x, math.inf))
    exact = wide.divide(wide.add(lo, hi), 2)
    context = Context(prec=digits, rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return format(context.plus(exact), "e")


plain_float = st.one_of(
    decimal,
    # near the edge of exact arithmetic: 2**53 and 10**22
    st.builds("{}e{}".format, st.integers(0, 2**54), st.integers(-30, 30)),
    # 17 to 19 digits (as repr writes doubles), read in 128-bit arithmetic; ties
    st.builds("{}e{}".format, st.integers(2**53, 10**19 - 1), st.integers(-19, 19)),
    st.builds(
        lambda b, k, d: f"{(k * 2 + 1) * 2 ** (b - 53) + d}",  # halfway between doubles
        st.integers(53, 62),
        st.integers(2**52, 2**53 - 1),
        st.sampled_from([0, -1, 1]),
    ),
    st.builds(
        near_tie,
        st.floats(1e-18, 1e18),
        st.integers(17, 19),
        st.booleans(),
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.floats(-1e6, 1e6).map(lambda x: f"{x:.3f}"),
    st.sampled_from(["nan", "NaN", "inf", "-Infinity", "INF", ".5", "5.", "-0", "-.0e-0"]),
)


def plain_int(dt: np.dtype[Any]) -> st.SearchStrategy[str]:
    info = np.iinfo(dt)
    return st.integers(int(info.min), int(info.max)).map(str)


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def python_rows(text: str, dtype: np.dtype[Any]) -> list[tuple[Any, ...]]:
    """The rows Python reads from ``text``: ``csv`` fields through ``int``/``float``,
    then NumPy's cast to the field (float32 rounds once from the double)."""
    out = []
    for fields in csv.reader(io.StringIO(text)):
        row = []
        for value, name in zip(fields, dtype.names or (), strict=True):
            dt = dtype.fields[name][0]  # type: ignore[index]
            if dt.kind == "f":
                row.append(dt.type(float(value)) if value else dt.type(math.nan))
            else:
                row.append(dt.type(int(value)))
        out.append(tuple(row))
    return out


@st.composite
def clean_blocks(draw: st.DrawFn) -> tuple[np.dtype[Any], list[list[str]]]:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    columns = [
        plain_float if dtype.fields[n][0].kind == "f" else plain_int(dtype.fields[n][0])  # type: ignore[index]
        for n in dtype.names or ()
    ]
    rows = draw(st.lists(st.tuples(*columns).map(list), min_size=1, max_size=40))
    return dtype, rows


def fits(value: str, dt: np.dtype[Any]) -> bool:
    """Whether a value is in its column's range: a float beyond float64's (``1e400``), or
    a finite one beyond float32's for a float32 column, makes its line bad (``inf``
    written as such is fine)."""
    if dt.kind != "f":
        return True
    x = float(value)
    written = "inf" in value.lower()
    with np.errstate(over="ignore"):
        narrow = float(dt.type(x))
    return written or not (math.isinf(x) or math.isinf(narrow))


@example(  # just above a tie between doubles, by less than the quotient's last bit
    block=(np.dtype([("v", "f8")]), [["9.020214936071629386e-1"], ["6.687731230437122254e-1"]]),
    ending="\n",
)
@settings(max_examples=300, deadline=None)
@given(block=clean_blocks(), ending=st.sampled_from(["\n", "\r\n"]))
@example(block=(np.dtype([("v", "f8")]), [["2.2250738585072011e-308"]]), ending="\n")
@example(block=(np.dtype([("v", "f8")]), [["9007199254740993"]]), ending="\n")  # 2**53 + 1
@example(block=(np.dtype([("v", "f8")]), [["3e23"], ["1e-23"]]), ending="\n")  # past 10**22
@example(block=(np.dtype([("v", "f8")]), [["4.9e-324"], ["1e-400"]]), ending="\n")
@example(block=(np.dtype([("v", "f8")]), [["0.1000000000000000055511151231257827"]]), ending="\n")
def test_clean_lines_read_as_python_reads_them(
    block: tuple[np.dtype[Any], list[list[str]]], ending: str
) -> None:
    dtype, rows = block
    decoder = CsvDecoder(dtype, engine="native")
    text = "".join(",".join(r) + ending for r in rows)
    got, bad = decoder.decode(text.encode())
    names = dtype.names or ()
    fields: Any = dtype.fields
    finite = [all(fits(v, fields[n][0]) for v, n in zip(r, names, strict=True)) for r in rows]
    assert [b.index for b in bad] == [i for i, ok in enumerate(finite) if not ok]
    kept = [",".join(r) + "\n" for r, ok in zip(rows, finite, strict=True) if ok]
    want = python_rows("".join(kept), dtype)
    assert len(got) == len(want)
    for row, expected in zip(got.tolist(), want, strict=True):
        for g, w in zip(row, expected, strict=True):
            if isinstance(g, float):
                assert bits(g) == bits(float(w)) or (math.isnan(g) and math.isnan(w))
            else:
                assert g == int(w)


hostile = st.one_of(
    st.integers(-(2**65), 2**65).map(str),
    plain_float,
    st.sampled_from(
        [
            "",
            "-",
            "+1",
            " 1",
            "1 ",
            "\t2",
            "-nan",
            "+inf",
            "nan ",
            "infinit",
            "1e",
            "e5",
            "1e+05",
            "1e99999",
            "1.e5",
            "1..2",
            "--1",
            "0x10",
            "1_000",
            '"1"',
            '"',
            '""',
            "1d5",
            "300",
            "-129",
            "65536",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "00012",
            "\uff11",  # a full-width digit
            "\ufeff1",
            "\x00",
            "1\r2",
            "é",
        ]
    ),
)


@st.composite
def hostile_blocks(draw: st.DrawFn) -> tuple[np.dtype[Any], str, bytes]:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|", " ", "\x0b", "\x1f"]))
    width = len(dtype.names or ())
    line = st.one_of(
        st.lists(hostile, min_size=width, max_size=width).map(delimiter.join),
        st.lists(hostile, min_size=0, max_size=width + 2).map(delimiter.join),  # counts
        st.sampled_from(
            [
                "",
                "\r",
                " ",
                "\ufeff",
                "\ufeff" + delimiter.join(["1"] * width),
                delimiter * (width - 1),  # empty fields, or white space only
                delimiter * width,
            ]
        ),
    )
    lines = draw(st.lists(line, max_size=30))
    endings = draw(
        st.lists(st.sampled_from(["\n", "\r\n"]), min_size=len(lines), max_size=len(lines))
    )
    blob = "".join(a + b for a, b in zip(lines, endings, strict=True)).encode(
        "utf-8", "surrogatepass"
    )
    if draw(st.booleans()):
        blob = blob.rstrip(b"\n")  # a last line without its newline
    return dtype, delimiter, blob


@settings(max_examples=400, deadline=None)
@given(block=hostile_blocks(), fill_int=st.sampled_from([None, -1, 300]))
@example(block=(np.dtype(DTYPES[0]), ",", b"1,2,3\n\xef\xbb\xbf4,5,6\n"), fill_int=None)  # BOM
@example(block=(np.dtype(DTYPES[0]), ",", b"\xef\xbb\xbf4,5,6\n7,8,9\n"), fill_int=None)
@example(block=(np.dtype(DTYPES[0]), ",", b'1,"2\n3,4,5\n6",7,8\n'), fill_int=None)  # open quote
@example(block=(np.dtype(DTYPES[0]), ",", b"1,2,1e400\n,2,3\n"), fill_int=300)  # fill out of range
# found by review: lines of white-space delimiters only (blank, alone or in a block), a
# line of a byte order mark only
@example(block=(np.dtype(DTYPES[3]), " ", b" \n"), fill_int=None)
@example(block=(np.dtype(DTYPES[2]), " ", b"    \n1 2 3 4 5\n    \n"), fill_int=0)
@example(block=(np.dtype(DTYPES[0]), "\t", b"1\t2\t3\n\t\t\r\n"), fill_int=None)
@example(block=(np.dtype(DTYPES[3]), ",", b"\xef\xbb\xbf\n1\n"), fill_int=None)
@example(block=(np.dtype(DTYPES[0]), ",", b"\xef\xbb\xbf\n1,2,3\n"), fill_int=None)
def test_every_line_is_decided_as_the_numpy_engine_decides_it(
    block: tuple[np.dtype[Any], str, bytes], fill_int: int | None
) -> None:
    dtype, delimiter, blob = block
    native = CsvDecoder(dtype, delimiter=delimiter, fill_int=fill_int)
    assert native.engine == "native"
    numpy = CsvDecoder(dtype, delimiter=delimiter, fill_int=fill_int, engine="numpy")

    def outcome(decoder: CsvDecoder) -> tuple[list[str], list[tuple[int, bytes]]]:
        rows, bad = decoder.decode(blob)
        assert rows.dtype == dtype
        return [repr(r) for r in rows.tolist()], [(b.index, b.line) for b in bad]

    assert outcome(native) == outcome(numpy)


def test_a_block_of_lines_left_over_is_decoded_whole_with_its_bad_lines_isolated() -> None:
    """Quoted numbers are not the scanner's: a block of them (pyarrow's size) goes to the
    other engines in one piece, bad lines still found one by one, rows in order."""
    lines = [f'{i},"{i % 7}",{i / 8}\n'.encode() for i in range(3000)]
    lines[5] = b"5,6,7\n"  # the scanner's
    lines[100] = b'100,"x",1\n'
    lines[2999] = b'2999,"1",1e400\n'
    blob = b"".join(lines)
    dtype = np.dtype(DTYPES[0])
    rows, bad = CsvDecoder(dtype).decode(blob)
    want, want_bad = CsvDecoder(dtype, engine="numpy").decode(blob)
    assert [b.index for b in bad] == [b.index for b in want_bad] == [100, 2999]
    assert rows.tolist() == want.tolist()
    assert rows["a"].tolist() == [i for i in range(3000) if i not in (100, 2999)]


def test_clean_csv_never_imports_pyarrow() -> None:
    """A run of clean lines is the scanner's alone: pyarrow (35 MB of a process) stays out."""
    code = textwrap.dedent(
        """
        import sys, tempfile, os
        import aflow as af
        path = os.path.join(tempfile.mkdtemp(), "a.csv")
        with open(path, "w") as f:
            f.write("".join(f"{i},{i % 10},{i / 4}\\n" for i in range(200_000)))
        dt = [("ts", "i8"), ("sensor", "i4"), ("value", "f4")]
        rows = af.run(af.read_csv(path, dt)).value
        assert len(rows) == 200_000 and rows["ts"][-1] == 199_999, rows[-3:]
        print("pyarrow" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_engine_is_chosen_by_dtype_and_delimiter() -> None:
    assert CsvDecoder(DTYPES[1]).engine == "native"
    assert CsvDecoder(DTYPES[1], delimiter=";").engine == "native"
    assert not native_dtype(np.dtype(DTYPES[1]), ".")  # a decimal point
    assert not native_dtype(np.dtype(DTYPES[1]), "::")
    assert not native_dtype(np.dtype([("a", ">i4")]), ",")  # not the machine's order
    assert not native_dtype(np.dtype([("a", "f2")]), ",")
    assert CsvDecoder([("a", "i4"), ("b", "U4")]).engine == "numpy"
    with pytest.raises(ValueError, match="engine='native' reads integer"):
        CsvDecoder([("a", "i4"), ("b", "U4")], engine="native")
    with pytest.raises(ValueError, match="engine='native' reads integer"):
        CsvDecoder(DTYPES[1], delimiter="e", engine="native")


@pytest.mark.parametrize("engine", ["native", "numpy"])
def test_columns_by_name_keep_their_dtype_around_a_bad_line(engine: str) -> None:
    """``header="names"``: a block with a number beyond float64 (raised by the parser
    with the good lines' rows) still gives rows of the asked dtype, not the header's."""
    dtype = np.dtype([("value", "f8"), ("ts", "i8")])
    blob = b"ts,junk,value\n1,a,0.5\n2,b,1e400\n3,c,2.5\n"
    decoder = CsvDecoder(dtype, engine=engine)  # type: ignore[arg-type]
    rows, bad = decoder.by_names(blob[:14]).decode(blob[14:])
    assert rows.dtype == dtype
    assert rows.tolist() == [(0.5, 1), (2.5, 3)]
    assert [b.index for b in bad] == [1]


@pytest.mark.anyio
async def test_read_csv_reports_a_bad_line_with_its_file_and_line(tmp_path: Any) -> None:
    path = tmp_path / "a.csv"
    lines = [f"{i},{i % 3},{i / 2}\n" for i in range(50_000)]
    lines[31_337] = "31337,1,one\n"
    path.write_text("".join(lines))
    dead: list[af.FailedItem] = []
    flow = af.read_csv(str(path), DTYPES[0], on_error=af.dead_letter(dead))
    rows = (await flow.run()).value
    assert len(rows) == 49_999
    assert [d.item for d in dead] == [b"31337,1,one\n"]
    assert dead[0].provenance is not None
    assert dead[0].provenance.start == 31_338  # 1-based line number
    assert str(path) in str(dead[0].provenance.source)


def test_many_long_numbers_and_near_ties_read_as_python_reads_them() -> None:
    """Half a million numbers of 16 to 19 digits, and texts a hair above or below a tie
    between two doubles: each is the double Python reads, bit for bit."""
    rng = random.Random(5)
    texts = []
    for _ in range(400_000):
        digits = rng.choice([16, 17, 18, 19])
        whole = str(rng.randrange(10 ** (digits - 1), 10**digits))
        exp10 = rng.randint(-digits - 19, 19)
        texts.append(
            f"{whole[:exp10]}.{whole[exp10:]}" if -digits < exp10 < 0 else f"{whole}e{exp10}"
        )
    texts += [
        near_tie(rng.uniform(0.1, 2) * 10.0 ** rng.randint(-3, 17), rng.randint(17, 19), up)
        for up in (True, False)
        for _ in range(50_000)
    ]
    rows, bad = CsvDecoder([("v", "f8")], engine="native").decode(
        ("\n".join(texts) + "\n").encode()
    )
    assert not bad
    want = np.array([float(t) for t in texts])
    wrong = np.flatnonzero(rows["v"].view(np.uint64) != want.view(np.uint64))
    assert not len(wrong), [texts[i] for i in wrong[:5]]


def test_odd_delimiters_and_fill_values_are_checked_up_front() -> None:
    """A delimiter pyarrow and the scanner do not take (NUL, non-ASCII) decodes with NumPy;
    a fill value that is not an integer is a TypeError, not a row of 1s or bad lines."""
    dtype = [("a", "i4"), ("b", "f8")]
    for delimiter in ("\x00", "\u00e9"):
        decoder = CsvDecoder(dtype, delimiter=delimiter)
        assert decoder.engine == "numpy"
        line = f"1{delimiter}2.5\n\n".encode()
        assert decoder.decode(line).rows.tolist() == [(1, 2.5)]
    for fill in (True, 1.7, "1"):
        with pytest.raises(TypeError, match="fill_int"):
            CsvDecoder(dtype, fill_int=fill)  # type: ignore[arg-type]
    assert CsvDecoder(dtype, fill_int=np.int64(3)).decode(b",1\n").rows.tolist() == [(3, 1.0)]


def test_the_scanner_checks_its_arguments_and_reads_any_buffer() -> None:
    """The C function refuses a spec it cannot trust (an offset past the record, a
    misaligned buffer, a record too large for the output) and reads a block that is not
    NUL-terminated (a bytearray) to its last byte."""
    from aflow.codecs._csvnative import _csvscan, _spec

    dtype = np.dtype([("a", "i8"), ("b", "f8")])
    spec = _spec(dtype, None)
    out, state = np.empty(4, dtype), np.empty(4, np.uint8)
    block = bytearray(b"1,1.5\n2," + b"1" * 40 + b"e-30")  # a long last number, no newline
    assert _csvscan.scan(block, spec, ord(","), dtype.itemsize, out, state) == (2, 2)
    assert out[:2].tolist() == [(1, 1.5), (2, float("1" * 40 + "e-30"))]
    far = spec.copy()
    far[2] = 2**62  # the first column's offset
    misaligned = np.frombuffer(b"\0" + spec.tobytes(), np.uint8)[1:]
    for bad in (far, misaligned):
        with pytest.raises(ValueError, match="bad arguments"):
            _csvscan.scan(b"1,2\n", bad, ord(","), dtype.itemsize, out, state)
    with pytest.raises(ValueError, match="bad arguments"):
        _csvscan.scan(b"1,2\n", spec, ord(","), 2**62, out, state)


@pytest.mark.parametrize("engine", ["native", "pyarrow"])
def test_a_large_block_of_nan_payloads_is_bad_as_numpy_says(engine: str) -> None:
    """``nan(123)`` is not a number to NumPy; pyarrow read it as NaN, so a large block of
    such lines (the scanner leaves them to pyarrow) gave rows a small block did not."""
    pytest.importorskip("pyarrow")
    blob = b"nan(123),2.5\n" * 1000 + b"1,NaN()\n" * 1000 + b"1,2\n"
    rows, bad = CsvDecoder([("a", "f8"), ("b", "f8")], engine=engine).decode(blob)  # type: ignore[arg-type]
    assert rows.tolist() == [(1.0, 2.0)]
    assert len(bad) == 2000

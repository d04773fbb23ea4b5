"""The array path of decode_log (COMBINED and LogFormat) against Python's ``re``, line by
line, on nginx-formatted lines, hostile ones included."""

from __future__ import annotations

import importlib.util
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.codecs import COMBINED, COMBINED_COLUMNS, LogDecoder, LogFormat, logs
from aflow.codecs._blocks import RejectedLines
from aflow.codecs._lognative import has_native
from aflow.codecs.logs import LogEngine

needs_arrow = pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow (the arrow extra)"
)

TIME = "%d/%b/%Y:%H:%M:%S %z"
NGINX = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" $request_time'
)

REQUESTS = [
    "GET /api/items/1?page=2 HTTP/1.1",
    "GET / HTTP/2.0",
    "GET /a b HTTP/1.1",  # a space in the path
    "GET /x  HTTP/1.1",  # two spaces: the path keeps one
    "GET HTTP/1.1",  # no path: the "protocol" is the path
    "GET /x HTTP/1.1 HTTP/1.0",
    "GET /x HTTP/1.1.1.1.1.1.1.1.1",  # a long protocol
    "GET /x HTTP/",
    "GET /",  # HTTP/0.9
    " GET /x HTTP/1.1",  # a leading space: no method
    "-",
    "",
    "M-SEARCH * HTTP/1.1",
    'GET /q?x=\\"y\\" HTTP/1.1',  # escape=json
    "GET /q?x=\\x22y\\x22 HTTP/1.1",  # nginx's default escaping
    'GET /"raw" HTTP/1.1',  # a raw quote: malformed
    "GET /caf\u00e9 HTTP/1.1",
    "\\x16\\x03\\x01\\x00",
]
TIMES = [
    "10/Oct/2000:13:55:36 -0700",
    "29/Feb/2024:00:00:00 +0000",
    "31/dec/1999:23:59:59 +1400",  # lower case month: strptime takes it
    "32/Oct/2000:13:55:36 -0700",  # matches the regex, not strptime
    "10/Foo/2000:13:55:36 -0700",
    "1/Oct/2000:13:55:36 -0700",  # does not match
    "10/Oct/2000:13:55:36 +07:00",
]
USERS = ["-", "bob", "a b", "[x]", "", "b\tc", '"q"']
STATUSES = ["200", "404", "20", "2000", "-", "abc", "500"]
SIZES = ["0", "1234", "-", "12a", "123456789012345678901", "007"]
AGENTS = ["curl/8.0", "Mozilla/5.0 (X11; Linux x86_64)", "", "a\tb", 'x\\"y', "\u00fc" * 3]
RTIMES = [
    None,
    "0.123",
    "-",
    "1",
    ".5",
    "5.",
    "1.2.3",
    ".",
    "0.000123456789",
    "12345678901234567890.5",
    "1e3",
    "0.1 ",
]


@st.composite
def access_lines(draw: st.DrawFn) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 14))
        if kind == 0:
            lines.append(
                draw(
                    st.sampled_from(
                        [b"\n", b"  \n", b"garbage\n", b"\xff\xfe\n", b"x" * 5000 + b"\n", b"\t\n"]
                    )
                )
            )
            continue
        addr = draw(st.sampled_from(["10.0.0.1", "::1", "10.0.0.1\t"]))
        user = draw(st.sampled_from(USERS)) if kind < 4 else "-"
        stamp = draw(st.sampled_from(TIMES)) if kind < 6 else TIMES[0]
        request = draw(st.sampled_from(REQUESTS)) if kind < 9 else REQUESTS[0]
        status = draw(st.sampled_from(STATUSES)) if kind < 5 else "200"
        size = draw(st.sampled_from(SIZES)) if kind < 5 else "512"
        agent = draw(st.sampled_from(AGENTS)) if kind < 7 else AGENTS[1]
        rt = draw(st.sampled_from(RTIMES)) if kind < 8 else "0.004"
        line = (
            f'{addr} - {user} [{stamp}] "{request}" {status} {size} "https://e.com/" "{agent}"'
            + (f" {rt}" if rt is not None else "")
        )
        if kind == 10:  # a field missing
            parts = line.split(" ")
            del parts[draw(st.integers(0, len(parts) - 1))]
            line = " ".join(parts)
        if kind == 11:  # a very long line
            line = line.replace("https://e.com/", "https://e.com/" + "a" * 20_000)
        end = draw(st.sampled_from(["\n", "\n", "\r\n"]))
        lines.append((line + end).encode())
    return lines


def reference(
    lines: list[bytes], pattern: str, columns: dict[str, str], fill_int: int = -1
) -> tuple[list[tuple[Any, ...]], list[int]]:
    """Each line alone: ``re.fullmatch``, then ``int``, ``float`` and ``strptime``."""
    regex = re.compile(pattern)
    rows, bad = [], []
    for k, raw in enumerate(lines):
        text = raw.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
        if not text.strip():
            continue
        m = regex.fullmatch(text)
        if m is None:
            bad.append(k)
            continue
        row: list[Any] = []
        try:
            for name, kind in columns.items():
                value = m[name]
                if kind == "int":
                    number = fill_int if value is None else 0 if value == "-" else int(value)
                    if not -(2**63) <= number < 2**63:
                        raise ValueError("beyond int64")
                    row.append(number)
                elif kind == "float":
                    row.append(math.nan if value in (None, "-") else float(value))
                elif kind.startswith("timestamp"):
                    moment = datetime.strptime(value, kind.partition(":")[2])
                    moment = moment.astimezone(UTC).replace(tzinfo=None)
                    row.append(int(np.datetime64(moment, "ns").astype("i8")))
                else:
                    row.append(value or "")
        except ValueError:
            bad.append(k)
            continue
        rows.append(tuple(row))
    return rows, bad


def as_tuples(rows: np.ndarray) -> list[tuple[Any, ...]]:
    out = []
    for row in rows.tolist():
        out.append(tuple(int(v.astype("i8")) if isinstance(v, np.datetime64) else v for v in row))
    return out


def same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float) and math.isnan(b):
                assert isinstance(a, float), (g, w)
                assert math.isnan(a), (g, w)
            elif isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
                assert a == b, (g, w)
            else:
                assert a == b, (g, w)


ALL_COMBINED = {
    **COMBINED_COLUMNS,
    "remote_user": "str",
    "request": "str",
    "protocol": "str",
    "referer": "str",
    "user_agent": "str",
}
ALL_COMBINED["time"] = f"timestamp:{TIME}"
ALL_COMBINED["bytes"] = "int"
PLAIN_COMBINED = {  # one field each: pyarrow's columns taken as they are
    "remote_user": "str",
    "status": "int",
    "bytes": "int",
    "user_agent": "str",
    "request_time": "float",
}


def _decoded(decoder: LogDecoder, lines: list[bytes]) -> tuple[list[tuple[Any, ...]], list[int]]:
    rows, bad = decoder.decode(b"".join(lines))
    return as_tuples(rows), [b.index for b in bad]


def agrees_with_re(
    lines: list[bytes], pattern: str | LogFormat, columns: dict[str, str], engine: LogEngine
) -> None:
    """The rows and bad lines of ``engine`` are those of ``reference`` (``re``, line by line)."""
    decoder = LogDecoder(pattern, columns, engine=engine)
    regex = pattern.pattern if isinstance(pattern, LogFormat) else pattern
    want, bad = reference(lines, regex, columns)
    got, got_bad = _decoded(decoder, lines)
    same(got, want)
    assert got_bad == bad


needs_native = pytest.mark.skipif(
    not has_native(), reason="aflow was installed without its compiled log scanner (no C compiler)"
)
ENGINES = [
    "numpy",
    pytest.param("pyarrow", marks=needs_arrow),
    pytest.param("native", marks=needs_native),
]
# The longest property tests run the NumPy and pyarrow engines in the slow run (CI runs
# both), the compiled scanner (the default where it was built) in every run.
ENGINES_NUMPY_SLOW = [
    pytest.param("numpy", marks=pytest.mark.slow),
    pytest.param("pyarrow", marks=[needs_arrow, pytest.mark.slow]),
    pytest.param("native", marks=needs_native),
]


@pytest.mark.parametrize("engine", ENGINES_NUMPY_SLOW)
@settings(max_examples=150, deadline=None)
@given(lines=access_lines())
def test_combined_array_path_agrees_with_re(lines: list[bytes], engine: LogEngine) -> None:
    for columns in (ALL_COMBINED, {"status": "int", "request_time": "float"}):
        decoder = LogDecoder(COMBINED, columns, engine=engine)
        assert decoder.engine == engine
        assert decoder.vectorized
        want, bad = reference(lines, COMBINED, columns)
        got, got_bad = _decoded(decoder, lines)
        same(got, want)
        assert got_bad == bad


@pytest.mark.parametrize("engine", ENGINES_NUMPY_SLOW)
@settings(max_examples=150, deadline=None)
@given(lines=access_lines())
def test_log_format_array_path_agrees_with_re(lines: list[bytes], engine: LogEngine) -> None:
    fmt = LogFormat(NGINX)
    columns = {**fmt.columns, "method": "str", "path": "str", "protocol": "str"}
    columns["request_time"] = "float"
    decoder = LogDecoder(fmt, columns, engine=engine)
    assert decoder.vectorized
    want, bad = reference(lines, fmt.pattern, columns)
    got, got_bad = _decoded(decoder, lines)
    same(got, want)
    assert got_bad == bad


def test_the_array_path_takes_the_usual_lines() -> None:
    """Not a speed test: the lines of the declared shape never reach the regex."""
    line = b'10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.1" 200 5 "-" "c" 0.5\n'
    columns = {"status": "int", "request_time": "float"}
    poisoned = re.compile("(?P<status>x)(?P<request_time>y)")  # matches no line
    parse, _, fast = logs._parser(poisoned, columns, "replace", -1, logs._COMBINED_LAYOUT)
    assert fast
    assert parse(line * 3).tolist() == [(200, 0.5)] * 3
    with pytest.raises(RejectedLines, match="1 bad line"):  # the other shape: the regex
        parse(line + b"other\n")


def test_bad_lines_keep_their_line_numbers_through_read_log(tmp_path: Path) -> None:
    good = '10.0.0.{} - - [10/Oct/2000:13:55:36 -0700] "GET /{} HTTP/1.1" 200 5 "-" "c" 0.{}\n'
    lines, bad = [], []
    for i in range(30_000):
        if i % 977 == 3:
            lines.append('10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /" 2x0 5 "-" "c"\n')
            bad.append(i + 1)
        else:
            lines.append(good.format(i % 250, i, i % 10))
    path = tmp_path / "access.log"
    path.write_text("".join(lines))
    dead: list[af.FailedItem] = []
    flow = af.read_log(
        str(path), columns={"status": "int"}, read_size=64 * 1024, on_error=af.dead_letter(dead)
    )
    got = af.run(flow).value
    assert len(got) == 30_000 - len(bad)
    assert sorted(d.provenance.start for d in dead) == bad  # type: ignore[union-attr]


@pytest.mark.parametrize("escaped", [False, True])
def test_bad_values_in_well_split_lines_keep_their_line_numbers(
    tmp_path: Path, escaped: bool
) -> None:
    """Lines pyarrow splits into the right fields but whose values are bad (a status of
    another shape, a size beyond int64, a request time with two dots), in blocks of
    clean lines or (``escaped``) with an escaped quote in some request: each bad line
    goes to ``on_error`` with its own line number, whichever path its block took."""
    line = '10.0.0.{} - - [10/Oct/2000:13:55:36 -0700] "GET /{} HTTP/1.1" {} {} "-" "c" {}\n'
    lines, bad = [], []
    for i in range(20_000):
        status, size, rt = "200", str(i), f"0.{i % 10}"
        if i % 1013 == 7:
            status = "2x0"
        elif i % 1013 == 500:
            size = "123456789012345678901"
        elif i % 1013 == 900:
            rt = "1.2.3"
        if status != "200" or len(size) > 20 or rt == "1.2.3":
            bad.append(i + 1)
        path = f'q?x=\\"{i}\\"' if escaped and i % 97 == 0 else str(i)
        lines.append(line.format(i % 250, path, status, size, rt))
    file = tmp_path / "access.log"
    file.write_text("".join(lines))
    dead: list[af.FailedItem] = []
    columns = {"status": "int", "bytes": "int", "request_time": "float", "path": "str"}
    for cols in (columns, {k: v for k, v in columns.items() if k != "path"}):
        dead.clear()
        flow = af.read_log(str(file), columns=cols, on_error=af.dead_letter(dead))
        got = af.run(flow).value
        assert len(got) == 20_000 - len(bad)
        assert sorted(d.provenance.start for d in dead) == bad  # type: ignore[union-attr]
        assert got["bytes"][:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("engine", ENGINES)
def test_brackets_and_literals_agree_with_re(engine: LogEngine) -> None:
    fmt = LogFormat('$remote_addr [$tag] rt=x "$request" $status [$time_local] $n')
    columns = {"remote_addr": "str", "tag": "str", "status": "int", "n": "float"}
    good = '1.2.3.4 [{}] {} "GET / HTTP/1.1" {} [10/Oct/2000:13:55:36 -0700] {}'
    variants = [
        ("a", "rt=x", "200", "0.5"),
        ("", "rt=x", "200", "-"),
        ("a]b", "rt=x", "404", "7"),
        ("a", "rt=y", "200", "0.5"),
        ("a", "rt=xx", "200", "0.5"),
        ("a", "rt=x", "2 0", "0.5"),
        ("a", "rt=x", "+20", "0.5"),
        ("a", "rt=x", "200", "1.2.3"),
        ("a", "rt=x", "200", ".5"),
    ]
    lines = [(good.format(*v) + "\n").encode() for v in variants]
    lines.append(b'1.2.3.4 a] rt=x "GET /" 200 [10/Oct/2000:13:55:36 -0700] 1\n')
    lines.append(b'1.2.3.4 [a rt=x "GET /" 200 [10/Oct/2000:13:55:36 -0700] 1\n')
    lines.append(b'1.2.3.4 [a] rt=x "GET /" 200 [10/Oct/2000:13:55:36 -0700 1\n')
    lines.append(b'1.2.3.4 [a] rt=x "GET /" 200 [10/Oct/2000:13:55:36 +07:0] 1\n')
    decoder = LogDecoder(fmt, columns, engine=engine)
    assert decoder.engine == engine
    for block in (lines, lines[:3], lines[1:3] * 20, lines[:2] * 50):  # all well split, or not
        want, bad = reference(block, fmt.pattern, columns)
        got, got_bad = _decoded(decoder, block)
        same(got, want)
        assert got_bad == bad


def test_log_format_rejects_what_it_cannot_split() -> None:
    with pytest.raises(ValueError, match="LogFormat"):
        LogFormat("$a rt=$request_time")
    with pytest.raises(ValueError, match="twice"):
        LogFormat("$a $a")
    fmt = LogFormat('$remote_addr [$time_local] "$request" $status')
    assert (
        re.fullmatch(fmt.pattern, '1.2.3.4 [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200')
        is not None
    )
    assert fmt.columns["status"] == "int"


# Clean ASCII blocks (no tab, no backslash: the array path's whole-block case):
# fields quoted where they should not be, quotes inside fields, quotes closed before a
# field ends, doubled quotes, double spaces, a missing request time on some lines.
HOSTILE = {
    "addr": ["10.0.0.1", "10.0.0.1", '"10.0.0.1"', 'a"b', "", "a b"],
    "user": ["-", "-", "a b", '"q"', "", '"a b"', "[x]"],
    "time": [
        "[10/Oct/2000:13:55:36 -0700]",
        "[10/Oct/2000:13:55:36 -0700]",
        "[10/Oct/2000:13:55:36  -0700]",
        '"[10/Oct/2000:13:55:36 -0700]"',
        "[10/Oct/2000:13:55:36 -0700",
        "[10/Oct/2000 13:55:36 -0700]",
    ],
    "request": [
        '"GET / HTTP/1.1"',
        '"GET / HTTP/1.1"',
        '"GET /a b HTTP/1.1"',
        "GET",
        '"GET"x',
        '"a""b"',
        '""',
        '"x" "y"',
        '"GET /x HTTP/1.1 "',
    ],
    "status": ["200", "200", '"200"', "2 0", "", "20"],
    "bytes": ["5", "-", '"5"', "5 5"],
    "referer": ['"-"', '"-"', '"a"b"', "-", '"a b"c', '"""'],
    "agent": ['"curl"', '""', '"x y z"', 'curl"', '"a"'],
    "rt": [None, "0.5", "0.5", '"0.5"', "-", "1.2.3", ""],
}


@st.composite
def clean_blocks(draw: st.DrawFn) -> list[bytes]:
    good = {name: values[0] for name, values in HOSTILE.items()}
    good["rt"] = draw(st.sampled_from([None, "0.25"]))
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        fields = dict(good)
        for name in draw(st.lists(st.sampled_from(sorted(HOSTILE)), max_size=3)):
            fields[name] = draw(st.sampled_from(HOSTILE[name]))
        words = [fields["addr"], "-", fields["user"], fields["time"], fields["request"]]
        words += [fields["status"], fields["bytes"], fields["referer"], fields["agent"]]
        if fields["rt"] is not None:
            words.append(fields["rt"])
        sep = draw(st.sampled_from([" ", " ", " ", "  "]))
        lines.append((sep.join(words) + "\n").encode())
    return lines


@pytest.mark.parametrize("engine", ENGINES_NUMPY_SLOW)
@settings(max_examples=300, deadline=None)
@given(lines=clean_blocks())
def test_the_array_path_agrees_with_re_on_clean_hostile_blocks(
    lines: list[bytes], engine: LogEngine
) -> None:
    fmt = LogFormat(NGINX)
    format_columns = {**fmt.columns, "method": "str", "path": "str", "protocol": "str"}
    for pattern, columns in (
        (COMBINED, ALL_COMBINED),
        (COMBINED, {"status": "int", "request_time": "float"}),
        (COMBINED, PLAIN_COMBINED),
        (fmt, format_columns),
        (fmt, {"status": "int", "body_bytes_sent": "int", "http_referer": "str"}),
    ):
        agrees_with_re(lines, pattern, columns, engine)


FIELD_CHECKS: dict[str, tuple[Any, str]] = {  # the NumPy checks of pyarrow's fields, and
    # the regex each stands for
    "time": (lambda m: m._TIME[0], r"\[\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2}"),
    "zone": (lambda m: m._TIME[1], r"[+-]\d{4}\]"),
    "digits3": (lambda m: m._SHAPES["digits3"](False), r"\d{3}"),
    "digits3 or -": (lambda m: m._SHAPES["digits3"](True), r"\d{3}|-"),
    "digits": (lambda m: m._SHAPES["digits"](False), r"\d+"),
    "digits or -": (lambda m: m._SHAPES["digits"](True), r"\d+|-"),
    "number or -": (lambda m: m._SHAPES["number"](True), r"[\d.]+|-"),
    "literal": (lambda m: m._fixed("-d", literal=True), r"-d"),
    "bracket": (lambda m: m._ends(91, 93), r"\[.*\]"),
    "opening": (lambda m: m._ends(91, None), r"\[.*"),
    "closing": (lambda m: m._ends(None, 93), r".*\]"),
}
FIELD_TEXT = st.text(alphabet="0123456789-+,/:.[]adOct \x7f", max_size=24)


@needs_arrow
@pytest.mark.parametrize("check", list(FIELD_CHECKS))
@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            FIELD_TEXT,
            st.sampled_from(["[10/Oct/2024:13:55:36", "-0700]", "200", "-", "0.002", "[a]"]),
        ),
        max_size=6,
    )
)
def test_arrow_field_checks_agree_with_re(check: str, values: list[str]) -> None:
    import pyarrow as pa

    from aflow.codecs import _logarrow

    expression, regex = FIELD_CHECKS[check]
    test = expression(_logarrow)
    column = pa.chunked_array([pa.array([v.encode() for v in values], pa.binary())])
    found = _logarrow._Values.of(column)
    assert found is not None
    assert test(found) == all(re.fullmatch(regex, v, re.ASCII) for v in values)


@needs_arrow
@settings(max_examples=300, deadline=None)
@given(
    values=st.one_of(
        st.lists(
            st.one_of(
                st.from_regex(r"[0-9]{1,17}(\.[0-9]{0,16})?", fullmatch=True),
                st.from_regex(r"\.[0-9]{1,16}", fullmatch=True),
                st.sampled_from(["-", "200", "0.002", "007"]),
            ),
            min_size=1,
            max_size=8,
        ),
        st.integers(1, 17).flatmap(  # one shape: a width, the dot's place (or none)
            lambda w: st.integers(-1, w - 1).flatmap(
                lambda dot: st.lists(
                    st.from_regex(rf"[0-9]{{{w}}}", fullmatch=True).map(
                        lambda d: d if dot < 0 else d[:dot] + "." + d[dot + 1 :]
                    ),
                    min_size=1,
                    max_size=8,
                )
            )
        ),
    ),
    floating=st.booleans(),
)
def test_numbers_read_from_arrow_buffers_agree_with_python(
    values: list[str], floating: bool
) -> None:
    """pyarrow's number fields read without its cast: as ``float``/``int`` read them (or
    left to the cast: ``None``)."""
    import pyarrow as pa

    from aflow.codecs import _logarrow

    column = pa.chunked_array([pa.array([v.encode() for v in values], pa.binary())])
    found = _logarrow._Values.of(column)
    assert found is not None
    got = _logarrow._fixed_point(found, floating)
    if got is None:  # left to pyarrow's cast: not all of one shape
        dots = [v.find(".") for v in values]
        assert (
            len({len(v) for v in values}) > 1
            or len(set(dots)) > 1
            or len(values[0]) > 15
            or "-" in values
            or (not floating and dots[0] >= 0)
            or values[0] == "."
        )
        return
    for g, v in zip(got.tolist(), values, strict=True):
        assert g == (float(v) if floating else int(v))


@needs_arrow
def test_a_block_after_one_with_stray_quotes_decodes_alike() -> None:
    """After a block whose quotes are not the layout's, the next blocks are split with
    every field converted: the same rows and bad lines."""
    good = b'10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "curl" 0.5\n'
    stray = b'10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "a"b" 0.5\n'
    columns = {"status": "int", "request_time": "float"}
    decoder = LogDecoder(COMBINED, columns, engine="pyarrow")
    for lines in ([good, stray, good], [good, good], [stray, good], [good] * 3):
        want, bad = reference(lines, COMBINED, columns)
        got, got_bad = _decoded(decoder, lines)
        same(got, want)
        assert got_bad == bad


@st.composite
def mutated_lines(draw: st.DrawFn) -> list[bytes]:
    """Real-looking lines with bytes replaced, inserted or deleted anywhere: the scanner
    must keep exactly the lines the regex takes, with the same groups."""
    base = (
        b'10.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 '
        b'"http://x/" "Mozilla/4.08" 0.125\n'
    )
    alphabet = b' "[]-.0123456789\\\t\r\x00\x7f\x80\xffaZ/:+,'
    lines = []
    for _ in range(draw(st.integers(1, 10))):
        line = bytearray(base if draw(st.booleans()) else base.replace(b" 0.125", b""))
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(line) - 1))
            op = draw(st.integers(0, 2))
            byte = bytes([draw(st.sampled_from(alphabet))])
            if op == 0:
                line[at : at + 1] = byte
            elif op == 1:
                line[at:at] = byte
            else:
                del line[at]
        if not line.endswith(b"\n"):
            line += b"\n"
        lines.append(bytes(line).replace(b"\n", b"") + b"\n")
    return lines


@pytest.mark.parametrize("engine", ENGINES_NUMPY_SLOW)
@settings(max_examples=400, deadline=None)
@given(lines=mutated_lines())
def test_every_engine_agrees_with_re_on_mutated_bytes(
    lines: list[bytes], engine: LogEngine
) -> None:
    fmt = LogFormat(NGINX)
    for pattern, columns in (
        (COMBINED, ALL_COMBINED),
        (COMBINED, {"status": "int", "request_time": "float"}),
        (COMBINED, {"bytes": "float", "request_time": "int"}),
        (fmt, {"status": "int", "body_bytes_sent": "int", "request_time": "float"}),
    ):
        agrees_with_re(lines, pattern, columns, engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "columns",
    [
        {"status": "int", "bytes": "int", "method": "int", "path": "str"},
        {"status": "int", "method": "int", "path": "str"},
        {"method": "int"},
        {"protocol": "float", "request_time": "float"},
    ],
)
def test_request_parts_read_as_numbers_agree_with_re(
    engine: LogEngine, columns: dict[str, str]
) -> None:
    """The request line's parts are no tokens of their own: read as numbers, they are
    converted from their places (the compiled scanner's numbers were once laid out for
    them too, and the rows read other lines' values)."""
    lines = [
        f'1.2.3.4 - - [10/Oct/2024:13:55:36 +0000] "{i} {10 * i}" {200 + i} {7 * i} '
        f'"-" "-" 0.{i}\n'.encode()
        for i in range(1, 6)
    ]
    decoder = LogDecoder(COMBINED, columns, engine=engine)
    regex = LogDecoder(re.compile(COMBINED, re.ASCII), columns)  # a flag: no layout, re
    assert not regex.vectorized
    got, want = decoder.decode(b"".join(lines)), regex.decode(b"".join(lines))
    same(as_tuples(got.rows), as_tuples(want.rows))
    assert [b.index for b in got.bad] == [b.index for b in want.bad]


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_number_fields_are_read_as_the_regex_reads_them(engine: LogEngine) -> None:
    """A block whose number fields are all empty ("") (the NumPy path raised on it: every
    line bad) reads as the regular expression reads it: NaN."""
    fmt = LogFormat('$remote_addr "$request_time"')
    decoder = LogDecoder(fmt, {"request_time": "float"}, engine=engine)
    regex = LogDecoder(fmt.pattern, {"request_time": "float"})
    for block in (b'x ""\n', b'x ""\ny "5"\n'):
        got, want = decoder.decode(block), regex.decode(block)
        same(as_tuples(got.rows), as_tuples(want.rows))
        assert got.bad == want.bad == []

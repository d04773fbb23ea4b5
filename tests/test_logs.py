"""Numbers in log lines read by the regular expression (aflow/codecs/logs.py)."""

from __future__ import annotations

import math
import warnings

import pytest

from aflow.codecs import LogDecoder, LogFormat

FORMAT = LogFormat('$remote_addr "$request" $status $request_time')
COLUMNS = {"status": "int", "request_time": "float"}


def line(status: str, request_time: str) -> str:
    return f'1.2.3.4 "GET / HTTP/1.1" {status} {request_time}\n'


@pytest.mark.parametrize("digits", [330, 400])
@pytest.mark.parametrize("with_a_bad_line", [False, True], ids=["all_good", "one_bad"])
def test_a_float_beyond_float64_reads_as_inf_without_a_warning(
    digits: int, with_a_bad_line: bool
) -> None:
    """No "overflow encountered in cast" from numpy, for the whole block nor for the
    values read one by one after a bad one (recorded: as an error, it would be caught
    and the lines read again one at a time)."""
    lines = [line("200", "1" * digits), line("200", "0.5")]
    if with_a_bad_line:
        lines.append(line("200", "1.2.3"))  # not a number: read one by one then
    decoder = LogDecoder(FORMAT.pattern, COLUMNS, errors="replace")  # the regex path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, bad = decoder.decode("".join(lines).encode())
    assert [str(w.message) for w in caught] == []
    assert math.isinf(rows["request_time"][0])
    assert rows.tolist()[1] == (200, 0.5)
    assert len(rows) == 2
    assert [b.index for b in bad] == ([2] if with_a_bad_line else [])


def test_a_number_with_a_nul_byte_is_a_bad_line_not_a_number() -> None:
    """NumPy's ``str`` arrays drop trailing NUL characters: ``51\\x00`` read as 51 and
    ``0.00\\x00`` as 0.0, where ``re`` with ``int``/``float`` rejects both lines."""
    decoder = LogDecoder(LogFormat("$remote_addr $status $request_time"))
    rows, bad = decoder.decode(
        b"1.2.3.4 200 0.5\n1.2.3.4 51\x00 0.25\n1.2.3.4 404 0.00\x00\n5.6.7.8 301 1.5\n"
    )
    assert rows.tolist() == [("1.2.3.4", 200, 0.5), ("5.6.7.8", 301, 1.5)]
    assert [b.index for b in bad] == [1, 2]
    assert "status" in str(bad[0].error)
    assert "request_time" in str(bad[1].error)

"""Fixed-width timestamps parsed with arrays give what ``strptime`` gives, text by text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.codecs._timeparse import FixedFormat

FORMATS = [
    "%d/%b/%Y:%H:%M:%S %z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S",
    "%Y%m%d",
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S,%f",
]


def strptime_ns(text: str, fmt: str) -> int | None:
    try:
        moment = datetime.strptime(text, fmt)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    if not 1678 <= moment.year <= 2261:
        return None
    return int(np.datetime64(moment, "ns").astype(np.int64))


moments = st.datetimes(datetime(1600, 1, 1), datetime(2300, 12, 31))
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
noise = st.text("0123456789/:-+ TJanFebOctDec.,Z", max_size=34)


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS),
    good=st.lists(st.tuples(moments, offsets), max_size=20),
    bad=st.lists(noise, max_size=10),
    data=st.data(),
)
def test_fixed_format_agrees_with_strptime(
    fmt: str, good: list[tuple[datetime, timezone]], bad: list[str], data: st.DataObject
) -> None:
    texts = [m.replace(tzinfo=z).strftime(fmt) for m, z in good] + bad
    texts = data.draw(st.permutations(texts))
    ns, ok = FixedFormat(fmt).parse(texts)
    for text, value, parsed in zip(texts, ns.tolist(), ok.tolist(), strict=True):
        expected = strptime_ns(text, fmt)
        if parsed:  # what the arrays accept, strptime accepts, with the same instant
            assert expected == value, text
        # what they leave (another width, a year out of range) goes to strptime


def test_fixed_format_takes_every_well_formed_text() -> None:
    texts = [
        "10/Oct/2000:13:55:36 -0700",
        "29/Feb/2024:00:00:00 +0000",
        "31/dec/1999:23:59:59 +0130",
    ]
    ns, ok = FixedFormat("%d/%b/%Y:%H:%M:%S %z").parse(texts)
    assert ok.all()
    assert ns.tolist() == [strptime_ns(t, "%d/%b/%Y:%H:%M:%S %z") for t in texts]
    _, ok = FixedFormat("%d/%b/%Y:%H:%M:%S %z").parse(["30/Feb/2024:00:00:00 +0000"])
    assert not ok.any()  # no such day
    _, ok = FixedFormat("%d/%b/%Y:%H:%M:%S %z").parse(["10/O\u0663t/2000:13:55:36 -0700"])
    assert not ok.any()  # not a month name, whatever its bits


def test_fractions_and_offsets_of_every_width_strptime_reads() -> None:
    texts = [
        "2024-02-29T10:00:00.123456+0000",
        "2024-02-29T10:00:00.123+01:30",
        "2024-02-29T10:00:00.5Z",
        "2024-02-29T10:00:00.000001-0700",
        "2024-02-29T10:00:00.12-00:30",
    ]
    fmt = "%Y-%m-%dT%H:%M:%S.%f%z"
    ns, ok = FixedFormat(fmt).parse(texts)
    assert ok.all()
    assert ns.tolist() == [strptime_ns(t, fmt) for t in texts]
    comma = ["2024-01-01 10:00:00,042", "2024-01-01 10:00:00,999999"]
    ns, ok = FixedFormat("%Y-%m-%d %H:%M:%S,%f").parse(comma)
    assert ok.all()
    assert ns.tolist() == [strptime_ns(t, "%Y-%m-%d %H:%M:%S,%f") for t in comma]
    ns, ok = FixedFormat(fmt).parse(["2024-02-29T10:00:00.1234567+0000", "2024-02-29T10"])
    assert not ok.any()  # 7 digits: strptime refuses it too (the caller asks it)


def test_formats_without_fixed_width_are_refused() -> None:
    for fmt in ["%B %d %Y", "%Y-%m-%d %H:%M:%S.%j", "%y-%m-%d", "%H:%M"]:
        with pytest.raises(ValueError, match=r"fixed width|full date"):
            FixedFormat(fmt)


def test_decode_log_timestamps_mix_fixed_and_other_widths() -> None:
    pattern = r"(?P<t>[^|]+)\|(?P<v>\d+)"
    lines = [
        b"2000-10-10T13:55:36+0000|1\n",
        b"2000-10-10T13:55:36+00:00|2\n",
        b"2000-13-10T13:55:36+0000|3\n",
    ]
    dead: list[af.FailedItem] = []
    stage = af.decode_log(pattern, {"t": "timestamp", "v": "int"}, on_error=af.dead_letter(dead))
    got = af.run(af.from_iterable(lines) | stage).value
    assert got["v"].tolist() == [1, 2]  # "+00:00" is not fixed width: strptime reads it
    expected = np.array(["2000-10-10T13:55:36"] * 2, "M8[ns]")
    np.testing.assert_array_equal(got["t"], expected)
    assert [d.item for d in dead] == [lines[2]]  # month 13

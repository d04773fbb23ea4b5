"""Log lines parsed by a regular expression with named groups into typed columns.

:class:`LogDecoder` decodes a block of lines in one call.

Columns are ``int`` and ``float`` (``"-"`` reads as 0 and NaN, as access logs write
missing numbers), ``str`` (Python strings, any length) or ``timestamp`` (parsed with a
``strftime`` format into ``datetime64[ns]`` UTC; each distinct text is parsed once per
block, so a block of one second's lines parses one timestamp).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._blocks import LineDecoder, Parse, RejectedLines
from ._timeparse import FixedFormat

__all__ = ["COMBINED", "COMBINED_COLUMNS", "LogDecoder"]

COMBINED = (
    r"(?P<remote_addr>\S+) \S+ (?P<remote_user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>[^"]+)" (?P<status>\d{3}) '
    r'(?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"'
    r"(?: (?P<request_time>[\d.]+|-))?"
)
"""The nginx/Apache "combined" access log format, optionally followed by a request time
in seconds (nginx ``$request_time``)."""

COMBINED_COLUMNS: dict[str, str] = {
    "remote_addr": "str",
    "time": "timestamp:%d/%b/%Y:%H:%M:%S %z",
    "method": "str",
    "path": "str",
    "status": "int",
    "bytes": "int",
    "request_time": "float",
}
"""Typed columns for :data:`COMBINED` (a subset of its groups)."""


ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def _column_dtype(kind: str) -> str:
    base = kind.split(":", 1)[0]
    try:
        return {"int": "i8", "float": "f8", "str": "O", "timestamp": "M8[ns]"}[base]
    except KeyError:
        raise ValueError(f"LogDecoder: unknown column type {kind!r}") from None


def _timestamps(texts: list[str], fmt: str, fixed: FixedFormat | None) -> NDArray[Any]:
    if fixed is None:
        return _strptime_each(texts, fmt)
    ns, ok = fixed.parse(texts)
    out = ns.view("M8[ns]")
    if not ok.all():  # another width, an impossible date...: strptime decides
        rest = np.flatnonzero(~ok)
        out[rest] = _strptime_each([texts[i] for i in rest.tolist()], fmt)
    return out


def _strptime_each(texts: list[str], fmt: str) -> NDArray[Any]:
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    parsed = np.array([_to_ns(datetime.strptime(t, fmt)) for t in unique.tolist()], dtype="M8[ns]")
    return parsed[inverse]


def _to_ns(moment: datetime) -> np.datetime64:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "ns")


def _numbers(texts: list[str], dtype: str) -> NDArray[Any]:
    values = np.array(texts, dtype=str)
    missing = (values == "-") | (values == "")
    if missing.any():
        values = np.where(missing, "0" if dtype == "i8" else "nan", values)
    return values.astype(dtype)


def _parser(pattern: re.Pattern[str], columns: dict[str, str]) -> tuple[Parse, np.dtype[Any]]:
    dtype = np.dtype([(name, _column_dtype(kind)) for name, kind in columns.items()])
    for name in columns:
        if name not in pattern.groupindex:
            raise ValueError(f"LogDecoder: column {name!r} is not a named group of the pattern")
    pattern = _capturing_only(pattern, set(columns))
    # The whole block in one regex call: each match must be one whole line. A line that
    # does not match, or a match running over several lines, leaves fewer matches than
    # lines; then the block is parsed line by line, which finds and rejects the bad ones.
    block = _block_pattern(pattern)
    index = {name: pattern.groupindex[name] - 1 for name in columns}
    single = pattern.groups == 1  # then findall gives strings, not tuples
    # blank lines are skipped, so a pattern that matches one needs the line-by-line path
    blank_matches = any(pattern.fullmatch(x) for x in ("", " ", "\t"))
    formats = {
        name: kind.partition(":")[2] or ISO_FORMAT
        for name, kind in columns.items()
        if kind.startswith("timestamp")
    }
    fixed = {name: _fixed_format(fmt) for name, fmt in formats.items()}

    def columns_of(rows: list[Any]) -> NDArray[Any]:
        out = np.empty(len(rows), dtype)
        for name, kind in columns.items():
            texts = rows if single else list(map(itemgetter(index[name]), rows))
            if name in formats:
                out[name] = _timestamps(texts, formats[name], fixed[name])
            elif kind in ("int", "float"):
                out[name] = _numbers(texts, dtype.fields[name][0].str[1:])  # type: ignore[index]
            else:
                out[name] = texts
        return out

    def parse(blob: bytes) -> NDArray[Any]:
        text = blob.decode("utf-8")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if block is not None and not blank_matches:
            # without the last newline: at the very end, "$" would let a group take it
            body = text[:-1] if text.endswith("\n") else text
            found = block.findall(body)
            if len(found) == body.count("\n") + 1:
                return columns_of(found)
        groups: list[Any] = []
        bad: list[tuple[int, Exception]] = []
        for i, line in enumerate(text.split("\n")):
            if not line.strip():
                continue  # blank lines are skipped
            m = pattern.fullmatch(line)
            if m is None:
                bad.append((i, ValueError("line does not match the log pattern")))
            else:
                groups.append((m[1] or "") if single else m.groups(default=""))
        rows = columns_of(groups)
        if bad:
            raise RejectedLines(rows, bad)
        return rows

    return parse, dtype


def _block_pattern(pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """``pattern`` anchored to whole lines of a block; None if it cannot be wrapped."""
    source = re.sub(r"^\(\?[aiLmsux]+\)", "", pattern.pattern)  # in pattern.flags already
    end = "\n" if pattern.flags & re.VERBOSE else ""  # a trailing comment must not eat ")$"
    try:
        return re.compile(rf"^(?:{source}{end})$", pattern.flags | re.MULTILINE)
    except re.error:
        return None


def _capturing_only(pattern: re.Pattern[str], names: set[str]) -> re.Pattern[str]:
    """``pattern`` with its named groups not in ``names`` made non-capturing (matching
    the same lines; half the regex time when few columns are wanted), unless it refers
    back to groups."""
    if "(?P=" in pattern.pattern or "(?(" in pattern.pattern or re.search(r"\\\d", pattern.pattern):
        return pattern
    slim = re.sub(
        r"\(\?P<(\w+)>",
        lambda m: m.group(0) if m.group(1) in names else "(?:",
        pattern.pattern,
    )
    return re.compile(slim, pattern.flags)


def _fixed_format(fmt: str) -> FixedFormat | None:
    try:
        return FixedFormat(fmt)
    except ValueError:
        return None


class LogDecoder(LineDecoder):
    """Decodes blocks of log lines into a structured array, one field per column.

    Each line must match ``pattern`` as a whole; blank lines are skipped. A line that does
    not match, whose fields do not convert, or that is not valid UTF-8 is one bad line;
    the rest of its block is decoded.

    Args:
        pattern: a regular expression with named groups matching a whole line; by
            default the nginx/Apache combined format (:data:`COMBINED`).
        columns: group name -> ``"int"``, ``"float"`` (``"-"`` reads as 0 and NaN),
            ``"str"`` (Python strings) or ``"timestamp:<strftime format>"``
            (``datetime64[ns]``, UTC; ISO 8601 without a format); by default
            :data:`COMBINED_COLUMNS`.

    Attributes:
        dtype: the rows' dtype: ``int64``, ``float64``, ``object`` or
            ``datetime64[ns]`` fields, in the order of ``columns``.
        small_block: 0: every block takes the same path (the same attribute as
            :class:`~aflow.codecs.CsvDecoder`'s).

    Raises:
        ValueError: a column that is not a named group of the pattern, or of an unknown
            type.

    Examples:
        >>> decoder = LogDecoder(r"(?P<level>[A-Z]+) (?P<ms>\\d+)", {"level": "str", "ms": "int"})
        >>> rows, bad = decoder.decode(b"INFO 12\\nbroken\\nWARN 7\\n")
        >>> rows.tolist(), [b.line for b in bad]
        ([('INFO', 12), ('WARN', 7)], [b'broken\\n'])
    """

    def __init__(
        self, pattern: str | re.Pattern[str] = COMBINED, columns: dict[str, str] | None = None
    ) -> None:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        cols = dict(COMBINED_COLUMNS if columns is None else columns)
        self._parse, self.dtype = _parser(compiled, cols)

"""Log lines parsed by a regular expression with named groups into typed columns.

:class:`LogDecoder` decodes a block of lines in one call.

Columns are ``int`` and ``float`` (``"-"`` reads as 0 and NaN, as access logs write
missing numbers), ``str`` (Python strings, any length) or ``timestamp`` (parsed with a
``strftime`` format into ``datetime64[ns]`` UTC; each distinct text is parsed once per
block, so a block of one second's lines parses one timestamp).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._blocks import LineDecoder, Parse, RejectedLines
from ._timeparse import FixedFormat

__all__ = ["COMBINED", "COMBINED_COLUMNS", "LogDecoder"]

_QUOTED = r'(?:[^"\\\n]|\\.)*'  # nginx escapes " and \ (as \x22, or \" with escape=json)
COMBINED = (
    r"(?P<remote_addr>\S+) \S+ (?P<remote_user>.*?) "
    r"\[(?P<time>\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "
    rf'"(?P<request>(?P<method>[^ "\n]+) (?P<path>{_QUOTED}?)(?: (?P<protocol>HTTP/[\d.]+))?'
    rf'|{_QUOTED})" (?P<status>\d{{3}}) (?P<bytes>\d+|-) '
    rf'"(?P<referer>{_QUOTED})" "(?P<user_agent>{_QUOTED})"'
    r"(?: (?P<request_time>[\d.]+|-))?"
)
"""The nginx/Apache "combined" access log format, optionally followed by a request time
in seconds (nginx ``$request_time``).

Every line nginx writes in this format matches: the request line as nginx wrote it
(``request``) is split into ``method``, ``path`` (spaces included) and ``protocol`` when
it has that shape (an HTTP/0.9 line has no protocol; a TLS handshake or other garbage sent
to a plain-text port leaves all three empty); user names may hold spaces and brackets."""

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
    base, _, how = kind.partition(":")
    if base == "float" and how and how not in AGGREGATES:
        raise ValueError(f"LogDecoder: {kind!r}: use float:{'|'.join(AGGREGATES)}")
    try:
        return {"int": "i8", "float": "f8", "str": "O", "timestamp": "M8[ns]"}[base]
    except KeyError:
        raise ValueError(f"LogDecoder: unknown column type {kind!r}") from None


def _timestamps(texts: list[str], fmt: str, fixed: FixedFormat | None) -> Converted:
    """``datetime64[ns]`` UTC values, and the positions (with errors) that do not parse;
    an empty text (a group that took no part) is NaT."""
    if fixed is None:
        return _strptime_each(texts, fmt)
    ns, ok = fixed.parse(texts)
    out = ns.view("M8[ns]")
    bad: dict[int, Exception] = {}
    if not ok.all():  # another width, an impossible date...: strptime decides
        rest = np.flatnonzero(~ok)
        values, failed = _strptime_each([texts[i] for i in rest.tolist()], fmt)
        out[rest] = values
        bad = {int(rest[i]): exc for i, exc in failed.items()}
    return out, bad


Converted = tuple[NDArray[Any], dict[int, Exception]]
"""A column's values, and the positions (with errors) of values that do not convert."""


def _strptime_each(texts: list[str], fmt: str) -> Converted:
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    parsed = np.empty(len(unique), "M8[ns]")
    failed: dict[int, Exception] = {}
    for i, text in enumerate(unique.tolist()):
        try:
            parsed[i] = _to_ns(datetime.strptime(text, fmt)) if text else np.datetime64("NaT")
        except (ValueError, OverflowError) as exc:
            parsed[i] = np.datetime64("NaT")
            failed[i] = exc
    bad: dict[int, Exception] = {}
    if failed:
        for k in np.flatnonzero(np.isin(inverse, list(failed))).tolist():
            bad[k] = failed[int(inverse[k])]
    return parsed[inverse], bad


def _to_ns(moment: datetime) -> np.datetime64:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "ns")


AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "sum": sum,
    "max": max,
    "min": min,
    "first": lambda v: v[0],
    "last": lambda v: v[-1],
}
_LIST = re.compile(r"\s*(?:,|:)\s*")  # nginx: "0.001, 0.002" (upstreams), " : " (redirects)


def _numbers(texts: list[str], dtype: str, how: str, fill_int: int) -> Converted:
    """Numbers: ``"-"`` is 0 (ints) or NaN (floats); an empty text (a group that took no
    part) is ``fill_int`` or NaN; with ``how`` (``sum``, ``max``...) nginx's lists of
    values are combined."""
    if how:
        return _lists(texts, how)
    values = np.array(texts, dtype=str)
    dash, empty = values == "-", values == ""
    if dash.any() or empty.any():
        values = np.where(dash, "0" if dtype == "i8" else "nan", values)
        values = np.where(empty, str(fill_int) if dtype == "i8" else "nan", values)
    try:
        return values.astype(dtype), {}
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(values), dtype)
    bad: dict[int, Exception] = {}
    for i, text in enumerate(values.tolist()):
        try:
            out[i] = np.array(text).astype(dtype)
        except (ValueError, OverflowError) as exc:
            bad[i] = exc
    return out, bad


def _lists(texts: list[str], how: str) -> Converted:
    out = np.full(len(texts), np.nan)
    bad: dict[int, Exception] = {}
    combine = AGGREGATES[how]
    for i, text in enumerate(texts):
        parts = [p for p in _LIST.split(text.strip()) if p and p != "-"]
        try:
            if parts:
                out[i] = combine([float(p) for p in parts])
        except ValueError as exc:
            bad[i] = exc
    return out, bad


def _parser(
    pattern: re.Pattern[str], columns: dict[str, str], errors: str, fill_int: int
) -> tuple[Parse, np.dtype[Any]]:
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

    def columns_of(rows: list[Any]) -> Converted:
        """The rows' columns, and the rows (with errors) whose fields do not convert."""
        out = np.empty(len(rows), dtype)
        bad: dict[int, Exception] = {}
        for name, kind in columns.items():
            texts = rows if single else list(map(itemgetter(index[name]), rows))
            if name in formats:
                out[name], failed = _timestamps(texts, formats[name], fixed[name])
            elif kind.startswith(("int", "float")):
                code = dtype.fields[name][0].str[1:]  # type: ignore[index]
                out[name], failed = _numbers(texts, code, kind.partition(":")[2], fill_int)
            else:
                out[name], failed = texts, {}
            for i, exc in failed.items():
                bad.setdefault(i, ValueError(f"column {name!r}: {exc}"))
        return out, bad

    def parse(blob: bytes) -> NDArray[Any]:
        text = blob.decode("utf-8", errors)
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        if block is not None and not blank_matches:
            # without the last newline: at the very end, "$" would let a group take it
            body = text[:-1] if text.endswith("\n") else text
            found = block.findall(body)
            if len(found) == body.count("\n") + 1:
                rows, failed = columns_of(found)
                if not failed:
                    return rows
                ok = np.ones(len(rows), bool)
                ok[list(failed)] = False
                raise RejectedLines(rows[ok], sorted(failed.items()))
        groups: list[Any] = []
        lines: list[int] = []
        bad: list[tuple[int, Exception]] = []
        for i, line in enumerate(text.split("\n")):
            if not line.strip():
                continue  # blank lines are skipped
            m = pattern.fullmatch(line)
            if m is None:
                bad.append((i, ValueError("line does not match the log pattern")))
            else:
                groups.append((m[1] or "") if single else m.groups(default=""))
                lines.append(i)
        rows, failed = columns_of(groups)
        if failed:
            ok = np.ones(len(rows), bool)
            ok[list(failed)] = False
            rows = rows[ok]
            bad = sorted(bad + [(lines[k], exc) for k, exc in failed.items()], key=itemgetter(0))
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
            ``"float:sum"`` (or ``max``, ``min``, ``first``, ``last``: a list of numbers
            such as nginx's ``0.000, 0.001`` or ``0.1 : 0.2``, combined), ``"str"``
            (Python strings) or ``"timestamp:<strftime format>"`` (``datetime64[ns]``,
            UTC; ISO 8601 without a format); by default :data:`COMBINED_COLUMNS`.
        errors: a :meth:`bytes.decode` handler for bytes that are not UTF-8:
            ``"strict"`` (a bad line) or ``"replace"`` (kept, with U+FFFD); by default
            ``"replace"`` for :data:`COMBINED` and ``"strict"`` for other patterns.
        fill_int: what an ``int`` group that took no part in the match reads as
            (distinct from a real 0); such a ``float`` reads as NaN, a timestamp as NaT.

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
        self,
        pattern: str | re.Pattern[str] = COMBINED,
        columns: dict[str, str] | None = None,
        *,
        errors: str | None = None,
        fill_int: int = -1,
    ) -> None:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        cols = dict(COMBINED_COLUMNS if columns is None else columns)
        if errors is None:
            errors = "replace" if compiled.pattern == COMBINED else "strict"
        b"".decode("utf-8", errors)  # an unknown handler fails here, not per block
        self.errors = errors
        self._parse, self.dtype = _parser(compiled, cols, errors, fill_int)

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
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ..kernels.rows import empty_rows
from ._blocks import SMALL_BLOCK, LineDecoder, Parse, RejectedLines
from ._logarrow import arrow_breaks, arrow_columns, has_arrow, plain
from ._logfast import Layout, Token, fast_parser
from ._lognative import NativeParse, has_native, native_parser
from ._timeparse import FixedFormat

__all__ = ["COMBINED", "COMBINED_COLUMNS", "LogDecoder", "LogEngine", "LogFormat"]

LogEngine: TypeAlias = Literal["auto", "native", "numpy", "pyarrow"]

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

_TIME = r"\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}"
_REQUEST = rf'(?P<method>[^ "\n]+) (?P<path>{_QUOTED}?)(?: (?P<protocol>HTTP/[\d.]+))?|{_QUOTED}'
_COMBINED_LAYOUT = Layout(
    (
        Token("bare", "remote_addr"),
        Token("bare"),
        Token("bare", "remote_user"),
        Token("bracket", "time", spaces=1, time=True),
        Token("quoted", "request", request=True),
        Token("bare", "status", shape="digits3"),
        Token("bare", "bytes", shape="digits", dash=True),
        Token("quoted", "referer"),
        Token("quoted", "user_agent"),
        Token("bare", "request_time", shape="number", dash=True),
    ),
    optional=1,
)


class LogFormat:
    """A log format declared as space-separated fields, in nginx ``log_format`` syntax.

    Each token is a variable (``$status``: no spaces or quotes), a quoted variable
    (``"$http_user_agent"``: anything but a quote, nginx's backslash escapes
    included), a bracketed variable (``[$time_local]``: nginx's local time; other
    variables without spaces) or literal text (``-``). ``"$request"`` also gives the
    groups ``method``, ``path`` and ``protocol``, as :data:`COMBINED` does.

    The format stands for a regular expression (:attr:`pattern`), which any line can be
    matched with; a :class:`LogDecoder` given a ``LogFormat`` parses the lines of the
    declared shape with array arithmetic instead, several times faster, and leaves the
    others (escapes, non-ASCII bytes, a missing or extra field) to the expression, so
    the rows are the same either way.

    Args:
        fields: the ``log_format`` string, e.g.
            ``'$remote_addr - $remote_user [$time_local] "$request" $status'``.

    Attributes:
        pattern: the regular expression, one named group per variable.
        columns: default typed columns: every variable as ``str``, but ``status``,
            ``body_bytes_sent``, ``bytes_sent`` (``int``), ``request_time`` (``float``)
            and ``time_local`` (``timestamp``).

    Raises:
        ValueError: a token that is none of these, or a variable twice.

    Examples:
        >>> fmt = LogFormat('$remote_addr [$time_local] "$request" $status $request_time')
        >>> rows, bad = LogDecoder(fmt, {"path": "str", "status": "int"}).decode(
        ...     b'1.2.3.4 [10/Oct/2024:13:55:36 +0000] "GET /a HTTP/1.1" 200 0.002\\n'
        ... )
        >>> rows.tolist()
        [('/a', 200)]
    """

    _TYPES: dict[str, str] = {  # noqa: RUF012 - read only
        "status": "int",
        "body_bytes_sent": "int",
        "bytes_sent": "int",
        "request_time": "float",
        "time_local": "timestamp:%d/%b/%Y:%H:%M:%S %z",
    }

    def __init__(self, fields: str) -> None:
        self.fields = fields
        tokens: list[Token] = []
        parts: list[str] = []
        names: list[str] = []
        for word in fields.split(" "):
            m = re.fullmatch(r'(\$(\w+))|"\$(\w+)"|\[\$(\w+)\]', word)
            if m is None:
                if not word or "$" in word or '"' in word:
                    raise ValueError(
                        f'LogFormat: {word!r} in {fields!r}: use $name, "$name", [$name] or '
                        "literal text between single spaces (or write a regular expression)"
                    )
                tokens.append(Token("literal", text=word))
                parts.append(re.escape(word))
                continue
            name = m[2] or m[3] or m[4]
            names.append(name)
            if m[2]:
                tokens.append(Token("bare", name))
                parts.append(rf'(?P<{name}>[^ "\n]+)')
            elif m[3]:
                request = name == "request"
                tokens.append(Token("quoted", name, request=request))
                inner = _REQUEST if request else _QUOTED
                parts.append(rf'"(?P<{name}>{inner})"')
            elif name == "time_local":
                tokens.append(Token("bracket", name, spaces=1, time=True))
                parts.append(rf"\[(?P<{name}>{_TIME})\]")
            else:
                tokens.append(Token("bracket", name))
                parts.append(rf'\[(?P<{name}>[^ "\n]*)\]')
        if len(set(names)) != len(names) or {"method", "path", "protocol"} & set(names):
            raise ValueError(f"LogFormat: a variable named twice in {fields!r}")
        self.pattern = " ".join(parts)
        self.layout = Layout(tuple(tokens))
        self.columns = {n: self._TYPES.get(n, "str") for n in names}

    def __repr__(self) -> str:
        return f"LogFormat({self.fields!r})"


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
    # NumPy's str arrays drop trailing NUL characters: "51\x00" would read as 51
    nul: dict[int, Exception] = {
        i: ValueError(f"{t!r} is not a number") for i, t in enumerate(texts) if "\x00" in t
    }
    if nul:
        texts = ["-" if i in nul else t for i, t in enumerate(texts)]
    values = np.array(texts, dtype=str)
    dash, empty = values == "-", values == ""
    if dash.any() or empty.any():
        values = np.where(dash, "0" if dtype == "i8" else "nan", values)
        values = np.where(empty, str(fill_int) if dtype == "i8" else "nan", values)
    # a float beyond float64's range reads as inf, as the other engines read it (no
    # RuntimeWarning); an int beyond int64's raises OverflowError: that line is bad
    try:
        with np.errstate(over="ignore"):
            return values.astype(dtype), nul
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(values), dtype)
    bad: dict[int, Exception] = dict(nul)
    for i, text in enumerate(values.tolist()):
        try:
            with np.errstate(over="ignore"):
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
    pattern: re.Pattern[str],
    columns: dict[str, str],
    errors: str,
    fill_int: int,
    layout: Layout | None = None,
    engine: LogEngine = "numpy",
) -> tuple[Parse, np.dtype[Any], bool]:
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
    fast: NativeParse | None = None
    if layout is not None and set(columns) <= layout.groups() and engine == "native":
        fast = native_parser(layout, columns, dtype, fill_int, fixed)
    elif layout is not None and set(columns) <= layout.groups():
        split = None
        if engine == "pyarrow":

            def split(variants: list[tuple[Token, ...]]) -> tuple[Any, Any]:
                return arrow_breaks(variants, columns), arrow_columns(variants, columns, fill_int)

        fast = fast_parser(layout, columns, dtype, fill_int, formats, fixed, split)

    def columns_of(rows: list[Any]) -> Converted:
        """The rows' columns, and the rows (with errors) whose fields do not convert."""
        out = empty_rows(len(rows), dtype)
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

    def by_line(numbered: Any) -> tuple[NDArray[Any], list[int], list[tuple[int, Exception]]]:
        """Each ``(index, line)`` matched alone: the rows, their indexes, the bad lines."""
        groups: list[Any] = []
        lines: list[int] = []
        bad: list[tuple[int, Exception]] = []
        for i, line in numbered:
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
            lines = [x for k, x in enumerate(lines) if k not in failed]
        return rows, lines, bad

    def vectorized(blob: bytes) -> NDArray[Any]:
        assert fast is not None
        if b"\r" in blob:
            blob = blob.replace(b"\r\n", b"\n")
        if not blob.endswith(b"\n"):
            blob += b"\n"
        out, done, newlines = fast(blob)
        if done.all():
            return out
        numbered: list[tuple[int, str]] = []
        undecodable: list[tuple[int, Exception]] = []
        for i in np.flatnonzero(~done).tolist():
            start = int(newlines[i - 1]) + 1 if i else 0
            try:
                numbered.append((i, blob[start : int(newlines[i])].decode("utf-8", errors)))
            except UnicodeDecodeError as exc:
                undecodable.append((i, exc))
        rows, lines, bad = by_line(numbered)
        if lines:
            out[lines] = rows
            done[lines] = True
        out = out[done]
        if bad or undecodable:
            raise RejectedLines(out, sorted(bad + undecodable, key=itemgetter(0)))
        return out

    def parse(blob: bytes) -> NDArray[Any]:
        if fast is not None:
            return vectorized(blob)
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
        rows, _, bad = by_line(enumerate(text.split("\n")))
        if bad:
            raise RejectedLines(rows, bad)
        return rows

    return parse, dtype, fast is not None


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


def _choose(engine: LogEngine, layout: Layout | None, columns: dict[str, str]) -> LogEngine:
    if engine not in ("auto", "native", "numpy", "pyarrow"):
        raise ValueError(
            f"LogDecoder: engine={engine!r}: use 'auto', 'native', 'numpy' or 'pyarrow'"
        )
    if engine == "numpy":
        return "numpy"
    if layout is None:
        if engine in ("pyarrow", "native"):
            raise ValueError(f"LogDecoder: engine={engine!r} needs COMBINED or a LogFormat")
        return "numpy"
    if engine in ("auto", "native") and has_native():
        return "native"
    if engine == "native":
        raise ImportError(
            "engine='native': aflow was installed without its compiled log scanner "
            "(no C compiler at install time); reinstall with one (pip install "
            "--no-cache-dir: pip may reuse the wheel it built without), or use "
            "'pyarrow'/'numpy'"
        )
    if engine == "auto" and not plain(layout.tokens, columns):
        return "numpy"  # splitting by pyarrow would cost more than it saves
    if has_arrow():
        return "pyarrow"
    if engine == "pyarrow":
        raise ImportError("engine='pyarrow' needs pyarrow: `pip install pyarrow` (the arrow extra)")
    return "numpy"


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
        pattern: a regular expression with named groups matching a whole line, or a
            :class:`LogFormat`; by default the nginx/Apache combined format
            (:data:`COMBINED`).
        columns: group name -> ``"int"``, ``"float"`` (``"-"`` reads as 0 and NaN),
            ``"float:sum"`` (or ``max``, ``min``, ``first``, ``last``: a list of numbers
            such as nginx's ``0.000, 0.001`` or ``0.1 : 0.2``, combined), ``"str"``
            (Python strings) or ``"timestamp:<strftime format>"`` (``datetime64[ns]``,
            UTC; ISO 8601 without a format); by default :data:`COMBINED_COLUMNS` (or
            the format's :attr:`LogFormat.columns`).
        errors: a :meth:`bytes.decode` handler for bytes that are not UTF-8:
            ``"strict"`` (a bad line) or ``"replace"`` (kept, with U+FFFD); by default
            ``"replace"`` for :data:`COMBINED` and a :class:`LogFormat`, ``"strict"`` for
            other patterns.
        fill_int: what an ``int`` group that took no part in the match reads as
            (distinct from a real 0); such a ``float`` reads as NaN, a timestamp as NaT.
        engine: for :data:`COMBINED` and a :class:`LogFormat`: ``"native"`` (the
            compiled scanner, built at install where a C compiler is found) reads each
            line once in C outside the GIL, checks its shape as the regular expression
            does and reads the numbers, the other columns converted as with NumPy;
            ``"pyarrow"`` (needs pyarrow, the ``arrow`` extra) splits blocks of
            printable ASCII lines with pyarrow's CSV reader (outside the GIL), checks
            each field's shape and casts the numbers; ``"numpy"`` finds the fields
            with NumPy; ``"auto"``: native when built, else pyarrow when installed and
            every column is one field read as ``int``, ``float`` or ``str`` (not a
            timestamp nor the request's ``method``, ``path``, ``protocol``), else
            NumPy. Lines an engine cannot take go to the regular expression: the rows
            are the same.

    Attributes:
        dtype: the rows' dtype: ``int64``, ``float64``, ``object`` or
            ``datetime64[ns]`` fields, in the order of ``columns``.
        small_block: blocks of fewer bytes are cheap enough to decode without a worker
            thread (the same attribute as :class:`~aflow.codecs.CsvDecoder`'s; 0: every
            block alike).
        vectorized: lines of the declared shape are parsed with array arithmetic
            (:data:`COMBINED` and a :class:`LogFormat`; the other lines by the regular
            expression): parsing then mostly runs outside the GIL, so blocks gain from
            worker threads.
        engine: the engine chosen, ``"native"``, ``"numpy"`` or ``"pyarrow"``.

    Raises:
        ValueError: a column that is not a named group of the pattern, or of an unknown
            type; ``engine="pyarrow"`` or ``"native"`` for a pattern that is neither
            :data:`COMBINED` nor a :class:`LogFormat`.
        ImportError: ``engine="pyarrow"`` without pyarrow installed, or
            ``engine="native"`` where the compiled scanner was not built.

    Examples:
        >>> decoder = LogDecoder(r"(?P<level>[A-Z]+) (?P<ms>\\d+)", {"level": "str", "ms": "int"})
        >>> rows, bad = decoder.decode(b"INFO 12\\nbroken\\nWARN 7\\n")
        >>> rows.tolist(), [b.line for b in bad]
        ([('INFO', 12), ('WARN', 7)], [b'broken\\n'])
    """

    def __init__(
        self,
        pattern: str | re.Pattern[str] | LogFormat = COMBINED,
        columns: dict[str, str] | None = None,
        *,
        errors: str | None = None,
        fill_int: int = -1,
        engine: LogEngine = "auto",
    ) -> None:
        layout = None
        if isinstance(pattern, LogFormat):
            layout, default = pattern.layout, pattern.columns
            compiled = re.compile(pattern.pattern)
        else:
            compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
            default = COMBINED_COLUMNS
            if compiled.pattern == COMBINED and not compiled.flags & ~re.UNICODE:
                layout = _COMBINED_LAYOUT
        cols = dict(default if columns is None else columns)
        if errors is None:
            errors = "replace" if layout is not None else "strict"
        b"".decode("utf-8", errors)  # an unknown handler fails here, not per block
        self.errors = errors
        self.engine = _choose(engine, layout, cols)
        self._parse, self.dtype, self.vectorized = _parser(
            compiled, cols, errors, fill_int, layout, self.engine
        )
        if self.vectorized:
            self.small_block = SMALL_BLOCK

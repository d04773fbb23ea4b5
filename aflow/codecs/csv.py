"""CSV both ways: delimited lines into structured arrays, and arrays into CSV lines.

Decoding has three engines: NumPy's C ``loadtxt`` (always there), pyarrow's CSV reader
(``pip install pyarrow``, the ``arrow`` extra), several times faster on large blocks, and
aflow's compiled scanner for numeric columns (built at install where a C compiler is
found; see :mod:`._csvnative`), faster again, which leaves every line it does not read to
the others. All follow NumPy's rules on which lines are bad.

Encoding follows one set of rules, used by the file sink :func:`~aflow.to_csv` and the
socket sinks :func:`~aflow.to_tcp` and :func:`~aflow.to_udp` alike (see
:class:`CsvEncoder`).
"""

from __future__ import annotations

import contextlib
import csv as stdcsv
import importlib.util
import io
import operator
import re
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..kernels.rows import empty_rows
from ._arrow import column as arrow_column
from ._arrow import memory_pool
from ._blocks import (
    SMALL_BLOCK,
    Block,
    Decoded,
    LineDecoder,
    Parse,
    RejectedLines,
    as_bytes,
    by_size,
    decode_block,
    fit,
    structured,
    widened,
)
from ._csvnative import has_native, native_dtype, native_parser
from ._csvrules import aflow_message, check_overflow, fill_missing, has_empty_field, suspects_for
from ._text import as_text, columns, join_rows

__all__ = ["CsvDecoder", "CsvEncoder", "Engine", "Fmt"]

Engine: TypeAlias = Literal["auto", "native", "numpy", "pyarrow"]

Fmt: TypeAlias = "str | Sequence[str | None] | None"
"""How values are written as text: ``None`` (the default text of each column, see
:class:`CsvEncoder`), one ``%``-format for every column (``"%.3f"``), or one per column
(``None`` entries keep the default)."""


class CsvDecoder(LineDecoder):
    """Decodes blocks of delimited lines into a structured array of ``dtype``.

    Fields may be quoted with ``"``. Empty lines are skipped; ``nan`` and ``inf`` are
    accepted in float columns; a finite number beyond a float field's range (``1e39`` for
    ``float32``) is an error, not infinity. A line with a wrong field count, an unparsable
    number or invalid UTF-8 is one bad line; the rest of its block is decoded.

    Args:
        dtype: a structured dtype, one field per column, e.g.
            ``[("ts", "i8"), ("sensor", "i4"), ("value", "f4")]``.
        delimiter: the field separator.
        engine: ``"native"`` (the compiled scanner: integer, float32 and float64
            columns in the machine's byte order, a one-byte delimiter that is not part
            of a number), ``"numpy"``, ``"pyarrow"`` (needs pyarrow, the ``arrow``
            extra), or ``"auto"``: the scanner where it was built and reads the dtype;
            else pyarrow when installed and every column is an integer or a float, for
            blocks of :data:`~aflow.codecs.SMALL_BLOCK` bytes and more; else NumPy.
            Every engine keeps NumPy's rules (NumPy judges each line the scanner leaves
            over or pyarrow rejects, and parses pyarrow's smaller blocks), so results
            never depend on block size or engine.

    Attributes:
        dtype: the rows' dtype.
        engine: the engine chosen, ``"native"``, ``"numpy"`` or ``"pyarrow"``.
        small_block: blocks of fewer bytes are parsed by NumPy, cheap enough to call
            without a worker thread (0: no such switch).

    Raises:
        TypeError: ``dtype`` is not structured.
        ImportError: ``engine="pyarrow"`` without pyarrow installed, ``engine="native"``
            without the scanner.
        ValueError: ``engine="native"`` for a dtype or delimiter it does not read.

    Examples:
        >>> decoder = CsvDecoder([("ts", "i8"), ("value", "f4")])
        >>> rows, bad = decoder.decode(b"ts,value\\n1,0.5\\n2,oops\\n3,1e3\\n", header=True)
        >>> rows.tolist()
        [(1, 0.5), (3, 1000.0)]
        >>> [(b.index, b.line) for b in bad]
        [(2, b'2,oops\\n')]
    """

    def __init__(
        self,
        dtype: DTypeLike,
        *,
        delimiter: str = ",",
        engine: Engine = "auto",
        fill_int: int | None = None,
    ) -> None:
        self.dtype = structured(dtype, "CsvDecoder", "column")
        if fill_int is not None and (
            isinstance(fill_int, bool) or not hasattr(fill_int, "__index__")
        ):
            raise TypeError(f"fill_int={fill_int!r}: an integer, or None")
        self.delimiter = delimiter
        self.fill_int = None if fill_int is None else operator.index(fill_int)
        fill_int = self.fill_int
        self._options = engine
        self.engine = _choose(engine, self.dtype, delimiter)
        self._suspects = suspects_for(self.dtype, delimiter)
        reference = _numpy_parser(self.dtype, delimiter, fill_int)
        self._parse = reference
        if self.engine == "native":
            # the lines the scanner leaves over: NumPy's engine, with pyarrow for many
            parsed = _lazy_arrow(self.dtype, delimiter, fill_int, reference)
            suspects = self._suspects

            def rest(blob: bytes) -> Decoded:
                return decode_block(blob, parsed, self.dtype, suspects)

            self._parse = native_parser(self.dtype, delimiter, fill_int, rest)  # type: ignore[assignment]
            self.small_block = SMALL_BLOCK
        elif self.engine == "pyarrow":
            # NumPy's rules everywhere: pyarrow parses blocks, NumPy judges the lines
            # pyarrow rejects (and, for "auto", parses small blocks: a datagram, a few
            # new lines of a followed file)
            self._parse = _checked_by(_arrow_parser(self.dtype, delimiter, fill_int), reference)
            if engine == "auto":
                self._parse = by_size(self._parse, reference)
                self.small_block = SMALL_BLOCK

    def decode(self, block: Block, *, header: bool = False) -> Decoded:
        """The rows of a block's good lines, and its bad lines.

        Args:
            block: whole lines (see :data:`~aflow.codecs.Block`).
            header: the block's first line is a header: skip it. Bad lines keep their
                index in ``block`` (the first data line is line 1).

        Returns:
            ``Decoded(rows, bad)``: a 1-D array of ``dtype`` and a list of
            :class:`~aflow.codecs.BadLine`. Never raises on bad input.
        """
        if not header:
            return super().decode(block)
        blob = as_bytes(block)
        cut = blob.find(b"\n") + 1 or len(blob)
        rows, bad = decode_block(blob[cut:], self._parse, self.dtype, self._suspects)
        return Decoded(rows, [b._replace(index=b.index + 1) for b in bad])

    def by_names(self, header: bytes) -> LineDecoder:
        """A decoder for lines under ``header``: each field of ``dtype`` taken from the
        column of its name, in any order; columns not in ``dtype`` are ignored.

        Raises:
            ValueError: a field of ``dtype`` that the header does not name.
        """
        text = header.decode("utf-8-sig", "replace").strip("\r\n")
        names = next(stdcsv.reader([text], delimiter=self.delimiter))
        missing = [n for n in self.dtype.names or () if n not in names]
        if missing:
            raise ValueError(
                f"the header line {text[:200]!r} has no column {missing[0]!r}: "
                f"name every field of the dtype ({', '.join(self.dtype.names or ())})"
            )
        own = dict(_fields(self.dtype))
        fields = [(n, own.get(n, np.dtype("O"))) for n in _unique(names)]
        inner = CsvDecoder(
            fields,
            delimiter=self.delimiter,
            engine=self._options if self._options == "numpy" else "auto",
            fill_int=self.fill_int,
        )
        return _Selected(inner, self.dtype)


def _unique(names: list[str]) -> list[str]:
    """Header names made unique (a repeated or empty name gets a suffix)."""
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        unique = name if name and name not in seen else f"{name or 'column'}_{i}"
        seen.add(unique)
        out.append(unique)
    return out


class _Selected(LineDecoder):
    """``inner``'s rows cut down to the fields of ``dtype``, in its order."""

    def __init__(self, inner: CsvDecoder, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.engine = inner.engine
        self.small_block = inner.small_block
        self._suspects = inner._suspects
        names = list(dtype.names or ())
        parse = inner._parse

        def select(rows: NDArray[Any]) -> NDArray[Any]:
            out = empty_rows(len(rows), dtype)
            for name in names:
                out[name] = rows[name]
            return out

        def selected(blob: bytes) -> NDArray[Any]:
            try:
                return select(parse(blob))
            except RejectedLines as rejected:  # the good lines' rows, cut down too
                raise RejectedLines(select(rejected.rows), rejected.bad) from None

        self._parse = selected


def _text_wide(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` as parsed: floats as float64 (narrowed by :func:`fit`), text as Python
    strings (checked against the field's width, bytes encoded as UTF-8)."""
    return np.dtype([(n, "O" if dt.kind in "SU" else dt) for n, dt in _fields(widened(dtype))])


def _fields(dtype: np.dtype[Any]) -> list[tuple[str, np.dtype[Any]]]:
    """``(name, dtype)`` of each field of a structured ``dtype``."""
    fields: Any = dtype.fields or {}
    return [(name, fields[name][0]) for name in dtype.names or ()]


def text_column(values: NDArray[Any], dt: np.dtype[Any], name: str) -> NDArray[Any]:
    """Python strings for a field of ``dt``: ``U`` as they are, ``S`` as UTF-8; a value
    longer than the field is an error, never cut short."""
    text = np.array(values.tolist() if values.dtype == object else values, dtype=str)
    out = np.strings.encode(text, "utf-8") if dt.kind == "S" else text
    width = dt.itemsize if dt.kind == "S" else dt.itemsize // 4
    if dt.itemsize and len(out) and int(np.strings.str_len(out).max()) > width:
        raise ValueError(f"a value longer than column {name!r} holds ({dt})")
    return out.astype(dt)


def _numpy_parser(dtype: np.dtype[Any], delimiter: str, fill_int: int | None) -> Parse:
    wide = _text_wide(dtype)  # floats parsed as float64, then narrowed with a range check
    floats = [n for n in dtype.names or () if dtype.fields[n][0].kind == "f"]  # type: ignore[index]

    ncols = len(dtype.names or ())
    delim = delimiter.encode()

    def parse(blob: bytes) -> NDArray[Any]:
        blob = blob.removeprefix(BOM)  # dropped (as pyarrow drops it): a line of it is blank
        if not blob.strip():
            return np.empty(0, dtype)
        if b'"' not in blob and blob.count(b"\n") <= 1:  # one line: count fields at once
            fields = blob.count(delim) + 1
            if fields != ncols:
                names = ", ".join(dtype.names or ())
                raise ValueError(f"{fields} fields where the dtype has {ncols} columns ({names})")
        text = blob.decode("utf-8-sig")  # a leading BOM goes (as pyarrow drops it); invalid
        # UTF-8 fails the line, as it should
        if has_empty_field(text, delimiter):
            text = fill_missing(text, dtype, delimiter, fill_int)
        try:
            rows = np.loadtxt(
                io.StringIO(text),
                delimiter=delimiter,
                dtype=wide,
                quotechar='"',
                comments=None,  # "#" is data, not a comment
                ndmin=1,
            )
        except ValueError as exc:
            raise aflow_message(exc, dtype) from None
        lines = sum(1 for line in text.split("\n") if line.strip())
        if len(rows) != lines:  # a quote left open joined lines: isolate them
            raise ValueError(f"{len(rows)} records from {lines} lines (unbalanced quote?)")
        out = rows
        if wide != dtype:
            out = empty_rows(len(rows), dtype)
            for name in dtype.names or ():
                dt = dtype.fields[name][0]  # type: ignore[index]
                if dt.kind in "SU":
                    out[name] = text_column(rows[name], dt, name)
                else:
                    out[name] = fit(rows[name], dt)
        check_overflow(blob, out, floats)
        return out

    return parse


def _arrow_parser(dtype: np.dtype[Any], delimiter: str, fill_int: int | None) -> Parse:
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError as exc:
        raise ImportError(
            "engine='pyarrow' needs pyarrow: `pip install pyarrow` (the arrow extra)"
        ) from exc

    names = list(dtype.names or ())
    floats = [n for n in names if dtype.fields[n][0].kind == "f"]  # type: ignore[index]
    # floats are parsed as float64 and cast by NumPy, as NumPy's engine does (parsing
    # straight to float32 rounds differently; float16 pyarrow cannot parse); text as
    # strings, checked and encoded as the NumPy engine does
    types = {n: arrow_type(pa, dtype.fields[n][0]) for n in names}  # type: ignore[index]
    read = pacsv.ReadOptions(column_names=names, use_threads=False)  # blocks run in parallel
    options = pacsv.ParseOptions(delimiter=delimiter, quote_char='"')
    convert = pacsv.ConvertOptions(
        column_types=types,
        null_values=[""],  # an empty numeric field: NaN, or the integer fill value
        quoted_strings_can_be_null=False,
        strings_can_be_null=False,
    )
    pool = memory_pool()  # not pyarrow's default: see memory_pool
    # lines of white-space delimiters only (as many as make a row): blank to NumPy
    blank = None
    if delimiter.isspace() and len(names) > 1:
        blank = re.compile(b"(?m)^" + re.escape(delimiter.encode()) * (len(names) - 1) + b"\r?$")

    def parse(blob: bytes) -> NDArray[Any]:
        if not blob or blob.isspace():
            return np.empty(0, dtype)
        # one-byte searches first (memchr): a search for b"0x" in a block of numbers
        # stops at every 0, and cost a 1 MiB block 0.5 ms, a third of its parse
        if b"\r" in blob and blob.count(b"\r") != blob.count(b"\r\n"):
            raise ValueError("a carriage return inside a line")  # pyarrow would end a row there
        if (b"x" in blob and b"0x" in blob) or (b"X" in blob and b"0X" in blob):
            raise ValueError("a hexadecimal number")  # pyarrow reads some; NumPy does not
        if b"(" in blob and _NAN_PAYLOAD.search(blob):
            raise ValueError("nan(...)")  # pyarrow reads it as NaN; NumPy does not
        if blank is not None and blank.search(blob):
            raise ValueError("a line of white space")  # pyarrow: a row; NumPy: none
        table = pacsv.read_csv(pa.py_buffer(blob), read, options, convert, memory_pool=pool)
        out = empty_rows(table.num_rows, dtype)
        for name in names:
            dt = dtype.fields[name][0]  # type: ignore[index]
            column = table.column(name)
            if column.null_count and dt.kind != "f":
                if fill_int is None or dt.kind not in "iu":
                    raise ValueError(f"empty value in column {name!r}")
                column = column.fill_null(fill_int)
            wide = np.dtype(np.float64) if dt.kind == "f" else dt
            values = arrow_column(column, wide, copy=False)  # copied into out
            out[name] = text_column(values, dt, name) if dt.kind in "SU" else fit(values, dt)
        check_overflow(blob, out, floats)
        return out

    return parse


_NAN_PAYLOAD = re.compile(rb"(?i)nan\(")
BOM = b"\xef\xbb\xbf"


def arrow_type(pa: Any, dt: np.dtype[Any]) -> Any:
    """The pyarrow type a field of ``dt`` is parsed as (floats as float64, then narrowed;
    text as strings)."""
    if dt.kind in "SU":
        return pa.string()
    return pa.float64() if dt.kind == "f" else pa.from_numpy_dtype(dt)


def _checked_by(fast: Parse, reference: Parse) -> Parse:
    """``fast`` for blocks, ``reference`` for the single lines ``fast`` rejects: a block
    ``fast`` accepts, ``reference`` accepts alike, so bisection narrows a failure down to
    lines and the reference decides each (``+1`` is an integer to NumPy, not to pyarrow)."""

    def parse(blob: bytes) -> NDArray[Any]:
        try:
            return fast(blob)
        except Exception:
            if blob.count(b"\n") > 1:
                raise
        return reference(blob)

    return parse


def _lazy_arrow(
    dtype: np.dtype[Any], delimiter: str, fill_int: int | None, reference: Parse
) -> Parse:
    """``reference`` for blocks under :data:`~aflow.codecs.SMALL_BLOCK` bytes; pyarrow
    checked by ``reference`` for larger ones, imported at the first (``reference`` alone
    without pyarrow)."""
    if importlib.util.find_spec("pyarrow") is None:
        return reference
    built: list[Parse] = []

    def parse(blob: bytes) -> NDArray[Any]:
        if len(blob) < SMALL_BLOCK:
            return reference(blob)
        if not built:
            built.append(_checked_by(_arrow_parser(dtype, delimiter, fill_int), reference))
        return built[0](blob)

    return parse


def _choose(
    engine: Engine, dtype: np.dtype[Any], delimiter: str
) -> Literal["native", "numpy", "pyarrow"]:
    if engine not in ("auto", "native", "numpy", "pyarrow"):
        raise ValueError(f"engine={engine!r}: use 'auto', 'native', 'numpy' or 'pyarrow'")
    if engine == "native":
        if not has_native():
            raise ImportError(
                "engine='native': aflow was installed without its compiled CSV scanner "
                "(no C compiler at install time); reinstall with one (pip install "
                "--no-cache-dir: pip may reuse the wheel it built without), or use "
                "'pyarrow'/'numpy'"
            )
        if not native_dtype(dtype, delimiter):
            raise ValueError(
                "engine='native' reads integer, float32 and float64 columns in the "
                f"machine's byte order, separated by a one-byte delimiter: not {dtype} "
                f"with {delimiter!r}"
            )
        return engine
    if engine != "auto":
        return engine
    if has_native() and native_dtype(dtype, delimiter):
        return "native"
    if any(dtype.fields[n][0].kind not in "iuf" for n in dtype.names or ()):  # type: ignore[index]
        return "numpy"
    if len(delimiter) != 1 or not "\x00" < delimiter < "\x80":  # not one pyarrow takes
        return "numpy"
    if importlib.util.find_spec("pyarrow") is None:
        return "numpy"
    return "pyarrow"


class CsvEncoder:
    """Encodes arrays as CSV lines: one line per row, ``\\n`` line ends, RFC 4180 quoting.

    The rules, the same for every sink that writes text lines:

    * Columns: the fields of a structured array (scalar fields only), the values of a
      1-D array, the columns of a 2-D array (see :meth:`header` for their names).
    * Values, with ``fmt=None``: numbers in the shortest form that reads back the same
      value (``0.1`` for a ``float32`` 0.1, not ``0.10000000149011612``), ``nan`` and
      ``inf`` as such, booleans as ``True``/``False``, datetimes in ISO 8601, byte strings
      decoded as UTF-8, other objects through ``str``. A ``%``-format (one for all columns,
      or one per column) replaces the default where given.
    * Text fields (``str``, ``bytes`` and object columns) holding the delimiter, a ``"``,
      a ``\\r`` or a ``\\n`` are quoted, their quotes doubled.
    * An array of no rows is no bytes (not an empty line).

    Args:
        fmt: see :data:`Fmt`.
        delimiter: between the values of a line.

    Examples:
        >>> rows = np.array([(1, 0.1, b"a,b")], [("id", "i4"), ("x", "f4"), ("tag", "S3")])
        >>> CsvEncoder().encode(rows)
        b'1,0.1,"a,b"\\n'
    """

    def __init__(self, fmt: Fmt = None, *, delimiter: str = ",") -> None:
        self.fmt = fmt
        self.delimiter = delimiter

    def encode(self, data: NDArray[Any]) -> bytes:
        """The rows of ``data`` (shape ``(n, ...)``) as CSV lines, UTF-8.

        Raises:
            TypeError: a field holding a sub-array, or more than two dimensions.
            ValueError: ``fmt`` has not one entry per column.
        """
        if not len(data):
            return b""
        cols = columns(data)
        parts: list[Any] = []
        for (_, col), f in zip(cols, self._fmts(len(cols)), strict=True):
            text = as_text(col) if f is None else np.char.mod(f, col)
            parts += [self._quote(text) if col.dtype.kind in "USO" else text, self.delimiter]
        return join_rows(parts[:-1])

    def line(self, values: Sequence[Any]) -> bytes:
        """One line of Python values (an element of a flow), by the same rules applied
        value by value; a value a ``%``-format does not take is written with ``str``."""
        texts = [self._text(v, f) for v, f in zip(values, self._fmts(len(values)), strict=True)]
        return (self.delimiter.join(texts) + "\n").encode()

    def _fmts(self, n: int) -> list[str | None]:
        fmt = self.fmt
        fmts = [fmt] * n if fmt is None or isinstance(fmt, str) else list(fmt)
        if len(fmts) != n:
            raise ValueError(f"fmt has {len(fmts)} entries for {n} columns")
        return fmts

    def _text(self, value: Any, fmt: str | None) -> str:
        text = None
        if fmt is not None:
            with contextlib.suppress(TypeError):  # not a value for this format: str
                text = fmt % (value,)
        if text is None:
            text = value.decode() if isinstance(value, bytes) else str(value)
        return str(self._quote(np.array([text]))[0])  # as in an object column

    def header(self, data: NDArray[Any]) -> bytes:
        """The header line for batches like ``data``: the column names (the fields of
        records, ``value`` for 1-D arrays, ``0`` .. ``k-1`` for 2-D ones), quoted where
        needed."""
        names = np.array([name for name, _ in columns(data)])
        return (self.delimiter.join(self._quote(names).tolist()) + "\n").encode()

    def _quote(self, text: NDArray[np.str_]) -> NDArray[np.str_]:
        """Quote the fields holding the delimiter, a quote or a line break; double the
        quotes."""
        special = np.zeros(text.shape, bool)
        for ch in {self.delimiter, '"', "\n", "\r"}:
            special |= np.strings.find(text, ch) >= 0
        if not special.any():
            return text
        quoted = np.strings.add(np.strings.add('"', np.strings.replace(text, '"', '""')), '"')
        out: NDArray[np.str_] = np.where(special, quoted, text)
        return out

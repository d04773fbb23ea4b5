"""Delimited numbers (CSV) into structured arrays, a whole block per call.

Two engines: NumPy's C ``loadtxt`` (always there) and pyarrow's multi-threaded CSV reader
(``pip install aflow[arrow]``), several times faster.
"""

from __future__ import annotations

import io
import os
from typing import Any, Literal

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..flow import Stage
from ..policies import ErrorPolicy
from ._decode import DecodeOp, FastDecode, decode_stage, fit, widened

__all__ = ["decode_csv"]

Engine = Literal["auto", "numpy", "pyarrow"]

SMALL = 16 * 1024  # bytes: below this, NumPy parses a block faster than pyarrow


def _numpy_decoder(dtype: np.dtype[Any], delimiter: str) -> FastDecode:
    wide = widened(dtype)  # floats parsed as float64, then narrowed with a range check

    def decode(blob: bytes) -> NDArray[Any]:
        if not blob.strip():
            return np.empty(0, dtype)
        text = blob.decode("utf-8-sig")  # a leading BOM goes (as pyarrow drops it); invalid
        # UTF-8 fails the line, as it should
        rows = np.loadtxt(
            io.StringIO(text),
            delimiter=delimiter,
            dtype=wide,
            quotechar='"',
            comments=None,  # "#" is data, not a comment
            ndmin=1,
        )
        lines = sum(1 for line in text.split("\n") if line.strip())
        if len(rows) != lines:  # a quote left open joined lines: isolate them
            raise ValueError(f"{len(rows)} records from {lines} lines (unbalanced quote?)")
        if wide == dtype:
            return rows
        out = np.empty(len(rows), dtype)
        for name in dtype.names or ():
            out[name] = fit(rows[name], dtype.fields[name][0])  # type: ignore[index]
        return out

    return decode


def _arrow_decoder(dtype: np.dtype[Any], delimiter: str) -> FastDecode:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = list(dtype.names or ())
    # floats are parsed as float64 and cast by NumPy, as NumPy's engine does (parsing
    # straight to float32 rounds differently; float16 pyarrow cannot parse)
    types = {n: _arrow_type(pa, dtype.fields[n][0]) for n in names}  # type: ignore[index]
    read = pacsv.ReadOptions(column_names=names, use_threads=False)  # aflow runs blocks in parallel
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"')
    convert = pacsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False)

    def decode(blob: bytes) -> NDArray[Any]:
        if not blob.strip():
            return np.empty(0, dtype)
        if b"\r" in blob and blob.count(b"\r") != blob.count(b"\r\n"):
            raise ValueError("a carriage return inside a line")  # pyarrow would end a row there
        if b"0x" in blob or b"0X" in blob:
            raise ValueError("a hexadecimal number")  # pyarrow reads some; NumPy does not
        table = pacsv.read_csv(pa.py_buffer(blob), read, parse, convert)
        out = np.empty(table.num_rows, dtype)
        for name in names:
            column = table.column(name)
            if column.null_count:
                raise ValueError(f"empty value in column {name!r}")
            out[name] = fit(column.to_numpy(), dtype.fields[name][0])  # type: ignore[index]
        return out

    return decode


def _arrow_type(pa: Any, dt: np.dtype[Any]) -> Any:
    return pa.float64() if dt.kind == "f" else pa.from_numpy_dtype(dt)


def _checked_by_numpy(fast: FastDecode, reference: FastDecode) -> FastDecode:
    """``fast`` for blocks, ``reference`` for the single lines ``fast`` rejects: a block
    ``fast`` accepts, ``reference`` accepts alike, so bisection narrows a failure down to
    lines and the reference decides each (``+1`` is an integer to NumPy, not to pyarrow)."""

    def decode(blob: bytes) -> NDArray[Any]:
        try:
            return fast(blob)
        except Exception:
            if blob.count(b"\n") > 1:
                raise
        return reference(blob)

    return decode


def _engine(engine: Engine, dtype: np.dtype[Any]) -> Engine:
    if engine != "auto":
        return engine
    if dtype.names is None or any(dtype.fields[n][0].kind not in "iuf" for n in dtype.names):  # type: ignore[index]
        return "numpy"
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return "numpy"
    return "pyarrow"


def decode_csv(
    dtype: DTypeLike,
    *,
    delimiter: str = ",",
    header: bool = False,
    engine: Engine = "auto",
    threads: int | None = None,
    on_error: ErrorPolicy = "raise",
) -> Stage[Any, NDArray[Any]]:
    """Decode blocks of delimited lines into a structured array of ``dtype``.

    Takes line blocks (from :func:`aflow.read_lines`'s ``blocks=True``, file and socket
    sources) or chunks of ``str``/``bytes`` lines. Fields may be quoted with ``"``.
    Empty lines are skipped; ``nan`` and ``inf`` are accepted in float columns; a line
    with a wrong field count, an unparsable number or invalid UTF-8 is one bad line,
    handled by ``on_error`` while the rest of its block goes on.

    Args:
        dtype: a structured dtype, one field per column, e.g.
            ``[("ts", "i8"), ("sensor", "i4"), ("value", "f4")]``.
        delimiter: the field separator.
        header: the first line of each source is a header and is skipped: of each
            file, each connection of a socket server, each sender of UDP datagrams
            (each is numbered from line 1).
        engine: ``"numpy"``, ``"pyarrow"`` (needs ``aflow[arrow]``), or ``"auto"``:
            pyarrow when installed and every column is an integer or a float, for blocks
            of 16 KiB and more, with NumPy's rules (NumPy judges each line pyarrow
            rejects, and parses smaller blocks such as datagrams, inline), so results
            never depend on block size.
        threads: blocks decoded at once in worker threads (both engines release the GIL
            while parsing); by default one per core for pyarrow, none (decode inline,
            fused with the neighbouring stages) for numpy.
        on_error: ``"raise"``, ``"skip"`` or :func:`~aflow.dead_letter`.
    """
    dt = np.dtype(dtype)
    if dt.names is None:
        raise TypeError(f"decode_csv: dtype {dt} must be structured (one field per column)")
    chosen = _engine(engine, dt)
    reference = _numpy_decoder(dt, delimiter)
    decode = _arrow_decoder(dt, delimiter) if chosen == "pyarrow" else reference
    if threads is None:
        threads = (os.cpu_count() or 1) if chosen == "pyarrow" else 0
    small = None
    if engine == "auto" and chosen == "pyarrow":
        # NumPy's rules everywhere: pyarrow parses clean blocks, NumPy judges the lines
        # pyarrow rejects and parses small blocks (a datagram, a few new lines of a
        # followed file), where pyarrow's fixed cost per call (~0.3 ms) is more than
        # NumPy's whole parse
        decode = _checked_by_numpy(decode, reference)
        small = reference
    op = DecodeOp(
        f"decode_csv[{chosen}]", decode, on_error, header=header, small=small, small_below=SMALL
    )
    return decode_stage(op, threads)

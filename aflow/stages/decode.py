"""Decoding stages: blocks of lines in, record arrays out, bad lines to the error policy.

Each stage wraps a decoder of :mod:`aflow.codecs`, which parses a whole block per call and
isolates the bad lines; the stage hands each bad line to ``on_error`` with its source,
line number and offset, and sends the good rows on as one batch. Decoders release the GIL
while parsing, so blocks may be decoded in worker threads, several at once, output kept
in input order.
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..abc import (
    AsyncOperator,
    Batch,
    Context,
    Inbox,
    Message,
    Operator,
    Outlet,
    Processor,
    Provenance,
)
from ..codecs import COMBINED, CsvDecoder, Decoded, JsonlDecoder, LogDecoder
from ..codecs.csv import Engine
from ..errors import DecodeError
from ..flow import Stage
from ..policies import ErrorPolicy, apply_policy, check_policy
from ..stats import StageCounters
from .concurrency import _ConcurrentOp

__all__ = ["DecodeOp", "decode_csv", "decode_jsonl", "decode_log"]


class Decoder(Protocol):
    """What a decoding stage needs of a codec (:class:`~aflow.codecs.CsvDecoder` and its
    siblings)."""

    small_block: int

    def decode(self, block: NDArray[np.uint8]) -> Decoded: ...


class DecodeOp(Operator):
    """A fusable stage running ``decoder`` on every block, with an error policy per line.

    Args:
        name: the stage's name.
        decoder: parses a block of lines into a record array, setting bad lines aside.
        on_error: ``"raise"`` (a :class:`~aflow.errors.DecodeError` naming the source and
            line), ``"skip"`` (counted in the stage's ``errors``) or
            :func:`~aflow.dead_letter` (receives the raw line and its provenance). A
            :func:`~aflow.retry` policy goes straight to its ``then``: decoding the same
            bytes again cannot succeed.
        header: the first line of each source is a header: skip it.
    """

    def __init__(
        self, name: str, decoder: Decoder, on_error: ErrorPolicy, *, header: bool = False
    ) -> None:
        self.name = name
        self.decoder = decoder
        self.on_error = check_policy(on_error)
        self.header = header

    def start(self) -> Processor:
        return _DecodeRunner(self)


class _DecodeRunner(Processor):
    """One run of a decoding stage: its state (whether the run's first line, a header
    for input without provenance, was seen) lives here, never in the :class:`DecodeOp`."""

    guarded = True

    def __init__(self, op: DecodeOp) -> None:
        self.op = op
        self.stage = op.name  # the name failed lines give (threads: the concurrent stage's)
        self.first = True

    def process(self, msg: Message) -> list[Message]:  # pragma: no cover - guarded only
        raise NotImplementedError

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        batch = self.prepare(msg)
        return await self.assemble(batch, self.op.decoder.decode(batch.data), counters)

    def prepare(self, msg: Message) -> Batch:
        """The block as a batch (a chunk of lines is joined), its header line removed.

        Called once per message, in input order.
        """
        if not isinstance(msg, Batch):  # a chunk of lines (bytes or str)
            blob = b"".join(_line_bytes(x) for x in msg)
            msg = Batch(np.frombuffer(blob, np.uint8), "source")
        prov = msg.provenance
        if not self.op.header or not len(msg.data):
            return msg
        if prov is None or prov.unit != "line":
            # lines not numbered by their source (chunks, arrays): the run's first line is
            # the header
            first, self.first = self.first, False
            return Batch(msg.data[header_end(msg.data) :], msg.reason, prov) if first else msg
        if prov.start == 1:
            cut = header_end(msg.data)
            prov = Provenance(prov.source, 2, prov.stop, "line", prov.offset, prov.end_offset)
            return Batch(msg.data[cut:], msg.reason, prov)
        return msg

    async def assemble(
        self, batch: Batch, decoded: Decoded, counters: StageCounters
    ) -> list[Message]:
        """Report the bad lines, then the good rows as one batch."""
        for index, line, exc in decoded.bad:
            await self._report(index, line, exc, batch.provenance, counters)
        if not len(decoded.rows):
            return []
        return [Batch(decoded.rows, batch.reason, batch.provenance)]

    async def _report(
        self,
        index: int,
        line: bytes,
        exc: Exception,
        prov: Provenance | None,
        counters: StageCounters,
    ) -> None:
        source = prov.source if prov is not None else self.op.name
        number = prov.start + index if prov is not None and prov.unit == "line" else None
        error = DecodeError(
            f"{self.op.name}: cannot decode {line[:80]!r}: {exc}", source=source, line=number
        )
        error.__cause__ = exc
        # provenance None: the line's own, from the error (the bytes are not retried)
        await apply_policy(self.op.on_error, line, error, self.stage, None, counters)


def _line_bytes(x: Any) -> bytes:
    raw = x.encode() if isinstance(x, str) else bytes(x)
    return raw if raw.endswith(b"\n") else raw + b"\n"


def header_end(data: NDArray[np.uint8]) -> int:
    """Where the first line of ``data`` ends: after its newline, or at the end."""
    newline = np.flatnonzero(data == 10)
    return int(newline[0]) + 1 if len(newline) else len(data)


class _ThreadedDecodeOp(AsyncOperator):
    """``op`` decoding up to ``threads`` blocks at once in worker threads (the parsers
    release the GIL), output kept in input order; blocks under the decoder's
    ``small_block`` bytes are decoded inline, cheaper than a thread hop."""

    def __init__(self, op: DecodeOp, threads: int) -> None:
        self.op = op
        self.threads = threads
        self.name = f"{op.name}[threads={threads}]"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        runner = _DecodeRunner(self.op)  # this run's state
        runner.stage = self.name  # failed lines name the stage their statistics show
        decoder = self.op.decoder

        async def work(
            batch: Message, counters: StageCounters, limiter: anyio.CapacityLimiter
        ) -> list[Message]:
            assert isinstance(batch, Batch)
            if len(batch.data) < decoder.small_block:
                decoded = decoder.decode(batch.data)
            else:
                decoded = await anyio.to_thread.run_sync(
                    decoder.decode, batch.data, limiter=limiter
                )
            return await runner.assemble(batch, decoded, counters)

        def prepare(msg: Message) -> list[Message]:  # in input order, before the workers
            return [runner.prepare(msg)]

        stage = _ConcurrentOp(self.name, work, prepare, self.threads, True, None)
        await stage.run(inbox, out, ctx)


def decode_stage(op: DecodeOp, threads: int) -> Stage[Any, NDArray[Any]]:
    """``op`` fused (``threads=0``), or decoding ``threads`` blocks at once in worker
    threads."""
    return Stage(op) if threads <= 0 else Stage(_ThreadedDecodeOp(op, threads))


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

    Takes line blocks (from :func:`aflow.read_blocks`, the file and socket sources) or
    chunks of ``str``/``bytes`` lines. The rules are :class:`~aflow.codecs.CsvDecoder`'s:
    fields may be quoted with ``"``, empty lines are skipped, ``nan`` and ``inf`` are
    accepted in float columns; a line with a wrong field count, an unparsable number or
    invalid UTF-8 is one bad line, handled by ``on_error`` while the rest of its block
    goes on.

    Args:
        dtype: a structured dtype, one field per column, e.g.
            ``[("ts", "i8"), ("sensor", "i4"), ("value", "f4")]``.
        delimiter: the field separator.
        header: the first line of each source is a header and is skipped: of each
            file, each connection of a socket server, each sender of UDP datagrams
            (each is numbered from line 1), and the first line of a run for lines
            without provenance (chunks of lines, plain arrays).
        engine: ``"numpy"``, ``"pyarrow"`` (needs pyarrow, the ``arrow`` extra), or ``"auto"``:
            pyarrow when installed and every column is an integer or a float, for blocks
            of 16 KiB and more, with NumPy's rules (NumPy judges each line pyarrow
            rejects, and parses smaller blocks such as datagrams, inline), so results
            never depend on block size.
        threads: blocks decoded at once in worker threads (both engines release the GIL
            while parsing); by default one per core for pyarrow, none (decode inline,
            fused with the neighbouring stages) for numpy.
        on_error: ``"raise"``, ``"skip"`` or :func:`~aflow.dead_letter`.

    Raises:
        TypeError: ``dtype`` is not structured.
    """
    decoder = CsvDecoder(dtype, delimiter=delimiter, engine=engine)
    if threads is None:
        threads = (os.cpu_count() or 1) if decoder.engine == "pyarrow" else 0
    op = DecodeOp(f"decode_csv[{decoder.engine}]", decoder, on_error, header=header)
    return decode_stage(op, threads)


def decode_jsonl(
    dtype: DTypeLike, *, threads: int | None = None, on_error: ErrorPolicy = "raise"
) -> Stage[Any, NDArray[Any]]:
    """Decode blocks of JSON lines (one object per line) into a structured array.

    The rules are :class:`~aflow.codecs.JsonlDecoder`'s: each object must have a key per
    field of ``dtype`` (other keys are ignored), empty lines are skipped, ``NaN`` and
    ``Infinity`` are not JSON and make a line bad. A line that is not valid JSON, not an
    object, lacks a field or holds a value of the wrong kind (a non-integer for an
    integer field, a non-number for a float field) is a bad line for ``on_error``; the
    rest of its block goes on. A key given twice takes its last value.

    With pyarrow installed (the ``arrow`` extra) and only numeric fields, blocks of 16 KiB
    and more are parsed by pyarrow's JSON reader in ``threads`` worker threads (default:
    one per core); the result is the same. Otherwise blocks are decoded inline.

    Raises:
        TypeError: ``dtype`` is not structured.
    """
    decoder = JsonlDecoder(dtype)
    if decoder.engine != "pyarrow":
        return Stage(DecodeOp("decode_jsonl", decoder, on_error))
    op = DecodeOp("decode_jsonl[pyarrow]", decoder, on_error)
    return decode_stage(op, (os.cpu_count() or 1) if threads is None else threads)


def decode_log(
    pattern: str | re.Pattern[str] = COMBINED,
    columns: dict[str, str] | None = None,
    *,
    threads: int | None = None,
    on_error: ErrorPolicy = "raise",
) -> Stage[Any, NDArray[Any]]:
    """Parse blocks of log lines into a structured array, one field per column.

    The rules are :class:`~aflow.codecs.LogDecoder`'s.

    Args:
        pattern: a regular expression with named groups matching a whole line; by
            default the nginx/Apache combined format (:data:`~aflow.codecs.COMBINED`).
        columns: group name -> ``"int"``, ``"float"``, ``"str"`` or
            ``"timestamp:<strftime format>"``; by default
            :data:`~aflow.codecs.COMBINED_COLUMNS`.
        threads: blocks decoded at once in worker threads; by default none (decode
            inline, fused with the neighbouring stages: the regex holds the GIL, so threads
            pay only when the columns' conversions dominate).
        on_error: for lines that do not match or whose fields do not convert (also
            invalid UTF-8): ``"raise"``, ``"skip"`` or :func:`~aflow.dead_letter`.

    Raises:
        ValueError: a column that is not a named group of the pattern.
    """
    op = DecodeOp("decode_log", LogDecoder(pattern, columns), on_error)
    return decode_stage(op, threads or 0)

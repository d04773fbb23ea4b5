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
from collections import deque
from typing import Any, Literal, Protocol, cast

import anyio
import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..abc import (
    AsyncOperator,
    Barrier,
    Batch,
    Context,
    Inbox,
    Message,
    Operator,
    Outlet,
    Processor,
    Provenance,
)
from ..codecs import COMBINED, BadLine, CsvDecoder, Decoded, JsonlDecoder, LogDecoder, LogFormat
from ..codecs._diagnose import diagnose, header_hint
from ..codecs.csv import Engine
from ..codecs.lines import LineBlockProvenance, cut_before, line_place
from ..errors import DecodeError
from ..flow import Stage
from ..policies import ErrorPolicy, apply_policy, check_policy
from ..stats import StageCounters
from ._threads import OwnThreads
from .concurrency import _ConcurrentOp

__all__ = ["PROBE", "DecodeOp", "decode_csv", "decode_jsonl", "decode_log"]

PROBE = 100
"""Lines of a run's first block that ``fail_fast`` judges."""
MIN_PROBE = 10
"""Fewer lines in a run's first block are not judged (a datagram, a short file)."""
SMALL = 16 * 1024
"""Blocks under this many bytes waiting together are decoded in one call (many small
files: one parse of their joined lines, not one per file)."""
MERGED_BYTES = 1 << 20
"""The most bytes decoded in one call of merged small blocks."""
QUEUED = 1
"""Blocks a threaded decoding stage hands to its threads beyond one each."""


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
        header: the first line of each source is a header: skip it (``True``), or take
            each field from the column its name heads (``"names"``; needs a decoder with
            ``by_names``, as :class:`~aflow.codecs.CsvDecoder`).
        fail_fast: raise (even under ``"skip"`` or a dead letter) when at least this share
            of the first :data:`PROBE` lines of a run are bad, naming the likely cause;
            ``None``: never.
    """

    def __init__(
        self,
        name: str,
        decoder: Decoder,
        on_error: ErrorPolicy,
        *,
        header: bool | Literal["names"] = False,
        fail_fast: float | None = 1.0,
    ) -> None:
        self.name = name
        self.decoder = decoder
        self.on_error = check_policy(on_error)
        self.header = header
        if fail_fast is not None and not 0 < fail_fast <= 1:
            raise ValueError(f"fail_fast={fail_fast!r}: a share of bad lines in (0, 1], or None")
        self.fail_fast = fail_fast

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
        self.probed = op.fail_fast is None
        self.first_block: Batch | None = None
        self.decoders: dict[str | None, Decoder] = {}  # header="names": one per source
        self.headers: dict[str | None, bytes] = {}  # their header lines (the snapshot)
        self.by_header: dict[bytes, Decoder] = {}  # files sharing a header share one

    def snapshot(self) -> Any:
        """With a header: whether the run's first line was seen, and the header line of
        each source (``header="names"``), so a resumed run maps the columns again."""
        if not self.op.header:
            return None
        return (self.first, dict(self.headers))

    def restore(self, state: Any) -> None:
        self.first, headers = state
        for source, line in headers.items():
            self._by_names(source, line)

    def process(self, msg: Message) -> list[Message]:  # pragma: no cover - guarded only
        raise NotImplementedError

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        batch = self.prepare(msg)
        self.probe(batch)
        return await self.assemble(batch, self.decoder(batch).decode(batch.data), counters)

    def decoder(self, batch: Batch) -> Decoder:
        """The decoder for ``batch``: the stage's, or its source's (``header="names"``)."""
        if self.op.header != "names":
            return self.op.decoder
        prov = batch.provenance
        return self.decoders.get(prov.source if prov is not None else None, self.op.decoder)

    def prepare(self, msg: Message) -> Batch:
        """The block as a batch (a chunk of lines is joined), its header line removed;
        the run's first block noted for :meth:`probe`.

        Called once per message, in input order.
        """
        if not isinstance(msg, Batch):  # a chunk of lines (bytes or str)
            blob = b"".join(_line_bytes(x) for x in msg)
            msg = Batch(np.frombuffer(blob, np.uint8), "source")
        msg = self._cut_header(msg)
        if not self.probed and len(msg.data):
            self.probed = True
            self.first_block = msg
        return msg

    def probe(self, batch: Batch) -> None:
        """Judge ``batch`` if it is the run's first block (see ``fail_fast``).

        Raises:
            DecodeError: its first lines are bad.
        """
        if batch is self.first_block:
            self.first_block = None
            self._probe(batch)

    def _cut_header(self, msg: Batch) -> Batch:
        prov = msg.provenance
        if not self.op.header or not len(msg.data):
            return msg
        if prov is None or prov.unit != "line":
            # lines not numbered by their source (chunks, arrays): the run's first line is
            # the header
            first, self.first = self.first, False
            return self._headed(msg, None, None) if first else msg
        if prov.start == 1:
            lines, skipped = cut_before(prov, 1)
            start = header_end(msg.data)
            offset = None if prov.offset is None else prov.offset + start + skipped
            removed = tuple((k - 1, n) for k, n in getattr(prov, "removed", ()) if k > 1)
            number = 2 + lines
            if removed:
                prov = LineBlockProvenance(
                    prov.source, number, prov.stop, offset, prov.end_offset, removed
                )
            else:
                prov = Provenance(prov.source, number, prov.stop, "line", offset, prov.end_offset)
            return self._headed(msg, prov, msg.provenance)
        return msg

    def _headed(self, msg: Batch, prov: Provenance | None, was: Provenance | None) -> Batch:
        """``msg`` without its header line (mapping the columns by name, if asked)."""
        cut = header_end(msg.data)
        if self.op.header == "names":
            self._by_names(was.source if was is not None else None, msg.data[:cut].tobytes())
        return Batch(msg.data[cut:], msg.reason, prov if was is not None else msg.provenance)

    def _by_names(self, source: str | None, line: bytes) -> None:
        """The decoder of ``source``, whose header line is ``line`` (one decoder per
        header: files sharing one are decoded together, see :class:`_Units`)."""
        self.headers[source] = line
        found = self.by_header.get(line)
        if found is None:
            by_names = self.op.decoder.by_names  # type: ignore[attr-defined]
            try:
                found = by_names(line)
            except ValueError as exc:  # raised where the block is decoded
                found = _Unusable(exc, self.op.decoder.small_block)
            self.by_header[line] = found
        self.decoders[source] = found

    def _probe(self, batch: Batch) -> None:
        """Decode the first :data:`PROBE` lines; raise if ``fail_fast`` of them are bad."""
        data = batch.data
        ends = np.flatnonzero(data == 10)
        head = data[: int(ends[PROBE - 1]) + 1] if len(ends) > PROBE else data
        decoded = self.decoder(batch).decode(head)
        tried = len(decoded.rows) + len(decoded.bad)
        assert self.op.fail_fast is not None
        if tried < MIN_PROBE or len(decoded.bad) < self.op.fail_fast * tried:
            return
        first = decoded.bad[0]
        place = line_place(batch.provenance, data, first.index)
        decoder = self.op.decoder
        cause = diagnose(
            decoded.bad, getattr(decoder, "dtype", None), getattr(decoder, "delimiter", None)
        )
        raise DecodeError(
            f"{self.op.name}: {len(decoded.bad)} of the first {tried} lines are bad: {cause} "
            "(fail_fast=None reads on)",
            source=place.source if place is not None else self.op.name,
            line=place.start if place is not None else None,
            offset=place.offset if place is not None else None,
        ) from first.error

    async def assemble(
        self, batch: Batch, decoded: Decoded, counters: StageCounters
    ) -> list[Message]:
        """Report the bad lines, then the good rows as one batch."""
        ends = np.flatnonzero(batch.data == 10) if decoded.bad else None
        for index, line, exc in decoded.bad:
            await self._report(index, line, exc, batch, ends, counters)
        if not len(decoded.rows):
            return []
        return [Batch(decoded.rows, batch.reason, batch.provenance)]

    async def _report(
        self,
        index: int,
        line: bytes,
        exc: Exception,
        batch: Batch,
        ends: NDArray[np.intp] | None,
        counters: StageCounters,
    ) -> None:
        place = line_place(batch.provenance, batch.data, index, ends)
        source = place.source if place is not None else self.op.name
        number = place.start if place is not None else None
        hint = ""
        if number == 1 or (place is None and self.first and index == 0):
            dtype = getattr(self.op.decoder, "dtype", None)
            hint = header_hint(line, dtype, getattr(self.op.decoder, "delimiter", ","))
        error = DecodeError(
            f"{self.op.name}: cannot decode {line[:80]!r}: {exc}{hint}",
            source=source,
            line=number,
            offset=place.offset if place is not None else None,
        )
        error.__cause__ = exc
        # the line alone: its bytes, and where it is (the bytes are not retried)
        await apply_policy(self.op.on_error, line, error, self.stage, place, counters)


class _Unusable:
    """A decoder for a source whose header does not fit: raises its error."""

    def __init__(self, error: Exception, small_block: int) -> None:
        self.error = error
        self.small_block = small_block

    def decode(self, block: NDArray[np.uint8]) -> Decoded:
        raise self.error


def _line_bytes(x: Any) -> bytes:
    raw = x.encode() if isinstance(x, str) else bytes(x)
    return raw if raw.endswith(b"\n") else raw + b"\n"


def header_end(data: NDArray[np.uint8]) -> int:
    """Where the first line of ``data`` ends: after its newline, or at the end."""
    newline = np.flatnonzero(data == 10)
    return int(newline[0]) + 1 if len(newline) else len(data)


class _Merged(Provenance):
    """Small blocks decoded in one call, inside a threaded decoding stage (never emitted):
    the blocks, each with its own provenance."""

    __slots__ = ("blocks",)

    def __init__(self, blocks: list[Batch]) -> None:
        first = blocks[0].provenance
        super().__init__(first.source if first is not None else "merged blocks", 0, 0)
        self.blocks = blocks


class _Units:
    """A decoding stage's input as units of work: each block with its header cut (in
    input order), small blocks already waiting merged into one unit (never waiting for
    more: a followed file's new line is decoded at once)."""

    def __init__(self, inbox: Inbox, runner: _DecodeRunner) -> None:
        self.inbox = inbox
        self.runner = runner
        self.units: deque[Batch | Barrier] = deque()

    async def receive(self) -> Message:  # pragma: no cover - iterated only
        raise NotImplementedError

    def __aiter__(self) -> _Units:
        return self

    async def __anext__(self) -> Message | Barrier:
        if not self.units:
            try:
                msg: Message | Barrier = await self.inbox.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            if isinstance(msg, Barrier):  # the stage orders it with its output
                return msg
            ready = [self.runner.prepare(msg)]
            size = len(ready[0].data)
            barrier = None
            while size < MERGED_BYTES and self._small(ready[-1]):
                more = await _waiting(self.inbox)
                if more is None:  # let the stage before run once: it may have more
                    await anyio.lowlevel.checkpoint()
                    more = await _waiting(self.inbox)
                if more is None:
                    break
                if isinstance(more, Barrier):  # merge nothing across a barrier
                    barrier = more
                    break
                ready.append(self.runner.prepare(more))
                size += len(ready[-1].data)
            self.units.extend(self._merge(ready))
            if barrier is not None:
                self.units.append(barrier)
        return self.units.popleft()

    def _small(self, batch: Batch) -> bool:
        data = batch.data
        return 0 < len(data) < SMALL and int(data[-1]) == 10  # whole lines

    def _merge(self, ready: list[Batch]) -> list[Batch]:
        """Runs of small blocks for one decoder as merged units; the others alone."""
        units: list[Batch] = []
        run: list[Batch] = []
        size = 0

        def close() -> None:
            nonlocal size
            if len(run) == 1:
                units.append(run[0])
            elif run:
                data = np.concatenate([b.data for b in run])
                units.append(Batch(data, "source", _Merged(list(run))))
            run.clear()
            size = 0

        for batch in ready:
            if not self._small(batch):
                close()
                units.append(batch)
                continue
            if run and (
                self.runner.decoder(batch) is not self.runner.decoder(run[0])
                or size + len(batch.data) > MERGED_BYTES
            ):
                close()
            run.append(batch)
            size += len(batch.data)
        close()
        return units


async def _waiting(inbox: Inbox) -> Message | Barrier | None:
    """The next message if one is waiting now, else None (never waits, loses nothing)."""
    nowait = getattr(inbox, "receive_nowait", None)
    if nowait is not None:  # a run's buffer
        msg: Message | Barrier | None = nowait()
        return msg
    with anyio.CancelScope() as scope:  # any other inbox: a receive cancelled at once
        scope.cancel()
        try:
            return await inbox.receive()
        except anyio.EndOfStream:
            return None
    return None


class _ThreadedDecodeOp(AsyncOperator):
    """``op`` decoding up to ``threads`` blocks at once in worker threads of its own (the
    parsers release the GIL; see :mod:`._threads`), output kept in input order; blocks
    under the decoder's
    ``small_block`` bytes are decoded inline, cheaper than a thread hop, and small blocks
    waiting together are decoded in one call (see :class:`_Units`)."""

    handles_barriers = True  # the concurrent stage inside orders barriers with the output
    # The input buffer holds what one merged unit takes: many small blocks (a socket's,
    # small files'), one large block (a file's 1 MiB reads). Its threads and their queue
    # already keep the cores busy; each large block waiting beyond them was 1 MiB more of
    # peak memory and no faster (2 M log lines: 4 MB less RSS than the run's 4 messages).
    buffer_bytes = MERGED_BYTES

    def __init__(self, op: DecodeOp, threads: int) -> None:
        self.op = op
        self.threads = threads
        self.name = f"{op.name}[threads={threads}]"

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        runner = _DecodeRunner(self.op)  # this run's state
        runner.stage = self.name  # failed lines name the stage their statistics show
        async with OwnThreads(self.threads, self.name) as own:
            await self._run(runner, own, inbox, out, ctx)

    async def _run(
        self, runner: _DecodeRunner, own: OwnThreads, inbox: Inbox, out: Outlet, ctx: Context
    ) -> None:
        async def decode(decoder: Decoder, data: Any) -> Decoded:
            if len(data) < decoder.small_block:
                return decoder.decode(data)
            return await own.run_sync(decoder.decode, data)

        async def work(
            batch: Message, counters: StageCounters, limiter: anyio.CapacityLimiter
        ) -> list[Message]:
            assert isinstance(batch, Batch)
            merged = batch.provenance
            if isinstance(merged, _Merged):
                return await work_merged(batch, merged.blocks, counters)
            runner.probe(batch)
            decoded = await decode(runner.decoder(batch), batch.data)
            return await runner.assemble(batch, decoded, counters)

        async def work_merged(
            unit: Batch, blocks: list[Batch], counters: StageCounters
        ) -> list[Message]:
            for block in blocks:
                runner.probe(block)
            decoder = runner.decoder(blocks[0])
            decoded = await decode(decoder, unit.data)
            lines = [int(np.count_nonzero(b.data == 10)) for b in blocks]
            if not decoded.bad and len(decoded.rows) == sum(lines):
                # a row per line: each block's rows, with its own provenance
                out: list[Message] = []
                start = 0
                for block, n in zip(blocks, lines, strict=True):
                    out.append(
                        Batch(decoded.rows[start : start + n], block.reason, block.provenance)
                    )
                    start += n
                return out
            if len(decoded.rows) + len(decoded.bad) == sum(lines):
                # every line a row or a bad line (none empty): each block gets its own
                return await split_merged(blocks, lines, decoded, counters)
            # empty lines somewhere: each block alone, its bad lines where they are
            out = []
            for block in blocks:
                out += await runner.assemble(block, decoder.decode(block.data), counters)
            return out

        async def split_merged(
            blocks: list[Batch], lines: list[int], decoded: Decoded, counters: StageCounters
        ) -> list[Message]:
            """The rows and bad lines of a merged unit, block by block (bad lines carry
            their index in the unit; rows are the other lines, in order)."""
            out: list[Message] = []
            bad, first_bad, first_line, first_row = decoded.bad, 0, 0, 0
            for block, n in zip(blocks, lines, strict=True):
                end_bad = first_bad
                while end_bad < len(bad) and bad[end_bad][0] < first_line + n:
                    end_bad += 1
                mine = [
                    BadLine(i - first_line, line, exc) for i, line, exc in bad[first_bad:end_bad]
                ]
                good = n - len(mine)
                rows = decoded.rows[first_row : first_row + good]
                out += await runner.assemble(block, Decoded(rows, mine), counters)
                first_bad, first_line, first_row = end_bad, first_line + n, first_row + good
            return out

        def prepared(msg: Message) -> list[Message]:  # _Units prepared it already
            return [msg]

        # one block more in flight than threads: a thread that finishes a block takes the
        # next one at once, not after the event loop has taken its result and handed out
        # another (2 M log lines: each of two threads waited 0.3 s of a 2 s run for its
        # next block, 0.01-0.03 s with one queued)
        in_flight = self.threads + QUEUED
        stage = _ConcurrentOp(self.name, work, prepared, in_flight, True, None)
        # an Inbox that also yields barriers, as any inbox of a stage handling them does
        await stage.run(cast(Inbox, _Units(inbox, runner)), out, ctx)


def worker_threads() -> int:
    """Blocks decoded at once by default: one per core. The block queued beyond them
    (:data:`QUEUED`) keeps the cores busy while a decoded block is handed back to the
    event loop; a thread more than cores (the default before that queue) made a 120 MB
    CSV file no faster on 2 cores (0.28-0.32 s either way) and held one more block and
    its allocator's arena: 104-106 MB peak RSS against 97-99 MB."""
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may run on (a container's or ``taskset``'s limit, not the
    host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def decode_stage(op: DecodeOp, threads: int) -> Stage[Any, NDArray[Any]]:
    """``op`` fused (``threads=0``), or decoding ``threads`` blocks at once in worker
    threads."""
    return Stage(op) if threads <= 0 else Stage(_ThreadedDecodeOp(op, threads))


def decode_csv(
    dtype: DTypeLike,
    *,
    delimiter: str = ",",
    header: bool | Literal["names"] = False,
    engine: Engine = "auto",
    fill_int: int | None = None,
    threads: int | None = None,
    on_error: ErrorPolicy = "raise",
    fail_fast: float | None = 1.0,
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
        header: the first line of each source is a header: of each file, each
            connection of a socket server, each sender of UDP datagrams (each is
            numbered from line 1), and the first line of a run for lines without
            provenance (chunks of lines, plain arrays). ``True`` skips it; ``"names"``
            takes each field of ``dtype`` from the column its name heads, in any order
            (other columns are ignored; a field the header lacks fails the run).
        engine: ``"native"`` (aflow's compiled scanner, where it was built at install),
            ``"numpy"``, ``"pyarrow"`` (needs pyarrow, the ``arrow`` extra), or
            ``"auto"``: the scanner when every column is an integer, a float32 or a
            float64; else pyarrow when installed and every column is an integer or a
            float, for blocks of 16 KiB and more; NumPy otherwise. Always with NumPy's
            rules (NumPy judges each line the others leave over or reject, and parses
            pyarrow's smaller blocks such as datagrams, inline), so results never depend
            on block size or engine (see :class:`~aflow.codecs.CsvDecoder`).
        threads: blocks decoded at once in worker threads (every engine releases the GIL
            while parsing); by default one per core for the scanner and pyarrow, none
            (decode inline, fused with the neighbouring stages) for numpy.
        fill_int: the value of an empty integer field (``None``: such a line is bad).
            An empty float field is NaN.
        on_error: ``"raise"``, ``"skip"`` or :func:`~aflow.dead_letter`. A bad line's
            dead letter holds its bytes and its own provenance (path, line number, byte
            offsets).
        fail_fast: when at least this share of a run's first lines (of its first
            block, at most 100, at least 10) are bad, raise a
            :class:`~aflow.DecodeError` naming the likely cause (header line, column
            count, delimiter, dtype) whatever ``on_error`` says; ``None``: never.

    Raises:
        TypeError: ``dtype`` is not structured.
    """
    if header not in (False, True, "names"):
        raise ValueError(f"header={header!r}: use False, True or 'names'")
    decoder = CsvDecoder(dtype, delimiter=delimiter, engine=engine, fill_int=fill_int)
    if threads is None:
        threads = worker_threads() if decoder.engine in ("native", "pyarrow") else 0
    name = f"decode_csv[{decoder.engine}]"
    op = DecodeOp(name, decoder, on_error, header=header, fail_fast=fail_fast)
    return decode_stage(op, threads)


def decode_jsonl(
    dtype: DTypeLike,
    *,
    fill_int: int | None = None,
    threads: int | None = None,
    on_error: ErrorPolicy = "raise",
    fail_fast: float | None = 1.0,
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

    A ``null`` reads as NaN in a float field, as ``fill_int`` in an integer field (a bad
    line when ``fill_int`` is None). Text fields (``S``: UTF-8 bytes, ``U``) take any
    Unicode string that fits them; a longer one is a bad line. ``on_error`` and
    ``fail_fast`` are :func:`decode_csv`'s.

    Raises:
        TypeError: ``dtype`` is not structured.
    """
    decoder = JsonlDecoder(dtype, fill_int=fill_int)
    if decoder.engine != "pyarrow":
        return Stage(DecodeOp("decode_jsonl", decoder, on_error, fail_fast=fail_fast))
    op = DecodeOp("decode_jsonl[pyarrow]", decoder, on_error, fail_fast=fail_fast)
    return decode_stage(op, worker_threads() if threads is None else threads)


def decode_log(
    pattern: str | re.Pattern[str] | LogFormat = COMBINED,
    columns: dict[str, str] | None = None,
    *,
    errors: str | None = None,
    fill_int: int = -1,
    threads: int | None = None,
    on_error: ErrorPolicy = "raise",
    fail_fast: float | None = 1.0,
) -> Stage[Any, NDArray[Any]]:
    """Parse blocks of log lines into a structured array, one field per column.

    The rules are :class:`~aflow.codecs.LogDecoder`'s.

    Args:
        pattern: a regular expression with named groups matching a whole line, or a
            :class:`~aflow.codecs.LogFormat` (space-separated fields, parsed with array
            arithmetic); by default the nginx/Apache combined format
            (:data:`~aflow.codecs.COMBINED`, parsed as a ``LogFormat`` is).
        columns: group name -> ``"int"``, ``"float"``, ``"float:sum"`` (also ``max``,
            ``min``, ``first``, ``last``: nginx's lists such as ``0.000, 0.001``),
            ``"str"`` or ``"timestamp:<strftime format>"``; by default
            :data:`~aflow.codecs.COMBINED_COLUMNS`.
        errors: how bytes that are not UTF-8 are read (a :meth:`bytes.decode` handler:
            ``"strict"`` makes the line bad, ``"replace"`` keeps it with U+FFFD); by
            default ``"replace"`` for :data:`~aflow.codecs.COMBINED` (nginx writes some
            client bytes raw) and ``"strict"`` for other patterns.
        fill_int: an ``int`` group that took no part in the match (an optional group)
            reads as this, never as a real 0; ``"-"`` reads as 0, a ``float`` group
            that took no part or ``"-"`` as NaN, a timestamp as NaT.
        threads: blocks decoded at once in worker threads; by default one per core for
            :data:`~aflow.codecs.COMBINED` and a :class:`~aflow.codecs.LogFormat`
            (their array path runs mostly outside the GIL; a third thread on two cores
            was no faster and held 7-12 MB more memory, the allocators' caches of one
            more thread), none for other patterns (decode inline, fused with the
            neighbouring stages: the regex holds the GIL).
        on_error: for lines that do not match or whose fields do not convert (also
            invalid UTF-8 under ``errors="strict"``): ``"raise"``, ``"skip"`` or
            :func:`~aflow.dead_letter`; each line is judged alone (no bisection).
        fail_fast: see :func:`decode_csv`.

    Raises:
        ValueError: a column that is not a named group of the pattern.
    """
    decoder = LogDecoder(pattern, columns, errors=errors, fill_int=fill_int)
    op = DecodeOp("decode_log", decoder, on_error, fail_fast=fail_fast)
    if threads is None:
        threads = usable_cores() if decoder.vectorized else 0
    return decode_stage(op, threads)

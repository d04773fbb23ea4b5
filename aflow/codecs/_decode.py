"""The decoding stage: blocks of lines in, record arrays out, bad lines split off.

A decoder parses a whole block in one call (the fast path). When that fails, the block is
halved and each half tried again, down to single lines: a block with ``k`` bad lines costs
about ``k * log2(lines)`` extra parses, the good lines of the block still come out, and
each bad line goes to the stage's error policy with its source, line number and offset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Message, Operator, Processor, Provenance
from ..errors import DecodeError
from ..flow import Stage
from ..policies import ErrorPolicy, apply_policy, check_policy
from ..stats import StageCounters

__all__ = [
    "BadLine",
    "DecodeOp",
    "RejectedLines",
    "decode_lines",
    "decode_stage",
    "fit",
    "widened",
]

FastDecode = Callable[[bytes], NDArray[Any]]

BadLine = tuple[int, bytes, Exception]
"""(index of the line in its block, the raw line, the error)."""


def fit(values: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """``values`` for a field of ``dtype``: a float narrower than ``values`` is cast, and a
    finite value beyond its range (``1e39`` for ``float32``) is an error, not infinity."""
    if dtype.kind != "f" or values.dtype.kind != "f" or dtype.itemsize >= values.dtype.itemsize:
        return values
    with np.errstate(over="ignore"):
        narrow = values.astype(dtype)
    over = ~np.isfinite(narrow) & np.isfinite(values)
    if over.any():
        raise ValueError(f"{values[over][0]!r} is out of range for {dtype}")
    return narrow


def widened(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` with its float fields as float64, to parse into before :func:`fit`."""
    names = dtype.names or ()
    fields = [(n, "f8" if dtype.fields[n][0].kind == "f" else dtype.fields[n][0]) for n in names]  # type: ignore[index]
    return np.dtype(fields)


class RejectedLines(ValueError):
    """Raised by a decoder that can tell which lines of a block are bad: the rows of the
    good lines, and each bad line's index in the block with its error. Spares the
    bisection."""

    def __init__(self, rows: NDArray[Any], bad: list[tuple[int, Exception]]) -> None:
        super().__init__(f"{len(bad)} bad line(s)")
        self.rows = rows
        self.bad = bad


def decode_lines(blob: bytes, decode: FastDecode) -> tuple[list[NDArray[Any]], list[BadLine]]:
    """Decode a block of ``\\n``-terminated lines; isolate the lines ``decode`` rejects."""
    try:
        return [decode(blob)], []
    except RejectedLines as rejected:
        ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) + 1
        starts = np.concatenate(([0], ends[:-1]))
        lines = [(i, blob[starts[i] : ends[i]], exc) for i, exc in rejected.bad]
        return [rejected.rows], lines
    except Exception:
        pass
    ends = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) + 1
    parts: list[NDArray[Any]] = []
    bad: list[BadLine] = []
    _bisect(blob, ends, 0, len(ends), decode, parts, bad)
    return parts, bad


def _bisect(
    blob: bytes,
    ends: NDArray[np.intp],
    lo: int,
    hi: int,
    decode: FastDecode,
    parts: list[NDArray[Any]],
    bad: list[BadLine],
) -> None:
    """Decode lines ``lo..hi`` of ``blob`` (``ends[i]`` is the end of line ``i``)."""
    start = int(ends[lo - 1]) if lo else 0
    piece = blob[start : int(ends[hi - 1])]
    try:
        parts.append(decode(piece))
        return
    except Exception as exc:
        if hi - lo == 1:
            bad.append((lo, piece, exc))
            return
    mid = (lo + hi) // 2
    _bisect(blob, ends, lo, mid, decode, parts, bad)
    _bisect(blob, ends, mid, hi, decode, parts, bad)


class _DecodeRunner(Processor):
    guarded = True

    def __init__(self, op: DecodeOp) -> None:
        self.op = op
        self.stage = op.name  # the name failed lines give (threads: the concurrent stage's)
        self.first = True

    def process(self, msg: Message) -> list[Message]:  # pragma: no cover - guarded only
        raise NotImplementedError

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        batch = self.prepare(msg)
        parts, bad = decode_lines(batch.data.tobytes(), self.op.decoder_for(len(batch.data)))
        return await self.assemble(batch, parts, bad, counters)

    def prepare(self, msg: Message) -> Batch:
        """The block as a batch (a chunk of lines is joined), its header line removed."""
        if not isinstance(msg, Batch):  # a chunk of lines (bytes or str)
            blob = b"".join(_line_bytes(x) for x in msg)
            msg = Batch(np.frombuffer(blob, np.uint8), "source")
        prov = msg.provenance
        first, self.first = self.first, False
        if self.op.header and prov is None and first and len(msg.data):
            # lines without provenance (chunks, arrays): the run's first line is the header
            newline = np.flatnonzero(msg.data == 10)
            cut = int(newline[0]) + 1 if len(newline) else len(msg.data)
            return Batch(msg.data[cut:], msg.reason, None)
        if self.op.header and prov is not None and prov.unit == "line" and prov.start == 1:
            data = msg.data
            newline = np.flatnonzero(data == 10)
            cut = int(newline[0]) + 1 if len(newline) else len(data)
            prov = Provenance(prov.source, 2, prov.stop, "line", prov.offset, prov.end_offset)
            msg = Batch(data[cut:], msg.reason, prov)
        return msg

    async def assemble(
        self,
        batch: Batch,
        parts: list[NDArray[Any]],
        bad: list[BadLine],
        counters: StageCounters,
    ) -> list[Message]:
        """Report the bad lines, then the good rows as one batch."""
        for index, line, exc in bad:
            await self._report(index, line, exc, batch.provenance, counters)
        rows = [p for p in parts if len(p)]
        if not rows:
            return []
        data = rows[0] if len(rows) == 1 else np.concatenate(rows)
        return [Batch(data, batch.reason, batch.provenance)]

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


class DecodeOp(Operator):
    """A fusable stage running ``decode`` on every block, with an error policy per line.

    Args:
        name: the stage's name.
        decode: parses a block of lines into a record array; raises on any bad line.
        on_error: ``"raise"`` (a :class:`~aflow.errors.DecodeError` naming the source and
            line), ``"skip"`` (counted in the stage's ``errors``) or
            :func:`~aflow.dead_letter` (receives the raw line and its provenance).
        header: the first line of each source is a header: skip it.
        small: a decoder for blocks of fewer than ``small_below`` bytes (one with a lower
            cost per call), run inline rather than in a worker thread.
    """

    def __init__(
        self,
        name: str,
        decode: FastDecode,
        on_error: ErrorPolicy,
        *,
        header: bool = False,
        small: FastDecode | None = None,
        small_below: int = 0,
    ) -> None:
        self.name = name
        self.decode = decode
        self.on_error = check_policy(on_error)
        self.header = header
        self.small = small
        self.small_below = small_below if small is not None else 0

    def decoder_for(self, size: int) -> FastDecode:
        """The decoder for a block of ``size`` bytes."""
        return self.small if self.small is not None and size < self.small_below else self.decode

    def start(self) -> Processor:
        return _DecodeRunner(self)


def decode_stage(op: DecodeOp, threads: int) -> Stage[Any, NDArray[Any]]:
    """``op`` fused (``threads=0``), or decoding ``threads`` blocks at once in worker
    threads (the parsers release the GIL), output kept in input order."""
    if threads <= 0:
        return Stage(op)
    from ..stages.concurrency import _ConcurrentOp, _whole

    runner = _DecodeRunner(op)
    runner.stage = name = f"{op.name}[threads={threads}]"

    async def work(
        msg: Message, counters: StageCounters, limiter: anyio.CapacityLimiter
    ) -> list[Message]:
        batch = runner.prepare(msg)
        blob = batch.data.tobytes()
        if len(blob) < op.small_below:  # cheaper inline than a thread hop
            parts, bad = decode_lines(blob, op.decoder_for(len(blob)))
        else:
            parts, bad = await anyio.to_thread.run_sync(
                decode_lines, blob, op.decode, limiter=limiter
            )
        return await runner.assemble(batch, parts, bad, counters)

    return Stage(_ConcurrentOp(name, work, _whole, threads, True, None))

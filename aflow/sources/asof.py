"""As-of join of two sensor streams: each left row gets the latest right row at or before it.

Both sub-flows run in the same run, each feeding a bounded buffer; the join pulls from the
side that is behind, so neither stream is read far ahead of the other and memory stays at
about one batch per side. The per-row work is a ``searchsorted``.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Buffer, Context, Message, Outlet, Source
from ..flow import Flow
from ..kernels.time_units import TimeSpan, as_numbers, as_units

__all__ = ["asof_join"]


class _Side:
    """One input of the join: its buffer, what it holds, and whether it ended."""

    def __init__(self, edge: Buffer) -> None:
        self.edge = edge
        self.rows: NDArray[Any] | None = None
        self.done = False
        self.dtype: np.dtype[Any] | None = None

    async def pull(self) -> NDArray[Any] | None:
        """The next batch's rows (``None`` at the end of this side's input)."""
        while True:
            try:
                msg: Message = await self.edge.receive()
            except anyio.EndOfStream:
                self.done = True
                return None
            data = msg.data if isinstance(msg, Batch) else np.asarray(msg)
            if len(data):
                self.dtype = data.dtype
                return data


class _AsofSource(Source):
    def __init__(
        self,
        left: Flow[Any],
        right: Flow[Any],
        on: str,
        key: str | None,
        tolerance: TimeSpan | None,
        suffix: str,
        matched: str,
    ) -> None:
        self.left, self.right = left, right
        self.on, self.key, self.tolerance = on, key, tolerance
        self.suffix, self.matched = suffix, matched
        self.name = f"asof_join(on={on!r})"

    def nested_buffers(self) -> int:
        return self.left.nested_buffers() + self.right.nested_buffers()

    async def produce(self, out: Outlet, ctx: Context) -> None:
        counters = ctx.new_counters(f"{self.name}.input")
        sides = []
        for flow in (self.left, self.right):
            edge = ctx.new_buffer(counters)
            ctx.start_chain(flow.source, flow.ops(), edge)
            sides.append(_Side(edge))
        try:
            await self._join(sides[0], sides[1], out)
        finally:
            for side in sides:
                side.edge.close_receive()

    async def _join(self, left: _Side, right: _Side, out: Outlet) -> None:
        pending: NDArray[Any] | None = None
        right_max = -math.inf
        while True:
            if pending is not None and len(pending):
                lts = as_numbers(pending[self.on])
                n = len(pending) if right.done else int(np.count_nonzero(lts < right_max))
                if n:
                    ready, pending = pending[:n], pending[n:]
                    await out.emit(Batch(self._match(ready, right), "source"))
                    right.rows = self._prune(right.rows, float(lts[n - 1]))
            if left.done and (pending is None or not len(pending)):
                return
            if not right.done and (left.done or (pending is not None and len(pending))):
                got = await right.pull()
                if got is not None:
                    right.rows = self._add_right(right.rows, got)
                    right_max = max(right_max, float(as_numbers(got[self.on]).max()))
            else:
                got = await left.pull()
                if got is not None:
                    pending = got if pending is None else np.concatenate((pending, got))

    def _add_right(self, held: NDArray[Any] | None, rows: NDArray[Any]) -> NDArray[Any]:
        both = rows if held is None else np.concatenate((held, rows))
        return both[np.argsort(as_numbers(both[self.on]), kind="stable")]

    def _prune(self, rows: NDArray[Any] | None, upto: float) -> NDArray[Any] | None:
        """Drop right rows no later left row (at or after ``upto``) can match."""
        if rows is None:
            return None
        ts = as_numbers(rows[self.on])
        old = ts < upto
        if not old.any():
            return rows
        if self.key is None:
            keep = ~old
            keep[np.flatnonzero(old)[-1]] = True
            return rows[keep]
        k = rows[self.key][old]
        order = np.argsort(k, kind="stable")  # old rows are in ts order already
        last = order[np.r_[k[order][1:] != k[order][:-1], True]]
        return np.concatenate((rows[old][last], rows[~old]))[
            np.argsort(np.concatenate((ts[old][last], ts[~old])), kind="stable")
        ]

    def _match(self, left: NDArray[Any], right: _Side) -> NDArray[Any]:
        """Join ``left`` rows (shape (n,)) to the latest right row at or before each."""
        rows = right.rows
        dtype = self._out_dtype(left.dtype, right.dtype)
        out = np.zeros(len(left), dtype)
        for name in left.dtype.names or ():
            out[name] = left[name]
        if rows is None or not len(rows):
            self._blank(out, np.ones(len(left), bool), left.dtype, right.dtype)
            return out
        idx = self._indices(left, rows)
        found = idx >= 0
        safe = np.maximum(idx, 0)
        if self.tolerance is not None:
            tol = as_units(self.tolerance, left.dtype[self.on])
            gap = as_numbers(left[self.on]) - as_numbers(rows[self.on])[safe]
            found &= gap <= tol
        for src, dst in self._right_names(left.dtype, rows.dtype):
            out[dst] = rows[src][safe]
        self._blank(out, ~found, left.dtype, rows.dtype)
        out[self.matched] = found
        return out

    def _indices(self, left: NDArray[Any], rows: NDArray[Any]) -> NDArray[np.intp]:
        """Per left row, the index of its right row (-1 when there is none)."""
        lts, rts = as_numbers(left[self.on]), as_numbers(rows[self.on])
        if self.key is None:
            return np.searchsorted(rts, lts, side="right") - 1
        # One sortable code per row: (key code, rank of ts among both sides).
        keys, rcode = np.unique(rows[self.key], return_inverse=True)
        lpos = np.minimum(np.searchsorted(keys, left[self.key]), len(keys) - 1)
        known = keys[lpos] == left[self.key]
        every = np.sort(np.concatenate((rts, lts)))
        width = len(every) + 1
        rc = rcode.reshape(-1) * width + np.searchsorted(every, rts, side="right")
        lc = lpos * width + np.searchsorted(every, lts, side="right")
        order = np.argsort(rc, kind="stable")
        pos = np.searchsorted(rc[order], lc, side="right") - 1
        idx = np.where(pos >= 0, order[np.maximum(pos, 0)], -1)
        ok = known & (pos >= 0) & (rcode.reshape(-1)[np.maximum(idx, 0)] == lpos)
        return np.where(ok, idx, -1)

    def _right_names(
        self, left: np.dtype[Any], right: np.dtype[Any] | None
    ) -> list[tuple[str, str]]:
        """(right column, output column) pairs: the key is not repeated; clashes get a suffix."""
        if right is None:
            return []
        names = [n for n in right.names or () if n != self.key]
        return [(n, n + self.suffix if n in (left.names or ()) else n) for n in names]

    def _out_dtype(self, left: np.dtype[Any], right: np.dtype[Any] | None) -> np.dtype[Any]:
        fields = [(n, left[n]) for n in left.names or ()]
        fields += (
            [(dst, right[src]) for src, dst in self._right_names(left, right)] if right else []
        )
        return np.dtype([*fields, (self.matched, np.bool_)])

    def _blank(
        self, out: NDArray[Any], missing: NDArray[np.bool_], left: np.dtype[Any], right: Any
    ) -> None:
        """Unmatched rows get NaN (float columns), NaT (datetimes) or 0 (the rest)."""
        if not missing.any():
            return
        for _, dst in self._right_names(left, right):
            kind = out.dtype[dst].kind
            fill: Any = np.nan if kind == "f" else np.datetime64("NaT") if kind == "M" else 0
            out[dst][missing] = fill


def asof_join(
    left: Flow[Any],
    right: Flow[Any],
    *,
    on: str,
    key: str | None = None,
    tolerance: TimeSpan | None = None,
    suffix: str = "_right",
    matched: str = "matched",
) -> Flow[NDArray[Any]]:
    """Align ``right`` onto ``left``'s timestamps: an as-of (latest-at-or-before) join.

    Each left row is emitted with the columns of the latest right row whose ``on`` is at
    or before its own (of the same ``key``, when given), once the right stream has
    moved past it. Both streams must be sorted by ``on`` (see :func:`aflow.reorder`).

    Args:
        left, right: flows of structured batches with an ``on`` column (int, float or
            datetime64, the same on both sides).
        on: the timestamp column.
        key: a key column both sides have: match only rows of the same key.
        tolerance: a right row older than this (``left ts - right ts > tolerance``) does
            not match (``np.timedelta64`` for datetime64).
        suffix: added to right column names that clash with left ones (``ts_right``).
        matched: name of the added bool column: False where no right row matched (those
            rows get NaN in float columns, NaT in datetimes, 0 elsewhere).

    Returns:
        A flow of batches: left columns, right columns (the key once), ``matched``.

    Examples:
        >>> import numpy as np, aflow as af
        >>> temp = np.array([(10, 20.5), (20, 21.0)], [("ts", "i8"), ("temp", "f4")])
        >>> hum = np.array([(5, 0.4), (15, 0.5)], [("ts", "i8"), ("hum", "f4")])
        >>> flow = af.asof_join(af.from_array(temp), af.from_array(hum), on="ts")
        >>> af.run(flow | af.collect()).value.tolist()
        [(10, 20.5, 5, 0.4000000059604645, True), (20, 21.0, 15, 0.5, True)]
    """
    for f in (left, right):
        if not isinstance(f, Flow):
            raise TypeError(f"asof_join() takes flows without sinks, got {type(f).__name__}")
    return Flow(_AsofSource(left, right, on, key, tolerance, suffix, matched))

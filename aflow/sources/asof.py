"""As-of join of two sensor streams: each left row gets the latest right row at or before it.

Both sub-flows run in the same run, each feeding a bounded buffer; the join pulls from the
side that is behind, so neither stream is read far ahead of the other and memory stays at
about one batch per side. The per-row work is a ``searchsorted``.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import Barrier, Batch, Buffer, Context, Message, Outlet, Source
from ..flow import Flow
from ..kernels.time_units import TimeSpan, as_numbers, as_units, check_duration

__all__ = ["asof_join"]


class _Side:
    """One input of the join: its buffer, what it holds, and whether it ended.

    Held rows are sorted by time. The right side keeps them as one array and a start
    index: pruning moves the start (a view, no copy) and compacts only when the dead
    prefix is larger than what lives, so each right row is copied O(1) times however the
    left side is batched.
    """

    def __init__(self, edge: Buffer, name: str) -> None:
        self.edge = edge
        self.name = name
        self.rows: NDArray[Any] | None = None
        self.done = False
        self.dtype: np.dtype[Any] | None = None
        self.last: Any = None  # the largest timestamp pulled
        self.index: _KeyIndex | None = None  # built on demand for keyed joins

    async def pull(self, on: str) -> NDArray[Any] | None:
        """The next batch's rows (``None`` at the end of this side's input).

        Raises:
            ValueError: the rows are not sorted by ``on`` (within the batch or after the
                previous one).
        """
        while True:
            try:
                msg = await self.edge.receive()
            except anyio.EndOfStream:
                self.done = True
                return None
            if isinstance(msg, Barrier):  # never sent (barriers=False)
                continue
            data = msg.data if isinstance(msg, Batch) else np.asarray(msg)
            if len(data):
                self._check_sorted(as_numbers(data[on]), msg, on)
                self.dtype = data.dtype
                return data

    def _check_sorted(self, ts: NDArray[Any], msg: Message, on: str) -> None:
        back = ts[1:] < ts[:-1]
        if not back.any() and (self.last is None or ts[0] >= self.last):
            self.last = ts[-1]
            return
        where = msg.provenance if isinstance(msg, Batch) else None
        at = f" ({where})" if where is not None else ""
        raise ValueError(
            f"asof_join: the {self.name} side is not sorted by {on!r}{at}: a timestamp "
            "goes backwards; sort it first (af.reorder(on, horizon=...))"
        )


class _KeyIndex:
    """Right rows grouped by key, each group in time order, for keyed lookups."""

    def __init__(self, rows: NDArray[Any], on: str, key: str) -> None:
        self.order = np.argsort(rows[key], kind="stable")  # rows are in ts order already
        k = rows[key][self.order]
        self.keys, self.starts = np.unique(k, return_index=True)
        self.stops = np.append(self.starts[1:], len(k))
        self.ts = as_numbers(rows[on])[self.order]

    def lookup(self, lkeys: NDArray[Any], lts: NDArray[Any]) -> NDArray[np.intp]:
        """Per left row, the index of the latest right row of its key at or before it."""
        out = np.full(len(lkeys), -1, np.intp)
        if not len(self.keys):
            return out
        pos = np.minimum(np.searchsorted(self.keys, lkeys), len(self.keys) - 1)
        known = self.keys[pos] == lkeys
        for p in np.unique(pos[known]).tolist():
            rows = np.flatnonzero(known & (pos == p))
            lo, hi = int(self.starts[p]), int(self.stops[p])
            at = np.searchsorted(self.ts[lo:hi], lts[rows], side="right") - 1
            out[rows] = np.where(at >= 0, self.order[lo + np.maximum(at, 0)], -1)
        return out


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
        for flow, label in ((self.left, "left"), (self.right, "right")):
            edge = ctx.new_buffer(counters)
            edge.barriers = False  # a join holds rows across inputs: it cannot resume
            ctx.start_chain(flow.source, flow.ops(), edge)
            sides.append(_Side(edge, label))
        try:
            await self._join(sides[0], sides[1], out)
        finally:
            for side in sides:
                side.edge.close_receive()

    async def _join(self, left: _Side, right: _Side, out: Outlet) -> None:
        pending: NDArray[Any] | None = None
        right_max: Any = None  # the right side's largest timestamp so far
        while True:
            if pending is not None and len(pending):
                lts = as_numbers(pending[self.on])
                n = (
                    len(pending)
                    if right.done
                    else 0
                    if right_max is None
                    else int(np.count_nonzero(lts < right_max))
                )
                if n:
                    ready, pending = pending[:n], pending[n:]
                    await out.emit(Batch(self._match(ready, right), "source"))
                    self._prune(right, lts[n - 1])
            if left.done and (pending is None or not len(pending)):
                return
            if not right.done and (left.done or (pending is not None and len(pending))):
                got = await right.pull(self.on)
                if got is not None:
                    right.rows = got if right.rows is None else np.concatenate((right.rows, got))
                    right.index = None
                    right_max = as_numbers(got[self.on])[-1]
            else:
                got = await left.pull(self.on)
                if got is not None:
                    pending = got if pending is None else np.concatenate((pending, got))

    def _prune(self, right: _Side, upto: Any) -> None:
        """Drop right rows no later left row (at or after ``upto``) can match: all but the
        last one before ``upto`` (per key, when keyed). Amortized: only once the rows to
        drop outnumber the rest."""
        rows = right.rows
        if rows is None:
            return
        cut = int(np.searchsorted(as_numbers(rows[self.on]), upto, side="left"))
        if self.key is None:
            if cut > 1:
                right.rows = rows[cut - 1 :]  # a view: keeps the last row before upto
            return
        if cut < 64 or cut <= len(rows) - cut:
            return
        old = rows[:cut]
        k = old[self.key]
        order = np.argsort(k, kind="stable")  # old rows are in ts order already
        last = np.sort(order[np.r_[k[order][1:] != k[order][:-1], True]])
        right.rows = np.concatenate((old[last], rows[cut:]))
        right.index = None

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
        idx = self._indices(left, right)
        found = idx >= 0
        safe = np.maximum(idx, 0)
        if self.tolerance is not None:
            lts = as_numbers(left[self.on])
            tol = as_units(self.tolerance, left.dtype[self.on], lts, what=f"{self.name}: tolerance")
            gap = as_numbers(left[self.on]) - as_numbers(rows[self.on])[safe]
            found &= gap <= tol
        for src, dst in self._right_names(left.dtype, rows.dtype):
            out[dst] = rows[src][safe]
        self._blank(out, ~found, left.dtype, rows.dtype)
        out[self.matched] = found
        return out

    def _indices(self, left: NDArray[Any], right: _Side) -> NDArray[np.intp]:
        """Per left row, the index of its right row (-1 when there is none)."""
        rows = right.rows
        assert rows is not None
        lts = as_numbers(left[self.on])
        if self.key is None:
            return np.searchsorted(as_numbers(rows[self.on]), lts, side="right") - 1
        if right.index is None:
            right.index = _KeyIndex(rows, self.on, self.key)
        return right.index.lookup(left[self.key], lts)

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
    moved past it. Both streams must be sorted by ``on`` (see :func:`aflow.reorder`): a
    timestamp going backwards on either side raises ``ValueError``.

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
    check_duration(tolerance, "asof_join(tolerance)", zero=True)
    return Flow(_AsofSource(left, right, on, key, tolerance, suffix, matched))

"""Window state machines: assign rows to windows, split late rows, close on a watermark.

Both kinds work on a numeric timestamp per row (int64 or float64: event time, row
numbers or processing-time seconds; the caller converts) and hold either the rows of open
windows or their partial aggregates (``KeyedStats``). Every step is vectorized over the
rows of a batch; Python runs once per batch (and once per window emitted as rows).

* :class:`FixedWindows` — tumbling (``step == size``) and sliding windows. Window ``k``
  covers ``[k * step, k * step + size)``; a row belongs to every window covering it.
  Aggregates are kept per pane (:mod:`._panes`), rows per (window, row) pair.
* :class:`SessionWindows` — per key, rows closer than ``gap`` belong to one session
  ``[first ts, last ts + gap)``.

A window closes once the watermark reaches its end. A row is *late* when every window it
belongs to had closed before its batch arrived; ``add`` returns the mask of late rows.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..kernels.keyed import KeyedStats
from ..kernels.time_units import as_timestamps
from ._panes import AggSpec, PaneStore, window_records

__all__ = ["FixedWindows", "OpenWindows", "SessionWindows"]

Ts = NDArray[Any]  # int64 or float64 timestamps, shape (n,)


class OpenWindows(ABC):
    """Open windows of one stage, as of watermark ``wm``.

    ``out_ts`` converts numeric window bounds into the output timestamp dtype.
    """

    def __init__(self, spec: AggSpec | None, out_dtype: np.dtype[Any]) -> None:
        self.spec = spec
        self.out_dtype = out_dtype
        self.wm: float = -math.inf

    @abstractmethod
    def add(self, ts: Ts, rows: NDArray[Any]) -> NDArray[np.bool_]:
        """Take in a batch; return the mask (shape (n,)) of its late rows, which it drops."""

    @abstractmethod
    def close(self, wm: float) -> list[NDArray[Any]]:
        """Advance the watermark to ``wm`` (never back) and return what closed.

        Aggregates come as one structured array of all closed windows; rows as one array
        per closed window, in window order.
        """

    @abstractmethod
    def next_end(self) -> float | None:
        """The earliest end of an open window (``None`` when none is open)."""

    @abstractmethod
    def last_end(self) -> float | None:
        """The latest end of an open window (``None`` when none is open)."""

    def flush(self) -> list[NDArray[Any]]:
        """Close every open window."""
        end = self.last_end()
        return [] if end is None else self.close(end)

    def out_ts(self, values: NDArray[Any]) -> NDArray[Any]:
        return as_timestamps(values, self.out_dtype)


class FixedWindows(OpenWindows):
    """Tumbling or sliding windows of ``size``, one starting every ``step``."""

    def __init__(
        self,
        size: float,
        step: float,
        spec: AggSpec | None,
        out_dtype: np.dtype[Any],
        *,
        first: int | None = None,
    ) -> None:
        super().__init__(spec, out_dtype)
        self.size = size
        self.step = step
        self.first = first  # the first window id there is (count windows: 0)
        self.store = None if spec is None else PaneStore(size, step, spec, self.out_ts, first)
        self.parts: list[tuple[NDArray[np.int64], NDArray[Any]]] = []
        self.ends: list[float] = []  # ends of the open windows, sorted

    def _end(self, win: Any) -> Any:
        return win * self.step + self.size

    def add(self, ts: Ts, rows: NDArray[Any]) -> NDArray[np.bool_]:
        last = np.floor_divide(ts, self.step).astype(np.int64)
        end = self._end(last)
        inside = ts < end  # False in the gaps between hopping windows (step > size)
        if self.first is not None:
            inside &= end > self.first * self.step
        late: NDArray[np.bool_] = inside & (end <= self.wm)
        keep = inside & ~late
        if not keep.all():
            ts, rows, last = ts[keep], rows[keep], last[keep]
        if len(ts):
            if self.store is not None:
                self.store.add(ts, rows)
                self.ends = [self.store.end(k) for k in self.store.open_windows(self.wm)]
            else:
                self._add_rows(ts, rows, last)
        return late

    def _add_rows(self, ts: Ts, rows: NDArray[Any], last: NDArray[np.int64]) -> None:
        idx, win = self._pairs(ts, last)
        if idx is not None:
            rows = rows[idx]
        self.parts.append((win, rows))
        new = np.unique(self._end(win)).tolist()
        self.ends = sorted(set(self.ends).union(new))

    def _pairs(
        self, ts: Ts, last: NDArray[np.int64]
    ) -> tuple[NDArray[np.intp] | None, NDArray[np.int64]]:
        """(row index, window id) of every pair of a row and an open window covering it."""
        if self.step == self.size:
            return None, last
        first = np.floor_divide(ts - self.size, self.step).astype(np.int64) + 1
        if self.first is not None:
            first = np.maximum(first, self.first)
        n = np.maximum(last - first + 1, 0)
        idx = np.repeat(np.arange(len(ts)), n)
        ends = np.cumsum(n)
        within = np.arange(len(idx)) - np.repeat(ends - n, n)
        win = np.repeat(first, n) + within
        live = self._end(win) > self.wm
        return idx[live], win[live]

    def close(self, wm: float) -> list[NDArray[Any]]:
        old, self.wm = self.wm, max(self.wm, wm)
        if not self.ends or self.ends[0] > self.wm:
            return []
        self.ends = [e for e in self.ends if e > self.wm]
        if self.store is not None:
            out = self.store.close(old, self.wm)
            return [np.concatenate(out)] if out else []
        return self._close_rows()

    def _close_rows(self) -> list[NDArray[Any]]:
        win = np.concatenate([w for w, _ in self.parts])
        rows = np.concatenate([r for _, r in self.parts])
        done = self._end(win) <= self.wm
        rest = ~done
        self.parts = [(win[rest], rows[rest])] if rest.any() else []
        cw, cr = win[done], rows[done]
        order = np.argsort(cw, kind="stable")
        cw, cr = cw[order], cr[order]
        cuts = np.flatnonzero(cw[1:] != cw[:-1]) + 1
        return np.split(cr, cuts)

    def next_end(self) -> float | None:
        return float(self.ends[0]) if self.ends else None

    def last_end(self) -> float | None:
        return float(self.ends[-1]) if self.ends else None


class SessionWindows(OpenWindows):
    """Session windows: per key, a gap of ``gap`` or more between rows ends a session.

    Holds the rows of open sessions (sorted by key, then timestamp) and aggregates a
    session when it closes, so memory is bounded by the rows of open sessions.
    """

    def __init__(
        self, gap: float, key: str | None, spec: AggSpec | None, out_dtype: np.dtype[Any]
    ) -> None:
        super().__init__(spec, out_dtype)
        self.gap = gap
        self.key = key
        self.ts: Ts = np.empty(0)
        self.rows: NDArray[Any] | None = None

    def _sessions(self) -> tuple[NDArray[np.intp], NDArray[Any]]:
        """Start position (shape (s,)) and end (last ts + gap) of each held session."""
        ts = self.ts
        brk = np.empty(len(ts), dtype=bool)
        brk[:1] = True
        brk[1:] = np.diff(ts) >= self.gap
        if self.key is not None and self.rows is not None:
            k = self.rows[self.key]
            brk[1:] |= k[1:] != k[:-1]
        starts = np.flatnonzero(brk)
        ends = np.append(starts[1:], len(ts)) - 1
        return starts, ts[ends] + self.gap

    def add(self, ts: Ts, rows: NDArray[Any]) -> NDArray[np.bool_]:
        held = len(self.ts)
        all_ts = np.concatenate((self.ts, ts)) if held else ts
        all_rows = rows if self.rows is None or not held else np.concatenate((self.rows, rows))
        if self.key is not None:
            order = np.lexsort((all_ts, all_rows[self.key]))
        else:
            order = np.argsort(all_ts, kind="stable")
        self.ts, self.rows = all_ts[order], all_rows[order]
        old = order < held
        starts, ends = self._sessions()
        has_old = np.logical_or.reduceat(old, starts)
        late_s = (ends <= self.wm) & ~has_old
        late_sorted = np.repeat(late_s, np.diff(starts, append=len(order)))
        late = np.zeros(len(ts), dtype=bool)
        late[order[late_sorted] - held] = True
        if late_sorted.any():
            self.ts, self.rows = self.ts[~late_sorted], self.rows[~late_sorted]
        return late

    def close(self, wm: float) -> list[NDArray[Any]]:
        self.wm = max(self.wm, wm)
        if not len(self.ts) or self.rows is None:
            return []
        starts, ends = self._sessions()
        done_s = ends <= self.wm
        if not done_s.any():
            return []
        sizes = np.diff(starts, append=len(self.ts))
        done = np.repeat(done_s, sizes)
        first, last = self.ts[starts[done_s]], ends[done_s]
        rows = self.rows[done]
        self.ts, self.rows = self.ts[~done], self.rows[~done]
        order = np.argsort(first, kind="stable")  # by session start, then key
        if self.spec is None:
            pieces = np.split(rows, np.cumsum(sizes[done_s])[:-1])
            return [pieces[i] for i in order]
        sid = np.repeat(np.arange(len(first), dtype=np.int64), sizes[done_s])
        accs = [KeyedStats(self.spec.stats, ddof=self.spec.ddof) for _ in self.spec.values]
        AggSpec(None, self.spec.values, self.spec.stats).update(accs, rows, keys=sid)
        out = window_records(self.spec, accs, self.out_ts(first), self.out_ts(last))
        if self.key is not None:
            out[self.key] = rows[self.key][np.cumsum(sizes[done_s]) - 1]
        return [out[order]]

    def next_end(self) -> float | None:
        return float(self._sessions()[1].min()) if len(self.ts) else None

    def last_end(self) -> float | None:
        return float(self._sessions()[1].max()) if len(self.ts) else None

"""Keyed window aggregates kept as *panes*, built on :class:`aflow.KeyedStats`.

Time is cut into panes of length ``gcd(size, step)``; every row falls in exactly one pane,
whatever the window kind, so a sliding window never copies a row once per window it
covers. A window's statistics are the merge of its ``size / pane`` panes
(``KeyedStats.merge``, exact for counts, sums, extremes, first/last; Chan's formula for
variance). A tumbling window is one pane. Memory is bounded by open panes times keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..kernels.keyed import STATS, KeyedStats

__all__ = ["STATS", "AggSpec", "PaneStore", "window_records"]


@dataclass(frozen=True, slots=True)
class AggSpec:
    """What a window aggregates.

    Attributes:
        key: key column, or ``None`` for one record per window.
        values: value columns; ``("",)`` is the (non-structured) array itself.
        stats: statistics from :data:`STATS` (``count`` int64; ``sum``, ``mean``, ``var``,
            ``std`` float64; ``min``, ``max``, ``first``, ``last`` the value dtype).
        ddof: delta degrees of freedom of ``var`` and ``std``.
    """

    key: str | None
    values: tuple[str, ...]
    stats: tuple[str, ...]
    ddof: int = 0

    def new(self) -> list[KeyedStats]:
        """Fresh accumulators, one per value column."""
        return [KeyedStats(self.stats, ddof=self.ddof) for _ in self.values]

    def update(
        self, accs: list[KeyedStats], rows: NDArray[Any], keys: NDArray[Any] | None = None
    ) -> None:
        """Fold ``rows`` (shape (n,)) into ``accs``, grouped by ``keys`` (shape (n,);
        by default the key column, or one group when unkeyed)."""
        if keys is None:
            keys = rows[self.key] if self.key is not None else np.zeros(len(rows), np.int8)
        for acc, v in zip(accs, self.values, strict=True):
            acc.update(keys, None if self.stats == ("count",) else _column(rows, v))


def _column(rows: NDArray[Any], name: str) -> NDArray[Any]:
    return rows if name == "" else rows[name]


def window_records(
    spec: AggSpec, accs: list[KeyedStats], start: NDArray[Any], end: NDArray[Any]
) -> NDArray[np.void]:
    """The output records of one window's (or several sessions') accumulators.

    Args:
        accs: one accumulator per value column, all over the same keys.
        start / end: shape (1,) (broadcast to every key) or (n_keys,): the window bounds.

    Returns:
        A structured array, one record per key: ``window_start``, ``window_end``, the key
        column (when keyed), then the statistics: named as the statistic for one value
        column, ``value_stat`` for several (``count`` once).
    """
    results = [acc.result("__key") for acc in accs]
    n = len(results[0])
    cols: list[tuple[str, NDArray[Any]]] = [
        ("window_start", np.broadcast_to(start, (n,))),
        ("window_end", np.broadcast_to(end, (n,))),
    ]
    if spec.key is not None:
        cols.append((spec.key, results[0]["__key"]))
    for stat in spec.stats:
        for v, res in zip(spec.values, results, strict=True):
            name = stat if len(spec.values) == 1 else f"{v}_{stat}"
            if stat == "count":
                cols.append(("count", res["count"]))
                break
            cols.append((name, res[stat]))
    out = np.empty(n, np.dtype([(name, col.dtype) for name, col in cols]))
    for name, col in cols:
        out[name] = col
    return out


def pane_length(size: float, step: float) -> float:
    """The longest pane length that tiles every window: ``gcd(size, step)``."""
    if float(size).is_integer() and float(step).is_integer():
        return math.gcd(int(size), int(step))
    ratio = size / step
    if ratio.is_integer() or (1 / ratio).is_integer():
        return min(size, step)
    raise ValueError(
        f"window(size={size}, step={step}): with float timestamps one must be a whole "
        "multiple of the other"
    )


class PaneStore:
    """Per-pane accumulators of open windows ``[k * step, k * step + size)``."""

    def __init__(
        self,
        size: float,
        step: float,
        spec: AggSpec,
        out_ts: Callable[[NDArray[Any]], Any],
        first: int | None = None,
    ) -> None:
        self.size, self.step, self.spec, self.out_ts = size, step, spec, out_ts
        self.first = -(2**62) if first is None else first  # the first window id there is
        self.pane = pane_length(size, step)
        self.panes: dict[int, list[KeyedStats]] = {}

    def add(self, ts: NDArray[Any], rows: NDArray[Any]) -> None:
        """Fold in on-time rows (timestamps ``ts``, shape (n,)) pane by pane."""
        pane = np.floor_divide(ts, self.pane).astype(np.int64)
        lo, hi = int(pane.min()), int(pane.max())
        if lo == hi:
            self._fold(lo, rows)
            return
        order = np.argsort(pane, kind="stable")
        sp = pane[order]
        cuts = np.flatnonzero(sp[1:] != sp[:-1]) + 1
        for start, part in zip(np.r_[0, cuts], np.split(order, cuts), strict=True):
            self._fold(int(sp[start]), rows[part])

    def _fold(self, j: int, rows: NDArray[Any]) -> None:
        accs = self.panes.get(j)
        if accs is None:
            accs = self.panes[j] = self.spec.new()
        self.spec.update(accs, rows)

    def windows_of(self, j: int) -> range:
        """Ids of the windows covering pane ``j``."""
        s = j * self.pane
        lo = max(int((s - self.size) // self.step) + 1, self.first)
        return range(lo, int(s // self.step) + 1)

    def end(self, k: int) -> float:
        return k * self.step + self.size

    def open_windows(self, after: float) -> list[int]:
        """Ids of windows holding rows that end after ``after``, sorted."""
        ks = {k for j in self.panes for k in self.windows_of(j) if self.end(k) > after}
        return sorted(ks)

    def close(self, old: float, wm: float) -> list[NDArray[np.void]]:
        """Records of the windows ending in ``(old, wm]``; drops panes no window needs."""
        out = [self._records(k) for k in self.open_windows(old) if self.end(k) <= wm]
        for j in [j for j in self.panes if self.end(self.windows_of(j)[-1]) <= wm]:
            del self.panes[j]
        return [r for r in out if len(r)]

    def _records(self, k: int) -> NDArray[np.void]:
        first = int(k * self.step // self.pane)
        js = [j for j in range(first, first + int(self.size // self.pane)) if j in self.panes]
        if len(js) == 1:
            accs = self.panes[js[0]]
        else:
            accs = self.spec.new()
            for j in js:
                for acc, part in zip(accs, self.panes[j], strict=True):
                    acc.merge(part)
        bounds = self.out_ts(np.array([k * self.step, self.end(k)]))
        return window_records(self.spec, accs, bounds[:1], bounds[1:])

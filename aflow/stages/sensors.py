"""Sensor-stream operators: bounded out-of-order reordering and resampling to a fixed rate.

Both work on structured batches with a timestamp column (int, float or ``datetime64``)
and run fused with their neighbours; all the per-row work is NumPy (a stable sort, a
``searchsorted``), Python runs once per batch. As-of alignment of several streams is the
source :func:`aflow.asof_join`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Message, Operator, Processor, SavedAttributes, refuse_async
from ..flow import Stage
from ..kernels.time_units import (
    TimeSpan,
    as_numbers,
    as_timestamps,
    as_units,
    check_duration,
)
from ..stats import StageCounters
from ._late import LateTarget, check_late, reject_late

__all__ = ["reorder", "resample"]


def _ts(data: NDArray[Any], on: str, stage: str) -> NDArray[Any]:
    """The numeric timestamps (int64 or float64 view, shape (n,)) of column ``on``."""
    if data.dtype.names is None or on not in data.dtype.names:
        raise TypeError(f"{stage}: batches need a {on!r} timestamp column")
    return as_numbers(data[on])


class _ReorderRunner(SavedAttributes, Processor):
    saved = ("held", "held_ts", "wm", "horizon")
    guarded = True  # process_guarded: late rows go to the late policy, which may await

    def __init__(self, op: _ReorderOp) -> None:
        self.op = op
        self.held: NDArray[Any] | None = None  # rows not yet released, sorted by ts
        self.held_ts: NDArray[Any] | None = None
        self.wm = -np.inf
        self.horizon = 0.0

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        data = msg.data if isinstance(msg, Batch) else np.asarray(msg)
        if not len(data):
            return []
        ts = _ts(data, self.op.on, self.op.name)
        if self.held is None:
            what = f"{self.op.name}: horizon"
            self.horizon = as_units(self.op.horizon, data.dtype[self.op.on], ts, what=what)
        late = ts < self.wm
        if late.any():
            prov = msg.provenance if isinstance(msg, Batch) else None
            await reject_late(self.op.late, data[late], self.wm, self.op.name, prov, counters)
            data, ts = data[~late], ts[~late]
        self._hold(data, ts)
        if len(ts):
            self.wm = max(self.wm, float(ts.max()) - self.horizon)
        return self._release(self.wm, msg)

    def _hold(self, data: NDArray[Any], ts: NDArray[Any]) -> None:
        if self.held is not None and self.held_ts is not None and len(self.held):
            data = np.concatenate((self.held, data))
            ts = np.concatenate((self.held_ts, ts))
        order = np.argsort(ts, kind="stable")  # ties keep their arrival order
        self.held, self.held_ts = data[order], ts[order]

    def _release(self, upto: float, msg: Message) -> list[Message]:
        if self.held is None or self.held_ts is None:
            return []
        n = int(np.searchsorted(self.held_ts, upto, side="right"))
        if not n:
            return []
        out = self.held[:n]
        self.held, self.held_ts = self.held[n:], self.held_ts[n:]
        return [Batch(out, msg.reason if isinstance(msg, Batch) else "source")]

    def flush(self) -> list[Message]:
        if self.held is None or not len(self.held):
            return []
        out, self.held, self.held_ts = self.held, None, None
        return [Batch(out, "end")]


class _ReorderOp(Operator):
    def __init__(self, on: str, horizon: TimeSpan, late: LateTarget) -> None:
        self.on, self.horizon, self.late = on, horizon, check_late(late)
        self.name = f"reorder(on={on!r})"

    def start(self) -> Processor:
        return _ReorderRunner(self)


def reorder(
    on: str, *, horizon: TimeSpan, late: LateTarget = "drop"
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Sort a stream whose rows arrive at most ``horizon`` out of order.

    Rows are held until the largest timestamp seen passes theirs by ``horizon``, then
    released in timestamp order (ties in arrival order): the output is sorted, with
    latency ``horizon`` and memory for the rows of one horizon. A row older than what was
    already released could not be put in order: it is *late*, counted in the stage's
    ``errors`` and dropped or handed to ``late``. At the end of input the rest is released.

    Args:
        on: the timestamp column (int, float or ``datetime64``).
        horizon: how far out of order rows may be (``np.timedelta64`` for datetime64).
        late: the error policy for late rows, as for :func:`~aflow.window`: ``"drop"``,
            ``"raise"``, :func:`~aflow.dead_letter`, or a list or (sync or async) callable
            taking the arrays of late rows.

    Examples:
        >>> import numpy as np, aflow as af
        >>> rows = np.array([(3,), (1,), (2,), (6,), (5,), (9,)], dtype=[("ts", "i8")])
        >>> flow = af.from_array(rows, 2) | af.reorder("ts", horizon=2)
        >>> af.run(flow | af.collect()).value["ts"].tolist()
        [1, 2, 3, 5, 6, 9]
    """
    if callable(late):
        refuse_async(
            late, "reorder(late=)", "give an async function (no yield)", kinds=("generator",)
        )
    check_duration(horizon, "reorder(horizon)", zero=True)
    return Stage(_ReorderOp(on, horizon, late))


class _ResampleRunner(SavedAttributes, Processor):
    saved = ("prev", "next_k", "every", "max_gap")

    def __init__(self, op: _ResampleOp) -> None:
        self.op = op
        self.prev: NDArray[Any] | None = None  # the last row seen (shape (1,))
        self.next_k: int | None = None  # grid index of the next output row
        self.every = 0.0
        self.max_gap = np.inf

    def process(self, msg: Message) -> list[Message]:
        data = msg.data if isinstance(msg, Batch) else np.asarray(msg)
        if not len(data):
            return []
        if self.prev is None:
            self._first(data)
        else:
            data = np.concatenate((self.prev, data))
        return self._emit(data, final=False)

    def _first(self, data: NDArray[Any]) -> None:
        on, name = self.op.on, self.op.name
        ts = _ts(data, on, name)
        self.every = as_units(self.op.every, data.dtype[on], ts, what=f"{name}: every")
        if self.op.max_gap is not None:
            what = f"{name}: max_gap"
            self.max_gap = as_units(self.op.max_gap, data.dtype[on], ts, what=what)
        self.next_k = int(-(-_ts(data[:1], on, self.op.name)[0] // self.every))

    def _emit(self, data: NDArray[Any], final: bool) -> list[Message]:
        ts = _ts(data, self.op.on, self.op.name)
        if np.any(ts[1:] < ts[:-1]):
            raise ValueError(f"{self.op.name}: timestamps go backwards; put reorder() before")
        self.prev = data[-1:]
        assert self.next_k is not None
        stop = int(ts[-1] // self.every) + 1 if final else int(-(-ts[-1] // self.every))
        if stop <= self.next_k:
            return []
        grid = np.arange(self.next_k, stop) * self.every
        self.next_k = stop
        return [Batch(self._fill(data, ts, grid), "end" if final else "count")]

    def _fill(self, data: NDArray[Any], ts: NDArray[Any], grid: NDArray[Any]) -> NDArray[Any]:
        """Rows at the ``grid`` timestamps (shape (g,)) from samples ``data`` (sorted)."""
        i = np.searchsorted(ts, grid, side="right") - 1
        j = np.minimum(i + 1, len(ts) - 1)
        exact = ts[i] == grid
        out = np.empty(len(grid), self.op.out_dtype(data.dtype))
        for name in data.dtype.names or ():
            out[name] = data[name][i]
        if self.op.fill == "linear":
            span = (ts[j] - ts[i]).astype(np.float64)
            w = np.where(span > 0, (grid - ts[i]) / np.where(span > 0, span, 1), 0.0)
            for name in self.op.linear_columns(data.dtype):
                a, b = data[name][i], data[name][j]
                out[name] = a + w * (b - a)
        out[self.op.on] = as_timestamps(grid, out.dtype[self.op.on])
        out[self.op.valid] = exact | (ts[j] - ts[i] <= self.max_gap)
        return out

    def flush(self) -> list[Message]:
        return [] if self.prev is None else self._emit(self.prev, final=True)


class _ResampleOp(Operator):
    def __init__(
        self,
        on: str,
        every: TimeSpan,
        fill: Literal["last", "linear"],
        max_gap: TimeSpan | None,
        columns: Sequence[str] | None,
        valid: str,
    ) -> None:
        self.on, self.every, self.fill, self.max_gap = on, every, fill, max_gap
        self.columns, self.valid = columns, valid
        self.name = f"resample(on={on!r}, fill={fill!r})"

    def start(self) -> Processor:
        return _ResampleRunner(self)

    def out_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        fields = [(n, dtype[n]) for n in dtype.names or ()]
        if self.fill == "linear":
            lin = set(self.linear_columns(dtype))
            fields = [(n, np.dtype(np.float64) if n in lin else t) for n, t in fields]
        return np.dtype([*fields, (self.valid, np.bool_)])

    def linear_columns(self, dtype: np.dtype[Any]) -> list[str]:
        if self.columns is not None:
            return list(self.columns)
        return [n for n in dtype.names or () if n != self.on and dtype[n].kind == "f"]


def resample(
    on: str,
    *,
    every: TimeSpan,
    fill: Literal["last", "linear"] = "last",
    max_gap: TimeSpan | None = None,
    columns: Sequence[str] | None = None,
    valid: str = "valid",
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Resample a sorted stream to one row every ``every``, on the grid ``k * every``.

    Each output row is the sample at or before its grid time (``fill="last"``), or the
    straight line between the samples around it (``"linear"``, for float columns; the
    others take the last value). A row is emitted once a later sample shows it is final;
    at the end of input the grid is completed up to the last sample.

    Args:
        on: the timestamp column; rows must arrive sorted by it (see :func:`reorder`).
        every: the output period (``np.timedelta64`` for datetime64 columns).
        fill: ``"last"`` (previous value) or ``"linear"`` (interpolation).
        max_gap: rows filled across a gap between samples longer than this get
            ``valid == False`` (a row exactly on a sample is always valid).
        columns: the columns to interpolate (default: every float column but ``on``).
        valid: name of the added bool column.

    Returns:
        A stage emitting the input's columns (interpolated ones as float64) plus ``valid``.

    Examples:
        >>> import numpy as np, aflow as af
        >>> rows = np.array([(0, 0.0), (10, 1.0), (40, 4.0)], [("ts", "i8"), ("v", "f8")])
        >>> flow = af.from_array(rows) | af.resample("ts", every=10, fill="linear", max_gap=10)
        >>> [tuple(r) for r in af.run(flow | af.collect()).value.tolist()]
        [(0, 0.0, True), (10, 1.0, True), (20, 2.0, False), (30, 3.0, False), (40, 4.0, True)]
    """
    if fill not in ("last", "linear"):
        raise ValueError(f"resample(fill={fill!r}): use 'last' or 'linear'")
    check_duration(every, "resample(every)")
    check_duration(max_gap, "resample(max_gap)", zero=True)
    return Stage(_ResampleOp(on, every, fill, max_gap, columns, valid))

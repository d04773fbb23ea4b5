"""Windows: tumbling, sliding and session windows by event time, processing time or count.

``window(...)`` groups the rows of a stream of batches into windows and emits each window
when it closes: its rows (one batch per window), or per-key statistics (one structured
array per watermark advance, one record per window and key). See ``docs/time.md``.

Event-time windows run fused with their neighbours (no task of their own) unless an
``idle_timeout`` or an async late-data target needs a task; processing-time windows always
have one (a timer closes them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import (
    AsyncOperator,
    Batch,
    BatchReason,
    Context,
    Inbox,
    Message,
    Operator,
    Outlet,
    Processor,
    refuse_async,
)
from ..flow import Stage
from ..kernels.time_units import TimeSpan, as_numbers, as_units
from ..policies import ErrorPolicy
from ..stats import StageCounters
from ._late import LateTarget, check_late, reject_late, waits_on_target
from ._panes import STATS, AggSpec
from ._windowing import FixedWindows, OpenWindows, SessionWindows

__all__ = ["window"]

Domain: TypeAlias = Literal["event", "processing", "count"]


class _WindowOp(Operator):
    """The description of a window stage; ``start()`` makes the per-run state."""

    def __init__(self, name: str, domain: Domain, on: str | None, make: _WindowsFactory) -> None:
        self.name = name
        self.domain = domain
        self.on = on
        self.make = make
        self.late: ErrorPolicy = "skip"
        self.lateness: TimeSpan = 0

    def start(self) -> _WindowRunner:
        return _WindowRunner(self)


class _WindowsFactory:
    """Builds the open-windows state once the first batch shows the timestamp dtype."""

    def __init__(
        self,
        size: TimeSpan | None,
        step: TimeSpan | None,
        gap: TimeSpan | None,
        key: str | None,
        spec: AggSpec | None,
    ) -> None:
        self.size, self.step, self.gap, self.key, self.spec = size, step, gap, key, spec
        self.first: int | None = None  # count windows start at row 0

    def __call__(self, ts_dtype: np.dtype[Any]) -> OpenWindows:
        out = ts_dtype if ts_dtype.kind in "Mf" else np.dtype(np.int64)
        if self.gap is not None:
            return SessionWindows(as_units(self.gap, ts_dtype), self.key, self.spec, out)
        assert self.size is not None
        size = as_units(self.size, ts_dtype)
        step = size if self.step is None else as_units(self.step, ts_dtype)
        return FixedWindows(size, step, self.spec, out, first=self.first)


class _WindowRunner(Processor):
    """Per-run state: the open windows, the watermark rule, the row count."""

    guarded = True  # process_guarded: late rows go to the late policy, which may await

    def __init__(self, op: _WindowOp) -> None:
        self.op = op
        self.windows: OpenWindows | None = None
        self.lateness = 0.0
        self.rows_seen = 0
        self.reason: BatchReason = "count" if op.domain == "count" else "time"

    def process(self, msg: Message) -> list[Message]:  # pragma: no cover - guarded
        raise NotImplementedError

    def timestamps(self, data: NDArray[Any], now: float) -> NDArray[Any]:
        """Numeric timestamps (int64 or float64, shape (n,)) of the rows of ``data``."""
        op = self.op
        if op.domain == "count":
            ts = np.arange(self.rows_seen, self.rows_seen + len(data), dtype=np.int64)
        elif op.domain == "processing":
            ts = np.full(len(data), now)
        else:
            if data.dtype.names is None or op.on not in data.dtype.names:
                raise TypeError(f"{op.name}: batches need a {op.on!r} timestamp column")
            ts = data[op.on]
        if self.windows is None:
            self.windows = op.make(ts.dtype)
            if op.domain == "event":
                self.lateness = as_units(op.lateness, ts.dtype)
        return as_numbers(ts)

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        return await self.step(msg, counters, anyio.current_time())

    async def step(self, msg: Message, counters: StageCounters, now: float) -> list[Message]:
        """Add one message's rows, split off late rows, advance the watermark, emit."""
        data = msg.data if isinstance(msg, Batch) else np.asarray(msg)
        if not len(data):
            return []
        t0 = time.perf_counter()
        ts = self.timestamps(data, now)
        assert self.windows is not None
        wm = self.windows.wm
        late = self.windows.add(ts, data)
        self.rows_seen += len(data)
        counters.busy_seconds += time.perf_counter() - t0
        if late.any():
            prov = msg.provenance if isinstance(msg, Batch) else None
            await reject_late(self.op.late, data[late], wm, self.op.name, prov, counters)
        return self.advance(self._watermark(ts, now))

    def _watermark(self, ts: NDArray[Any], now: float) -> float:  # an int for int timestamps
        if self.op.domain == "count":
            return self.rows_seen
        if self.op.domain == "processing":
            return now
        top = ts.max()
        lateness = self.lateness
        if ts.dtype.kind in "iu" and float(lateness).is_integer():
            return int(top) - int(lateness)  # exact: floats round epoch nanoseconds
        return float(top) - float(lateness)

    def advance(self, wm: float) -> list[Message]:
        """Close the windows that end at or before ``wm``."""
        if self.windows is None:
            return []
        return [Batch(out, self.reason) for out in self.windows.close(wm) if len(out)]

    def idle(self) -> list[Message]:
        """The input went quiet: close every open window."""
        if self.windows is None:
            return []
        return [Batch(out, "time") for out in self.windows.flush() if len(out)]

    def flush(self) -> list[Message]:
        if self.windows is None:
            return []
        return [Batch(out, "end") for out in self.windows.flush() if len(out)]


class _TimedWindowOp(AsyncOperator):
    """A window stage with a timer: processing-time windows, or an idle timeout."""

    def __init__(self, inner: _WindowOp, idle_timeout: float | None, buffer: int | None) -> None:
        self.inner = inner
        self.idle_timeout = idle_timeout
        self.buffer = buffer
        self.name = inner.name

    def _deadline(self, runner: _WindowRunner, last_input: float) -> float:
        if self.inner.domain == "processing":
            end = runner.windows.next_end() if runner.windows is not None else None
            return math.inf if end is None else end
        if self.idle_timeout is None or runner.windows is None:
            return math.inf
        open_ = runner.windows.next_end() is not None
        return last_input + self.idle_timeout if open_ else math.inf

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit, counters = out.emit, out.counters
        runner = self.inner.start()
        last_input = anyio.current_time()
        while True:
            deadline = self._deadline(runner, last_input)
            try:
                with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                    msg = await inbox.receive()
            except anyio.EndOfStream:
                break
            now = anyio.current_time()
            if scope.cancelled_caught:
                timed = runner.advance(now) if self.inner.domain == "processing" else None
                outs = timed if timed is not None else runner.idle()
            else:
                last_input = now
                outs = await runner.step(msg, counters, now)
            for piece in outs:
                await emit(piece)
        for piece in runner.flush():
            await emit(piece)


def window(
    size: TimeSpan | None = None,
    *,
    step: TimeSpan | None = None,
    gap: TimeSpan | None = None,
    on: str | None = None,
    domain: Domain | None = None,
    key: str | None = None,
    value: str | Sequence[str] | None = None,
    stats: Sequence[str] | None = None,
    allowed_lateness: TimeSpan = 0,
    idle_timeout: float | None = None,
    late: LateTarget = "drop",
    buffer: int | None = None,
    name: str | None = None,
) -> Stage[NDArray[Any], NDArray[Any]]:
    """Group rows into windows; emit each window, or its statistics, when it closes.

    Kinds: *tumbling* (``size``), *sliding* (``size`` and ``step``: a window starts every
    ``step``, so a row is in about ``size / step`` of them) and *session* (``gap``: per
    key, a pause of ``gap`` or more ends a session). Window ``k`` covers
    ``[k * step, k * step + size)``; a session ``[first ts, last ts + gap)``.

    Domains: ``"event"`` (the default when ``on`` names a timestamp column: int, float or
    ``datetime64``), ``"processing"`` (arrival time, seconds of the event loop's clock;
    the default without ``on``) and ``"count"`` (row numbers: ``window(100,
    domain="count")`` is every 100 rows).

    The watermark advances after every batch to (max timestamp seen) - ``allowed_lateness``
    (event time), the number of rows seen (count) or the current time (processing).
    A window closes when the watermark reaches its end. Rows arriving after every window
    they belong to closed are *late*: each counts in the stage's ``errors`` statistic, and
    the late rows of a batch go to the ``late`` policy, like any failed item. With
    ``idle_timeout``, an input quiet for that many seconds closes every open window (rows
    for them arriving later are late). At the end of input or a graceful stop, open
    windows are flushed (``Batch.reason == "end"``).

    Output: without ``key``/``stats``, each closed window is one batch of its rows (the
    input dtype; sessions in timestamp order). With them, one structured array per
    watermark advance, a record per closed window and key, sorted by window then key:
    ``window_start``, ``window_end`` (the timestamp dtype; int64 for count windows,
    float64 for processing time), the key column, then the statistics of
    :class:`aflow.KeyedStats` (``count`` int64; ``sum``, ``mean``, ``var``, ``std``
    (population) float64; ``min``, ``max``, ``first``, ``last`` the value dtype), named
    ``mean`` for one value column, ``value_mean`` for several.

    Args:
        size: window length (tumbling, sliding). ``np.timedelta64`` for datetime64 columns.
        step: distance between window starts (sliding); ``size`` by default.
        gap: session gap (session windows; instead of ``size``).
        on: the timestamp column (event time).
        domain: ``"event"``, ``"processing"`` or ``"count"``.
        key: key column: statistics per key in each window; sessions per key.
        value: value column(s) the statistics are of (the array itself when the batches
            are not structured).
        stats: from ``count, sum, min, max, mean, var, std, first, last``; ``("count",)``
            when only a ``key`` is given, ``("count", "mean")`` with a ``value``.
        allowed_lateness: how far behind the largest timestamp seen rows may still come
            before their windows close (event time).
        idle_timeout: seconds without input after which open windows close (event time).
        late: the error policy for late rows: ``"drop"`` (or ``"skip"``), ``"raise"`` (a
            :class:`~aflow.LateDataError`), :func:`~aflow.dead_letter` (one
            :class:`~aflow.FailedItem` of the late rows per batch); or, for short, a list
            to append those arrays to, or a (sync or async) callable receiving them.
        buffer: input buffer size, when the stage has a task (processing time, idle timeout
            or an async ``late``).
        name: the stage's name in statistics and errors.

    Examples:
        >>> import numpy as np, aflow as af
        >>> rows = np.array([(0, 1, 2.0), (5, 1, 4.0), (12, 2, 1.0)],
        ...                 dtype=[("ts", "i8"), ("sensor", "i4"), ("value", "f4")])
        >>> flow = af.from_array(rows, 2) | af.window(10, on="ts", key="sensor",
        ...                                            value="value", stats=("count", "mean"))
        >>> af.run(flow | af.collect()).value.tolist()
        [(0, 10, 1, 2, 3.0), (10, 20, 2, 1, 1.0)]
    """
    dom = _check(size, step, gap, on, domain, allowed_lateness, idle_timeout)
    spec = _spec(key, value, stats)
    kind = "session" if gap is not None else "sliding" if step not in (None, size) else "tumbling"
    label = name or f"window({kind}, {dom}{'' if key is None else f', key={key!r}'})"
    factory = _WindowsFactory(size, step, gap, key, spec)
    factory.first = 0 if dom == "count" else None
    op = _WindowOp(label, dom, on, factory)
    if callable(late):
        refuse_async(
            late, "window(late=)", "give an async function (no yield)", kinds=("generator",)
        )
    op.late, op.lateness = check_late(late), allowed_lateness
    if dom == "processing" or idle_timeout is not None or waits_on_target(late):
        return Stage(_TimedWindowOp(op, idle_timeout, buffer))
    return Stage(op)


def _check(
    size: TimeSpan | None,
    step: TimeSpan | None,
    gap: TimeSpan | None,
    on: str | None,
    domain: Domain | None,
    lateness: TimeSpan,
    idle_timeout: float | None,
) -> Domain:
    dom: Domain = domain or ("event" if on is not None else "processing")
    if (size is None) == (gap is None):
        raise ValueError("window(): give either size= (tumbling, sliding) or gap= (sessions)")
    for label, v in (("size", size), ("step", step), ("gap", gap)):
        if v is not None and not v > _zero(v):
            raise ValueError(f"window({label}={v!r}): must be > 0")
    if gap is not None and step is not None:
        raise ValueError("window(): step= is for sliding windows, not sessions (gap=)")
    if dom == "event" and on is None:
        raise ValueError("window(domain='event') needs on=, the timestamp column")
    if dom != "event" and (on is not None or idle_timeout is not None or lateness != 0):
        raise ValueError("window(): on=, idle_timeout= and allowed_lateness= are for event time")
    if dom == "count" and gap is not None:
        raise ValueError("window(domain='count'): count windows cannot be sessions")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"window(idle_timeout={idle_timeout}): must be > 0 seconds")
    if lateness < _zero(lateness):
        raise ValueError(f"window(allowed_lateness={lateness!r}): must be >= 0")
    return dom


def _zero(v: TimeSpan) -> Any:
    return np.timedelta64(0, "ns") if isinstance(v, np.timedelta64) else 0


def _spec(
    key: str | None, value: str | Sequence[str] | None, stats: Sequence[str] | None
) -> AggSpec | None:
    if key is None and stats is None and value is None:
        return None
    chosen = (
        tuple(stats) if stats is not None else ("count",) if value is None else ("count", "mean")
    )
    unknown = [s for s in chosen if s not in STATS]
    if unknown or not chosen:
        raise ValueError(f"window(stats={chosen!r}): choose from {', '.join(STATS)}")
    values = ("",) if value is None else (value,) if isinstance(value, str) else tuple(value)
    return AggSpec(key, values, chosen)

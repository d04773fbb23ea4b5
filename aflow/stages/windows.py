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
import pickle
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, TypeAlias

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import (
    AsyncOperator,
    Barrier,
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
from ..kernels.time_units import TimeSpan, as_numbers, as_units, check_duration, duration_ns
from ..policies import ErrorPolicy
from ..stats import StageCounters
from ._late import LateTarget, check_late, reject_late, waits_on_target
from ._panes import STATS, AggSpec
from ._watermarks import Group, Groups, WatermarkMode
from ._windowing import FixedWindows, OpenWindows, SessionWindows

__all__ = ["window"]

_EMPTY = b""
"""The snapshot of a window stage that saw nothing yet."""

IDLE_INPUT = 5.0
"""Default ``window(idle_input=)``: seconds after which a quiet input stops holding the
watermark back."""

Domain: TypeAlias = Literal["event", "processing", "count"]


class _WindowOp(Operator):
    """The description of a window stage; ``start()`` makes the per-run state."""

    def __init__(self, name: str, domain: Domain, on: str | None, make: _WindowsFactory) -> None:
        self.name = name
        self.domain = domain
        self.on = on
        self.make = make
        self.key = make.key
        self.late: ErrorPolicy = "skip"
        self.lateness: TimeSpan = 0
        self.watermark: WatermarkMode = "source"
        self.idle_input: float | None = IDLE_INPUT

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

    def __call__(self, ts_dtype: np.dtype[Any], ts: NDArray[Any], name: str) -> OpenWindows:
        """New open windows for timestamps of ``ts_dtype`` (``ts``: the first ones, as
        numbers, to tell their epoch unit)."""
        out = ts_dtype if ts_dtype.kind in "Mf" else np.dtype(np.int64)
        if self.gap is not None:
            gap = as_units(self.gap, ts_dtype, ts, what=f"{name}: gap")
            return SessionWindows(gap, self.key, self.spec, out)
        assert self.size is not None
        size = as_units(self.size, ts_dtype, ts, what=f"{name}: size")
        step = (
            size if self.step is None else as_units(self.step, ts_dtype, ts, what=f"{name}: step")
        )
        return FixedWindows(size, step, self.spec, out, first=self.first)


class _WindowRunner(Processor):
    """Per-run state: the groups of open windows, their watermarks, the row count."""

    guarded = True  # process_guarded: late rows go to the late policy, which may await

    def __init__(self, op: _WindowOp) -> None:
        self.op = op
        self.groups: Groups | None = None
        self.lateness: Any = 0
        self.rows_seen = 0
        self.reason: BatchReason = "count" if op.domain == "count" else "time"
        self.clock: float | None = None  # restored: the clock when the state was saved
        self.restored: list[Message] = []  # restored processing-time windows, now closed

    def snapshot(self) -> Any:
        """The open windows, their watermarks and the row count, pickled (a copy made
        now), with the clock (idle inputs' times are rebased on it after a restart)."""
        if self.groups is None and not self.rows_seen:
            return _EMPTY
        return pickle.dumps(
            (self.groups, self.lateness, self.rows_seen, anyio.current_time()), protocol=5
        )

    def restore(self, state: Any) -> None:
        """Take back the windows of a checkpoint. Processing-time windows belong to the
        clock of the run that opened them: they close at once (``reason == "time"``)."""
        if state is _EMPTY:
            return
        groups, self.lateness, self.rows_seen, self.clock = pickle.loads(state)
        if self.op.domain == "processing":
            self.restored = [
                Batch(o, "time") for g in groups or () for o in g.windows.flush() if len(o)
            ]
            self.clock = None
            return
        self.groups = groups

    def _rebase(self, now: float) -> None:
        """After a restart: shift the times inputs were last seen to this run's clock
        (the time the flow was down does not count as idle)."""
        clock, self.clock = self.clock, None
        if clock is None or self.groups is None:
            return
        seen = self.groups.seen
        for input_id, (last, group) in list(seen.items()):
            seen[input_id] = (last - clock + now, group)

    def take_restored(self) -> list[Message]:
        """The windows a restore closed, once."""
        out, self.restored = self.restored, []
        return out

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
        if self.groups is None:
            numbers = as_numbers(ts)
            mode = op.watermark if op.domain == "event" else "global"
            make = partial(op.make, ts.dtype, numbers, op.name)
            self.groups = Groups(mode, make, op.idle_input)
            if op.domain == "event":
                what = f"{op.name}: allowed_lateness"
                self.lateness = as_units(op.lateness, ts.dtype, numbers, what=what)
        return as_numbers(ts)

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        return await self.step(msg, counters, anyio.current_time())

    async def step(self, msg: Message, counters: StageCounters, now: float) -> list[Message]:
        """Add one message's rows, split off late rows, advance the watermarks, emit."""
        data = msg.data if isinstance(msg, Batch) else np.asarray(msg)
        if not len(data):
            return []
        t0 = time.perf_counter()
        if self.clock is not None:
            self._rebase(now)
        ts = self.timestamps(data, now)
        assert self.groups is not None
        prov = msg.provenance if isinstance(msg, Batch) else None
        source = None if prov is None else prov.source
        out = [m for g in self.groups.expire(now) for m in self._close_group(g)]
        for input_id, rows, times in self.groups.split(data, ts, source, self.op.key):
            group = self.groups.group_of(input_id, times, now)
            wm = group.windows.wm
            late = group.windows.add(times, rows)
            if late.any():
                counters.busy_seconds += time.perf_counter() - t0
                await reject_late(self.op.late, rows[late], wm, self.op.name, prov, counters)
                t0 = time.perf_counter()
            group.raise_mark(input_id, self._top(times, now))
            out += self._close_group(group)
        self.rows_seen += len(data)
        counters.busy_seconds += time.perf_counter() - t0
        return out

    def _top(self, ts: NDArray[Any], now: float) -> Any:
        if self.op.domain == "count":
            return self.rows_seen + len(ts)
        if self.op.domain == "processing":
            return now
        top = ts.max()
        return int(top) if ts.dtype.kind in "iu" else float(top)

    def _lateness(self) -> Any:
        return self.lateness if self.op.domain == "event" else 0

    def _close_group(self, group: Group) -> list[Message]:
        wm = group.watermark(self._lateness())
        return [] if wm is None else self._close(group.windows, wm)

    def _close(self, windows: OpenWindows, wm: Any) -> list[Message]:
        return [Batch(out, self.reason) for out in windows.close(wm) if len(out)]

    def advance(self, wm: float) -> list[Message]:
        """Close the windows that end at or before ``wm`` (processing time)."""
        return [m for g in self.groups or () for m in self._close(g.windows, wm)]

    def next_end(self) -> float | None:
        """The earliest end of an open window, ``None`` when none is open."""
        ends = [e for g in self.groups or () if (e := g.windows.next_end()) is not None]
        return min(ends, default=None)

    def idle(self) -> list[Message]:
        """The input went quiet: close every open window."""
        out: list[Message] = [
            Batch(o, "time") for g in self.groups or () for o in g.windows.flush() if len(o)
        ]
        if self.groups is not None:
            self.groups.prune()
        return out

    def flush(self) -> list[Message]:
        return [Batch(o, "end") for g in self.groups or () for o in g.windows.flush() if len(o)]


class _TimedWindowOp(AsyncOperator):
    """A window stage with a timer: processing-time windows, or an idle timeout."""

    handles_barriers = True  # barriers take the open windows' snapshot with them

    def __init__(self, inner: _WindowOp, idle_timeout: float | None, buffer: int | None) -> None:
        self.inner = inner
        self.idle_timeout = idle_timeout
        self.buffer = buffer
        self.name = inner.name

    def _deadline(self, runner: _WindowRunner, last_input: float) -> float:
        if self.inner.domain == "processing":
            end = runner.next_end()
            return math.inf if end is None else end
        if self.idle_timeout is None:
            return math.inf
        open_ = runner.next_end() is not None
        return last_input + self.idle_timeout if open_ else math.inf

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit, counters = out.emit, out.counters
        runner = self.inner.start()
        restored = out.restored_state
        if restored is not None:
            runner.restore(restored)
        for piece in runner.take_restored():
            await emit(piece)
        last_input = anyio.current_time()
        while True:
            deadline = self._deadline(runner, last_input)
            try:
                with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                    msg: Message | Barrier = await inbox.receive()  # handles_barriers
            except anyio.EndOfStream:
                break
            now = anyio.current_time()
            if scope.cancelled_caught:
                timed = runner.advance(now) if self.inner.domain == "processing" else None
                outs = timed if timed is not None else runner.idle()
            elif isinstance(msg, Barrier):  # everything before it is in the state: pass it
                await out.emit(msg, state=runner.snapshot())
                continue
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
    watermark: WatermarkMode = "source",
    idle_input: float | None = IDLE_INPUT,
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
    A window closes when the watermark reaches its end. With ``watermark="source"`` (the
    default) each input has its own and windows close on the minimum over the inputs; an
    input quiet for ``idle_input`` seconds no longer holds it back. Rows arriving after every window
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
        watermark: what has a watermark of its own (event time): ``"source"`` (each
            input: a batch's provenance source, such as a file path, a socket peer, a
            ``merge`` input; windows close on the minimum over inputs), ``"key"`` (each
            value of ``key``) or ``"global"`` (one for the stage).
        idle_input: seconds (processing time) after which an input that sent nothing
            stops holding the watermark back and is forgotten (``watermark="source"``):
            a finished file, a quiet sender, a client that reconnected from a new port.
            Its rows arriving later are late when behind the watermark. Checked when
            batches arrive. ``None``: inputs hold the watermark until the end of input.
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
    if idle_input is not None and not idle_input > 0:
        raise ValueError(f"window(idle_input={idle_input}): must be > 0 seconds, or None")
    if watermark not in ("source", "key", "global"):
        raise ValueError(f"window(watermark={watermark!r}): use 'source', 'key' or 'global'")
    if watermark == "key" and key is None:
        raise ValueError("window(watermark='key') needs key=, the column of the keys")
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
    op.late, op.lateness, op.watermark = check_late(late), allowed_lateness, watermark
    op.idle_input = idle_input
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
        check_duration(v, f"window({label})")
    if gap is not None and step is not None:
        raise ValueError("window(): step= is for sliding windows, not sessions (gap=)")
    if dom == "event" and on is None:
        raise ValueError("window(domain='event') needs on=, the timestamp column")
    if dom != "event" and (
        on is not None
        or idle_timeout is not None
        or duration_ns(lateness) is not None
        or lateness != 0
    ):
        raise ValueError("window(): on=, idle_timeout= and allowed_lateness= are for event time")
    if dom == "count" and gap is not None:
        raise ValueError("window(domain='count'): count windows cannot be sessions")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"window(idle_timeout={idle_timeout}): must be > 0 seconds")
    check_duration(lateness, "window(allowed_lateness)", zero=True)
    return dom


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

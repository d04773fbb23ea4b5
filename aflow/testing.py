"""Helpers for testing flows: counting sources, a recording sink, runs on a virtual clock,
and conformance checks for the sources and sinks you write on :mod:`aflow.abc`.

These are part of the public API, for your own tests of flows built with aflow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import numpy as np
from numpy.typing import NDArray

from ._core.run import RunResult
from .abc import (
    Batch,
    Closed,
    Context,
    Message,
    Outlet,
    Provenance,
    SinkOperator,
    SinkWriter,
    Source,
    StageCounters,
)
from .flow import Flow, Sink, SinkFlow
from .sources.iterables import from_array, from_arrays
from .stages.element import take

__all__ = [
    "CountingSource",
    "FakeSink",
    "VirtualClock",
    "check_sink",
    "check_source",
    "from_schedule",
    "run_virtual",
]

T = TypeVar("T")


class CountingSource:
    """A re-runnable generator of ``0, 1, 2, ...`` that counts what it produced.

    Pass it to :func:`aflow.from_iterable`; ``produced`` tells how far the source got, which
    is how a test sees backpressure (a paused source stops counting) and early stops.

    Args:
        n: how many numbers to produce (``None``: forever).
        delay: seconds to sleep before each number; makes it an async source.
    """

    def __init__(self, n: int | None = None, *, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.produced = 0
        self.runs = 0
        self.closed = 0

    def __call__(self) -> Iterator[int] | AsyncIterator[int]:
        self.runs += 1
        return self._async() if self.delay else self._sync()

    def _sync(self) -> Iterator[int]:
        i = 0
        try:
            while self.n is None or i < self.n:
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed += 1

    async def _async(self) -> AsyncIterator[int]:
        i = 0
        try:
            while self.n is None or i < self.n:
                await anyio.sleep(self.delay)
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed += 1


class VirtualClock:
    """Runs flows, or any async function, with a clock that jumps ahead whenever every
    task waits: sleeps, timeouts, ``batch(timeout=)``, processing-time windows and idle
    timeouts take no real time and behave deterministically.

    Examples:
        >>> import aflow as af
        >>> from aflow.testing import VirtualClock
        >>> async def slow():
        ...     await anyio.sleep(3600)
        ...     return anyio.current_time()
        >>> VirtualClock().call(slow) >= 3600  # returns at once
        True
        >>> VirtualClock(backend="asyncio").call(slow) >= 3600
        True

    Args:
        autojump_threshold: real seconds every task must have waited before the clock
            jumps (0: at once). Work in threads or on real sockets is not waited for
            unless this leaves it time to finish.
        backend: ``"trio"`` (a ``trio.testing.MockClock``; needs ``pip install trio``, the
            ``trio`` extra) or ``"asyncio"`` (an event loop whose ``time()`` is virtual).

    With anyio's pytest plugin, return ``(backend, clock.backend_options())`` from the
    ``anyio_backend`` fixture to run async tests on virtual time.
    """

    def __init__(self, autojump_threshold: float = 0.0, *, backend: str = "trio") -> None:
        if backend not in ("trio", "asyncio"):
            raise ValueError(f"backend={backend!r}: choose 'trio' or 'asyncio'")
        self.autojump_threshold = autojump_threshold
        self.backend = backend

    def backend_options(self) -> dict[str, Any]:
        """``backend_options`` for ``anyio.run`` (or the pytest plugin): a fresh clock."""
        if self.backend == "asyncio":
            return {"loop_factory": lambda: _virtual_time_loop(self.autojump_threshold)}
        from trio.testing import MockClock

        return {"clock": MockClock(autojump_threshold=self.autojump_threshold)}

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` to completion on virtual time; return its result."""

        async def main() -> T:
            return await fn()

        return anyio.run(main, backend=self.backend, backend_options=self.backend_options())

    def run(self, flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
        """``flow.run(**options)`` on virtual time."""
        result: RunResult[Any] = self.call(lambda: flow.run(**options))
        return result


def _virtual_time_loop(autojump_threshold: float) -> Any:
    """An asyncio event loop on virtual time, starting at 0: where it would wait for its
    next timer, it waits at most ``autojump_threshold`` real seconds for I/O (a thread's
    result included) and, if none came, moves its clock to that timer instead."""
    loop = asyncio.SelectorEventLoop()
    now = 0.0
    select = loop._selector.select  # type: ignore[attr-defined]

    def jump_instead_of_waiting(timeout: float | None = None) -> Any:
        nonlocal now
        if timeout is None:  # no timer: wait for I/O
            return select(None)
        ready = select(min(timeout, autojump_threshold))
        if not ready:
            now += timeout
        return ready

    loop._selector.select = jump_instead_of_waiting  # type: ignore[attr-defined]
    loop.time = lambda: now  # type: ignore[method-assign]
    return loop


def from_schedule(schedule: Sequence[tuple[float, Any]], *, name: str = "schedule") -> Flow[Any]:
    """A flow that emits each item at its time: ``[(seconds, array), ...]``.

    Times count from the start of the run, in ascending order. Arrays (and lists) become
    array batches. Pair it with :class:`VirtualClock` to test processing-time windows and
    timeouts: the waits then take no real time.
    """

    async def items() -> AsyncIterator[NDArray[Any]]:
        t0 = anyio.current_time()
        for at, item in schedule:
            await anyio.sleep(max(0.0, t0 + at - anyio.current_time()))
            yield np.asarray(item)

    return from_arrays(items, name=name)


def run_virtual(flow: SinkFlow[Any] | Flow[Any], **options: Any) -> RunResult[Any]:
    """Run ``flow`` on trio with a virtual clock that jumps ahead whenever all tasks wait.

    Timeouts, ``batch(timeout=...)``, ``throttle`` and sleeps then take no real time and
    behave deterministically. Needs trio (``pip install trio``, the ``trio`` extra). Same as
    ``VirtualClock().run(flow, **options)``.
    """
    return VirtualClock().run(flow, **options)


# -- a recording sink ----------------------------------------------------------------------


class FakeSink(Sink[Any, list[Message]]):
    """A sink for tests that records every message it receives, envelopes included.

    ``flow | FakeSink()`` runs like any sink; the run's result is the list of messages
    (``list`` chunks of elements, or :class:`~aflow.Batch` envelopes with their
    ``reason`` and ``provenance``). It can be made slow (to exercise backpressure) or
    failing (to exercise error handling).

    Args:
        delay: seconds each write waits (a slow consumer: upstream stages then wait too).
        fail_at: raise ``error`` when receiving this message (0 for the first).
        error: the exception raised at ``fail_at`` (a ``RuntimeError`` by default).

    Attributes:
        messages: the messages of the latest run.
        runs, opened, flushed, closed: how often a run started, and how often the
            writer's ``open``, ``flush`` and ``aclose`` were called, over all runs.
    """

    def __init__(
        self, *, delay: float = 0.0, fail_at: int | None = None, error: Exception | None = None
    ) -> None:
        super().__init__(_FakeOp(self))
        self.delay = delay
        self.fail_at = fail_at
        self.error = error
        self.messages: list[Message] = []
        self.runs = self.opened = self.flushed = self.closed = 0

    def rows(self) -> int:
        """Items received in the latest run (rows of batches, elements of chunks)."""
        return sum(len(m) for m in self.messages)


class _FakeWriter(SinkWriter[Any, list[Message]]):
    def __init__(self, fake: FakeSink) -> None:
        self.fake = fake
        self.messages: list[Message] = []
        fake.messages = self.messages
        fake.runs += 1

    async def open(self) -> None:
        self.fake.opened += 1

    async def _record(self, msg: Message) -> None:
        fake = self.fake
        if fake.delay:
            await anyio.sleep(fake.delay)
        if fake.fail_at is not None and len(self.messages) == fake.fail_at:
            raise fake.error or RuntimeError(f"FakeSink: failing at message {fake.fail_at}")
        self.messages.append(msg)

    async def write(self, item: Any) -> None:
        await self._record([item])

    async def write_chunk(self, items: list[Any]) -> None:
        await self._record(list(items))

    async def write_batch(self, batch: Batch) -> None:
        await self._record(batch)

    async def flush(self) -> None:
        self.fake.flushed += 1

    async def aclose(self) -> None:
        self.fake.closed += 1

    def result(self) -> list[Message]:
        return self.messages


class _FakeOp(SinkOperator[Any, list[Message]]):
    name = "fake_sink"

    def __init__(self, fake: FakeSink) -> None:
        self.fake = fake

    @property
    def fused(self) -> bool:  # type: ignore[override]
        return not self.fake.delay  # a slow sink gets a task and buffer of its own

    def writer(self, ctx: Context) -> SinkWriter[Any, list[Message]]:
        return _FakeWriter(self.fake)


# -- conformance checks ------------------------------------------------------------------


def _fail(prop: str, what: str, todo: str) -> AssertionError:
    return AssertionError(f"{prop}: {what}. {todo}")


def _running_tasks() -> set[object]:
    """Tasks alive in this event loop (asyncio) or under the root task (trio)."""
    try:
        return set(asyncio.all_tasks())
    except RuntimeError:  # not asyncio
        import trio

        def walk(task: Any) -> Iterator[object]:
            yield task
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    yield from walk(child)

        return set(walk(trio.lowlevel.current_root_task()))


async def _check_no_leak(prop: str, before: set[object]) -> None:
    """Fail unless every task started since ``before`` has ended within a second."""
    with anyio.move_on_after(1.0):
        await _wait_for(lambda: not _running_tasks() - before)
    extra = _running_tasks() - before
    if extra:
        raise _fail(
            prop,
            f"{len(extra)} task(s) started during the run still running after it ended",
            "Start tasks only in a task group that you close before returning (or with "
            "ctx.start_soon, in the run's own), never with a bare create_task or in a task "
            "group from outside the run.",
        )


def _cancelled() -> bool:
    return anyio.current_effective_deadline() == -math.inf


def _equal(a: Any, b: Any) -> bool:
    """Deep equality that compares arrays element-wise (NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        try:
            return bool(np.array_equal(a, b, equal_nan=True))
        except TypeError:  # structured or object arrays
            return bool(np.array_equal(a, b))
    if isinstance(a, Batch) and isinstance(b, Batch):
        return _equal(a.data, b.data) and (a.reason, a.provenance) == (b.reason, b.provenance)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    try:
        return bool(a == b)
    except Exception:
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- sinks --


class _SpyWriter(SinkWriter[Any, Any]):
    """Forwards every call to the sink's own writer, counting them."""

    def __init__(self, inner: SinkWriter[Any, Any]) -> None:
        self.inner = inner
        self.opened = self.messages = self.flushed = self.closed = 0
        self.swallowed: str | None = None  # a method that returned although cancelled

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        self.inner.attach(counters, producer)

    async def open(self) -> None:
        self.opened += 1
        await self._watch("open", self.inner.open())

    async def write(self, item: Any) -> None:  # pragma: no cover - chunks come whole
        await self._watch("write", self.inner.write(item))

    async def write_chunk(self, items: list[Any]) -> None:
        self.messages += 1
        await self._watch("write_chunk", self.inner.write_chunk(items))

    async def write_batch(self, batch: Batch) -> None:
        self.messages += 1
        await self._watch("write_batch", self.inner.write_batch(batch))

    async def flush(self) -> None:
        self.flushed += 1
        await self._watch("flush", self.inner.flush())

    def close_input(self) -> None:
        self.inner.close_input()

    async def aclose(self) -> None:
        self.closed += 1
        await self.inner.aclose()

    def result(self) -> Any:
        return self.inner.result()

    async def _watch(self, name: str, call: Awaitable[None]) -> None:
        cancelled_before = _cancelled()  # a call that never waits may meet a cancel pending
        await call
        if _cancelled() and not cancelled_before and self.swallowed is None:
            self.swallowed = name  # cancelled while it waited, yet it returned


class _SpySinkOp(SinkOperator[Any, Any]):
    def __init__(self, inner: SinkOperator[Any, Any]) -> None:
        self.inner = inner
        self.name, self.fused = inner.name, inner.fused
        self.buffer, self.buffer_bytes = inner.buffer, inner.buffer_bytes
        self.spies: list[_SpyWriter] = []

    def nested_buffers(self) -> int:
        return self.inner.nested_buffers()

    def writer(self, ctx: Context) -> SinkWriter[Any, Any]:
        spy = _SpyWriter(self.inner.writer(ctx))
        self.spies.append(spy)
        return spy


class _Cycle(Source):
    """Batches of ``rows``, cycling: endless, or ``batches`` of them and then quiet until
    stopped (as a live feed can be); counts the rows emitted."""

    def __init__(self, rows: NDArray[Any], step: int, batches: int | None = None) -> None:
        self.rows, self.step, self.batches = rows, step, batches
        self.name = "check_sink.input"
        self.emitted = 0
        self.quiet = False

    async def produce(self, out: Outlet, ctx: Context) -> None:
        start = 0
        while not out.stopping:
            if self.batches is not None and start >= self.batches * self.step:
                self.quiet = True
                with out.pull_scope():
                    await anyio.sleep_forever()
                continue
            part = np.take(self.rows, range(start, start + self.step), mode="wrap")
            await out.emit(Batch(part, "source", Provenance(self.name, start, start + len(part))))
            self.emitted += len(part)
            start += len(part)
            await anyio.lowlevel.checkpoint()


def _rows_delivered(result: Any) -> int:
    if isinstance(result, int | np.integer):
        return int(result)
    rows = getattr(result, "rows", None)
    if isinstance(rows, int | np.integer):
        return int(rows)
    if hasattr(result, "__len__"):
        return len(result)
    raise TypeError(
        f"check_sink: cannot tell how many rows the sink delivered from its result "
        f"{_short(result)}; pass delivered=lambda result: <rows it delivered>"
    )


async def check_sink(
    make_sink: Callable[[], Sink[Any, Any]],
    data: Any,
    *,
    delivered: Callable[[Any], int] | None = None,
    batch_rows: int | None = None,
    seconds: float = 10.0,
) -> list[str]:
    """Check that a sink you wrote behaves as aflow's own do; raise ``AssertionError``
    naming the property that failed and what to do about it.

    Properties checked, each on runs of ``data`` (or of it repeated without end) fed
    straight into the sink:

    * **re-runnable**: two runs of one flow make two writers and give equal results;
    * **flush at end of input**: the sink delivers every row, the rows it held back
      included (``data`` is cut so that the last batch is short);
    * **idempotent aclose**: the runtime closes each writer once; a second ``aclose()``
      does not raise;
    * **graceful stop**: after three batches and a quiet moment of input, ``run.stop()``;
      every row the source emitted must be delivered;
    * **cancellation**: a run cancelled mid-way closes the writer, lets the cancellation
      propagate (no writer method returns normally once cancelled) and leaves no task
      running.

    Args:
        make_sink: makes the sink under test (called once per property).
        data: rows to feed (an array, or anything ``np.asarray`` takes), at least 2.
        delivered: how many rows the sink delivered, from its result; by default the
            result itself if it is an int, else its ``rows`` attribute, else its ``len``.
        batch_rows: rows per input batch (default: a third of ``data``, plus one).
        seconds: seconds any one run may take.

    Returns:
        The names of the properties checked.

    Coroutine: run it from an async test (pytest-asyncio or anyio's plugin).
    """
    rows = np.asarray(data)
    if len(rows) < 2:
        raise ValueError("check_sink: give at least 2 rows of data")
    step = batch_rows or len(rows) // 3 + 1
    count = delivered or _rows_delivered

    def spied() -> tuple[_SpySinkOp, Sink[Any, Any]]:
        sink = make_sink()
        op = _SpySinkOp(sink.terminal)
        return op, Sink(op, sink.pre_ops)

    op, sink = spied()
    flow = from_array(rows, step, name="check_sink.input") | sink
    with anyio.fail_after(seconds):
        first, second = (await flow.run()).value, (await flow.run()).value
    await _check_rerun_and_flush(op, first, second, count(first), len(rows))
    await _check_aclose(op)
    op, sink = spied()
    await _check_sink_stop(op, sink, rows, step, count, seconds)
    op, sink = spied()
    await _check_sink_cancel(op, sink, rows, step, seconds)
    return [
        "re-runnable",
        "flush at end of input",
        "idempotent aclose",
        "graceful stop",
        "cancellation",
    ]


async def _check_rerun_and_flush(
    op: _SpySinkOp, first: Any, second: Any, got: int, rows: int
) -> None:
    a, b = op.spies
    if a.inner is b.inner:
        raise _fail(
            "re-runnable",
            "writer() returned the same SinkWriter for two runs",
            "Make a fresh writer (the per-run state) in SinkOperator.writer() each time.",
        )
    if not _equal(first, second):
        raise _fail(
            "re-runnable",
            f"two runs of one flow gave different results: {_short(first)} then {_short(second)}",
            "Keep per-run state in the SinkWriter that writer() makes, not in the "
            "SinkOperator, a module or a class attribute.",
        )
    if got != rows:
        raise _fail(
            "flush at end of input",
            f"the sink delivered {got} of the {rows} rows it was given",
            "SinkWriter.flush() runs at end of input: make it write out everything the "
            "writer still holds (a partial group, a buffer).",
        )


async def _check_aclose(op: _SpySinkOp) -> None:
    for spy in op.spies:
        if spy.closed != 1:
            raise _fail(
                "idempotent aclose",
                f"the runtime called aclose() {spy.closed} times on one writer",
                "Do not close the writer yourself from open/write/flush.",
            )
        try:
            await spy.inner.aclose()
        except Exception as exc:
            raise _fail(
                "idempotent aclose",
                f"a second aclose() raised {exc!r}",
                "Make aclose() idempotent: forget the resource (set it to None) before "
                "closing it, and do nothing when there is none.",
            ) from exc


async def _check_sink_stop(
    op: _SpySinkOp,
    sink: Sink[Any, Any],
    rows: NDArray[Any],
    step: int,
    count: Callable[[Any], int],
    seconds: float,
) -> None:
    source = _Cycle(rows, step, batches=3)  # the same rows on every check: deterministic
    with anyio.fail_after(seconds):
        async with (Flow(source) | sink).open() as run:
            await _wait_for(lambda: source.quiet)
            run.stop()
            result = await run.wait()
    got = count(result.value)
    if got != source.emitted:
        raise _fail(
            "graceful stop",
            f"the source emitted {source.emitted} rows before run.stop() and the sink "
            f"delivered {got}",
            "flush() is also called on a graceful stop: write out what the writer holds "
            "there, and count in the result only what was delivered.",
        )


async def _check_sink_cancel(
    op: _SpySinkOp,
    sink: Sink[Any, Any],
    rows: NDArray[Any],
    step: int,
    seconds: float,
) -> None:
    prop = "cancellation"
    finished = False
    before = _running_tasks()
    with anyio.fail_after(2 * seconds), anyio.CancelScope() as scope:
        async with (Flow(_Cycle(rows, step)) | sink).open(grace=0) as run:
            await _wait_for_writes(op, prop, seconds)
            scope.cancel()
            await run.wait()
            finished = True
    spy = op.spies[0]
    if finished or not scope.cancelled_caught:
        raise _fail(prop, "the cancelled run returned normally", "Let cancellation propagate.")
    if spy.swallowed is not None:
        raise _fail(
            prop,
            f"{spy.swallowed}() returned normally although its task was cancelled",
            "Do not catch the cancellation exception (anyio.get_cancelled_exc_class()) or "
            "BaseException without re-raising it; clean up in `finally` or `async with`.",
        )
    if spy.closed != 1:
        raise _fail(prop, "aclose() was not called", "Report this: the runtime must close it.")
    await _check_no_leak(prop, before)


async def _wait_for_writes(op: _SpySinkOp, prop: str, seconds: float) -> None:
    """Wait until the sink has received two messages, failing ``prop`` after ``seconds``."""
    with anyio.move_on_after(seconds):
        await _wait_for(lambda: bool(op.spies) and op.spies[0].messages >= 2)
        return
    raise _fail(
        prop,
        f"the sink received fewer than 2 messages in {seconds} s of endless input",
        "Pass the sink itself to the check (stages before it must let rows through), and "
        "make sure its writes return.",
    )


async def _wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state of code under test, which sets no event we could await)."""
    while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await anyio.sleep(0.002)


# -- sources --


class _SourceLog:
    def __init__(self) -> None:
        self.emitted = 0
        self.pending = 0  # emits waiting for room
        self.done = False
        self.outcome = "running"
        self.closed = False  # an emit raised Closed
        self.swallowed = False

    @property
    def blocked_or_done(self) -> bool:
        return self.pending > 0 or self.done


class _SpyOutlet:
    """Forwards to the run's outlet, counting emits."""

    def __init__(self, out: Outlet, log: _SourceLog) -> None:
        self.out, self.log = out, log

    async def emit(self, msg: Message, /) -> None:
        self.log.pending += 1
        try:
            await self.out.emit(msg)
        except Closed:
            self.log.closed = True  # returning normally after this is fine
            raise
        finally:
            self.log.pending -= 1
        self.log.emitted += 1

    @property
    def stopping(self) -> bool:
        return self.out.stopping

    @property
    def counters(self) -> StageCounters:
        return self.out.counters

    def pull_scope(self) -> AbstractContextManager[anyio.CancelScope]:
        return self.out.pull_scope()

    @property
    def backlogged(self) -> bool:
        return self.out.backlogged


class _SpySource(Source):
    def __init__(self, inner: Source) -> None:
        self.inner, self.name = inner, inner.name
        self.logs: list[_SourceLog] = []

    def nested_buffers(self) -> int:
        return self.inner.nested_buffers()

    async def produce(self, out: Outlet, ctx: Context) -> None:
        log = _SourceLog()
        self.logs.append(log)
        try:
            await self.inner.produce(_SpyOutlet(out, log), ctx)
        except BaseException as exc:
            log.outcome = type(exc).__name__
            raise
        else:
            log.outcome = "returned"
            log.swallowed = _cancelled() and not log.closed
        finally:
            log.done = True


def _spied(flow: Flow[Any]) -> tuple[_SpySource, Flow[Any]]:
    spy = _SpySource(flow.source)
    return spy, Flow(spy, flow.ops())


def _items(messages: list[Message]) -> list[Any]:
    """The output as comparable items: chunks' elements, batches' rows (as arrays)."""
    out: list[Any] = []
    for m in messages:
        out.extend([m.data] if isinstance(m, Batch) else m)
    return out


async def _collect(flow: Flow[Any], limit: int | None) -> list[Any]:
    if limit is not None:
        flow = flow | take(limit)
    async with flow.open() as run:
        messages = [m async for m in run.envelopes()]
    items = _items(messages)
    arrays = [i for i in items if isinstance(i, np.ndarray)]
    if arrays and len(arrays) == len(items):  # batches: compare rows, not the cut
        return [np.concatenate(arrays)]
    return items


async def check_source(
    make_flow: Callable[[], Flow[Any]],
    *,
    limit: int | None = None,
    released: Callable[[], bool | Awaitable[bool]] | None = None,
    progress: Callable[[], int] | None = None,
    buffer: int = 1,
    seconds: float = 10.0,
) -> list[str]:
    """Check that a source you wrote behaves as aflow's own do; raise ``AssertionError``
    naming the property that failed and what to do about it.

    ``make_flow()`` returns a flow starting with your source (``aflow.Flow(MySource())``,
    stages after it allowed). Properties checked:

    * **re-runnable**: two runs of one flow give equal output (the first ``limit`` items
      of each, for an endless source);
    * **early close**: under ``take(1)`` the run ends, the source lets ``Closed``
      propagate and leaves no task running;
    * **graceful stop**: after ``run.stop()`` the run ends within ``seconds``, even while
      the source waits for input (``out.pull_scope()``), and ``produce`` returns
      normally;
    * **cancellation**: a run cancelled mid-way lets the cancellation propagate through
      ``produce`` and leaves no task running; ``released()`` then says True;
    * **backpressure**: while nothing is consumed, emits stop once the buffer after the
      source is full, and so does ``progress()`` (how far the source has read), if given.

    Args:
        make_flow: makes the flow under test (called once per property).
        limit: compare only the first ``limit`` items (rows of batches) of each run;
            needed for a source that never ends.
        released: True once everything the source opened is closed (for example: the
            test server saw the connection end); polled for up to a second.
        progress: how many items the source has read from its input so far.
        buffer: the buffer size for the backpressure property, in messages.
        seconds: seconds any one run may take.

    Returns:
        The names of the properties checked; ``"backpressure"`` is left out when the
        source ended before it filled the buffer.

    Coroutine: run it from an async test (pytest-asyncio or anyio's plugin). A source
    that never ends once cancelled cannot be stopped from here: run the check under a
    test timeout (``pytest-timeout``).
    """
    flow = make_flow()
    with anyio.fail_after(seconds):
        first, second = await _collect(flow, limit), await _collect(flow, limit)
    if not _equal(first, second):
        raise _fail(
            "re-runnable",
            f"two runs of one flow gave different output: {_short(first)} then {_short(second)}",
            "Make per-run state (connections, cursors, counters) inside produce(), not in "
            "the Source's __init__; a source over live data needs data that replays.",
        )
    checked = ["re-runnable"]
    await _check_early_close(make_flow, seconds, released)
    checked.append("early close")
    await _check_source_stop(make_flow, seconds)
    checked.append("graceful stop")
    await _check_source_cancel(make_flow, seconds, released)
    checked.append("cancellation")
    if await _check_backpressure(make_flow, buffer, progress, seconds):
        checked.append("backpressure")
    return checked


async def _check_released(prop: str, released: Callable[[], Any] | None) -> None:
    if released is None:
        return

    async def ok() -> bool:
        got = released()
        return bool(await got if inspect.isawaitable(got) else got)

    with anyio.move_on_after(1.0):
        while not await ok():  # noqa: ASYNC110 - polls the test's own probe
            await anyio.sleep(0.01)
    if not await ok():
        raise _fail(
            prop,
            "released() is still False a second after the run ended",
            "Close what produce() opens in `finally` or `async with`, shielded "
            "(anyio.CancelScope(shield=True)) when closing awaits.",
        )


async def _check_early_close(
    make_flow: Callable[[], Flow[Any]],
    seconds: float,
    released: Callable[[], Any] | None,
) -> None:

    prop = "early close"
    spy, flow = _spied(make_flow())
    before = _running_tasks()
    with anyio.move_on_after(seconds) as guard:
        async with (flow | take(1)).open(grace=min(seconds, 1.0)) as run:
            async for _ in run.envelopes():
                pass
    if guard.cancelled_caught:
        raise _fail(
            prop,
            f"under take(1) the run did not end within {seconds} s",
            "Let Closed (raised by out.emit once nothing downstream wants more) "
            "propagate, and do not catch cancellation.",
        )
    if spy.logs and spy.logs[0].swallowed:
        raise _fail(
            prop,
            "produce() returned normally after its task was cancelled",
            "Let Closed and the cancellation exception propagate out of produce(); clean "
            "up in `finally` or `async with`.",
        )
    await _check_no_leak(prop, before)
    await _check_released(prop, released)


async def _check_source_stop(make_flow: Callable[[], Flow[Any]], seconds: float) -> None:
    prop = "graceful stop"
    spy, flow = _spied(make_flow())
    with anyio.move_on_after(seconds) as guard:
        async with flow.open(grace=min(seconds, 1.0)) as run:
            messages = run.envelopes()
            async for _ in messages:
                run.stop()
    log = spy.logs[0] if spy.logs else None
    if guard.cancelled_caught or (log is not None and log.outcome != "returned"):
        raise _fail(
            prop,
            f"the run did not end within {seconds} s of run.stop()"
            if guard.cancelled_caught
            else f"produce() ended with {log.outcome if log else '?'} after run.stop()",
            "Check out.stopping between emits and return; wrap every wait for new input in "
            "`with out.pull_scope():` so a stop interrupts it (then emit what you hold "
            "and return normally).",
        )


async def _check_source_cancel(
    make_flow: Callable[[], Flow[Any]],
    seconds: float,
    released: Callable[[], Any] | None,
) -> None:
    prop = "cancellation"
    spy, flow = _spied(make_flow())
    before = _running_tasks()
    finished = False
    with anyio.fail_after(seconds), anyio.CancelScope() as scope:
        async with flow.open(grace=0) as run:
            async for _ in run.envelopes():
                scope.cancel()
                await anyio.lowlevel.checkpoint()  # delivers the cancellation
            finished = True
    if finished and not scope.cancelled_caught:
        return  # the source ended before the cancellation could reach it
    log = spy.logs[0]
    if log.swallowed:
        raise _fail(
            prop,
            "produce() returned normally although its task was cancelled",
            "Do not catch the cancellation exception (anyio.get_cancelled_exc_class()) or "
            "BaseException without re-raising it; clean up in `finally` or `async with`.",
        )
    await _check_no_leak(prop, before)
    await _check_released(prop, released)


async def _check_backpressure(
    make_flow: Callable[[], Flow[Any]],
    buffer: int,
    progress: Callable[[], int] | None,
    seconds: float,
) -> bool:
    prop = "backpressure"
    spy = _SpySource(make_flow().source)
    settle = 0.2
    with anyio.fail_after(seconds + 3 * settle):
        async with Flow(spy).open(buffer=buffer, grace=min(seconds, 1.0)):
            await _wait_for(
                lambda: bool(spy.logs) and (spy.logs[0].pending > 0 or spy.logs[0].done)
            )
            log = spy.logs[0]
            await anyio.sleep(settle)
            emitted, read = log.emitted, progress() if progress else 0
            await anyio.sleep(settle)
            if log.done and not log.pending:
                return False  # ended before filling the buffer: nothing to see
            later, read_later = log.emitted, progress() if progress else 0
    if later > buffer or later != emitted:
        raise _fail(
            prop,
            f"{later} emits returned while nothing was consumed (the buffer holds {buffer})",
            "Emit only with `await out.emit(msg)`, one message at a time, from produce().",
        )
    if read_later != read:
        raise _fail(
            prop,
            f"the source kept reading (progress {read} -> {read_later}) while its buffer "
            "was full and nothing was consumed",
            "Read new input only once `await out.emit(...)` has returned, or bound your "
            "read-ahead; no reader task filling an unbounded list or queue.",
        )
    return True

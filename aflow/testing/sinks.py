"""``check_sink``: the conformance check for a sink written on :mod:`aflow.abc`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import numpy as np
from numpy.typing import NDArray

from ..abc import (
    Batch,
    Context,
    Outlet,
    Provenance,
    SinkOperator,
    SinkWriter,
    Source,
    StageCounters,
)
from ..flow import Flow, Sink
from ..sources.iterables import from_array
from ._common import cancelled, check_no_leak, equal, fail, running_tasks, short, wait_for

T = TypeVar("T")


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
        cancelled_before = cancelled()  # a call that never waits may meet a cancel pending
        await call
        if cancelled() and not cancelled_before and self.swallowed is None:
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
        f"{short(result)}; pass delivered=lambda result: <rows it delivered>"
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
        raise fail(
            "re-runnable",
            "writer() returned the same SinkWriter for two runs",
            "Make a fresh writer (the per-run state) in SinkOperator.writer() each time.",
        )
    if not equal(first, second):
        raise fail(
            "re-runnable",
            f"two runs of one flow gave different results: {short(first)} then {short(second)}",
            "Keep per-run state in the SinkWriter that writer() makes, not in the "
            "SinkOperator, a module or a class attribute.",
        )
    if got != rows:
        raise fail(
            "flush at end of input",
            f"the sink delivered {got} of the {rows} rows it was given",
            "SinkWriter.flush() runs at end of input: make it write out everything the "
            "writer still holds (a partial group, a buffer).",
        )


async def _check_aclose(op: _SpySinkOp) -> None:
    for spy in op.spies:
        if spy.closed != 1:
            raise fail(
                "idempotent aclose",
                f"the runtime called aclose() {spy.closed} times on one writer",
                "Do not close the writer yourself from open/write/flush.",
            )
        try:
            await spy.inner.aclose()
        except Exception as exc:
            raise fail(
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
            await wait_for(lambda: source.quiet)
            run.stop()
            result = await run.wait()
    got = count(result.value)
    if got != source.emitted:
        raise fail(
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
    before = running_tasks()
    with anyio.fail_after(2 * seconds), anyio.CancelScope() as scope:
        async with (Flow(_Cycle(rows, step)) | sink).open(grace=0) as run:
            await _wait_for_writes(op, prop, seconds)
            scope.cancel()
            await run.wait()
            finished = True
    spy = op.spies[0]
    if finished or not scope.cancelled_caught:
        raise fail(prop, "the cancelled run returned normally", "Let cancellation propagate.")
    if spy.swallowed is not None:
        raise fail(
            prop,
            f"{spy.swallowed}() returned normally although its task was cancelled",
            "Do not catch the cancellation exception (anyio.get_cancelled_exc_class()) or "
            "BaseException without re-raising it; clean up in `finally` or `async with`.",
        )
    if spy.closed != 1:
        raise fail(prop, "aclose() was not called", "Report this: the runtime must close it.")
    await check_no_leak(prop, before)


async def _wait_for_writes(op: _SpySinkOp, prop: str, seconds: float) -> None:
    """Wait until the sink has received two messages, failing ``prop`` after ``seconds``."""
    with anyio.move_on_after(seconds):
        await wait_for(lambda: bool(op.spies) and op.spies[0].messages >= 2)
        return
    raise fail(
        prop,
        f"the sink received fewer than 2 messages in {seconds} s of endless input",
        "Pass the sink itself to the check (stages before it must let rows through), and "
        "make sure its writes return.",
    )

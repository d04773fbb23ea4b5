"""``check_source``: the conformance check for a source written on :mod:`aflow.abc`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import numpy as np

from ..abc import (
    Barrier,
    Batch,
    Closed,
    Context,
    Message,
    Outlet,
    Source,
    StageCounters,
)
from ..flow import Flow
from ..stages.element import take
from ._common import cancelled, check_no_leak, equal, fail, running_tasks, short, wait_for

T = TypeVar("T")


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

    async def emit(
        self,
        msg: Message | Barrier,
        /,
        *,
        position: tuple[str, Any] | None = None,
        state: Any = None,
    ) -> None:
        self.log.pending += 1
        try:
            await self.out.emit(msg, position=position, state=state)
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
    def checkpointed(self) -> bool:
        return self.out.checkpointed

    @property
    def counters(self) -> StageCounters:
        return self.out.counters

    def pull_scope(self) -> AbstractContextManager[anyio.CancelScope]:
        return self.out.pull_scope()

    @property
    def backlogged(self) -> bool:
        return self.out.backlogged

    @property
    def resume_positions(self) -> dict[str, Any]:
        return self.out.resume_positions

    def update_positions(self, changes: Mapping[str, Any]) -> None:
        self.out.update_positions(changes)

    def on_commit(self, fn: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.out.on_commit(fn)

    async def catch_up_barriers(self) -> None:
        await self.out.catch_up_barriers()

    @property
    def restored_state(self) -> Any:
        return self.out.restored_state

    async def end(self, *, commit_timeout: float = 10.0) -> None:
        await self.out.end(commit_timeout=commit_timeout)


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
            log.swallowed = cancelled() and not log.closed
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
    if not equal(first, second):
        raise fail(
            "re-runnable",
            f"two runs of one flow gave different output: {short(first)} then {short(second)}",
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
        raise fail(
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
    before = running_tasks()
    with anyio.move_on_after(seconds) as guard:
        async with (flow | take(1)).open(grace=min(seconds, 1.0)) as run:
            async for _ in run.envelopes():
                pass
    if guard.cancelled_caught:
        raise fail(
            prop,
            f"under take(1) the run did not end within {seconds} s",
            "Let Closed (raised by out.emit once nothing downstream wants more) "
            "propagate, and do not catch cancellation.",
        )
    if spy.logs and spy.logs[0].swallowed:
        raise fail(
            prop,
            "produce() returned normally after its task was cancelled",
            "Let Closed and the cancellation exception propagate out of produce(); clean "
            "up in `finally` or `async with`.",
        )
    await check_no_leak(prop, before)
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
        raise fail(
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
    before = running_tasks()
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
        raise fail(
            prop,
            "produce() returned normally although its task was cancelled",
            "Do not catch the cancellation exception (anyio.get_cancelled_exc_class()) or "
            "BaseException without re-raising it; clean up in `finally` or `async with`.",
        )
    await check_no_leak(prop, before)
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
            await wait_for(lambda: bool(spy.logs) and (spy.logs[0].pending > 0 or spy.logs[0].done))
            log = spy.logs[0]
            await anyio.sleep(settle)
            emitted, read = log.emitted, progress() if progress else 0
            await anyio.sleep(settle)
            if log.done and not log.pending:
                return False  # ended before filling the buffer: nothing to see
            later, read_later = log.emitted, progress() if progress else 0
    if later > buffer or later != emitted:
        raise fail(
            prop,
            f"{later} emits returned while nothing was consumed (the buffer holds {buffer})",
            "Emit only with `await out.emit(msg)`, one message at a time, from produce().",
        )
    if read_later != read:
        raise fail(
            prop,
            f"the source kept reading (progress {read} -> {read_later}) while its buffer "
            "was full and nothing was consumed",
            "Read new input only once `await out.emit(...)` has returned, or bound your "
            "read-ahead; no reader task filling an unbounded list or queue.",
        )
    return True

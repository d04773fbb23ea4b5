"""Running a flow: the ``Run`` handle, ``flow.open()`` and the sync entry point ``run``.

``flow.open()`` starts the run's task group inside a shielded scope, so that a cancelled
caller can still stop the run *gracefully* (sources stop, partial batches are flushed)
before the cancellation goes on; ``run.wait()`` and ``aflow.run`` build on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, NamedTuple, TypeAlias, TypeVar, cast

import anyio
from anyio.abc import TaskStatus

from ..errors import FlowDefinitionError
from ..stats import RunStatistics, StageCounters
from .buffers import Buffer
from .context import RunContext
from .delivery import (
    DEFAULT_COMMIT_INTERVAL,
    CheckpointArg,
    Delivery,
    describe_flow,
    open_store,
)
from .messages import Barrier, Batch, Message
from .operators import Op, SinkOperator, Source, chain_buffers, op_buffers

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_COMMIT_INTERVAL",
    "DEFAULT_GRACE",
    "Ended",
    "Monitor",
    "OutputRun",
    "Run",
    "RunManager",
    "RunResult",
]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T_co = TypeVar("T_co", covariant=True)
RunT_co = TypeVar("RunT_co", bound="Run[Any]", covariant=True)

DEFAULT_BUFFER = 4
DEFAULT_GRACE = 10.0


def _buffer_count(source: Source, ops: tuple[Op, ...], sink: SinkOperator[Any, Any] | None) -> int:
    """How many buffers a run will have (to share ``max_bytes_in_flight`` among them)."""
    n = chain_buffers(source, ops)
    return n + (1 if sink is None else op_buffers(sink))


Ended: TypeAlias = Literal["completed", "stopped", "interrupted"]
"""How a run ended: ``"completed"`` (the input ran out, or a ``take`` was satisfied: the
result is whole), ``"stopped"`` (``run.stop()`` was called before the input ended: the
result covers what was read until then) or ``"interrupted"`` (a signal, SIGTERM or Ctrl-C,
stopped it: the result is partial)."""


class RunResult(NamedTuple, Generic[R_co]):
    """What ``run()`` returns: the sink's result, the run's statistics and how it ended.

    A result whose ``ended`` is not ``"completed"`` is partial: check it before trusting
    totals (``aflow run`` exits with 143 after SIGTERM).
    """

    value: R_co
    statistics: RunStatistics
    ended: Ended = "completed"


Monitor: TypeAlias = Callable[["Run[Any]"], Coroutine[Any, Any, None]]
"""A coroutine function run beside a flow with its :class:`Run` (to show progress or
export statistics); it is cancelled when the run ends."""


class Run(Generic[R_co]):
    """A running flow, as handed out by ``flow.open()``; ``R_co`` is its sink's result.

    ``await run.wait()`` for the result; ``statistics()`` may be read at any time, from
    any task. A flow without a sink gives an :class:`OutputRun` to iterate instead.
    """

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._ctx: RunContext | None = None
        self._output: Buffer | None = None
        self._output_ended = False  # the output's end was received
        self._sink_writer: Any = None
        self._done = anyio.Event()
        self._scope = anyio.CancelScope(shield=True)
        self._ended: Ended = "completed"
        self._source: Source | None = None
        self._body: anyio.CancelScope | None = None  # the ``async with flow.open()`` block

    def statistics(self) -> RunStatistics:
        """Per-stage statistics so far (a frozen snapshot)."""
        assert self._ctx is not None
        return self._ctx.counters.freeze()

    def stop(self) -> None:
        """Stop gracefully: sources stop; what is in flight is processed and flushed.

        The result then says ``ended == "stopped"`` (unless the input had already ended).
        """
        self._stop("stopped")

    def _stop(self, why: Ended) -> None:
        ctx = self._ctx
        if ctx is not None and not self._done.is_set():
            if self._ended == "completed" and ctx.live_sources:  # input is cut short
                self._ended = why
            ctx.request_stop()

    def interrupt(self) -> None:
        """Stop gracefully on behalf of a signal (SIGTERM, Ctrl-C): like :meth:`stop`, but
        the result says ``ended == "interrupted"``."""
        self._stop("interrupted")

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def input_size(self) -> tuple[int, str] | None:
        """How much the source will emit, when known: ``(amount, unit)``, unit ``"rows"``
        (``from_array``, ``read_records``) or ``"bytes"`` (``read_csv`` and the other
        readers of bytes); ``None`` otherwise (generators, sockets, ``follow=True``).
        Blocks while files are looked at: call it in a worker thread."""
        return None if self._source is None else self._source.size()

    @property
    def ended(self) -> Ended:
        """How the run ended (see :data:`Ended`); ``"completed"`` while it still runs and
        no stop was asked for."""
        return self._ended

    async def wait(self) -> RunResult[R_co]:
        """Wait for the end of the run; return the sink's result and statistics.

        If the waiting task is cancelled, the run is stopped gracefully (at most ``grace``
        seconds) before the cancellation propagates.
        """
        try:
            await self._done.wait()
        except anyio.get_cancelled_exc_class():
            self.stop()
            await self._join()
            raise
        self._raise_error()
        writer = self._sink_writer
        value = cast(R_co, writer.result() if writer is not None else None)
        return RunResult(value, self.statistics(), self._ended)

    def _raise_error(self) -> None:
        assert self._ctx is not None
        err = self._ctx.first_error
        if err is not None:
            raise err

    async def _join(self) -> None:
        """Wait (shielded) for the run to end; cancel it once the grace period is over."""
        if self._done.is_set():
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._grace):
                await self._done.wait()
            if not self._done.is_set():
                self._scope.cancel()
                await self._done.wait()

    def __aiter__(self) -> AsyncIterator[Any]:
        """The output items, for a flow without a sink (see :class:`OutputRun`)."""
        if self._output is None:
            raise FlowDefinitionError("this flow ends in a sink; use `await run.wait()`")
        return _Items(self)

    def envelopes(self) -> AsyncIterator[Message]:
        """Iterate output messages: a ``list`` chunk of elements or a :class:`Batch`
        envelope (with ``reason`` and ``provenance``) per array batch."""
        if self._output is None:
            raise FlowDefinitionError("this flow ends in a sink; use `await run.wait()`")
        return _Envelopes(self)

    async def _next_message(self) -> Message:
        assert self._output is not None
        try:
            msg = await self._output.receive()
            while type(msg) is Barrier:  # the output is this run's sink: it has it all
                assert self._ctx is not None
                self._ctx.delivery.sink_committed("output", msg.epoch, None)
                msg = await self._output.receive()
            return msg  # type: ignore[return-value]
        except anyio.EndOfStream:
            self._output_ended = True
            self._close_output()
            self._raise_error()
            raise StopAsyncIteration from None

    def _close_output(self) -> None:
        """Close the output. Before its end was received (the loop over the run was
        left early) what is still in it was never handed to the loop: only the epochs
        whose barrier the loop received stay committed, not the end positions."""
        if self._output is not None:
            self._output.close_receive()
            if self._ctx is not None:
                if self._output_ended:
                    self._ctx.delivery.sink_finished("output", None)
                else:
                    self._ctx.delivery.sink_abandoned("output")

    async def _main(
        self,
        source: Source,
        ops: tuple[Op, ...],
        sink: SinkOperator[Any, Any] | None,
        buffer: int,
        max_bytes_in_flight: int | None,
        delivery: Delivery,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        ctx: RunContext | None = None
        self._source = source
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    ctx = RunContext(
                        tg,
                        buffer=buffer,
                        max_bytes_in_flight=max_bytes_in_flight,
                        buffer_count=_buffer_count(source, ops, sink),
                        delivery=delivery,
                    )
                    self._ctx = ctx
                    if sink is None:
                        out = StageCounters("output")
                        self._output = ctx.new_buffer(out)
                        delivery.add_sink("output")
                        ctx.start_chain(source, ops, self._output)
                    else:
                        self._sink_writer = ctx.start_chain(source, ops, sink)
                    run_ctx = ctx
                    delivery.failed = lambda: (
                        run_ctx.first_error is not None or self._scope.cancel_called
                    )
                    delivery.activate(
                        lambda: run_ctx.start_soon(delivery.run, name="checkpoint commits")
                    )
                    task_status.started()
            assert ctx is not None
            if delivery.active and ctx.first_error is None and not self._scope.cancel_called:
                with anyio.CancelScope(shield=True):
                    try:
                        await delivery.final_commit()
                    except Exception as exc:
                        ctx.fail(exc)
        finally:
            with anyio.CancelScope(shield=True):
                if ctx is not None:
                    for writer in ctx.writers:
                        try:
                            await writer.aclose()
                        except Exception as exc:
                            ctx.fail(exc)
            self._done.set()
            if self._body is not None and ctx is not None and ctx.first_error is not None:
                self._body.cancel()


class OutputRun(Run[None], Generic[T_co]):
    """The run of a flow without a sink (``Flow[T].open()``): ``async for item in run``
    gives its items of type ``T`` (elements, or a batch's array per batch)."""

    def __aiter__(self) -> AsyncIterator[T_co]:
        return _Items(self)


class _Envelopes:
    """Async iterator over a run's output messages (a class, not an async generator, so
    breaking out of the loop leaves nothing to finalize)."""

    def __init__(self, run: Run[Any]) -> None:
        self._run = run

    def __aiter__(self) -> _Envelopes:
        return self

    async def __anext__(self) -> Message:
        return await self._run._next_message()


class _Items:
    """Async iterator over a run's output items: elements, or arrays for batches."""

    def __init__(self, run: Run[Any]) -> None:
        self._run = run
        self._chunk: list[Any] = []
        self._pos = 0

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> Any:
        while self._pos >= len(self._chunk):
            msg = await self._run._next_message()
            if isinstance(msg, Batch):
                return msg.data
            self._chunk, self._pos = msg, 0
        self._pos += 1
        return self._chunk[self._pos - 1]


class RunManager(Generic[RunT_co]):
    """The async context manager behind ``flow.open()``: gives a :class:`Run` (an
    :class:`OutputRun` for a flow without a sink)."""

    def __init__(
        self,
        source: Source,
        ops: tuple[Op, ...],
        sink: SinkOperator[Any, Any] | None,
        buffer: int,
        max_bytes_in_flight: int | None,
        grace: float,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer={buffer}: a buffer holds at least one message")
        if commit_interval <= 0:
            raise ValueError(f"commit_interval={commit_interval}: must be > 0 seconds")
        self._store = None if checkpoint is None else open_store(checkpoint)
        self._interval = commit_interval
        self._args = (source, ops, sink, buffer, max_bytes_in_flight)
        self._grace = grace
        self._monitor = monitor
        self._owned = False  # this run acquired the store (and closes it at its end)

    def __call__(self) -> Any:  # pragma: no cover - guards a common slip
        raise TypeError("flow.open() is an async context manager: `async with flow.open()`")

    async def __aenter__(self) -> RunT_co:
        acquire = getattr(self._store, "acquire", None)
        self._owned = False
        if acquire is not None:
            acquire()  # raises CheckpointInUse while another run has the store
            self._owned = True
        self._cm = self._open()
        try:
            return await self._cm.__aenter__()
        except BaseException:
            self._release_store()
            raise

    async def __aexit__(self, *exc: Any) -> bool | None:
        try:
            return await self._cm.__aexit__(*exc)
        finally:
            self._release_store()

    def _release_store(self) -> None:
        """A store this run owns (it has ``acquire``) is given up once the run has ended
        (another run may take it then); a store without ``acquire`` is left open."""
        if self._owned:
            self._owned = False
            cast(Any, self._store).close()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[RunT_co]:
        sink = self._args[2]
        run = cast(RunT_co, Run(self._grace) if sink is not None else OutputRun(self._grace))
        error: BaseException | None = None
        source, ops, sink = self._args[:3]
        delivery = Delivery(self._store, self._interval, lambda: describe_flow(source, ops, sink))
        await delivery.load()  # raises CheckpointMismatch here, as itself
        async with anyio.create_task_group() as tg:
            # once the run has failed, the body is cancelled, so the error is raised at
            # once (as a task group does), not when the body gets round to leaving it
            run._body = tg.cancel_scope
            await tg.start(run._main, *self._args, delivery)
            if self._monitor is not None:
                tg.start_soon(_watch, run, self._monitor)
            try:
                yield run
            except anyio.get_cancelled_exc_class():
                run._close_output()
                run.stop()
                await run._join()
                raise
            except BaseException as exc:
                error = exc
                run._scope.cancel()
                run._close_output()
            else:
                run._close_output()
                run.stop()
                await run._join()
        if error is not None:
            raise error
        run._raise_error()


async def _watch(run: Run[Any], monitor: Monitor) -> None:
    """Run ``monitor`` beside ``run``; cancel it once the run has ended."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor, run)
        await run._done.wait()
        tg.cancel_scope.cancel()

"""Flows: immutable, lazy, re-runnable pipeline descriptions composed with ``|``.

A :class:`Flow` is a source followed by stages; ``flow | sink`` is a :class:`SinkFlow`.
Building either does no I/O. Each run instantiates fresh state, so a flow runs many times::

    flow = af.from_iterable(range(10)) | af.map(lambda x: x * x) | af.collect()
    assert (await flow.run()).value == (await flow.run()).value

Stages compose on their own too (``af.map(f) | af.filter(g)`` is a :class:`Stage`), and a
stage followed by a sink is a :class:`Sink`, which is how branches of ``broadcast`` are
written.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any, Generic, Literal, TypeVar, overload

import anyio
import numpy as np
import sniffio
from numpy.typing import NDArray

from ._core.collect import CollectOperator
from ._core.delivery import DEFAULT_COMMIT_INTERVAL, CheckpointArg
from ._core.operators import Op, SinkOperator, Source, chain_buffers, op_buffers
from ._core.run import (
    DEFAULT_BUFFER,
    DEFAULT_GRACE,
    Monitor,
    OutputRun,
    Run,
    RunManager,
    RunResult,
)
from .errors import FlowDefinitionError

__all__ = ["Collect", "CollectMode", "Flow", "Sink", "SinkFlow", "Stage", "run"]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")
R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S", bound=np.generic)
M = TypeVar("M", bound=str)

CollectMode = Literal["auto", "list", "array"]
"""What :func:`aflow.collect` returns: ``"list"`` a list of the items, ``"array"`` one
array, ``"auto"`` one array of a flow of batches' rows and a list otherwise."""


class Stage(Generic[T, U]):
    """A step (or chain of steps) turning items of type ``T`` into items of type ``U``.

    ``stage | stage`` chains; ``stage | sink`` is a sink that runs the stage first.
    """

    __slots__ = ("_ops",)

    def __init__(self, *ops: Op) -> None:
        self._ops = ops

    def ops(self) -> tuple[Op, ...]:
        return self._ops

    @overload
    def __or__(self, other: Stage[U, V]) -> Stage[T, V]: ...
    @overload
    def __or__(self, other: Collect[Literal["list"]]) -> Sink[T, list[U]]: ...
    @overload
    def __or__(self, other: Collect[Literal["array"]]) -> Sink[T, NDArray[Any]]: ...
    @overload
    def __or__(self, other: Sink[U, R]) -> Sink[T, R]: ...
    def __or__(self, other: Stage[U, V] | Sink[U, Any]) -> Stage[T, V] | Sink[T, Any]:
        if isinstance(other, Stage):
            return Stage(*self._ops, *other.ops())
        if isinstance(other, Sink):
            return Sink(other.terminal, self._ops + other.pre_ops)
        return _bad_operand(self, other)

    def __repr__(self) -> str:
        return " | ".join(op.name for op in self._ops)


class Sink(Generic[T, R]):
    """The end of a flow: consumes items of type ``T`` and gives a result of type ``R``."""

    __slots__ = ("pre_ops", "terminal")

    def __init__(self, terminal: SinkOperator[Any, R], pre_ops: tuple[Op, ...] = ()) -> None:
        self.terminal = terminal
        self.pre_ops = pre_ops

    def nested_buffers(self) -> int:
        """Buffers this sink adds when run as a branch (``broadcast``), its input included."""
        return 1 + sum(op_buffers(op) for op in self.pre_ops) + op_buffers(self.terminal)

    def __repr__(self) -> str:
        return " | ".join([*(op.name for op in self.pre_ops), self.terminal.name])


class Collect(Sink[Any, Any], Generic[M]):
    """The sink :func:`aflow.collect` makes. Its type parameter is the mode (a
    :data:`CollectMode` literal), so that ``Flow[T] | collect("list")`` is typed
    ``SinkFlow[list[T]]``."""

    __slots__ = ()


class Flow(Generic[T_co]):
    """A source followed by stages, producing items of type ``T_co``; not yet run.

    ``await flow.run()`` collects the output; ``async with flow.open() as run`` iterates it
    (``async for item in run``) with live ``run.statistics()``; ``flow | sink`` ends it.
    """

    __slots__ = ("_ops", "_source")

    def __init__(self, source: Source, ops: tuple[Op, ...] = ()) -> None:
        self._source = source
        self._ops = ops

    @property
    def source(self) -> Source:
        return self._source

    def ops(self) -> tuple[Op, ...]:
        return self._ops

    def nested_buffers(self) -> int:
        """Buffers this flow adds when run inside another (``merge``), its output included."""
        return chain_buffers(self._source, self._ops) + 1

    @overload
    def __or__(self, other: Stage[Any, U]) -> Flow[U]: ...
    @overload
    def __or__(self, other: Collect[Literal["list"]]) -> SinkFlow[list[T_co]]: ...
    @overload
    def __or__(self, other: Collect[Literal["array"]]) -> SinkFlow[NDArray[Any]]: ...
    @overload
    def __or__(  # type: ignore[overload-overlap]
        self: Flow[NDArray[S]], other: Collect[Literal["auto"]]
    ) -> SinkFlow[NDArray[S] | list[NDArray[S]]]: ...
    @overload
    def __or__(self, other: Collect[Literal["auto"]]) -> SinkFlow[list[T_co]]: ...
    @overload
    def __or__(self, other: Sink[Any, R]) -> SinkFlow[R]: ...
    def __or__(self, other: Stage[Any, U] | Sink[Any, Any]) -> Flow[U] | SinkFlow[Any]:
        if isinstance(other, Stage):
            return Flow(self._source, self._ops + other.ops())
        if isinstance(other, Sink):
            return SinkFlow(self._source, self._ops + other.pre_ops, other.terminal)
        return _bad_operand(self, other)

    def open(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes_in_flight: int | None = None,
        grace: float = DEFAULT_GRACE,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> RunManager[OutputRun[T_co]]:
        """Start a run and iterate its output: ``async with flow.open() as run: ...``
        (``async for item in run``: items of type ``T``).

        Args:
            buffer: default capacity of each buffer, in messages (a chunk of elements or
                one array batch).
            max_bytes_in_flight: ceiling on array bytes waiting in all buffers of the run,
                shared equally among them (a batch larger than a buffer's share passes
                alone).
            grace: seconds a graceful stop may take before the run is cancelled.
            monitor: a coroutine function run beside the flow with its :class:`Run`
                (``aflow.monitor.Progress()``, ``serve_metrics(port)``); it is cancelled
                when the run ends.
            checkpoint: a path (a SQLite file) or a :class:`~aflow.CheckpointStore`:
                every ``commit_interval`` seconds and at a graceful end the sources'
                positions and the state of stateful stages and sinks are committed
                there; running the same flow again with it resumes where it stopped
                (see the "Delivery guarantees" page).
            commit_interval: seconds between checkpoint commits.
        """
        return RunManager(
            self._source,
            self._ops,
            None,
            buffer,
            max_bytes_in_flight,
            grace,
            monitor,
            checkpoint,
            commit_interval,
        )

    @overload
    async def run(  # type: ignore[overload-overlap]
        self: Flow[NDArray[S]],
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes_in_flight: int | None = None,
        grace: float = DEFAULT_GRACE,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> RunResult[NDArray[S] | list[NDArray[S]]]: ...
    @overload
    async def run(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes_in_flight: int | None = None,
        grace: float = DEFAULT_GRACE,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> RunResult[list[T_co]]: ...
    async def run(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes_in_flight: int | None = None,
        grace: float = DEFAULT_GRACE,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> RunResult[Any]:
        """Run to the end and collect the output like ``collect()`` (``"auto"``): one
        array of the rows of a flow of batches, a list of the items otherwise. Typed code
        that wants one of the two says so: ``(flow | af.collect("array")).run()``."""
        return await self._collected().run(
            buffer=buffer,
            max_bytes_in_flight=max_bytes_in_flight,
            grace=grace,
            monitor=monitor,
            checkpoint=checkpoint,
            commit_interval=commit_interval,
        )

    def _collected(self) -> SinkFlow[Any]:
        return SinkFlow(self._source, self._ops, CollectOperator("auto"))

    def __aiter__(self) -> Any:
        """Not supported: iterate a run, ``async with flow.open() as run: async for x in run``.

        A run owns a task group, which must be entered and left by the same ``async
        with`` block; a bare ``async for`` that breaks early could not close it.
        """
        raise TypeError(
            "iterate a run of the flow: `async with flow.open() as run: async for item in run:`"
            " (the block stops the run when you leave it, even after a break)"
        )

    def __repr__(self) -> str:
        return " | ".join([self._source.name, *(op.name for op in self._ops)])


class SinkFlow(Generic[R_co]):
    """A complete flow: source, stages and sink. ``await flow.run()`` returns the result."""

    __slots__ = ("_ops", "_sink", "_source")

    def __init__(self, source: Source, ops: tuple[Op, ...], sink: SinkOperator[Any, R_co]) -> None:
        self._source = source
        self._ops = ops
        self._sink = sink

    def __or__(self, other: object) -> Any:
        raise FlowDefinitionError(
            f"{self!r} already ends in a sink; nothing can follow it. "
            "Use aflow.broadcast(...) to feed several sinks."
        )

    def open(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes_in_flight: int | None = None,
        grace: float = DEFAULT_GRACE,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> RunManager[Run[R_co]]:
        """Start a run: ``async with flow.open() as run:``; ``await run.wait()`` for the
        result, ``run.statistics()`` for live figures, ``run.stop()`` to stop gracefully.
        Leaving the block stops the run gracefully and waits for it. Arguments as for
        :meth:`Flow.open`."""
        return RunManager(
            self._source,
            self._ops,
            self._sink,
            buffer,
            max_bytes_in_flight,
            grace,
            monitor,
            checkpoint,
            commit_interval,
        )

    async def run(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes_in_flight: int | None = None,
        grace: float = DEFAULT_GRACE,
        monitor: Monitor | None = None,
        checkpoint: CheckpointArg = None,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> RunResult[R_co]:
        """Run the flow to the end; return the sink's result and the statistics.

        Blocks until the source is exhausted (or a ``take`` is satisfied). If the caller is
        cancelled, the sources stop, partial batches are flushed to the sink and every
        resource is closed (within ``grace`` seconds), then the cancellation propagates.
        ``monitor`` is run beside the flow (see :meth:`Flow.open`); the result's ``ended``
        says whether the run completed.

        Raises:
            Exception: the first error raised by any stage, as itself, with a note naming
                the stage.
        """
        async with self.open(
            buffer=buffer,
            max_bytes_in_flight=max_bytes_in_flight,
            grace=grace,
            monitor=monitor,
            checkpoint=checkpoint,
            commit_interval=commit_interval,
        ) as r:
            return await r.wait()

    def __repr__(self) -> str:
        return " | ".join([self._source.name, *(op.name for op in self._ops), self._sink.name])


@overload
def run(
    flow: SinkFlow[R],
    *,
    backend: str = "asyncio",
    buffer: int = DEFAULT_BUFFER,
    max_bytes_in_flight: int | None = None,
    grace: float = DEFAULT_GRACE,
    handle_signals: bool = True,
    monitor: Monitor | None = None,
    checkpoint: CheckpointArg = None,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
) -> RunResult[R]: ...
@overload
def run(  # type: ignore[overload-overlap]
    flow: Flow[NDArray[S]],
    *,
    backend: str = "asyncio",
    buffer: int = DEFAULT_BUFFER,
    max_bytes_in_flight: int | None = None,
    grace: float = DEFAULT_GRACE,
    handle_signals: bool = True,
    monitor: Monitor | None = None,
    checkpoint: CheckpointArg = None,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
) -> RunResult[NDArray[S] | list[NDArray[S]]]: ...
@overload
def run(
    flow: Flow[T],
    *,
    backend: str = "asyncio",
    buffer: int = DEFAULT_BUFFER,
    max_bytes_in_flight: int | None = None,
    grace: float = DEFAULT_GRACE,
    handle_signals: bool = True,
    monitor: Monitor | None = None,
    checkpoint: CheckpointArg = None,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
) -> RunResult[list[T]]: ...
def run(
    flow: SinkFlow[Any] | Flow[Any],
    *,
    backend: str = "asyncio",
    buffer: int = DEFAULT_BUFFER,
    max_bytes_in_flight: int | None = None,
    grace: float = DEFAULT_GRACE,
    handle_signals: bool = True,
    monitor: Monitor | None = None,
    checkpoint: CheckpointArg = None,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
) -> RunResult[Any]:
    """Run ``flow`` from synchronous code (a script, a test, a thread without an event loop).

    Where an event loop already runs (an ``async def``, a Jupyter notebook cell), use
    ``await flow.run()`` instead: this function starts an event loop of its own and says so
    with a ``RuntimeError``.

    The result's value is the sink's result; a flow without a sink is collected as by
    :meth:`Flow.run`.

    With ``handle_signals`` (and when called from the main thread), Ctrl-C (SIGINT) stops
    the run gracefully: sources stop, partial batches are flushed, files and sockets are
    closed, then ``KeyboardInterrupt`` is raised. SIGTERM stops it the same way and the
    result so far is returned, with ``ended == "interrupted"``. A second Ctrl-C during the
    grace period cancels at once.

    Args:
        backend: ``"asyncio"`` or ``"trio"``.
        handle_signals: install the SIGINT/SIGTERM handlers described above.
        monitor: a coroutine function run beside the flow with its :class:`Run` (to show
            progress or export statistics); it is cancelled when the run ends.
        checkpoint: a path (a SQLite file) or a :class:`~aflow.CheckpointStore` to commit
            positions and state to, and resume from (see :meth:`Flow.open`).
        commit_interval: seconds between checkpoint commits.

    Raises:
        RuntimeError: called where an event loop is already running.
    """
    _refuse_running_loop()
    interrupted: list[int] = []
    if isinstance(flow, Flow):
        flow = flow._collected()
    signals = handle_signals and threading.current_thread() is threading.main_thread()

    async def main() -> RunResult[Any]:
        error: Exception | None = None
        async with (
            flow.open(
                buffer=buffer,
                max_bytes_in_flight=max_bytes_in_flight,
                grace=grace,
                monitor=monitor,
                checkpoint=checkpoint,
                commit_interval=commit_interval,
            ) as r,
            anyio.create_task_group() as tg,
        ):
            if signals:
                tg.start_soon(_stop_on_signals, r, interrupted)
            try:
                result = await r.wait()
            except Exception as exc:  # raised below, outside the task group, as itself
                error = exc
            tg.cancel_scope.cancel()
        if interrupted and interrupted[0] == signal.SIGINT:
            raise KeyboardInterrupt
        if error is not None:
            raise error
        return result

    return anyio.run(main, backend=backend)


async def _stop_on_signals(r: Run[Any], seen: list[int]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            seen.append(signum)
            if len(seen) == 1:
                r.interrupt()
            else:
                r._scope.cancel()


def _refuse_running_loop() -> None:
    try:
        asyncio.get_running_loop()
        library = "asyncio"
    except RuntimeError:
        try:
            library = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return
    raise RuntimeError(
        f"aflow.run() starts an event loop, but {library} is already running here (an async "
        "function or a notebook cell): use `await flow.run()` instead"
    )


def _bad_operand(left: object, right: object) -> Any:
    raise FlowDefinitionError(
        f"cannot compose {left!r} | {right!r}: the right side must be a stage "
        f"(aflow.map, aflow.batch, ...) or a sink (aflow.collect, ...), "
        f"not {type(right).__name__}"
    )

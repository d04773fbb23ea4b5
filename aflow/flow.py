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

from typing import Any, Generic, TypeVar, overload

from ._ops import Op, SinkOp, Source
from ._run import DEFAULT_BUFFER, DEFAULT_GRACE, RunResult, _RunManager
from ._run import Run as Run  # re-exported: flows and their runs go together
from ._run import flow_edges as flow_edges
from ._run import op_edges as op_edges
from .errors import FlowDefinitionError

__all__ = ["Flow", "Sink", "SinkFlow", "Stage", "flow_edges", "op_edges"]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")
R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)
R_co = TypeVar("R_co", covariant=True)


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
    def __or__(self, other: Sink[U, R]) -> Sink[T, R]: ...
    def __or__(self, other: Stage[U, V] | Sink[U, R]) -> Stage[T, V] | Sink[T, R]:
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

    def __init__(self, terminal: SinkOp[Any, R], pre_ops: tuple[Op, ...] = ()) -> None:
        self.terminal = terminal
        self.pre_ops = pre_ops

    def __repr__(self) -> str:
        return " | ".join([*(op.name for op in self.pre_ops), self.terminal.name])


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

    @overload
    def __or__(self, other: Stage[Any, U]) -> Flow[U]: ...
    @overload
    def __or__(self, other: Sink[Any, R]) -> SinkFlow[R]: ...
    def __or__(self, other: Stage[Any, U] | Sink[Any, R]) -> Flow[U] | SinkFlow[R]:
        if isinstance(other, Stage):
            return Flow(self._source, self._ops + other.ops())
        if isinstance(other, Sink):
            return SinkFlow(self._source, self._ops + other.pre_ops, other.terminal)
        return _bad_operand(self, other)

    def open(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes: int | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> _RunManager[Any]:
        """Start a run and iterate its output: ``async with flow.open() as run: ...``.

        Args:
            buffer: default capacity of each buffer, in messages (a chunk of elements or
                one array batch).
            max_bytes: ceiling on array bytes waiting in all buffers of the run, shared
                equally among them (a batch larger than a buffer's share passes alone).
            grace: seconds a graceful stop may take before the run is cancelled.
        """
        return _RunManager(self._source, self._ops, None, buffer, max_bytes, grace)

    async def run(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes: int | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> RunResult[Any]:
        """Run to the end and collect the output (see :func:`aflow.collect`)."""
        from .sinks.collect import collect

        return await (self | collect()).run(buffer=buffer, max_bytes=max_bytes, grace=grace)

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

    def __init__(self, source: Source, ops: tuple[Op, ...], sink: SinkOp[Any, R_co]) -> None:
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
        max_bytes: int | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> _RunManager[R_co]:
        """Start a run: ``async with flow.open() as run:``; ``await run.wait()`` for the
        result, ``run.statistics()`` for live figures, ``run.stop()`` to stop gracefully.
        Leaving the block stops the run gracefully and waits for it."""
        return _RunManager(self._source, self._ops, self._sink, buffer, max_bytes, grace)

    async def run(
        self,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_bytes: int | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> RunResult[R_co]:
        """Run the flow to the end; return the sink's result and the statistics.

        Blocks until the source is exhausted (or a ``take`` is satisfied). If the caller is
        cancelled, the sources stop, partial batches are flushed to the sink and every
        resource is closed (within ``grace`` seconds), then the cancellation propagates.

        Raises:
            Exception: the first error raised by any stage, as itself, with a note naming
                the stage.
        """
        async with self.open(buffer=buffer, max_bytes=max_bytes, grace=grace) as r:
            return await r.wait()

    def __repr__(self) -> str:
        return " | ".join([self._source.name, *(op.name for op in self._ops), self._sink.name])


def _bad_operand(left: object, right: object) -> Any:
    raise FlowDefinitionError(
        f"cannot compose {left!r} | {right!r}: the right side must be a stage "
        f"(aflow.map, aflow.batch, ...) or a sink (aflow.collect, ...), "
        f"not {type(right).__name__}"
    )

"""The state of one run, which implements the public :class:`~aflow.abc.Context`.

Holds the run's task group, statistics, buffers' default sizes, the graceful-stop flag and
the first error; starts chains of stages (one task per segment, see :mod:`.segments`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..stats import RunCounters, StageCounters
from .buffers import Buffer, Sender
from .delivery import Delivery
from .operators import (
    AsyncOperator,
    Op,
    Operator,
    SinkOperator,
    SinkWriter,
    Source,
    is_closed,
)
from .segments import ChainBuilder, Downstream, FusedSink, locate, sink_head, task_head

__all__ = ["RunContext"]

# Set while a chain that gets no checkpoint barriers is built (the inputs of ``zip`` and
# ``asof_join``): its tasks copy it with their context, so a source made of other flows
# among them (``concat``, ``merge``, ``repeat``) builds buffers that get none either,
# however deep the leaf sources are.
_NO_BARRIERS: ContextVar[bool] = ContextVar("aflow_no_barriers", default=False)


class RunContext:
    """The state of one run: its task group, counters, buffers, stop flag and first error."""

    def __init__(
        self,
        tg: TaskGroup,
        *,
        buffer: int,
        max_bytes_in_flight: int | None,
        buffer_count: int,
        delivery: Delivery | None = None,
    ) -> None:
        self.tg = tg
        self.delivery = delivery or Delivery(None, 1.0, "")
        self.counters = RunCounters()
        self.buffer = buffer
        self.buffer_bytes = (
            None
            if max_bytes_in_flight is None
            else max(1, max_bytes_in_flight // max(1, buffer_count))
        )
        self.stopping = False
        self.live_sources = 0  # sources still producing (their input has not ended)
        self.first_error: BaseException | None = None
        self.writers: list[SinkWriter[Any, Any]] = []
        self._pull_scopes: set[anyio.CancelScope] = set()
        self._names: dict[int, str] = {}
        self._recycled: dict[str, list[StageCounters]] = {}
        self._captured: list[StageCounters] | None = None
        self._stage_number = 0

    # -- lifecycle --------------------------------------------------------------------
    def request_stop(self) -> None:
        """Graceful stop: sources stop pulling; everything else drains and flushes."""
        self.stopping = True
        for scope in list(self._pull_scopes):
            scope.cancel()

    @contextmanager
    def pull_scope(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope around a source's wait for data, cancelled by ``request_stop``."""
        scope = anyio.CancelScope()
        if self.stopping:
            scope.cancel()
        self._pull_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._pull_scopes.discard(scope)

    def fail(self, exc: BaseException) -> None:
        """Record the first error and cancel the run."""
        if self.first_error is None:
            self.first_error = exc
        self.tg.cancel_scope.cancel()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        self.tg.start_soon(self._guarded, fn, args, name, name=f"aflow:{name}")

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], args: Any, name: str) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            if not is_closed(exc):
                self.fail(locate(exc, name))

    # -- statistics -------------------------------------------------------------------
    def new_counters(self, name: str) -> StageCounters:
        """Counters for a new stage (or recycled ones of a finished stage of that name)."""
        pool = self._recycled.get(name)
        if pool:
            c = pool.pop()
        else:
            c = StageCounters(f"{self._stage_number}:{name}")
            self._stage_number += 1
            self.counters.stages.append(c)
            self._names[id(c)] = name
        if self._captured is not None:
            self._captured.append(c)
        return c

    @contextmanager
    def reuse_counters(self) -> Iterator[Callable[[], None]]:
        captured: list[StageCounters] = []
        self._captured = captured

        def recycle() -> None:
            for c in captured:
                self._recycled.setdefault(self._names[id(c)], []).append(c)

        try:
            yield recycle
        finally:
            self._captured = None

    def repetitions(self, name: str) -> tuple[str, int]:
        return self.delivery.repetitions(name)

    def repetition(self, ident: str, n: int, restore: bool) -> AbstractContextManager[None]:
        return self.delivery.repetition(ident, n, restore)

    # -- building ---------------------------------------------------------------------
    def new_buffer(self, receiver: StageCounters, op: Op | None = None) -> Buffer:
        size = op.buffer if op is not None and op.buffer is not None else self.buffer
        limit = op.buffer_bytes if op is not None and op.buffer_bytes is not None else None
        d = self.delivery
        buffer = Buffer(self.counters, receiver, size, limit or self.buffer_bytes, lambda: d.epoch)
        if _NO_BARRIERS.get():
            buffer.barriers = False
        return buffer

    def start_chain(
        self,
        source: Source | Buffer,
        ops: Iterable[Op],
        into: Downstream | SinkOperator[Any, Any],
        *,
        name: str | None = None,
    ) -> SinkWriter[Any, Any] | None:
        """Cut ``ops`` into segments and start one task per segment.

        ``source`` is a :class:`Source` or a buffer fed by someone else (a branch, a
        sub-flow); ``into`` is a sink description or a downstream buffer. Returns the
        sink's writer, when ``into`` is a sink.
        """
        edge = into.buffer if isinstance(into, Sender) else into
        barriers = not isinstance(edge, Buffer) or edge.barriers
        token = None if barriers else _NO_BARRIERS.set(True)
        try:
            return self._start_chain(source, ops, into, name, barriers)
        finally:
            if token is not None:
                _NO_BARRIERS.reset(token)

    def _start_chain(
        self,
        source: Source | Buffer,
        ops: Iterable[Op],
        into: Downstream | SinkOperator[Any, Any],
        name: str | None,
        barriers: bool,
    ) -> SinkWriter[Any, Any] | None:
        chain = ChainBuilder(self, source, name, barriers=barriers)
        for op in ops:
            c = self.new_counters(op.name)
            if isinstance(op, Operator):
                chain.fuse(op, c)
            else:
                assert isinstance(op, AsyncOperator), op
                buffer = chain.hop(c, op)
                task_id = self.delivery.new_id("task", op.name)
                chain.restart(task_head(op, buffer, self), c.name, buffer, c, task_id)
        if not isinstance(into, SinkOperator):
            chain.finish(into)
            return None
        c = self.new_counters(into.name)
        d = self.delivery
        ident = d.new_id("sink", into.name)
        writer = into.writer(self)
        d.restore(ident, writer)
        self.writers.append(writer)
        if into.fused:
            c.blocked = chain.blocked
            chain.finish(FusedSink(writer, c, count_in=True, ident=ident, delivery=d))
        else:
            buffer = chain.hop(c, into)
            chain.restart(sink_head(buffer), c.name, buffer, None)
            c.blocked = chain.blocked
            chain.finish(FusedSink(writer, c, count_in=False, ident=ident, delivery=d))
        return writer

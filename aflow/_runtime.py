"""The runtime: one task group per run, one task per segment, one bounded buffer per edge.

A flow's ops are cut into *segments*: a head (a source, an async stage or a sink's consumer)
followed by the synchronous chunk ops fused behind it. Each segment is one task; between
segments sits an :class:`Edge`, a bounded anyio memory object stream that also counts bytes.
A full edge suspends the sender: that is backpressure, from the sink back to the source.

Shutdown is graceful by default: ``RunContext.request_stop()`` stops the *sources* only; every
other task drains its input, flushes what it holds (partial batches) and closes, so results
are complete up to the stop. Errors and the end of the grace period cancel everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._edge import Edge, _Sender
from ._message import Batch, Message
from ._ops import ChunkOp, ChunkRunner, Op, SinkOp, SinkWriter, Source, TaskOp
from .stats import RunCounters, StageCounters

__all__ = ["Closed", "Edge", "RunContext"]

perf_counter = time.perf_counter

CHECKPOINT_INTERVAL = 0.002
"""A task that never waits (a fused source-to-sink pipeline) yields this often (seconds)."""


class Closed(Exception):
    """Internal: downstream wants no more messages (it closed, or ``take`` is satisfied)."""


class _FusedSink:
    """A sink run inside the task of the step before it."""

    def __init__(
        self, writer: SinkWriter[Any, Any], counters: StageCounters, *, count_in: bool
    ) -> None:
        self.writer = writer
        self.counters = counters
        self.count_in = count_in  # False when the sink's own input edge counts already
        self.opened = False

    async def send(self, msg: Message, blocked: list[float]) -> None:
        c = self.counters
        if self.count_in:
            c.count_in(msg)
        t0 = perf_counter()
        try:
            if not self.opened:
                self.opened = True
                await self.writer.open()
            if isinstance(msg, Batch):
                await self.writer.write_batch(msg)
            else:
                await self.writer.write_chunk(msg)
        except Exception as exc:
            locate(exc, c.name, msg)
            raise
        c.busy_seconds += perf_counter() - t0

    async def finish(self) -> None:
        if not self.opened:
            self.opened = True
            await self.writer.open()
        await self.writer.flush()

    def close_send(self) -> None:
        close_input = getattr(self.writer, "close_input", None)
        if close_input is not None:  # routing sinks: let their branches finish
            close_input()


Downstream = Edge | _Sender | _FusedSink


def locate(exc: BaseException, stage: str, msg: Message | None = None) -> BaseException:
    """Attach (once) a note naming the stage, and the batch's provenance, to ``exc``."""
    if not getattr(exc, "_aflow_located", False):
        where = f"aflow: raised in stage {stage!r}"
        if isinstance(msg, Batch) and msg.provenance is not None:
            where += f" on rows from {msg.provenance}"
        exc.add_note(where)
        with suppress(AttributeError):  # exceptions with __slots__ just get no mark
            exc._aflow_located = True  # type: ignore[attr-defined]
    return exc


class Segment:
    """One task: a head, then fused chunk ops, then a downstream buffer or a fused sink."""

    def __init__(
        self,
        ctx: RunContext,
        head: Callable[[Segment], Any],
        head_name: str,
        fused: list[tuple[ChunkRunner, StageCounters]],
        downstream: Downstream,
        inbox: Edge | None,
        blocked: list[float],
        head_counters: StageCounters | None,
    ) -> None:
        self.ctx = ctx
        self.head_counters = head_counters
        self.head = head
        self.head_name = head_name
        self.fused = fused
        self.downstream = downstream
        self.inbox = inbox
        self.blocked = blocked
        self.scope = anyio.CancelScope()  # cancelled when the downstream buffer closes
        if isinstance(downstream, Edge):
            downstream.add_sender_scope(self.scope)
        elif isinstance(downstream, _Sender):
            downstream.edge.add_sender_scope(self.scope)
        else:  # a routing sink stops this task once all its branches have stopped
            attach = getattr(downstream.writer, "attach_sender_scope", None)
            if attach is not None:
                attach(self.scope)
        self._resumed = self._checkpointed = perf_counter()

    # -- the Outlet protocol, for sources ---------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.ctx.stopping

    @property
    def counters(self) -> StageCounters | None:
        return self.head_counters

    @contextmanager
    def pull_scope(self) -> Iterator[anyio.CancelScope]:
        with self.ctx.pull_scope() as scope:
            yield scope

    @property
    def backlogged(self) -> bool:
        d = self.downstream
        return d.full if isinstance(d, Edge) else isinstance(d, _Sender) and d.edge.full

    async def emit(self, msg: Message) -> None:
        """Pass ``msg`` through the fused ops and send what comes out downstream."""
        hc = self.head_counters
        if hc is not None:
            hc.count_out(msg)
            if self.inbox is None:  # a source: time since its last emit is its own work
                hc.busy_seconds += perf_counter() - self._resumed
        msgs, done_at = await self._push([msg], 0)
        for m in msgs:
            await self._send(m)
        now = perf_counter()
        if now - self._checkpointed > CHECKPOINT_INTERVAL:
            await anyio.lowlevel.checkpoint()  # let other tasks (and cancellation) in
            now = self._checkpointed = perf_counter()
        self._resumed = now
        if done_at >= 0:
            await self.finish(done_at)
            raise Closed

    async def _push(self, msgs: list[Message], start: int) -> tuple[list[Message], int]:
        done_at = -1
        for i in range(start, len(self.fused)):
            if not msgs:
                break
            runner, c = self.fused[i]
            t0 = perf_counter()
            out: list[Message] = []
            m: Message | None = None
            try:
                if runner.guarded:
                    for m in msgs:
                        c.count_in(m)
                        out.extend(await runner.process_guarded(m, c))
                else:
                    for m in msgs:
                        c.count_in(m)
                        out.extend(runner.process(m))
            except Exception as exc:
                locate(exc, c.name, m)
                raise
            c.busy_seconds += perf_counter() - t0
            for o in out:
                c.count_out(o)
            msgs = out
            if runner.done and done_at < 0:
                done_at = i
        return msgs, done_at

    async def _send(self, msg: Message) -> None:
        try:
            await self.downstream.send(msg, self.blocked)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise Closed from None

    async def _run_head(self) -> None:
        try:
            satisfied = [i for i, (runner, _) in enumerate(self.fused) if runner.done]
            if satisfied:  # take(0) and the like: the head need not run at all
                await self.finish(satisfied[0])
                raise Closed
            await self.head(self)
        except Closed:
            return
        await self.finish()

    async def finish(self, start: int = 0) -> None:
        """Flush every fused op from ``start`` on, in order, through the ones after it."""
        for i in range(start, len(self.fused)):
            runner, c = self.fused[i]
            try:
                flushed = runner.finish()
            except Exception as exc:
                locate(exc, c.name)
                raise
            for o in flushed:
                c.count_out(o)
            msgs, _ = await self._push(flushed, i + 1)
            for m in msgs:
                await self._send(m)
        if isinstance(self.downstream, _FusedSink):
            try:
                await self.downstream.finish()
            except Exception as exc:
                locate(exc, self.downstream.counters.name)
                raise

    async def run(self) -> None:
        self._resumed = perf_counter()
        try:
            with self.scope:  # a closed downstream ends this task wherever it waits
                await self._run_head()
        except Closed:
            pass
        except Exception as exc:
            self.ctx.fail(locate(exc, self.head_name))
        finally:
            self.downstream.close_send()
            if self.inbox is not None:
                self.inbox.close_receive()


class RunContext:
    """The state of one run: its task group, counters, buffers, stop flag and first error."""

    def __init__(
        self,
        tg: TaskGroup,
        *,
        buffer: int,
        max_bytes: int | None,
        edge_count: int,
    ) -> None:
        self.tg = tg
        self.counters = RunCounters()
        self.buffer = buffer
        self.edge_max_bytes = None if max_bytes is None else max(1, max_bytes // max(1, edge_count))
        self.stopping = False
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

    # -- building ---------------------------------------------------------------------
    def stage(self, name: str) -> StageCounters:
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
    def capture(self) -> Iterator[list[StageCounters]]:
        """Collect the counters handed out inside the block (to recycle them later)."""
        captured: list[StageCounters] = []
        self._captured = captured
        try:
            yield captured
        finally:
            self._captured = None

    def recycle(self, counters: list[StageCounters]) -> None:
        """Let finished stages' counters be reused by the next stages of the same names
        (each repetition of ``repeat`` adds to the same records instead of new ones)."""
        for c in counters:
            self._recycled.setdefault(self._names[id(c)], []).append(c)

    def edge(self, receiver: StageCounters, op: Op | None = None) -> Edge:
        size = op.buffer if op is not None and op.buffer is not None else self.buffer
        max_bytes = op.max_bytes if op is not None and op.max_bytes is not None else None
        return Edge(self.counters, receiver, size, max_bytes or self.edge_max_bytes)

    def start_chain(
        self,
        source: Source | Edge,
        ops: Sequence[Op],
        terminal: Downstream | SinkOp[Any, Any],
        *,
        source_name: str | None = None,
    ) -> SinkWriter[Any, Any] | None:
        """Cut ``ops`` into segments and start one task per segment.

        ``source`` is a :class:`Source` or an edge fed by someone else (a branch, a
        sub-flow); ``terminal`` is a sink description or a downstream buffer. Returns the
        sink's writer, when ``terminal`` is a sink.
        """
        writer: SinkWriter[Any, Any] | None = None
        chain = _ChainBuilder(self, source, source_name)
        for op in ops:
            c = self.stage(op.name)
            if isinstance(op, ChunkOp):
                chain.fuse(op, c)
            else:
                assert isinstance(op, TaskOp), op
                edge = chain.hop(c, op)
                chain.restart(_task_head(op, edge, self, c), c.name, edge, c)
        if isinstance(terminal, SinkOp):
            c = self.stage(terminal.name)
            writer = terminal.writer(self)
            self.writers.append(writer)
            if terminal.fused:
                c.blocked = chain.blocked
                chain.finish(_FusedSink(writer, c, count_in=True))
            else:
                edge = chain.hop(c, terminal)
                chain.restart(_sink_head(edge), c.name, edge, None)
                c.blocked = chain.blocked
                chain.finish(_FusedSink(writer, c, count_in=False))
        else:
            chain.finish(terminal)
        return writer

    def _start_segment(
        self,
        head: Callable[[Segment], Any],
        head_name: str,
        fused: list[tuple[ChunkRunner, StageCounters]],
        downstream: Downstream,
        inbox: Edge | None,
        blocked: list[float],
        head_counters: StageCounters | None,
    ) -> None:
        seg = Segment(self, head, head_name, fused, downstream, inbox, blocked, head_counters)
        self.tg.start_soon(seg.run, name=f"aflow:{head_name}")


class _ChainBuilder:
    """Cuts a linear chain of ops into segments while ``start_chain`` walks it."""

    def __init__(self, ctx: RunContext, source: Source | Edge, source_name: str | None) -> None:
        self.ctx = ctx
        self.blocked = [0.0]
        self.fused: list[tuple[ChunkRunner, StageCounters]] = []
        self.head_counters: StageCounters | None
        self.inbox: Edge | None
        if isinstance(source, Edge):
            self.inbox, self.head_counters = source, None
            self.head: Callable[[Segment], Any] = _drain_into_emit(source)
            self.head_name = source_name or "input"
        else:
            self.inbox = None
            self.head_counters = ctx.stage(source.name)
            self.head_counters.blocked = self.blocked
            self.head = _source_head(source, ctx)
            self.head_name = self.head_counters.name

    def fuse(self, op: ChunkOp, c: StageCounters) -> None:
        c.blocked = self.blocked
        self.fused.append((op.start(), c))

    def hop(self, c: StageCounters, op: Op) -> Edge:
        """The buffer in front of a task for ``op``; ends the current segment."""
        inbox = self.inbox
        if inbox is not None and self.head_counters is None and not self.fused:
            # Nothing runs between the incoming buffer and this op: feed it directly
            # rather than through a second buffer.
            self.ctx.counters.stages.remove(inbox.receiver)
            inbox.retarget(c)
            return inbox
        edge = self.ctx.edge(c, op)
        self.finish(edge)
        return edge

    def restart(
        self, head: Callable[[Segment], Any], name: str, inbox: Edge, c: StageCounters | None
    ) -> None:
        self.head, self.head_name, self.inbox, self.fused = head, name, inbox, []
        self.head_counters = c
        self.blocked = [0.0]
        if c is not None:
            c.blocked = self.blocked

    def finish(self, downstream: Downstream) -> None:
        self.ctx._start_segment(
            self.head,
            self.head_name,
            self.fused,
            downstream,
            self.inbox,
            self.blocked,
            self.head_counters,
        )


def _source_head(source: Source, ctx: RunContext) -> Callable[[Segment], Any]:
    async def head(seg: Segment) -> None:
        await source.produce(seg, ctx)

    return head


def _drain_into_emit(inbox: Edge) -> Callable[[Segment], Any]:
    async def head(seg: Segment) -> None:
        async for msg in inbox:
            await seg.emit(msg)

    return head


def _sink_head(inbox: Edge) -> Callable[[Segment], Any]:
    async def head(seg: Segment) -> None:
        async for msg in inbox:
            await seg.downstream.send(msg, seg.blocked)

    return head


def _task_head(op: TaskOp, inbox: Edge, ctx: RunContext, c: StageCounters) -> Callable[..., Any]:
    async def head(seg: Segment) -> None:
        await op.run(inbox, seg.emit, ctx, c)

    return head

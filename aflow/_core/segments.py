"""The runtime: one task group per run, one task per segment, a bounded buffer between tasks.

A flow's ops are cut into *segments*: a head (a source, an async stage or a sink's consumer)
followed by the synchronous operators fused behind it. Each segment is one task; between
segments sits a :class:`Buffer`, a bounded anyio memory object stream that also counts bytes.
A full buffer suspends the sender: that is backpressure, from the sink back to the source.

Shutdown is graceful by default: ``RunContext.request_stop()`` stops the *sources* only; every
other task drains its input, flushes what it holds (partial batches) and closes, so results
are complete up to the stop. Errors and the end of the grace period cancel everything.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from typing import Any, Protocol, cast

import anyio
from anyio.abc import TaskGroup

from ..stats import RunCounters, StageCounters
from .buffers import Buffer, Sender
from .delivery import MISSING, REPETITION, Delivery
from .messages import Barrier, Batch, Item, Message
from .operators import (
    AsyncOperator,
    Closed,
    Context,
    Inbox,
    Op,
    Operator,
    Processor,
    SinkWriter,
    Source,
    is_closed,
)


class RunState(Context, Protocol):
    """What segments need of their run, beyond the public :class:`Context` (implemented
    by :class:`~aflow._core.context.RunContext`)."""

    tg: TaskGroup
    counters: RunCounters
    live_sources: int
    delivery: Delivery

    def pull_scope(self) -> AbstractContextManager[anyio.CancelScope]: ...

    def fail(self, exc: BaseException) -> None: ...


__all__ = [
    "ChainBuilder",
    "Downstream",
    "FusedSink",
    "Segment",
    "locate",
    "sink_head",
    "task_head",
]

perf_counter = time.perf_counter

CHECKPOINT_INTERVAL = 0.002
"""A task that never waits (a fused source-to-sink pipeline) yields this often (seconds)."""


class FusedSink:
    """A sink run inside the task of the step before it."""

    def __init__(
        self,
        writer: SinkWriter[Any, Any],
        counters: StageCounters,
        *,
        count_in: bool,
        ident: str = "",
        delivery: Delivery | None = None,
    ) -> None:
        self.writer = writer
        self.counters = counters
        self.count_in = count_in  # False when the sink's own input edge counts already
        self.opened = False
        self.ident = ident
        self.delivery = delivery
        # A routing sink (broadcast, partition) hands barriers on to its branches; the
        # sinks at the ends of the branches commit.
        self.router: Callable[[Barrier], Any] | None = getattr(writer, "forward_barrier", None)
        self.ended = self.router is not None or delivery is None
        if not self.ended:
            assert delivery is not None
            delivery.add_sink(ident)

    async def barrier(self, barrier: Barrier) -> None:
        """A checkpoint barrier reached the sink: commit (or hand it to the branches)."""
        if self.router is not None:
            await self.router(barrier)
            return
        try:
            if not self.opened:
                self.opened = True
                await self.writer.open()
            state = await self.writer.commit(barrier.epoch)
        except Exception as exc:
            locate(exc, self.counters.name)
            raise
        assert self.delivery is not None
        self.delivery.sink_committed(self.ident, barrier.epoch, state)

    def end(self, state: Any = None) -> None:
        """Tell the coordinator that this sink has handled all its input (once)."""
        if not self.ended:
            self.ended = True
            assert self.delivery is not None
            self.delivery.sink_finished(self.ident, state)

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
        d = self.delivery
        if not self.ended and d is not None and d.active:
            # the end is an epoch of its own: after every barrier this sink has seen
            self.end(await self.writer.commit(d.epoch + 1))

    def close_send(self) -> None:
        self.writer.close_input()


Downstream = Buffer | Sender | FusedSink


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
        ctx: RunState,
        head: Callable[[Segment], Any],
        head_name: str,
        fused: list[tuple[Processor, StageCounters]],
        downstream: Downstream,
        inbox: Buffer | None,
        blocked: list[float],
        head_counters: StageCounters | None,
        source: Source | None = None,
        fused_ids: list[str] | None = None,
        task_id: str = "",
    ) -> None:
        self.ctx = ctx
        self.task_id = task_id  # an async operator's stage id (for its state)
        if inbox is None:  # a source, producing until its run() ends
            ctx.live_sources += 1
        self.fused_ids = fused_ids or []
        self.positions: dict[str, Any] = {}
        # A leaf source takes checkpoint barriers from the coordinator: its emits and
        # the injection of a barrier exclude each other.
        self.source_id = ""
        self._gate: _Gate | None = None
        self._resume: dict[str, Any] = {}
        self._repetition: int | None = None
        self._ended = False
        self._output_ended = False  # ``end()`` ended it before the head returned
        # A source made of other flows: the last epoch whose barrier it handed on
        self._composite = source is not None and source.composite
        self._epoch_out = ctx.delivery.epoch
        if source is not None and not source.composite:
            self._gate = _Gate()
            self.source_id = ctx.delivery.new_id("source", source.name)
            ctx.delivery.add_source(self, source.name, source.resumable)
            # The map goes on from the committed one: what this run does not touch again
            # (a file read to its end) stays known.
            self.positions = ctx.delivery.positions_for(self.source_id)
            self._resume = dict(self.positions)
            self._repetition = ctx.delivery.current_repetition()
        self.head_counters = head_counters
        self.head = head
        self.head_name = head_name
        self.fused = fused
        self.downstream = downstream
        self.inbox = inbox
        self.blocked = blocked
        self.scope = anyio.CancelScope()  # cancelled when the downstream buffer closes
        if isinstance(downstream, Buffer):
            downstream.add_sender_scope(self.scope)
        elif isinstance(downstream, Sender):
            downstream.buffer.add_sender_scope(self.scope)
        else:  # a routing sink stops this task once all its branches have stopped
            downstream.writer.attach(downstream.counters, self.scope)
        self._resumed = self._checkpointed = perf_counter()

    # -- the Outlet protocol, for sources ---------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.ctx.stopping

    @property
    def checkpointed(self) -> bool:
        return self.ctx.delivery.store is not None

    @property
    def counters(self) -> StageCounters:
        assert self.head_counters is not None, "only sources and async operators emit"
        return self.head_counters

    @contextmanager
    def pull_scope(self) -> Iterator[anyio.CancelScope]:
        with self.ctx.pull_scope() as scope:
            yield scope

    @property
    def backlogged(self) -> bool:
        d = self.downstream
        return d.full if isinstance(d, Buffer) else isinstance(d, Sender) and d.buffer.full

    @property
    def resume_positions(self) -> dict[str, Any]:
        if not self.source_id:
            return {}
        return dict(self._resume)

    def update_positions(self, changes: Mapping[str, Any]) -> None:
        if not self.source_id:
            raise TypeError("update_positions() is for sources (a source made of flows has none)")
        for key, value in changes.items():
            if value is None:
                self.positions.pop(key, None)
            else:
                self.positions[key] = value

    def on_commit(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        if not self.source_id:
            raise TypeError("on_commit() is for sources (a source made of flows has none)")
        self.ctx.delivery.on_commit(self.source_id, fn)

    @property
    def restored_state(self) -> Any:
        if not self.task_id:
            return None
        state = self.ctx.delivery.state_for(self.task_id)
        return None if state is MISSING else state

    async def end(self, *, commit_timeout: float = 10.0) -> None:
        if self.inbox is not None or not self.source_id:
            raise TypeError("end() is for sources (a source made of flows has none)")
        if not self._output_ended:
            await self._finish_source()
            if isinstance(self.downstream, FusedSink):
                self.downstream.end()
            self.downstream.close_send()
            self._output_ended = True
        d = self.ctx.delivery
        if d.has_callbacks(self.source_id):
            with anyio.move_on_after(commit_timeout):
                await d.final_committed.wait()

    async def emit(
        self,
        msg: Item,
        /,
        *,
        position: tuple[str, Any] | None = None,
        state: Any = None,
    ) -> None:
        """Pass ``msg`` through the fused ops and send what comes out downstream."""
        if type(msg) is Barrier:
            if state is not None and self.task_id:
                self.ctx.delivery.stage_state(self.task_id, msg.epoch, state)
            await self.barrier(msg)
            return
        gate = self._gate
        if gate is not None:  # a leaf source: a barrier may want to go in between emits
            if gate.held:
                await gate.wait_open()
            gate.emitting += 1
        try:
            hc = self.head_counters
            if hc is not None:
                hc.count_out(msg)  # type: ignore[arg-type]
                if self.inbox is None:  # a source: time since its last emit is its own work
                    hc.busy_seconds += perf_counter() - self._resumed
            if self.fused:
                msgs, done_at = await self._push([msg], 0)  # type: ignore[list-item]
                for m in msgs:
                    await self._send(m)
            else:  # nothing fused: straight downstream
                done_at = -1
                try:
                    await self.downstream.send(msg, self.blocked)  # type: ignore[arg-type]
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    raise Closed from None
            if position is not None:
                self.positions[position[0]] = position[1]
            now = perf_counter()
            if now - self._checkpointed > CHECKPOINT_INTERVAL:
                await anyio.lowlevel.checkpoint()  # let other tasks (and cancellation) in
                now = self._checkpointed = perf_counter()
            self._resumed = now
            if done_at >= 0:
                await self.finish(done_at)
                raise Closed
        finally:
            if gate is not None:  # inlined ``gate.left()``: this runs on every emit
                gate.emitting -= 1
                if gate.drained is not None and not gate.emitting:
                    gate.drained.set()

    async def inject(self, barrier: Barrier) -> dict[str, Any] | None:
        """Send ``barrier`` from this source (between two emits); return the source's
        position map as of the barrier (``None`` if the source has ended)."""
        assert self._gate is not None
        async with self._gate.alone():
            if self._ended:
                return None
            positions = self.position_map()
            try:
                await self.barrier(barrier)
            except Exception as exc:
                if is_closed(exc):
                    return None
                raise
            return positions

    async def catch_up_barriers(self) -> None:
        if not self._composite:
            return
        d = self.ctx.delivery
        while self._epoch_out < d.epoch:
            await self.barrier(Barrier(self._epoch_out + 1))

    def position_map(self) -> dict[str, Any]:
        """The position map now, with the repetition of the ``repeat`` it runs in."""
        positions = dict(self.positions)
        if self._repetition is not None:
            positions[REPETITION] = self._repetition
        return positions

    async def barrier(self, barrier: Barrier) -> None:
        """Pass ``barrier`` through the fused ops (each hands on what it holds and
        snapshots its state), then downstream."""
        d = self.ctx.delivery
        epoch = barrier.epoch
        if self._composite:
            if epoch <= self._epoch_out:
                return  # handed on already (caught up while no sub-flow ran)
            self._epoch_out = epoch
        for i, (runner, c) in enumerate(self.fused):
            try:
                held = runner.on_barrier(epoch)
                if type(held) is not list:
                    held = list(held)
                state = runner.snapshot()
            except Exception as exc:
                locate(exc, c.name)
                raise
            if held:
                for o in held:
                    c.count_out(o)
                msgs, _ = await self._push(held, i + 1)
                for m in msgs:
                    await self._send(m)
            if state is not None:
                d.stage_state(self.fused_ids[i], epoch, state)
        down = self.downstream
        if isinstance(down, FusedSink):
            await down.barrier(barrier)
        else:
            await self._send(barrier)

    async def _push(self, msgs: list[Message], start: int) -> tuple[list[Message], int]:
        """Pass ``msgs`` through the fused ops from ``start`` on; return what comes out of
        the last one, and the index of the first op that is done (``-1``: none)."""
        done_at = -1
        fused = self.fused
        for i in range(start, len(fused)):
            runner, c = fused[i]
            t0 = perf_counter()
            m: Message | None = None
            try:
                if runner.guarded:
                    out: list[Message] = []
                    for m in msgs:
                        c.count_in(m)
                        out.extend(await runner.process_guarded(m, c))
                elif len(msgs) == 1:  # the common case: one message in, its list out
                    m = msgs[0]
                    c.count_in(m)
                    out = runner.process(m)
                    if type(out) is not list:  # a generator or a tuple: count, then send
                        out = list(out)
                else:
                    out = []
                    for m in msgs:
                        c.count_in(m)
                        out.extend(runner.process(m))
            except Exception as exc:
                locate(exc, c.name, m)
                raise
            c.busy_seconds += perf_counter() - t0
            for o in out:
                c.count_out(o)
            if runner.done and done_at < 0:
                done_at = i
            if not out:
                return out, done_at
            msgs = out
        return msgs, done_at

    async def _send(self, msg: Item) -> None:
        try:  # a barrier never goes to a FusedSink's send (see ``barrier``)
            await self.downstream.send(msg, self.blocked)  # type: ignore[arg-type]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise Closed from None

    async def _run_head(self) -> None:
        try:
            satisfied = [i for i, (runner, _) in enumerate(self.fused) if runner.done]
            if satisfied:  # take(0) and the like: the head need not run at all
                await self.finish(satisfied[0])
                raise Closed
            await self.head(self)
        except Exception as exc:
            if is_closed(exc):
                return
            raise
        if self.task_id:  # the operator flushed what it held: a restart starts it afresh
            self.ctx.delivery.stage_finished(self.task_id, None)
        if not self._output_ended:
            await self._finish_source()

    async def _finish_source(self) -> None:
        gate = self._gate
        if gate is None:
            await self.finish()
            return
        async with gate.alone():  # no barrier between the last flush and the end
            await self.finish()
            self._source_ended()

    def _source_ended(self) -> None:
        if not self._ended:
            self._ended = True
            self.ctx.delivery.source_ended(self)

    async def finish(self, start: int = 0) -> None:
        """Flush every fused op from ``start`` on, in order, through the ones after it."""
        d = self.ctx.delivery
        # A graceful stop of a run with a checkpoint keeps what stateful stages hold (open
        # windows, a shuffle buffer) in the checkpoint rather than flushing it: the
        # restart goes on as if never stopped. The end of input flushes.
        keep = d.active and d.store is not None and self.ctx.stopping
        for i in range(start, len(self.fused)):
            runner, c = self.fused[i]
            try:
                state = runner.snapshot() if keep else None
                if state is not None:
                    d.stage_finished(self.fused_ids[i], state)
                    continue
                flushed = runner.flush()
                if type(flushed) is not list:
                    flushed = list(flushed)
                state = runner.snapshot() if d.active else None
            except Exception as exc:
                locate(exc, c.name)
                raise
            for o in flushed:
                c.count_out(o)
            msgs, _ = await self._push(flushed, i + 1)
            for m in msgs:
                await self._send(m)
            if d.active:
                d.stage_finished(self.fused_ids[i], state)
        if isinstance(self.downstream, FusedSink):
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
        except Exception as exc:
            if not is_closed(exc):
                self.ctx.fail(locate(exc, self.head_name))
        finally:
            if self.inbox is None:  # a source: its input has ended (or it was stopped)
                self.ctx.live_sources -= 1
                if self._gate is not None:
                    self._source_ended()
            if not self._output_ended:
                if isinstance(self.downstream, FusedSink):
                    self.downstream.end()
                self.downstream.close_send()
            if self.inbox is not None:
                self.inbox.close_receive()


class _Gate:
    """Where a checkpoint barrier goes in between a source's emits.

    Emits (from one task, or several of the same source) pass freely, counted in
    ``emitting``: no lock per emit, which cost a run without checkpoints 2-3x on small
    messages. ``alone()`` closes the gate to new emits, waits for those under way, and
    holds it while a barrier goes in (or the source's last flush runs).
    """

    __slots__ = ("drained", "emitting", "held", "opened")

    def __init__(self) -> None:
        self.emitting = 0
        self.held = False  # someone is alone
        self.opened: anyio.Event | None = None  # made by the first emit waiting for the end
        self.drained: anyio.Event | None = None

    async def wait_open(self) -> None:
        """Wait until nobody holds the gate alone."""
        while self.held:
            if self.opened is None:
                self.opened = anyio.Event()
            await self.opened.wait()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Hold the gate: no emit runs inside the block."""
        if self.held:
            await self.wait_open()
        self.held = True
        try:
            while self.emitting:
                drained = self.drained = anyio.Event()
                await drained.wait()
            self.drained = None
            yield
        finally:
            self.held = False
            self.drained = None
            opened, self.opened = self.opened, None
            if opened is not None:
                opened.set()


class ChainBuilder:
    """Cuts a linear chain of ops into segments while ``RunContext.start_chain`` walks it."""

    def __init__(
        self,
        ctx: RunState,
        source: Source | Buffer,
        source_name: str | None,
        *,
        barriers: bool = True,
    ) -> None:
        self.ctx = ctx
        self.blocked = [0.0]
        self.fused: list[tuple[Processor, StageCounters]] = []
        self.fused_ids: list[str] = []
        self.task_id = ""
        self.source: Source | None = None
        self.head_counters: StageCounters | None
        self.inbox: Buffer | None
        if isinstance(source, Buffer):
            self.inbox, self.head_counters = source, None
            self.head: Callable[[Segment], Any] = _drain_into_emit(source)
            self.head_name = source_name or "input"
        else:
            self.inbox = None
            self.source = source if barriers else None  # None: gets no barriers
            self.head_counters = ctx.new_counters(source.name)
            self.head_counters.blocked = self.blocked
            self.head = _source_head(source, ctx)
            self.head_name = self.head_counters.name

    def fuse(self, op: Operator, c: StageCounters) -> None:
        c.blocked = self.blocked
        runner = op.start()
        ident = self.ctx.delivery.new_id("stage", op.name)
        self.ctx.delivery.restore(ident, runner)
        self.fused.append((runner, c))
        self.fused_ids.append(ident)

    def hop(self, c: StageCounters, op: Op) -> Buffer:
        """The buffer in front of a task for ``op``; ends the current segment."""
        inbox = self.inbox
        if inbox is not None and self.head_counters is None and not self.fused:
            # Nothing runs between the incoming buffer and this op: feed it directly
            # rather than through a second buffer.
            self.ctx.counters.stages.remove(inbox.receiver)
            inbox.retarget(c)
            return inbox
        buffer = self.ctx.new_buffer(c, op)
        self.finish(buffer)
        return buffer

    def restart(
        self,
        head: Callable[[Segment], Any],
        name: str,
        inbox: Buffer,
        c: StageCounters | None,
        task_id: str = "",
    ) -> None:
        self.head, self.head_name, self.inbox, self.fused = head, name, inbox, []
        self.fused_ids, self.source = [], None
        self.task_id = task_id
        self.head_counters = c
        self.blocked = [0.0]
        if c is not None:
            c.blocked = self.blocked

    def finish(self, downstream: Downstream) -> None:
        seg = Segment(
            self.ctx,
            self.head,
            self.head_name,
            self.fused,
            downstream,
            self.inbox,
            self.blocked,
            self.head_counters,
            self.source,
            self.fused_ids,
            self.task_id,
        )
        self.ctx.tg.start_soon(seg.run, name=f"aflow:{self.head_name}")


def _source_head(source: Source, ctx: RunState) -> Callable[[Segment], Any]:
    async def head(seg: Segment) -> None:
        await source.produce(seg, ctx)

    return head


def _drain_into_emit(inbox: Buffer) -> Callable[[Segment], Any]:
    async def head(seg: Segment) -> None:
        async for msg in inbox:
            await seg.emit(msg)

    return head


def sink_head(inbox: Buffer) -> Callable[[Segment], Any]:
    """The head of a segment that only feeds a sink with a task of its own."""

    async def head(seg: Segment) -> None:
        down = seg.downstream
        assert isinstance(down, FusedSink)
        async for msg in inbox:
            if isinstance(msg, Barrier):
                await down.barrier(msg)
            else:
                await down.send(msg, seg.blocked)

    return head


def task_head(op: AsyncOperator, inbox: Buffer, ctx: RunState) -> Callable[[Segment], Any]:
    """The head of a segment running an async operator over its input buffer."""

    async def head(seg: Segment) -> None:
        box = inbox if op.handles_barriers else _ForwardingInbox(inbox, seg)
        await op.run(cast(Inbox, box), seg, ctx)

    return head


class _ForwardingInbox:
    """The inbox of an async operator that does not handle barriers: it hands each
    barrier on (through the operator's outlet) and gives the next message instead."""

    def __init__(self, inbox: Buffer, seg: Segment) -> None:
        self.inbox = inbox
        self.seg = seg

    def __aiter__(self) -> _ForwardingInbox:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self) -> Message:
        while True:
            msg = await self.inbox.receive()
            if type(msg) is not Barrier:
                return msg  # type: ignore[return-value]
            # Shielded: the operator may wait for its next message under a timeout
            # (move_on_after); a barrier half sent would be lost downstream.
            with anyio.CancelScope(shield=True):
                await self.seg.barrier(msg)

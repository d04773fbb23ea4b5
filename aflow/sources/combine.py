"""Sources made of other flows: merge, concat, zip, repeat.

The sub-flows run inside the same run (same task group, same statistics); each feeds its
output through a bounded buffer, so a slow consumer slows every sub-flow.
"""

from __future__ import annotations

import builtins
from collections import deque
from typing import Any

import anyio

from ..abc import Barrier, Batch, Buffer, Context, Op, Outlet, Source
from ..flow import Flow

__all__ = ["concat", "merge", "repeat", "zip"]


def _check(flows: tuple[Any, ...], what: str) -> tuple[Flow[Any], ...]:
    for f in flows:
        if not isinstance(f, Flow):
            raise TypeError(f"{what}() takes flows without sinks, got {type(f).__name__}")
    return flows


def _start(ctx: Context, flow: Flow[Any], into: Any, epoch: int | None = None) -> None:
    ops = flow.ops() if epoch is None else [_for_epoch(op, epoch) for op in flow.ops()]
    ctx.start_chain(flow.source, ops, into)


def _for_epoch(op: Op, epoch: int) -> Op:
    """``op`` as it runs in epoch ``epoch`` of a repeat: a stage with a ``for_epoch``
    method (``shuffle``) gives its description for that epoch."""
    hook = getattr(op, "for_epoch", None)
    return op if hook is None else hook(epoch)


class _MergeSource(Source):
    composite = True

    def __init__(self, flows: tuple[Flow[Any], ...]) -> None:
        self.flows = flows
        self.name = f"merge({len(flows)})"

    def nested_buffers(self) -> int:
        return 1 + sum(f.nested_buffers() - 1 for f in self.flows)

    async def produce(self, out: Outlet, ctx: Context) -> None:
        counters = ctx.new_counters(f"{self.name}.input")
        await out.catch_up_barriers()  # no await from here until every input is started
        edge = ctx.new_buffer(counters)
        for flow in self.flows:
            _start(ctx, flow, edge.sender())
        edge.close_send()
        try:
            async for msg in edge:
                await out.emit(msg)
        finally:
            edge.close_receive()


def merge(*flows: Flow[Any]) -> Flow[Any]:
    """Read several flows concurrently; their items interleave as they arrive.

    Each sub-flow runs in its own task(s); ends when all of them end.
    """
    return Flow(_MergeSource(_check(flows, "merge")))


class _ConcatSource(Source):
    composite = True

    def __init__(self, flows: tuple[Flow[Any], ...], name: str) -> None:
        self.flows = flows
        self.name = name

    def nested_buffers(self) -> int:
        return max((f.nested_buffers() for f in self.flows), default=0)

    async def produce(self, out: Outlet, ctx: Context) -> None:
        counters = ctx.new_counters(f"{self.name}.input")
        for flow in self.flows:
            if out.stopping:
                return
            await out.catch_up_barriers()  # the last flow's are all handed on
            edge = ctx.new_buffer(counters)
            _start(ctx, flow, edge)
            try:
                async for msg in edge:
                    await out.emit(msg)
            finally:
                edge.close_receive()


def concat(*flows: Flow[Any]) -> Flow[Any]:
    """Run flows one after the other (the ``yield from`` of flows)."""
    return Flow(_ConcatSource(_check(flows, "concat"), f"concat({len(flows)})"))


def repeat(flow: Flow[Any], times: int | None = None) -> Flow[Any]:
    """Run ``flow`` ``times`` times in a row (forever when ``None``): epochs over a dataset.

    Every repetition starts the flow afresh (new generators, files reopened). A
    :func:`aflow.shuffle` in ``flow`` shuffles each epoch differently (seeded by its seed
    and the epoch number): a stage takes part by having a ``for_epoch(epoch)`` method
    that returns its description for that epoch (epochs count from 0).
    """
    if times is not None and times < 0:
        raise ValueError(f"repeat(times={times}): must be >= 0")
    _check((flow,), "repeat")
    return Flow(_RepeatSource(flow, times))


class _RepeatSource(_ConcatSource):
    def __init__(self, flow: Flow[Any], times: int | None) -> None:
        super().__init__((flow,), f"repeat({'forever' if times is None else times})")
        self.times = times

    async def produce(self, out: Outlet, ctx: Context) -> None:
        counters = ctx.new_counters(f"{self.name}.input")
        # Every repetition's sources and stages have the same ids; a resumed run goes on
        # with the repetition its checkpoint was in (the repetition is in the positions).
        ident, done = ctx.repetitions(self.name)
        resumed = done
        while (self.times is None or done < self.times) and not out.stopping:
            await out.catch_up_barriers()  # the last repetition's are all handed on
            edge = ctx.new_buffer(counters)
            with ctx.reuse_counters() as recycle, ctx.repetition(ident, done, done == resumed):
                _start(ctx, self.flows[0], edge, epoch=done)
            produced = done == resumed  # a resumed repetition may have nothing left
            try:
                async for msg in edge:
                    produced = True
                    await out.emit(msg)
            finally:
                edge.close_receive()
            recycle()
            done += 1
            if not produced and self.times is None:
                return  # repeating an empty flow forever would never end
            await anyio.lowlevel.checkpoint()


class _ZipSource(Source):
    def __init__(self, flows: tuple[Flow[Any], ...]) -> None:
        self.flows = flows
        self.name = f"zip({len(flows)})"

    def nested_buffers(self) -> int:
        return sum(f.nested_buffers() for f in self.flows)

    async def produce(self, out: Outlet, ctx: Context) -> None:
        counters = ctx.new_counters(f"{self.name}.input")
        edges: list[Buffer] = []
        for flow in self.flows:
            edge = ctx.new_buffer(counters)
            edge.barriers = False  # zip pairs across its inputs: it cannot resume
            _start(ctx, flow, edge)
            edges.append(edge)
        pending: list[deque[Any]] = [deque() for _ in edges]
        try:
            while True:
                for edge, items in builtins.zip(edges, pending, strict=True):
                    if not items and not await _refill(edge, items):
                        return
                n = min(len(p) for p in pending)
                columns = [[p.popleft() for _ in range(n)] for p in pending]
                rows = list(builtins.zip(*columns, strict=True))
                await out.emit(rows)
        finally:
            for edge in edges:
                edge.close_receive()


async def _refill(edge: Buffer, items: deque[Any]) -> bool:
    try:
        msg = await edge.receive()
    except anyio.EndOfStream:
        return False
    if isinstance(msg, Barrier):  # never sent (barriers=False); nothing to pair
        return True
    if isinstance(msg, Batch):
        items.append(msg.data)
    else:
        items.extend(msg)
    return True


def zip(*flows: Flow[Any]) -> Flow[tuple[Any, ...]]:
    """Pair up the items of several flows, read concurrently: ``(a0, b0), (a1, b1), ...``.

    Ends with the shortest flow (the others are stopped). A batch counts as one item.
    """
    if not flows:
        raise ValueError("zip() needs at least one flow")
    return Flow(_ZipSource(_check(flows, "zip")))

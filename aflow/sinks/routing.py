"""Routing sinks: broadcast every message to several sinks, or partition rows among them.

Each branch is a sink, possibly with stages before it (``af.map(f) | af.collect()``), and
runs in its own task(s) behind its own bounded buffer. The router waits for room in every
branch it sends to, so the slowest branch sets the pace of the whole flow.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import (
    Barrier,
    Batch,
    Buffer,
    Closed,
    Context,
    Message,
    SinkOperator,
    SinkWriter,
    callable_name,
    refuse_async,
)
from ..flow import Sink
from ..stats import StageCounters

__all__ = ["broadcast", "partition"]


class _Branches:
    """Starts one chain per branch and keeps the writers to read their results."""

    def __init__(self, ctx: Context, name: str, sinks: tuple[Sink[Any, Any], ...]) -> None:
        self.edges: list[Buffer] = []
        self.writers: list[SinkWriter[Any, Any]] = []
        for i, sink in enumerate(sinks):
            first = sink.pre_ops[0] if sink.pre_ops else sink.terminal
            edge = ctx.new_buffer(ctx.new_counters(f"{name}[{i}].input"), first)
            writer = ctx.start_chain(edge, sink.pre_ops, sink.terminal, name=f"{name}[{i}]")
            assert writer is not None
            self.writers.append(writer)
            self.edges.append(edge)
        self.open = [True] * len(self.edges)

    async def send(self, i: int, msg: Message | Barrier, blocked: list[float]) -> None:
        if not self.open[i]:
            return
        try:
            await self.edges[i].send(msg, blocked)
        except Exception:  # the branch stopped early (take): it simply gets no more
            self.open[i] = False
            if not any(self.open):
                raise Closed from None

    def close(self) -> None:
        for edge in self.edges:
            edge.close_send()

    def results(self) -> tuple[Any, ...]:
        return tuple(w.result() for w in self.writers)


class _BroadcastWriter(SinkWriter[Any, tuple[Any, ...]]):
    def __init__(self, branches: _Branches) -> None:
        self.branches = branches
        self.blocked = [0.0]

    def close_input(self) -> None:
        """Called by the runtime when no more input will come: branches may finish."""
        self.branches.close()

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        """Count waits for the branches as this sink's; cancel the producing task once
        every branch has stopped reading."""
        self.blocked = counters.blocked
        closed: set[int] = set()

        def closed_one(i: int) -> None:
            closed.add(i)
            if len(closed) == len(self.branches.edges):
                producer.cancel()

        for i, edge in enumerate(self.branches.edges):
            edge.on_receiver_close(partial(closed_one, i))

    async def forward_barrier(self, barrier: Barrier) -> None:
        """A checkpoint barrier goes to every branch (the runtime calls this)."""
        await self._send_all(barrier)

    async def _send_all(self, msg: Message | Barrier) -> None:
        for i in range(len(self.branches.edges)):
            await self.branches.send(i, msg, self.blocked)

    async def write(self, item: Any) -> None:
        await self._send_all([item])

    async def write_chunk(self, items: list[Any]) -> None:
        await self._send_all(items)

    async def write_batch(self, batch: Batch) -> None:
        await self._send_all(batch)

    async def aclose(self) -> None:
        self.branches.close()

    def result(self) -> tuple[Any, ...]:
        return self.branches.results()


class _BroadcastOp(SinkOperator[Any, tuple[Any, ...]]):
    def __init__(self, sinks: tuple[Sink[Any, Any], ...]) -> None:
        self.sinks = sinks
        self.name = f"broadcast({len(sinks)})"

    def nested_buffers(self) -> int:
        return sum(s.nested_buffers() for s in self.sinks)

    def writer(self, ctx: Context) -> SinkWriter[Any, tuple[Any, ...]]:
        return _BroadcastWriter(_Branches(ctx, self.name, self.sinks))


def broadcast(*sinks: Sink[Any, Any]) -> Sink[Any, tuple[Any, ...]]:
    """Send every item to every sink; the result is the tuple of their results.

    Batches are shared, not copied: branches must not modify arrays in place.
    """
    if not sinks:
        raise ValueError("broadcast() needs at least one sink")
    for s in sinks:
        if not isinstance(s, Sink):
            raise TypeError(f"broadcast() takes sinks, got {type(s).__name__}")
    return Sink(_BroadcastOp(sinks))


class _PartitionWriter(_BroadcastWriter):
    def __init__(self, branches: _Branches, fn: Callable[[Any], Any]) -> None:
        super().__init__(branches)
        self.fn = fn
        self.n = len(branches.edges)

    async def write_chunk(self, items: list[Any]) -> None:
        groups: list[list[Any]] = [[] for _ in range(self.n)]
        fn, n = self.fn, self.n
        for item in items:
            groups[int(fn(item)) % n].append(item)
        for i, group in enumerate(groups):
            if group:
                await self.branches.send(i, group, self.blocked)

    async def write(self, item: Any) -> None:
        await self.write_chunk([item])

    async def write_batch(self, batch: Batch) -> None:
        keys = np.asarray(self.fn(batch.data)).astype(np.int64, copy=False) % self.n
        if keys.shape != (len(batch.data),):
            raise TypeError(
                f"partition: the function must return one integer per row, got shape {keys.shape}"
            )
        for i, rows in enumerate(_split_by(batch.data, keys, self.n)):
            if len(rows):
                await self.branches.send(i, batch.with_data(rows), self.blocked)


def _split_by(data: NDArray[Any], keys: NDArray[np.int64], n: int) -> list[NDArray[Any]]:
    """Rows of ``data`` grouped by ``keys`` (stable order within each group)."""
    if n <= 8:
        return [data[keys == i] for i in range(n)]
    order = np.argsort(keys, kind="stable")
    bounds = np.cumsum(np.bincount(keys, minlength=n))[:-1]
    return np.split(data[order], bounds)


class _PartitionOp(_BroadcastOp):
    def __init__(self, fn: Callable[[Any], Any], sinks: tuple[Sink[Any, Any], ...]) -> None:
        super().__init__(sinks)
        self.fn = fn
        self.name = f"partition({callable_name(fn)}, {len(sinks)})"

    def writer(self, ctx: Context) -> SinkWriter[Any, tuple[Any, ...]]:
        return _PartitionWriter(_Branches(ctx, self.name, self.sinks), self.fn)


def partition(fn: Callable[[Any], Any], *sinks: Sink[Any, Any]) -> Sink[Any, tuple[Any, ...]]:
    """Route each item to one sink: ``sinks[fn(item) % len(sinks)]``.

    On batches ``fn(array)`` returns an integer array (one per row) and each batch is
    split into per-branch batches with vectorized masks, e.g.
    ``partition(lambda b: b["sensor"], sink_a, sink_b)``. The result is the tuple of the
    sinks' results.
    """
    if not sinks:
        raise ValueError("partition() needs at least one sink")
    refuse_async(
        fn,
        "partition()",
        "compute the branch number in a map(fn, concurrency=n) before it "
        "(partition's function is sync)",
    )
    return Sink(_PartitionOp(fn, sinks))

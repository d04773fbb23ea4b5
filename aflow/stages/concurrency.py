"""Concurrent stages: async functions with a concurrency limit, sync functions in threads.

Up to ``concurrency`` calls run at once. With ``ordered=True`` results leave in input order;
with ``ordered=False`` each leaves as soon as it is ready, so one slow call never holds back
the others (no head-of-line blocking). Either way a slot is freed only once its result has
been handed downstream, so memory stays bounded by ``concurrency`` results.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..abc import (
    AsyncOperator,
    Barrier,
    Batch,
    Closed,
    Context,
    Inbox,
    Message,
    Outlet,
    callable_name,
    is_async_callable,
    locate,
)
from ..flow import Stage
from ..policies import apply_policy
from ..stats import StageCounters
from ._function import FunctionOp

__all__ = ["concurrent", "concurrent_name", "threaded"]

Work = Callable[[Message, StageCounters, anyio.CapacityLimiter], Awaitable[list[Message]]]
"""Computes one unit's output; the limiter (one per run) bounds worker threads."""


class _ConcurrentOp(AsyncOperator):
    # A checkpoint barrier leaves after the outputs of every message received before it
    # (in order: after its predecessors; unordered: once the calls in flight are done).
    handles_barriers = True

    def __init__(
        self,
        name: str,
        work: Work,
        split: Callable[[Message], list[Message]],
        concurrency: int,
        ordered: bool,
        buffer: int | None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"{name}: concurrency={concurrency} must be at least 1")
        self.name = name
        self.work = work
        self.split = split
        self.concurrency = concurrency
        self.ordered = ordered
        self.buffer = buffer

    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        emit, counters = out.emit, out.counters
        state = _State(self, emit, counters)
        async with anyio.create_task_group() as tg:
            state.tg = tg
            tg.start_soon(state.emitter)
            await state.feed(inbox)
        if state.error is not None:
            raise state.error
        if state.closed:
            raise Closed


class _State:
    """One run of a concurrent stage: a feeder, workers and an emitter."""

    def __init__(
        self,
        op: _ConcurrentOp,
        emit: Callable[[Message | Barrier], Awaitable[None]],
        counters: StageCounters,
    ) -> None:
        self.op = op
        self.emit = emit
        self.counters = counters
        self.slots = anyio.Semaphore(op.concurrency)
        self.results_tx, self.results_rx = anyio.create_memory_object_stream[
            tuple[int, list[Message] | Barrier]
        ](op.concurrency)
        self.error: BaseException | None = None
        self.closed = False
        self.limiter = anyio.CapacityLimiter(op.concurrency)
        self.tg: TaskGroup

    async def feed(self, inbox: Inbox) -> None:
        seq = 0
        with self.results_tx:
            async for item in inbox:
                msg: Message | Barrier = item  # barriers too: handles_barriers
                if isinstance(msg, Barrier):
                    await self.barrier(seq, msg)
                    seq += 1
                    continue
                for unit in self.op.split(msg):
                    await self.slots.acquire()
                    self.tg.start_soon(self.worker, seq, unit, self.results_tx.clone())
                    seq += 1

    async def worker(self, seq: int, unit: Message, tx: Any) -> None:
        with tx:
            t0 = time.perf_counter()
            try:
                out = await self.op.work(unit, self.counters, self.limiter)
            except Exception as exc:
                self.fail(locate(exc, self.op.name, unit))
                return
            self.counters.busy_seconds += time.perf_counter() - t0
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await tx.send((seq, out))  # the emitter may have stopped (error, early end)

    async def barrier(self, seq: int, barrier: Barrier) -> None:
        """Queue ``barrier`` behind the outputs of every unit started before it."""
        if self.op.ordered:  # the emitter hands it on in its place in the sequence
            await self.results_tx.send((seq, barrier))
            return
        # Unordered: a slot comes back once its output was emitted; holding them all
        # means nothing is in flight, so the barrier follows every earlier output.
        n = self.op.concurrency
        for _ in range(n):
            await self.slots.acquire()
        try:
            await self.results_tx.send((seq, barrier))
        finally:
            for _ in range(n):
                self.slots.release()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.tg.cancel_scope.cancel()

    async def emitter(self) -> None:
        pending: dict[int, list[Message] | Barrier] = {}
        next_seq = 0
        try:
            with self.results_rx:
                async for seq, out in self.results_rx:
                    if not self.op.ordered:
                        if type(out) is Barrier:
                            await self.emit(out)
                        else:
                            await self._send(out)  # type: ignore[arg-type]
                        continue
                    pending[seq] = out
                    ready: list[Message | Barrier] = []
                    while next_seq in pending:
                        done = pending.pop(next_seq)
                        next_seq += 1
                        if type(done) is Barrier:
                            ready.append(done)  # took no slot
                        else:
                            ready.extend(done)  # type: ignore[arg-type]
                            self.slots.release()
                    await self._send(_coalesce(ready))
        except Closed:
            self.closed = True
            self.tg.cancel_scope.cancel()
        except Exception as exc:  # raised downstream (fused stages, sink): as itself
            self.fail(exc)

    async def _send(self, msgs: list[Message | Barrier]) -> None:
        for m in msgs:
            await self.emit(m)
        if not self.op.ordered:
            self.slots.release()


def _coalesce(msgs: list[Message | Barrier]) -> list[Message | Barrier]:
    """Join runs of element chunks into one chunk (fewer, larger messages downstream)."""
    out: list[Message | Barrier] = []
    for m in msgs:
        if type(m) is list and out and type(out[-1]) is list:
            out[-1] = [*out[-1], *m]
        else:
            out.append(m)
    return out


def _split_elements(msg: Message) -> list[Message]:
    if isinstance(msg, Batch):
        return [msg]
    return [[item] for item in msg]


def _whole(msg: Message) -> list[Message]:
    return [msg]


def concurrent(
    op: FunctionOp,
    fn: Callable[[Any], Any],
    *,
    concurrency: int,
    ordered: bool,
    thread: bool,
    buffer: int | None,
) -> Stage[Any, Any]:
    """``map``, ``filter`` or ``flat_map`` as a stage: ``op`` fused with its neighbours
    (a sync ``fn``, ``concurrency=1``), in worker threads (``thread=True`` or a sync ``fn``
    with ``concurrency > 1``), or awaiting an async ``fn`` up to ``concurrency`` calls at
    once.

    ``op`` is the stage's sync form: its ``shape`` turns one item and ``fn``'s awaited
    result into the stage's output."""
    is_async = is_async_callable(fn)
    if not (is_async or thread or concurrency != 1):
        return Stage(op)
    if thread or not is_async:
        return threaded(op, concurrency=concurrency, buffer=buffer, ordered=ordered)

    async def work(
        unit: Message, counters: StageCounters, limiter: anyio.CapacityLimiter
    ) -> list[Message]:
        value = unit.data if isinstance(unit, Batch) else unit[0]
        try:
            result = await fn(value)
        except Exception as exc:
            if op.on_error == "raise":
                raise
            prov = unit.provenance if isinstance(unit, Batch) else None
            outs = await apply_policy(
                op.on_error,
                value,
                exc,
                op.name,
                prov,
                counters,
                again=lambda: _call_async(fn, value),
            )
            if not outs:
                return []
            result = outs[0]
        return op.shape(unit, result)

    return Stage(_ConcurrentOp(op.name, work, _split_elements, concurrency, ordered, buffer))


def concurrent_name(kind: str, fn: Callable[..., Any], concurrency: int, thread: bool) -> str:
    """``map(fn)``, ``map(fn, threads=4)`` or ``map(fn, concurrency=4)``."""
    if not (thread or concurrency != 1 or is_async_callable(fn)):
        return f"{kind}({callable_name(fn)})"
    how = "threads" if thread or not is_async_callable(fn) else "concurrency"
    return f"{kind}({callable_name(fn)}, {how}={concurrency})"


async def _call_async(fn: Callable[[Any], Any], value: Any) -> list[Any]:
    return [await fn(value)]


def threaded(
    op: FunctionOp, *, concurrency: int, buffer: int | None, ordered: bool = True
) -> Stage[Any, Any]:
    """Run a stateless function step in worker threads, one message per call.

    With an error policy, items are applied one by one in the thread and only the failed
    ones are handed to the policy (retries run in a thread too), so a function is never
    called twice on an item that succeeded, nor on the event loop's thread.
    """
    runner = op.start()
    name = op.name if "thread" in op.name else f"{op.name}[threads={concurrency}]"

    async def work(
        unit: Message, counters: StageCounters, limiter: anyio.CapacityLimiter
    ) -> list[Message]:
        if not runner.guarded:
            return await anyio.to_thread.run_sync(runner.process, unit, limiter=limiter)
        if isinstance(unit, Batch):
            try:
                return await anyio.to_thread.run_sync(op.apply_batch, unit, limiter=limiter)
            except Exception as exc:
                return await apply_policy(
                    op.on_error,
                    unit.data,
                    exc,
                    name,
                    unit.provenance,
                    counters,
                    again=lambda: anyio.to_thread.run_sync(op.apply_batch, unit, limiter=limiter),
                )
        results = await anyio.to_thread.run_sync(_apply_each, op, unit, limiter=limiter)
        out: list[Any] = []
        for item, result in zip(unit, results, strict=True):
            if isinstance(result, Exception):
                result = await apply_policy(
                    op.on_error,
                    item,
                    result,
                    name,
                    None,
                    counters,
                    again=lambda item=item: anyio.to_thread.run_sync(  # type: ignore[misc]
                        op.apply_one, item, limiter=limiter
                    ),
                )
            out.extend(result)
        return [out] if out else []

    return Stage(_ConcurrentOp(name, work, _whole, concurrency, ordered, buffer))


def _apply_each(op: FunctionOp, items: list[Any]) -> list[list[Any] | Exception]:
    """``op.apply_one`` on every item, keeping failures in place (runs in a thread)."""
    results: list[list[Any] | Exception] = []
    for item in items:
        try:
            results.append(op.apply_one(item))
        except Exception as exc:
            results.append(exc)
    return results

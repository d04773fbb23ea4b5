"""The primitive pieces a flow is made of, as the runtime sees them.

* :class:`ChunkOp` — a synchronous step. Consecutive chunk ops are fused into one task: a
  message passes through all of them with no channel hop in between.
* :class:`TaskOp` — an asynchronous step with its own task and its own input buffer
  (async functions, concurrency, timers, threads).
* :class:`Source` — produces messages; one task, with the chunk ops that follow it.
* :class:`SinkWriter` — consumes messages at the end; fused into the last task when it
  never waits for long, else given a task and an input buffer of its own.

Each is a *description*: ``start()`` / ``writer()`` make the fresh per-run state, which is
what makes a flow re-runnable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio

from ._message import Batch, Message
from .policies import ErrorPolicy, check_policy, recover

if TYPE_CHECKING:
    from ._runtime import RunContext
    from .stats import StageCounters

__all__ = [
    "ChunkOp",
    "ChunkRunner",
    "Emit",
    "FunctionOp",
    "Op",
    "Outlet",
    "SinkOp",
    "SinkWriter",
    "Source",
    "TaskOp",
]

R_co = TypeVar("R_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class Emit(Protocol):
    """Hands a message downstream; blocks while the downstream buffer is full."""

    async def __call__(self, msg: Message, /) -> None: ...


class Op:
    """A primitive stage description. ``name`` labels its statistics and errors."""

    name: str = "op"
    buffer: int | None = None
    max_bytes: int | None = None


class ChunkRunner:
    """Per-run state of a :class:`ChunkOp`.

    ``process`` maps one message to zero or more; ``finish`` flushes what is held at end of
    input; ``done`` turns true once the step wants no more input (``take``).
    """

    done: bool = False
    guarded: bool = False

    def process(self, msg: Message) -> list[Message]:
        raise NotImplementedError

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        """Like ``process`` but applying the stage's error policy item by item."""
        return self.process(msg)

    def finish(self) -> list[Message]:
        return []


class ChunkOp(Op):
    """A synchronous, fusable step."""

    @abstractmethod
    def start(self) -> ChunkRunner: ...


class FunctionOp(ChunkOp, ChunkRunner):
    """A stateless step applying a user function item by item, with an error policy.

    Subclasses implement ``apply_chunk`` (fast path over a list of elements), ``apply_batch``
    and ``apply_one`` (one element, for the guarded path). Being stateless, one object is
    both the description and its runner.
    """

    def __init__(self, name: str, on_error: ErrorPolicy) -> None:
        self.name = name
        self.on_error = check_policy(on_error)
        self.guarded = on_error != "raise"

    def start(self) -> ChunkRunner:
        return self

    def process(self, msg: Message) -> list[Message]:
        if isinstance(msg, Batch):
            return self.apply_batch(msg)
        out = self.apply_chunk(msg)
        return [out] if out else []

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        if isinstance(msg, Batch):
            try:
                return self.apply_batch(msg)
            except Exception as exc:
                outs = await recover(
                    self.on_error,
                    lambda: self.apply_batch(msg),
                    msg.data,
                    exc,
                    self.name,
                    msg.provenance,
                    counters,
                )
                return outs
        out: list[Any] = []
        for item in msg:
            try:
                out.extend(self.apply_one(item))
            except Exception as exc:
                out.extend(
                    await recover(
                        self.on_error,
                        lambda item=item: self.apply_one(item),  # type: ignore[misc]
                        item,
                        exc,
                        self.name,
                        None,
                        counters,
                    )
                )
        return [out] if out else []

    @abstractmethod
    def apply_chunk(self, items: list[Any]) -> list[Any]: ...

    @abstractmethod
    def apply_one(self, item: Any) -> list[Any]: ...

    @abstractmethod
    def apply_batch(self, batch: Batch) -> list[Message]: ...


class Inbox(Protocol):
    """The receiving end of a task's input buffer."""

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def receive(self) -> Message: ...


class TaskOp(Op):
    """An asynchronous step with its own task and input buffer."""

    @abstractmethod
    async def run(self, inbox: Inbox, emit: Emit, ctx: RunContext, counters: StageCounters) -> None:
        """Consume ``inbox`` until it ends, calling ``emit`` for each output message.

        Return normally at end of input after flushing any held state through ``emit``.
        """


class Outlet(Protocol):
    """What a source sees of the run: where to emit and whether to stop."""

    async def emit(self, msg: Message, /) -> None: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def counters(self) -> StageCounters | None:
        """The source's own statistics (to count ``errors``)."""
        ...

    def pull_scope(self) -> AbstractContextManager[anyio.CancelScope]: ...

    @property
    def backlogged(self) -> bool:
        """Whether an emit would wait now (the buffer after the source is full): a source
        may gather more input into one message meanwhile."""
        ...


class Source(ABC):
    """Produces messages. ``produce`` is called once per run with fresh state."""

    name: str = "source"

    @abstractmethod
    async def produce(self, out: Outlet, ctx: RunContext) -> None:
        """Emit every message of the source, then return.

        Check ``out.stopping`` between messages and wrap waits for new data in
        ``with out.pull_scope():`` so a graceful stop can interrupt them. Close every resource
        you open before returning (``async with``).
        """


class SinkWriter(Generic[T_contra, R_co]):
    """Per-run state of a sink: open, write, flush, close, then give a result.

    Third-party sinks subclass this and a :class:`SinkOp` whose ``writer()`` makes one.
    ``write`` gets one item: an element, or a batch's array. Override ``write_chunk`` and
    ``write_batch`` to take a whole chunk or the batch envelope (with its provenance).
    ``aclose`` must be idempotent; the runtime calls it under a shielded cancel scope.
    """

    async def __aenter__(self) -> SinkWriter[T_contra, R_co]:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    async def open(self) -> None:
        """Acquire resources (files, sockets). Called once, before the first write."""

    @abstractmethod
    async def write(self, item: T_contra) -> None: ...

    async def write_chunk(self, items: list[T_contra]) -> None:
        for item in items:
            await self.write(item)

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)  # type: ignore[arg-type]

    async def flush(self) -> None:
        """Make written data durable. Called at end of input and on graceful stop."""

    async def aclose(self) -> None:
        """Release resources. Idempotent; also called after errors and cancellation."""

    @abstractmethod
    def result(self) -> R_co:
        """The sink's result, read once the run is over."""


class SinkOp(Op, Generic[T_contra, R_co]):
    """A sink description.

    Attributes:
        fused: True when writes never wait for long, so the sink can run inside the task of
            the step before it (no extra hop). Sinks that await I/O or user coroutines say
            False and get a task and input buffer of their own.
    """

    fused: bool = True

    @abstractmethod
    def writer(self, ctx: RunContext) -> SinkWriter[T_contra, R_co]: ...


def callable_name(fn: Callable[..., Any]) -> str:
    """A short name for a user function: its ``__name__``, or its type's name."""
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None and callable(inner):
        return callable_name(inner)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else str(name)


def iter_ops(obj: Any) -> Iterator[Op]:
    """Flatten a stage (or chain of stages) into its primitive ops."""
    yield from obj.ops()

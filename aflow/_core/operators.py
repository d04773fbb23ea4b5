"""The pieces a flow is made of, as the runtime sees them (made public by :mod:`aflow.abc`).

* :class:`Operator` — a synchronous stateful step: ``start()`` makes a fresh
  :class:`Processor` per run, which maps each message to zero or more and flushes what it
  holds at end of input. Consecutive operators are fused into one task (no buffer between).
* :class:`AsyncOperator` — an asynchronous step with its own task and input buffer (async
  functions, concurrency, timers, threads).
* :class:`Source` — produces messages into an :class:`Outlet`; one task, with the
  operators fused behind it.
* :class:`SinkOperator` — makes a :class:`SinkWriter` per run, which consumes messages at
  the end of the flow.
* :class:`Context` — what any of them may ask of the run it belongs to.

Each is a *description*: ``start()`` / ``writer()`` / ``produce()`` make the per-run state,
which is what makes a flow re-runnable.
"""

from __future__ import annotations

import functools
import inspect
import pickle
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import anyio

from ..errors import FlowDefinitionError
from .messages import Barrier, Batch, Message

if TYPE_CHECKING:
    from ..stats import StageCounters
    from .buffers import Buffer

__all__ = [
    "AsyncOperator",
    "Closed",
    "Context",
    "Inbox",
    "Op",
    "Operator",
    "Outlet",
    "Processor",
    "SavedAttributes",
    "SinkOperator",
    "SinkWriter",
    "Source",
    "callable_name",
    "chain_buffers",
    "is_closed",
]

R_co = TypeVar("R_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class Closed(Exception):
    """Raised by ``emit`` when nothing downstream wants more messages (every consumer
    stopped, or a ``take`` is satisfied). Let it propagate: the runtime ends the task
    quietly, after the ``finally`` blocks that close what it opened."""


def is_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is :class:`Closed`, or an exception group made only of them (a
    source that emits from several tasks of its own task group gets one per task)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_closed(e) for e in exc.exceptions)
    return isinstance(exc, Closed)


class Op:
    """A stage description. ``name`` labels its statistics and errors.

    Attributes:
        name: shown in statistics and in error notes.
        buffer: capacity in messages of the stage's input buffer (``None``: the run's).
        buffer_bytes: bytes ceiling of that buffer (``None``: the run's share).
    """

    name: str = "op"
    buffer: int | None = None
    buffer_bytes: int | None = None

    def nested_buffers(self) -> int:
        """Buffers this stage adds inside itself (a routing sink's branches, say), so a
        run's ``max_bytes_in_flight`` can be shared among all of them. 0 for a plain stage."""
        return 0


class Processor:
    """Per-run state of an :class:`Operator`.

    ``process`` maps one message to zero or more; ``flush`` hands on what is held at end of
    input (or at a graceful stop); ``done`` turns true once the step wants no more input
    (``take``). ``guarded`` processors apply an error policy item by item instead, in
    ``process_guarded``.

    ``process``, ``flush`` and ``on_barrier`` should return a new ``list``: it is handed on
    as is (no copy), so the processor must not keep it and change or reuse it afterwards.
    Any other iterable (a generator, a tuple) works too, at the cost of a copy into a list.
    """

    done: bool = False
    guarded: bool = False

    def process(self, msg: Message) -> list[Message]:
        raise NotImplementedError

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        """Like ``process`` but applying the stage's error policy item by item."""
        return self.process(msg)

    def flush(self) -> list[Message]:
        """Messages held back so far, handed on at end of input. Default: none."""
        return []

    def on_barrier(self, epoch: int) -> list[Message]:
        """Messages to hand on before a checkpoint barrier passes (see the "Delivery
        guarantees" page). Default: none. A stage that holds rows it would rather not
        snapshot (a count batcher) returns them here, as a partial flush."""
        return []

    def snapshot(self) -> Any:
        """The stage's state as of the barrier passing, to commit with the sources'
        positions: any picklable object, or ``None`` (the default) for a stateless stage.
        Called right after ``on_barrier``; the object must not change afterwards (copy
        mutable state)."""
        return None

    def restore(self, state: Any) -> None:
        """Take back a state returned by :meth:`snapshot` in an earlier run, before the
        first message of a run resumed from a checkpoint. Default: nothing (a stage that
        snapshots must override it)."""


class SavedAttributes:
    """A mixin for a :class:`Processor` or :class:`SinkWriter` whose state is some of
    its attributes: ``snapshot`` pickles the attributes named in ``saved`` (a copy, made
    at the barrier), ``restore`` sets them back."""

    saved: tuple[str, ...] = ()

    def snapshot(self) -> Any:
        return pickle.dumps({name: getattr(self, name) for name in self.saved}, protocol=5)

    def restore(self, state: Any) -> None:
        for name, value in pickle.loads(state).items():
            setattr(self, name, value)


class Operator(Op):
    """A synchronous, fusable step: ``start()`` returns a fresh :class:`Processor`."""

    @abstractmethod
    def start(self) -> Processor: ...


class Inbox(Protocol):
    """The receiving end of a task's input buffer."""

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def receive(self) -> Message: ...


class Outlet(Protocol):
    """What a source or an async operator sees of the run: where to emit, whether to stop,
    and its own statistics."""

    async def emit(
        self,
        msg: Message | Barrier,
        /,
        *,
        position: tuple[str, Any] | None = None,
        state: Any = None,
    ) -> None:
        """Hand ``msg`` on; waits while the buffer downstream is full (backpressure).

        Args:
            msg: a chunk of elements or one batch.
            position: for a resumable source, ``(key, value)``: once ``msg`` is handed on,
                the source's position map holds ``map[key] = value`` (``value``
                JSON-serialisable: a file's offset, a broker's last id). The map as of
                each checkpoint barrier is what a restart resumes from
                (:attr:`resume_positions`) and what :meth:`on_commit` callbacks get.
            state: with a :class:`Barrier`, for an async operator that
                ``handles_barriers`` and keeps state across messages: its state as of
                the barrier (picklable, not changed afterwards), committed with the
                epoch and given back by :attr:`restored_state` after a restart.

        Raises:
            Closed: nothing downstream wants more (let it propagate).

        A source made of other flows also hands on the :class:`Barrier` objects it
        receives from them, as they come.
        """
        ...

    @property
    def resume_positions(self) -> dict[str, Any]:
        """The committed position map of this source in the checkpoint the run resumes
        from (empty without a checkpoint, or on a first run). Read it at the start of
        ``produce`` and start after those positions. A resumed run's position map
        starts as this one: entries it does not touch again stay."""
        ...

    def update_positions(self, changes: Mapping[str, Any]) -> None:
        """Set entries of this source's position map without emitting anything (a value
        ``None`` removes its key): what a source learns at its start, such as input it
        will never read, or entries of input that is gone. Committed with the next
        barrier, like the positions given to :meth:`emit`."""
        ...

    def on_commit(self, fn: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Register ``async fn(positions)``, called after every commit covering this
        source: ``positions`` is its position map as of the barrier, now durably handled
        by every sink (a broker source acknowledges up to there). Registering starts
        commits every ``commit_interval`` even without a checkpoint store."""
        ...

    async def end(self, *, commit_timeout: float = 10.0) -> None:
        """End this source's output now, as returning from ``produce`` would (the stages
        fused after it flush, downstream sees the end), then wait until the run's final
        commit has called this source's :meth:`on_commit` callbacks, at most
        ``commit_timeout`` seconds (at once without callbacks). A broker source calls it
        after a graceful stop, before closing its connection, so it acknowledges what
        the final commit covers: a restart then redelivers nothing. Emit nothing after.
        """
        ...

    async def catch_up_barriers(self) -> None:
        """For a source made of other flows (``composite``), between its sub-flows: hand
        on the checkpoint barriers injected since it last handed one on. Its sub-flows'
        sources get the barriers injected while they run; one injected while none of
        them ran (between two sub-flows, before the first) would otherwise never pass
        it, and a ``merge`` downstream would wait for it. Call it when everything the
        last sub-flow emitted has been handed on, and start the next sub-flows right
        after it returns, without awaiting in between. Does nothing for other sources or
        in a run without checkpoints."""
        ...

    @property
    def restored_state(self) -> Any:
        """For an async operator: the ``state`` it passed with the last committed barrier
        in the checkpoint the run resumes from (``None`` when there is none). Read it at
        the start of ``run``."""
        ...

    @property
    def stopping(self) -> bool:
        """True once a graceful stop was asked for: a source stops reading new input."""
        ...

    @property
    def checkpointed(self) -> bool:
        """Whether the run commits positions to a checkpoint store: what a source does
        not hand on at a stop is then read again by the next run (it need not report
        it)."""
        ...

    @property
    def counters(self) -> StageCounters:
        """The stage's own statistics (to count ``errors`` and ``retries``)."""
        ...

    def pull_scope(self) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope to wrap waits for new input in; a graceful stop cancels it."""
        ...

    @property
    def backlogged(self) -> bool:
        """Whether an emit would wait now (the buffer after the source is full): a source
        may gather more input into one message meanwhile."""
        ...


class AsyncOperator(Op):
    """An asynchronous step with its own task and input buffer.

    Attributes:
        handles_barriers: False (the default): the inbox handed to ``run`` forwards
            checkpoint barriers itself (it emits each one before returning the next
            message), which is right for an operator that emits what it owes for one
            message before receiving the next. An operator that holds messages across
            receives (concurrency, time batching) sets True: its inbox then also yields
            :class:`~aflow.abc.Barrier` objects, and it must ``await out.emit(barrier)``
            once everything received before the barrier has been emitted (or pass
            what it still holds as ``out.emit(barrier, state=...)``, and take it back
            from ``out.restored_state`` when it starts).
    """

    handles_barriers: bool = False

    @abstractmethod
    async def run(self, inbox: Inbox, out: Outlet, ctx: Context) -> None:
        """Consume ``inbox`` until it ends, calling ``out.emit`` for each output message.

        Return normally at end of input after flushing any held state through ``emit``.
        """


class Source(ABC):
    """Produces messages. ``produce`` is called once per run with fresh state.

    Attributes:
        name: shown in statistics and in error notes.
        resumable: True for a source that passes ``position=`` with what it emits and
            starts after ``out.resume_positions``: a restart from a checkpoint resumes it
            where the last commit left it. False (the default): a restart starts it
            afresh (a run with a checkpoint warns once).
        composite: True for a source made of other flows (``merge``, ``concat``): its
            inner sources get the checkpoint barriers, and it hands on those it receives
            (``emit`` accepts them).
    """

    name: str = "source"
    resumable: bool = False
    composite: bool = False

    def nested_buffers(self) -> int:
        """Buffers this source adds inside itself (sub-flows it runs). 0 by default."""
        return 0

    def identity(self) -> str:
        """What a checkpoint's positions of this source depend on, in words: its name
        by default. A resumable source whose options change what its positions mean
        (which files, following them or not, their framing) includes them, so a
        checkpoint is not taken up by the same source with other options
        (:class:`~aflow.CheckpointMismatch`). Must be the same in every run of the
        same flow."""
        return self.name

    def size(self) -> tuple[int, str] | None:
        """How much the source will emit, when known before it runs: ``(amount, unit)``,
        unit ``"rows"`` or ``"bytes"``, in the units of its ``items_out``; ``None`` (the
        default) when unknown. May block (files are looked at): call it in a thread."""
        return None

    @abstractmethod
    async def produce(self, out: Outlet, ctx: Context) -> None:
        """Emit every message of the source, then return.

        Check ``out.stopping`` between messages and wrap waits for new data in
        ``with out.pull_scope():`` so a graceful stop can interrupt them. Close every resource
        you open before returning (``async with``).
        """


class SinkWriter(Generic[T_contra, R_co]):
    """Per-run state of a sink: open, write, flush, close, then give a result.

    ``write`` gets one item: an element, or a batch's array. Override ``write_chunk`` and
    ``write_batch`` to take a whole chunk or the batch envelope (with its provenance).
    ``aclose`` must be idempotent; the runtime calls it under a shielded cancel scope, also
    after errors and cancellation.
    """

    async def __aenter__(self) -> SinkWriter[T_contra, R_co]:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    def attach(self, counters: StageCounters, producer: anyio.CancelScope) -> None:
        """Called once by the runtime before anything else: the sink's own statistics and
        the cancel scope of the task feeding it (cancel it to stop that task, as a router
        does once all its branches stopped). Default: nothing."""

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

    async def commit(self, epoch: int) -> Any:
        """A checkpoint barrier reached the sink: make what was written so far durable and
        return the sink's state to commit with the sources' positions (or ``None``).

        Called only in runs with a checkpoint or acknowledging sources, once per epoch
        and once more after ``flush`` at end of input. The default returns
        :meth:`snapshot` (a sink whose ``write`` returns once the item is handled, as a
        callback's, needs nothing more). A file sink flushes and syncs here.
        """
        return self.snapshot()

    def snapshot(self) -> Any:
        """The sink's state (aggregates, collected rows) as of now, picklable, or ``None``
        (the default) for a sink whose effect is outside aflow."""
        return None

    def restore(self, state: Any) -> None:
        """Take back a state returned by :meth:`commit` in an earlier run, before
        ``open``, when a run resumes from a checkpoint. Default: nothing."""

    def close_input(self) -> None:
        """Called when no more input will come (before ``flush``). Default: nothing."""

    async def aclose(self) -> None:
        """Release resources. Idempotent; also called after errors and cancellation."""

    @abstractmethod
    def result(self) -> R_co:
        """The sink's result, read once the run is over."""


class SinkOperator(Op, Generic[T_contra, R_co]):
    """A sink description: ``writer(ctx)`` makes a fresh :class:`SinkWriter` per run.

    Attributes:
        fused: True when writes never wait for long, so the sink can run inside the task of
            the step before it (no extra hop). Sinks that await I/O or user coroutines say
            False and get a task and input buffer of their own.
    """

    fused: bool = True

    @abstractmethod
    def writer(self, ctx: Context) -> SinkWriter[T_contra, R_co]: ...


class Context(Protocol):
    """What a source, operator or sink may ask of the run it belongs to.

    Most never need it; sources made of other flows (``merge``), routing sinks
    (``broadcast``) and servers (one task per connection) do.
    """

    @property
    def stopping(self) -> bool:
        """True once a graceful stop was asked for."""
        ...

    def new_counters(self, name: str) -> StageCounters:
        """A new statistics record, shown as a stage of the run."""
        ...

    def new_buffer(self, receiver: StageCounters, op: Op | None = None) -> Buffer:
        """A bounded buffer delivering into ``receiver`` (sized by ``op``, else the run)."""
        ...

    def start_chain(
        self,
        source: Source | Buffer,
        ops: Iterable[Op],
        into: Buffer | SinkOperator[Any, Any],
        *,
        name: str | None = None,
    ) -> SinkWriter[Any, Any] | None:
        """Start ``source`` (or a buffer someone else feeds) and ``ops`` in the run's task
        group, feeding ``into``; return the sink's writer when ``into`` is a sink."""
        ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """Run ``fn(*args)`` in the run's task group. An exception fails the run, with a
        note naming ``name``; :class:`Closed` ends the task quietly."""
        ...

    def reuse_counters(self) -> AbstractContextManager[Callable[[], None]]:
        """Inside the block, chains started get statistics records; calling the yielded
        function after they finished lets the next chains of the same names add to them
        (``repeat`` shows one record per stage, not one per repetition)."""
        ...

    def repetitions(self, name: str) -> tuple[str, int]:
        """For a source that runs a flow several times in a row (``repeat``), named
        ``name``: its id, and the repetition a run resumed from a checkpoint goes on
        with (0 when none). Call it once, when the source starts."""
        ...

    def repetition(self, ident: str, n: int, restore: bool) -> AbstractContextManager[None]:
        """Start repetition ``n`` of the repeat ``ident`` inside the block: its sources,
        stages and sinks get the same ids in every repetition, and their positions
        record ``n``. ``restore``: it is the repetition the checkpoint was in (its
        positions and states are resumed; any other starts afresh)."""
        ...


def chain_buffers(source: Source, ops: Iterable[Op]) -> int:
    """Buffers a chain adds to a run (to share ``max_bytes_in_flight`` among them)."""
    return source.nested_buffers() + sum(op_buffers(op) for op in ops)


def op_buffers(op: Op) -> int:
    """Buffers one stage adds: its own input buffer, if it has a task, and nested ones."""
    own = isinstance(op, AsyncOperator) or (isinstance(op, SinkOperator) and not op.fused)
    return int(own) + op.nested_buffers()


def callable_name(fn: Callable[..., Any]) -> str:
    """A short name for a user function: its ``__name__``, or its type's name."""
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None and callable(inner):
        return callable_name(inner)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else str(name)


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives something to await or iterate asynchronously: an
    ``async def`` function or method, an async generator function, a
    ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    return async_kind(fn) is not None


def async_kind(fn: object) -> Literal["coroutine", "generator"] | None:
    """``"coroutine"`` for an ``async def`` function (or a ``functools.partial`` of one,
    or an object whose ``__call__`` is one), ``"generator"`` for an async generator
    function, ``None`` for anything else."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not (inspect.isroutine(fn) or isinstance(fn, type)):
        fn = getattr(fn, "__call__", fn)  # noqa: B004 - the method itself, to inspect it
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    if inspect.isasyncgenfunction(fn):
        return "generator"
    return None


def refuse_async(
    fn: Callable[..., Any],
    where: str,
    instead: str,
    *,
    kinds: tuple[str, ...] = ("coroutine", "generator"),
) -> None:
    """Raise :class:`~aflow.FlowDefinitionError` if ``fn`` is async, of one of ``kinds``
    (see :func:`async_kind`): ``where`` calls it without awaiting or iterating its
    result asynchronously, which would be silently wrong. ``instead`` says what to write.
    """
    kind = async_kind(fn)
    if kind not in kinds:
        return
    what = "an async function" if kind == "coroutine" else "an async generator function"
    raise FlowDefinitionError(
        f"{where} got {what} ({callable_name(fn)}), but calls it without awaiting; {instead}"
    )

"""Delivery guarantees: checkpoint barriers, the commit coordinator and checkpoint stores.

Every ``commit_interval`` seconds the coordinator injects ``Barrier(n)`` into every live
source (a leaf, not a source made of other flows). The barrier travels in-band behind what
the source emitted before it: fused stages hand on what they hold (``on_barrier``) and
snapshot their state, fan-outs copy it to every branch, fan-ins align it (an input that
delivered it sends nothing more until every input did), and sinks ``commit``. Once every
sink has committed epoch ``n``, the sources' positions at the barrier and every snapshot of
epoch ``n`` go into the store in one transaction; then the sources' ``on_commit``
callbacks run (brokers acknowledge there). A graceful end commits once more, with the final
positions, so a restart after it re-delivers nothing.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pickle
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import anyio

from ..errors import CheckpointInUse, CheckpointMismatch, NotResumableWarning
from .messages import Barrier

if TYPE_CHECKING:  # imported where a store opens: most runs keep no checkpoint
    import sqlite3

__all__ = [
    "DEFAULT_COMMIT_INTERVAL",
    "MISSING",
    "REPETITION",
    "Checkpoint",
    "CheckpointArg",
    "CheckpointStore",
    "Delivery",
    "SqliteStore",
    "describe_flow",
    "open_store",
]

DEFAULT_COMMIT_INTERVAL = 1.0

MISSING = object()
"""What :meth:`Delivery.state_for` gives for an id without a committed state."""

REPETITION = "@repetition"
"""The key of a source's position map (as committed) holding the repetition of the
``repeat`` it runs in; sources never see it."""


@dataclass(slots=True)
class _IdScope:
    """The ids of one repetition of a ``repeat``: ``prefix`` (the repeat's own id) and
    counts of their own, so every repetition's sources and stages get the same ids."""

    prefix: str
    repetition: int
    restore: bool  # the repetition the loaded checkpoint was in: resume it
    counts: dict[str, int] = field(default_factory=dict)


# Tasks started inside a scope (a sub-flow's stages, a nested merge) copy it with their
# context.
_SCOPE: ContextVar[_IdScope | None] = ContextVar("aflow_id_scope", default=None)


@dataclass
class Checkpoint:
    """One committed checkpoint: what a restart resumes from.

    Attributes:
        epoch: the number of the last epoch it covers.
        fingerprint: a digest of the flow's structure; a restart of another flow from this
            checkpoint raises :class:`~aflow.CheckpointMismatch`.
        positions: per source id, its position map (JSON-serialisable values).
        states: per stage or sink id, its snapshot (any picklable object).
        description: the flow's structure in words (to say what differs).
    """

    epoch: int
    fingerprint: str
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints are kept. Both methods block; the runtime calls them in a worker
    thread. ``commit`` must be atomic and durable: after it returns, ``load`` gives the
    new checkpoint even after a crash of the process.

    A store may also define ``acquire()`` and ``close()`` (optional, together; called on
    the event loop's thread): a run calls ``acquire()`` as it starts (raise
    :class:`~aflow.CheckpointInUse` when another run owns the store) and ``close()``
    once it has ended, as :class:`SqliteStore` does. A store without ``acquire()`` is
    never closed by a run."""

    def load(self) -> Checkpoint | None:
        """The last committed checkpoint, or ``None`` when there is none yet."""
        ...

    def commit(self, checkpoint: Checkpoint) -> None:
        """Replace the stored checkpoint by ``checkpoint``, atomically."""
        ...


class SqliteStore:
    """A checkpoint store in one SQLite file (WAL journal, ``synchronous=FULL``): no
    server, atomic commits that survive a crash of the process or the machine.

    Positions are stored as JSON, states as pickles (protocol 5): load only checkpoints
    you wrote yourself.

    A run owns the file while it runs (:meth:`acquire` at its start, :meth:`close` at its
    end): it holds an exclusive lock on ``<path>-lock``, so a second run on the same
    file, in this process or another, raises :class:`~aflow.CheckpointInUse` instead of
    overwriting the first one's commits. The lock ends with its process: a crashed run
    does not leave the file locked. Loading a checkpoint to look at it takes no lock.

    Args:
        path: the database file (created with its table on first use).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._owner: int | None = None  # the descriptor of the locked ``<path>-lock``

    def acquire(self) -> None:
        """Own the file for a run until :meth:`close`.

        Raises:
            CheckpointInUse: another run (in this process or another) owns it.
        """
        lock_path = f"{self.path}-lock"
        fd = -1 if self._owner is not None else os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fd < 0:  # this very store object is in use by a run
                raise BlockingIOError
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if fd >= 0:
                os.close(fd)
            raise CheckpointInUse(
                f"checkpoint {str(self.path)!r} is in use by another run (it holds the lock "
                f"on {lock_path!r}): two runs on one checkpoint would overwrite each other's "
                "commits; give this run its own checkpoint path, or wait until the other "
                "run has ended"
            ) from None
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._owner = fd

    def _release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)  # closing the descriptor ends the lock
            self._owner = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        import sqlite3  # here, not with aflow: ~1 MiB resident a run without a store never uses

        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # another process reading the file (a look with the sqlite3 shell) is waited
            # for rather than failing with "database is locked"
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS aflow_checkpoint"
                " (id INTEGER PRIMARY KEY CHECK (id = 1), epoch INTEGER NOT NULL,"
                " fingerprint TEXT NOT NULL, description TEXT NOT NULL,"
                " positions TEXT NOT NULL, committed_at REAL NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS aflow_state (id TEXT PRIMARY KEY, data BLOB NOT NULL)"
            )
        except BaseException:
            db.close()
            raise
        return db

    def load(self) -> Checkpoint | None:
        """The last committed checkpoint, or ``None``."""
        with self._lock:
            db = self._conn()
            row = db.execute(
                "SELECT epoch, fingerprint, description, positions FROM aflow_checkpoint"
            ).fetchone()
            if row is None:
                return None
            states = {k: pickle.loads(v) for k, v in db.execute("SELECT id, data FROM aflow_state")}
        epoch, fingerprint, description, positions = row
        return Checkpoint(epoch, fingerprint, json.loads(positions), states, description)

    def commit(self, checkpoint: Checkpoint) -> None:
        """Replace the stored checkpoint, in one transaction."""
        positions = json.dumps(checkpoint.positions)
        states = [(k, pickle.dumps(v, protocol=5)) for k, v in checkpoint.states.items()]
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO aflow_checkpoint VALUES (1, ?, ?, ?, ?, ?)",
                    (
                        checkpoint.epoch,
                        checkpoint.fingerprint,
                        checkpoint.description,
                        positions,
                        time.time(),
                    ),
                )
                db.execute("DELETE FROM aflow_state")
                db.executemany("INSERT INTO aflow_state VALUES (?, ?)", states)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection (the store reopens it when used again) and give
        up the file if this store owned it (:meth:`acquire`)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"


CheckpointArg: TypeAlias = "str | os.PathLike[str] | CheckpointStore | None"
"""What ``run(checkpoint=...)`` takes: a path (a SQLite file), a store, or ``None``."""


def open_store(checkpoint: str | os.PathLike[str] | CheckpointStore) -> CheckpointStore:
    """The store for ``run(checkpoint=...)``: a path means a :class:`SqliteStore`."""
    if isinstance(checkpoint, (str, os.PathLike)):
        return SqliteStore(checkpoint)
    if isinstance(checkpoint, CheckpointStore):
        return checkpoint
    raise TypeError(
        f"checkpoint={checkpoint!r}: give a path (a SQLite file) or a CheckpointStore "
        "(an object with load() and commit(checkpoint))"
    )


def describe_flow(source: Any, ops: Any, sink: Any) -> str:
    """The structure of a flow in words: sources (by :meth:`~aflow.abc.Source.identity`),
    stages and sinks by name, branches and sub-flows included (what a checkpoint's
    fingerprint is made of)."""

    def src(s: Any) -> str:
        flows = getattr(s, "flows", None)
        inner = ""
        if flows:
            inner = "[" + "; ".join(chain(f.source, f.ops(), None) for f in flows) + "]"
        return f"{s.identity()}{inner}"

    def snk(k: Any) -> str:
        sinks = getattr(k, "sinks", None)
        inner = ""
        if sinks:
            inner = "[" + "; ".join(chain(None, x.pre_ops, x.terminal) for x in sinks) + "]"
        return f"{k.name}{inner}"

    def chain(s: Any, o: Any, k: Any) -> str:
        parts = ([src(s)] if s is not None else []) + [op.name for op in o]
        if k is not None:
            parts.append(snk(k))
        return " | ".join(parts)

    return chain(source, ops, sink)


class _Epoch:
    __slots__ = ("expected", "positions", "states")

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.positions: dict[str, dict[str, Any]] = {}
        self.states: dict[str, Any] = {}


class SourcePort(Protocol):
    """What the coordinator needs of a source segment."""

    source_id: str

    def position_map(self) -> dict[str, Any]:
        """The source's position map now, with its repetition inside a ``repeat``."""
        ...

    async def inject(self, barrier: Barrier) -> dict[str, Any] | None: ...


class Delivery:
    """One run's commit coordinator: ids of sources, stages and sinks, their resume state,
    the epochs in flight, and the task that injects barriers and commits."""

    def __init__(
        self,
        store: CheckpointStore | None,
        interval: float,
        description: str | Callable[[], str],
    ) -> None:
        if interval <= 0:
            raise ValueError(f"commit_interval={interval}: must be > 0 seconds")
        self.store = store
        self.interval = interval
        self._description = description
        self.loaded: Checkpoint | None = None
        self.active = False
        self.epoch = 0  # the last epoch injected
        self.committed_epoch = 0
        self._counts: dict[str, int] = {}
        self.sources: dict[str, SourcePort] = {}
        self.callbacks: list[tuple[str, Callable[[dict[str, Any]], Awaitable[None]]]] = []
        self.live_sinks: set[str] = set()
        self.final_positions: dict[str, dict[str, Any]] = {}
        self.final_states: dict[str, Any] = {}
        self.cleared: dict[str, int] = {}  # stages that ended holding nothing: from which epoch
        self.seen: dict[str, int] = {}  # each stage's last barrier (its state's epoch)
        self.committed_positions: dict[str, dict[str, Any]] = {}
        self.committed_states: dict[str, Any] = {}
        self.pending: dict[int, _Epoch] = {}
        self._wake: anyio.Event | None = None  # made by the coordinator, when it runs
        self._woken = False  # something happened while no coordinator was waiting
        self._warned: set[str] = set()
        self._start: Callable[[], None] | None = None
        self._started = False  # the coordinator task was started (it sets ``active``)
        self.failed: Callable[[], bool] = lambda: False  # the run has failed (no final commit)
        self.final_done = False
        self.abandoned = False  # a sink left its input unread (see sink_abandoned)
        self._final_committed: anyio.Event | None = None

    @functools.cached_property
    def description(self) -> str:
        """The flow's structure in words (made when a checkpoint needs it)."""
        d = self._description
        return d if isinstance(d, str) else d()

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of :attr:`description`."""
        import hashlib  # here, not with aflow: OpenSSL's digests, ~1 MiB resident

        return hashlib.sha256(self.description.encode()).hexdigest()[:16]

    @property
    def final_committed(self) -> anyio.Event:
        """Set once the final commit called back."""
        if self._final_committed is None:
            self._final_committed = anyio.Event()
        return self._final_committed

    def _wakeup(self) -> None:
        """Wake the coordinator (it looks at what changed)."""
        if self._wake is not None:
            self._wake.set()
        else:
            self._woken = True

    async def _wait(self) -> None:
        """Wait until :meth:`_wakeup` (at once if it was called since the last wait)."""
        if self._woken:
            self._woken = False
            return
        wake = self._wake = anyio.Event()
        try:
            await wake.wait()
        finally:
            self._wake = None

    # -- loading ----------------------------------------------------------------------
    async def load(self) -> None:
        """Read the store's last checkpoint; check it belongs to this flow."""
        store = self.store
        if store is None:
            return
        cp = await anyio.to_thread.run_sync(store.load)
        if cp is None:
            return
        if cp.fingerprint != self.fingerprint:
            raise CheckpointMismatch(
                f"checkpoint {store!r} was written by another flow:\n"
                f"  checkpoint: {cp.description}\n  this flow:  {self.description}\n"
                "use a new checkpoint path, or delete this one to start from the beginning"
            )
        self.loaded = cp
        self.epoch = self.committed_epoch = cp.epoch
        self.committed_positions = {k: dict(v) for k, v in cp.positions.items()}
        self.committed_states = dict(cp.states)

    def new_id(self, kind: str, name: str) -> str:
        """A stable id for a source, stage or sink: its kind, rank among its kind in the
        order the run builds them, and name; inside a repetition of a ``repeat``, the
        repeat's id, then the same within the repetition (the same in every one)."""
        scope = _SCOPE.get()
        counts = self._counts if scope is None else scope.counts
        n = counts.get(kind, 0)
        counts[kind] = n + 1
        if scope is None:
            return f"{kind}{n}:{name}"
        ident = f"{scope.prefix}{kind}{n}:{name}"
        if not scope.restore:  # a new incarnation: what an earlier one left is not its own
            self.final_states.pop(ident, None)
            self.cleared[ident] = self.epoch
        return ident

    def repetitions(self, name: str) -> tuple[str, int]:
        """For a ``repeat`` named ``name``: its id (the prefix of its repetitions' ids)
        and the repetition the loaded checkpoint was in (0 when none)."""
        prefix = self.new_id("repeat", name) + "/"
        reps = [
            int(p.get(REPETITION, 0))
            for k, p in self.committed_positions.items()
            if k.startswith(prefix) and self.loaded is not None
        ]
        return prefix, max(reps, default=0)

    @contextmanager
    def repetition(self, prefix: str, n: int, restore: bool) -> Iterator[None]:
        """Inside the block, ids are those of repetition ``n`` of the repeat ``prefix``;
        ``restore``: it is the one the loaded checkpoint was in (resume its positions
        and states; other repetitions start afresh)."""
        token = _SCOPE.set(_IdScope(prefix, n, restore and self.loaded is not None))
        try:
            yield
        finally:
            _SCOPE.reset(token)

    @staticmethod
    def current_repetition() -> int | None:
        """The repetition being built (``None`` outside a ``repeat``)."""
        scope = _SCOPE.get()
        return None if scope is None else scope.repetition

    def state_for(self, ident: str) -> Any:
        """The committed state of ``ident`` in the loaded checkpoint, or ``MISSING``."""
        scope = _SCOPE.get()
        if self.loaded is None or (scope is not None and not scope.restore):
            return MISSING
        return self.committed_states.get(ident, MISSING)

    def restore(self, ident: str, target: Any) -> None:
        """Give ``target`` (a processor or sink writer) its committed state, if any."""
        state = self.state_for(ident)
        if state is not MISSING:
            target.restore(state)

    def positions_for(self, ident: str) -> dict[str, Any]:
        """The committed position map of source ``ident`` (empty when none; inside a
        ``repeat``, empty unless it is the repetition the checkpoint was in)."""
        committed = self.committed_positions.get(ident, {})
        scope = _SCOPE.get()
        if scope is not None and (
            not scope.restore or committed.get(REPETITION, 0) != scope.repetition
        ):
            return {}
        return {k: v for k, v in committed.items() if k != REPETITION}

    # -- registration -------------------------------------------------------------------
    def add_source(self, port: SourcePort, name: str, resumable: bool) -> None:
        self.sources[port.source_id] = port
        if self.store is not None and not resumable and name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"source {name!r} cannot resume: after a restart from the checkpoint it "
                "starts afresh (its items are delivered at most once)",
                NotResumableWarning,
                stacklevel=2,
            )

    def source_ended(self, port: SourcePort) -> None:
        self.sources.pop(port.source_id, None)
        self.final_positions[port.source_id] = port.position_map()
        self._wakeup()

    def add_sink(self, ident: str) -> None:
        self.live_sinks.add(ident)

    def sink_committed(self, ident: str, epoch: int, state: Any) -> None:
        """Sink ``ident`` has durably handled everything before ``Barrier(epoch)``."""
        ep = self.pending.get(epoch)
        if ep is None:
            return
        if state is not None:
            ep.states[ident] = state
        ep.expected.discard(ident)
        if not ep.expected:
            self._wakeup()

    def sink_finished(self, ident: str, state: Any) -> None:
        """Sink ``ident`` has handled all its input (``state``: its last commit)."""
        self.live_sinks.discard(ident)
        if state is not None:
            self.final_states[ident] = state
        for ep in self.pending.values():
            ep.expected.discard(ident)
        self._wakeup()

    def sink_abandoned(self, ident: str) -> None:
        """Sink ``ident`` stopped taking its input before its end (a loop over a run's
        output left early): what it did not take was not delivered. No epoch it has not
        committed is committed, no barrier is injected any more, and the run makes no
        final commit: a restart goes on from the last epoch it committed."""
        self.abandoned = True
        self.live_sinks.discard(ident)
        for n in [n for n, ep in self.pending.items() if ident in ep.expected]:
            del self.pending[n]
        self._wakeup()

    def stage_state(self, ident: str, epoch: int, state: Any) -> None:
        self.seen[ident] = max(self.seen.get(ident, 0), epoch)
        ep = self.pending.get(epoch)
        if ep is not None:
            ep.states[ident] = state

    def stage_finished(self, ident: str, state: Any) -> None:
        """Stage ``ident`` flushed at the end of its input; ``state`` is what it holds
        then (``None``: nothing, so a restart starts it afresh)."""
        if state is not None:
            self.final_states[ident] = state
            self.cleared.pop(ident, None)
        else:
            # from the first epoch whose barrier it never saw: that epoch may still be
            # pending when it ends (its input ended before the barrier; its flush went
            # downstream ahead of the barrier at a fan-in), not only the newest
            self.final_states.pop(ident, None)
            self.cleared[ident] = self.seen.get(ident, self.committed_epoch) + 1

    def _states(self, epoch: int, layer: dict[str, Any]) -> dict[str, Any]:
        """The states to commit with ``epoch``: the last committed, the final ones of
        stages that ended, this epoch's; without the stages that ended holding nothing
        before ``Barrier(epoch)`` was injected."""
        states = {**self.committed_states, **self.final_states}
        for ident, at in self.cleared.items():
            # ``at``: the first epoch a stage that ended never saw the barrier of (a
            # repetition's new incarnation: the newest epoch; if it saw that barrier,
            # this epoch's layer below puts its state back)
            if epoch >= at:
                states.pop(ident, None)
        states.update(layer)  # a new incarnation (a repetition) of a cleared id: its own
        return states

    def has_callbacks(self, ident: str) -> bool:
        """Whether source ``ident`` registered ``on_commit`` callbacks."""
        return any(i == ident for i, _ in self.callbacks)

    def on_commit(self, ident: str, fn: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.callbacks.append((ident, fn))
        self._start_coordinator()

    # -- the coordinator task -----------------------------------------------------------
    def activate(self, start: Callable[[], None]) -> None:
        """Start the coordinator now (a checkpoint store) or at the first ``on_commit``
        (``start`` starts its task)."""
        self._start = start
        if self.store is not None or self.callbacks:
            self._start_coordinator()

    def _start_coordinator(self) -> None:
        """Start the coordinator task once: ``active`` turns true only when the task runs,
        so a second ``on_commit`` before then must not start another (two coordinators
        would share one wake-up event and could wait forever)."""
        if not self._started and self._start is not None:
            self._started = True
            self._start()

    async def run(self) -> None:
        """Inject a barrier every ``interval`` seconds; commit epochs as they complete;
        return once every sink has finished."""
        self.active = True
        next_at = time.monotonic() + self.interval
        async with anyio.create_task_group() as tg:
            while self.live_sinks:
                with anyio.move_on_after(max(0.0, next_at - time.monotonic())):
                    await self._wait()
                await self._commit_complete()
                if not self.live_sinks:
                    break
                now = time.monotonic()
                if now >= next_at:
                    next_at = now + self.interval
                    if len(self.pending) < 2 and self.sources and not self.abandoned:
                        self._inject(tg)
            tg.cancel_scope.cancel()
        # Every sink has finished: once every source has ended too, commit the final
        # positions here, inside the run, so a source waiting in ``Outlet.end()`` still
        # holds its connection when its ``on_commit`` runs.
        while self.sources:
            await self._wait()
        if not self.failed():
            await self.final_commit()

    def _inject(self, tg: Any) -> None:
        self.epoch += 1
        barrier = Barrier(self.epoch)
        ep = _Epoch(set(self.live_sinks))
        self.pending[barrier.epoch] = ep
        for port in list(self.sources.values()):
            tg.start_soon(self._inject_one, port, barrier, ep)

    async def _inject_one(self, port: SourcePort, barrier: Barrier, ep: _Epoch) -> None:
        positions = await port.inject(barrier)
        if positions is not None:
            ep.positions[port.source_id] = positions

    async def _commit_complete(self) -> None:
        while self.pending:
            n = min(self.pending)
            ep = self.pending[n]
            if ep.expected:
                return
            del self.pending[n]
            positions = {**self.committed_positions, **self.final_positions, **ep.positions}
            states = self._states(n, ep.states)
            await self._commit(n, positions, states, ep.positions)

    async def final_commit(self) -> None:
        """After a graceful end: commit the final positions and states."""
        if not self.active or self.final_done:
            return
        self.final_done = True
        if self.abandoned:  # the end positions cover what a sink never took
            self.final_committed.set()
            return
        self.epoch += 1
        positions = {**self.committed_positions, **self.final_positions}
        states = self._states(self.epoch, {})
        await self._commit(self.epoch, positions, states, self.final_positions)

    async def _commit(
        self,
        n: int,
        positions: dict[str, dict[str, Any]],
        states: dict[str, Any],
        covered: dict[str, dict[str, Any]],
    ) -> None:
        if self.store is not None:
            cp = Checkpoint(n, self.fingerprint, positions, states, self.description)
            await anyio.to_thread.run_sync(self.store.commit, cp)
        self.committed_epoch = n
        self.committed_positions, self.committed_states = positions, states
        for ident, fn in self.callbacks:
            if ident in covered:
                await fn({k: v for k, v in covered[ident].items() if k != REPETITION})
        if self.final_done:
            self.final_committed.set()

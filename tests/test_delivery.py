"""Delivery guarantees: barriers, positions, commits, acknowledgements and restarts."""

from __future__ import annotations

import warnings
from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.abc import (
    Barrier,
    Context,
    Operator,
    Outlet,
    Processor,
    SinkOperator,
    SinkWriter,
    Source,
)

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

DT = np.dtype([("key", "i8"), ("value", "f8")])


class Numbers(Source):
    """A resumable source: batches of ``size`` rows numbered 0..n-1, position = next row;
    optionally waits ``pause`` seconds between batches (so barriers fall between them)."""

    resumable = True

    def __init__(self, n: int, size: int, pause: float = 0.0, stop_at: int | None = None) -> None:
        self.n, self.size, self.pause, self.stop_at = n, size, pause, stop_at
        self.name = "numbers"
        self.started_at: list[int] = []

    async def produce(self, out: Outlet, ctx: Context) -> None:
        start = int(out.resume_positions.get("numbers", 0))
        self.started_at.append(start)
        for lo in range(start, self.n, self.size):
            if out.stopping:
                return
            hi = min(self.n, lo + self.size)
            rows = np.zeros(hi - lo, DT)
            rows["key"] = np.arange(lo, hi) % 7
            rows["value"] = np.arange(lo, hi)
            await out.emit(af.abc.Batch(rows), position=("numbers", hi))
            if self.pause:
                await anyio.sleep(self.pause)
            if self.stop_at is not None and hi >= self.stop_at:
                raise RuntimeError("crash")


class Total(SinkOperator[Any, float]):
    """A sink summing ``value``, with snapshot/restore, counting its commits."""

    name = "total"

    def __init__(self) -> None:
        self.commits: list[int] = []

    def writer(self, ctx: Context) -> SinkWriter[Any, float]:
        return _TotalWriter(self)


class _TotalWriter(SinkWriter[Any, float]):
    def __init__(self, op: Total) -> None:
        self.op, self.total = op, 0.0

    async def write(self, item: Any) -> None:
        self.total += float(item["value"].sum())

    async def commit(self, epoch: int) -> Any:
        self.op.commits.append(epoch)
        return self.total

    def restore(self, state: Any) -> None:
        self.total = state

    def result(self) -> float:
        return self.total


class CountingStage(Operator):
    """A stateful stage: counts rows seen (snapshot/restore), passes batches on."""

    name = "counting"

    def start(self) -> Processor:
        return _Counting()


class _Counting(Processor):
    def __init__(self) -> None:
        self.rows = 0
        self.barriers: list[int] = []

    def process(self, msg: Any) -> list[Any]:
        self.rows += len(msg)
        return [msg]

    def on_barrier(self, epoch: int) -> list[Any]:
        self.barriers.append(epoch)
        return []

    def snapshot(self) -> Any:
        return self.rows

    def restore(self, state: Any) -> None:
        self.rows = state


def _expected_total(n: int) -> float:
    return float(np.arange(n).sum())


@pytest.mark.anyio
async def test_commits_positions_and_states_and_resumes(anyio_backend: str, tmp_path: Any) -> None:
    db = tmp_path / "cp.db"
    src = Numbers(1000, 50, pause=0.01)
    sink = Total()
    flow = af.Flow(src) | af.Stage(CountingStage()) | af.Sink(sink)
    result = await flow.run(checkpoint=db, commit_interval=0.03)
    assert result.value == _expected_total(1000)
    assert len(sink.commits) >= 3  # periodic commits, then the final one
    cp = af.SqliteStore(db).load()
    assert cp is not None
    assert cp.positions == {"source0:numbers": {"numbers": 1000}}
    assert cp.states["sink0:total"] == _expected_total(1000)
    assert cp.states["stage0:counting"] == 1000
    # the same flow again: resumes after the end, emits nothing, keeps the total
    src2 = Numbers(1000, 50)
    again = await (af.Flow(src2) | af.Stage(CountingStage()) | af.Sink(Total())).run(
        checkpoint=db, commit_interval=0.03
    )
    assert src2.started_at == [1000]
    assert again.value == _expected_total(1000)


@pytest.mark.anyio
async def test_crash_then_restart_is_exactly_once_for_own_state(
    anyio_backend: str, tmp_path: Any
) -> None:
    db = tmp_path / "cp.db"
    crashing = Numbers(2000, 50, pause=0.005, stop_at=1200)
    with pytest.raises(RuntimeError, match="crash"):
        await (af.Flow(crashing) | af.Sink(Total())).run(checkpoint=db, commit_interval=0.02)
    cp = af.SqliteStore(db).load()
    assert cp is not None  # some epochs were committed before the crash
    pos = cp.positions["source0:numbers"]["numbers"]
    assert 0 < pos <= 1200
    assert cp.states["sink0:total"] == _expected_total(pos)  # state matches the position
    src = Numbers(2000, 50)
    result = await (af.Flow(src) | af.Sink(Total())).run(checkpoint=db, commit_interval=0.02)
    assert src.started_at == [pos]
    assert result.value == _expected_total(2000)  # no row counted twice or lost


@pytest.mark.anyio
async def test_on_commit_without_store(anyio_backend: str) -> None:
    acked: list[dict[str, Any]] = []

    class Acking(Numbers):
        async def produce(self, out: Outlet, ctx: Context) -> None:
            async def ack(positions: dict[str, Any]) -> None:
                acked.append(positions)

            out.on_commit(ack)
            await super().produce(out, ctx)

    sink = Total()
    result = await (af.Flow(Acking(600, 20, pause=0.01)) | af.Sink(sink)).run(commit_interval=0.02)
    assert result.value == _expected_total(600)
    assert len(acked) >= 2
    marks = [a["numbers"] for a in acked]
    assert marks == sorted(marks)
    assert marks[-1] == 600  # the final commit acks everything


@pytest.mark.anyio
async def test_barrier_flushes_count_batching_and_reaches_both_branches(
    anyio_backend: str, tmp_path: Any
) -> None:
    sinks = (Total(), Total())
    rows_seen: list[int] = []

    def keep(b: Any) -> Any:
        rows_seen.append(len(b))
        return b

    flow = (
        af.Flow(Numbers(3000, 10, pause=0.002))
        | af.unbatch()
        | af.batch(1000, dtype=DT)
        | af.map(keep)
        | af.broadcast(af.Sink(sinks[0]), af.Sink(sinks[1]))
    )
    result = await flow.run(checkpoint=tmp_path / "cp.db", commit_interval=0.02)
    assert result.value == (_expected_total(3000),) * 2
    assert any(n < 1000 for n in rows_seen[:-1])  # a barrier flushed a partial batch
    assert len(sinks[0].commits) >= 2
    assert sinks[0].commits == sinks[1].commits
    cp = af.SqliteStore(tmp_path / "cp.db").load()
    assert cp is not None
    assert set(cp.states) == {"sink1:total", "sink2:total"}


@pytest.mark.anyio
async def test_merge_aligns_barriers(anyio_backend: str, tmp_path: Any) -> None:
    db = tmp_path / "cp.db"
    fast, slow = Numbers(400, 10, pause=0.001), Numbers(400, 10, pause=0.02, stop_at=300)
    with pytest.raises(RuntimeError, match="crash"):
        await (af.merge(af.Flow(fast), af.Flow(slow)) | af.Sink(Total())).run(
            checkpoint=db, commit_interval=0.03
        )
    cp = af.SqliteStore(db).load()
    assert cp is not None
    a = cp.positions["source0:numbers"]["numbers"]
    b = cp.positions["source1:numbers"]["numbers"]
    # the sink's state is exactly the rows before both positions: no post-barrier rows
    # of the fast input passed while the slow one had not delivered the barrier
    assert cp.states["sink0:total"] == _expected_total(a) + _expected_total(b)


@pytest.mark.anyio
async def test_changed_flow_raises_checkpoint_mismatch(anyio_backend: str, tmp_path: Any) -> None:
    db = tmp_path / "cp.db"
    await (af.Flow(Numbers(100, 10)) | af.Sink(Total())).run(checkpoint=db)
    changed = af.Flow(Numbers(100, 10)) | af.map(lambda b: b) | af.Sink(Total())
    with pytest.raises(af.CheckpointMismatch, match="another flow"):
        await changed.run(checkpoint=db)


@pytest.mark.anyio
async def test_non_resumable_source_warns_once(anyio_backend: str, tmp_path: Any) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = await af.from_iterable(range(100)).run(checkpoint=tmp_path / "cp.db")
    assert result.value == list(range(100))
    assert [w.category for w in seen] == [af.NotResumableWarning]


@pytest.mark.anyio
async def test_user_function_never_sees_barriers(anyio_backend: str, tmp_path: Any) -> None:
    seen: list[Any] = []

    async def slow(x: Any) -> Any:
        await anyio.sleep(0.0001)
        seen.append(x)
        return x

    flow = af.Flow(Numbers(500, 5, pause=0.002)) | af.map(slow)
    result = await flow.run(checkpoint=tmp_path / "cp.db", commit_interval=0.01)
    assert not any(isinstance(x, Barrier) for x in seen)
    assert sum(len(x) for x in seen) == 500
    assert len(result.value) == 500


def test_sync_run_takes_checkpoint(anyio_backend: str, tmp_path: Any) -> None:
    src = Numbers(100, 10)
    result = af.run(
        af.Flow(src) | af.Sink(Total()),
        checkpoint=str(tmp_path / "cp.db"),
        commit_interval=0.5,
        backend=anyio_backend,
    )
    assert result.value == _expected_total(100)
    src2 = Numbers(100, 10)
    af.run(af.Flow(src2) | af.Sink(Total()), checkpoint=tmp_path / "cp.db", backend=anyio_backend)
    assert src2.started_at == [100]

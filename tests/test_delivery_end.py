"""``Outlet.end()``: a source ends its output and waits for the run's final commit, so a
broker source still holds its connection when the final ``on_commit`` acknowledges."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af
from aflow.abc import Batch, Context, Outlet, Source

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

DT = np.dtype([("value", "i8")])


class Connected(Source):
    """Batches of ``size`` rows numbered on until ``n`` (or a graceful stop), position =
    the next row; acks in ``on_commit`` record whether the "connection" was still open."""

    resumable = True

    def __init__(self, n: int | None, size: int, *, pause: float = 0.0, end: bool = True) -> None:
        self.n, self.size, self.pause, self.use_end = n, size, pause, end
        self.name = "connected"
        self.acks: list[tuple[int, bool]] = []
        self.emitted = 0

    async def produce(self, out: Outlet, ctx: Context) -> None:
        connected = True

        async def ack(positions: dict[str, Any]) -> None:
            self.acks.append((positions["n"], connected))

        out.on_commit(ack)
        while not out.stopping and (self.n is None or self.emitted < self.n):
            rows = np.arange(self.emitted, self.emitted + self.size).astype(DT)
            self.emitted += self.size
            await out.emit(Batch(rows), position=("n", self.emitted))
            with out.pull_scope():
                await anyio.sleep(self.pause)
        if self.use_end:
            await out.end(commit_timeout=30)
        connected = False  # the source closes its connection here


def total(batch: Any) -> Any:
    return batch


@pytest.mark.anyio
async def test_final_commit_reaches_the_source_before_it_disconnects(anyio_backend: str) -> None:
    src = Connected(600, 20)
    flow = af.Flow(src) | af.batch(64) | af.map(total) | af.collect()
    result = await flow.run(commit_interval=60)  # no barrier in the run: the final commit only
    assert sorted(result.value["value"].tolist()) == list(range(600))
    assert src.acks == [(600, True)]


@pytest.mark.anyio
async def test_graceful_stop_acks_everything_while_connected(anyio_backend: str) -> None:
    src = Connected(None, 10, pause=0.005)
    got: list[int] = []
    enough = anyio.Event()

    def seen(batch: Any) -> Any:
        got.extend(batch["value"].tolist())
        if len(got) >= 200:
            enough.set()
        return batch

    async with (af.Flow(src) | af.map(seen) | af.collect()).open(commit_interval=0.05) as run:
        with anyio.fail_after(20):
            await enough.wait()
        run.stop()
        await run.wait()
    assert got == list(range(src.emitted))
    assert src.acks[-1] == (src.emitted, True)  # the last ack covers every row emitted
    assert all(connected for _, connected in src.acks)


@pytest.mark.anyio
async def test_without_end_the_final_ack_comes_after_the_source_returned(
    anyio_backend: str,
) -> None:
    # what end() is for: a source that returns first sees its final ack too late
    src = Connected(100, 20, end=False)
    await (af.Flow(src) | af.collect()).run(commit_interval=60)
    assert src.acks == [(100, False)]


@pytest.mark.anyio
async def test_end_returns_at_once_without_on_commit(anyio_backend: str) -> None:
    class Plain(Source):
        name = "plain"

        async def produce(self, out: Outlet, ctx: Context) -> None:
            await out.emit([1, 2, 3])
            with anyio.fail_after(10):
                await out.end(commit_timeout=3600)

    result = await (af.Flow(Plain()) | af.collect()).run()
    assert result.value == [1, 2, 3]

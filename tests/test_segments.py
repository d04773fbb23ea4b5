"""The runtime's tasks (aflow/_core/segments.py): a task that never waits still lets others in."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

import aflow as af
import aflow.abc

pytestmark = pytest.mark.anyio


async def ident(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


async def test_a_heavily_filtered_source_lets_stop_and_timeouts_through() -> None:
    # Real time on purpose: the task never waits, so a virtual clock would never move; it
    # must yield every CHECKPOINT_INTERVAL of real time for the deadline to be seen at all.
    flow = af.from_iterable(itertools.count) | af.filter(lambda x: x < 0) | af.map(ident)
    with anyio.move_on_after(0.3) as scope:
        await flow.run()
    assert scope.cancelled_caught


class _TwoProducers(af.abc.Source):
    """A user source emitting from two tasks of its own task group: when the flow wants no
    more, each task gets ``Closed`` and the group raises them together."""

    name = "two_producers"

    async def produce(self, out: af.abc.Outlet, ctx: af.abc.Context) -> None:
        async def count(start: int) -> None:
            for i in range(start, start + 1_000_000, 2):
                await out.emit([i])
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(count, 0)
            tg.start_soon(count, 1)


async def test_closed_raised_in_a_sources_own_task_group_ends_it_quietly() -> None:
    """``Closed`` arriving as an exception group of Closed (one per producing task) ends the
    source like a bare ``Closed``: the run completes with what was taken."""
    with anyio.fail_after(10):
        result = await (af.Flow(_TwoProducers()) | af.take(5) | af.collect()).run()
    assert len(result.value) == 5


class _Yielding(aflow.abc.Operator):
    """A user stage whose ``process``, ``flush`` and ``on_barrier`` return generators and
    tuples rather than lists: it holds every other message back until the next one, the
    last until the end of input."""

    name = "yielding"

    def start(self) -> aflow.abc.Processor:
        return _YieldingProcessor()


class _YieldingProcessor(aflow.abc.Processor):
    def __init__(self) -> None:
        self.held: list[aflow.abc.Message] = []

    def process(self, msg: aflow.abc.Message) -> Iterator[aflow.abc.Message]:  # type: ignore[override]
        if not self.held:
            self.held.append(msg)
            return
        yield self.held.pop()
        yield msg

    def flush(self) -> tuple[aflow.abc.Message, ...]:  # type: ignore[override]
        held, self.held = tuple(self.held), []
        return held

    def on_barrier(self, epoch: int) -> Iterator[aflow.abc.Message]:  # type: ignore[override]
        return self.flush().__iter__()


class _OneByOne(aflow.abc.Source):
    """Emits ``0..n-1`` one element per message, resumable, waiting ``pause`` between
    messages (so checkpoint barriers fall between them) and acknowledging commits."""

    name = "one_by_one"
    resumable = True

    def __init__(self, n: int, pause: float = 0.0) -> None:
        self.n, self.pause = n, pause

    async def produce(self, out: aflow.abc.Outlet, ctx: aflow.abc.Context) -> None:
        async def ack(positions: dict[str, object]) -> None:
            pass

        out.on_commit(ack)
        for i in range(self.n):
            await out.emit([i], position=("one_by_one", i + 1))
            await anyio.sleep(self.pause)


@pytest.mark.parametrize("after", [False, True], ids=["last", "then_map"])
async def test_a_processor_returning_generators_and_tuples_loses_nothing(after: bool) -> None:
    flow = af.Flow(_OneByOne(11)) | af.Stage(_Yielding())
    if after:
        flow = flow | af.map(lambda x: x + 100)
    with anyio.fail_after(10):
        result = await (flow | af.collect()).run()
    assert sorted(result.value) == [x + (100 if after else 0) for x in range(11)]
    stage = next(s for s in result.statistics.stages if s.name.endswith("yielding"))
    assert stage.items_out == 11


async def test_a_processor_returning_a_generator_on_barrier_loses_nothing() -> None:
    flow = af.Flow(_OneByOne(40, pause=0.005)) | af.Stage(_Yielding()) | af.collect()
    with anyio.fail_after(10):
        result = await flow.run(commit_interval=0.01)
    assert sorted(result.value) == list(range(40))

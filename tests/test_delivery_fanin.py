"""Checkpoint barriers through fan-ins whose inputs are made of other flows."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


class MemoryStore:
    """A checkpoint store in memory, counting its commits."""

    def __init__(self) -> None:
        self.checkpoint: Any = None
        self.commits = 0

    def load(self) -> Any:
        return self.checkpoint

    def commit(self, checkpoint: Any) -> None:
        self.checkpoint = checkpoint
        self.commits += 1


def _numbers(n: int) -> af.Flow[int]:
    return af.from_iterable(range(n), chunk_size=1)


async def _slow(x: Any) -> None:
    await anyio.sleep(0.002)


async def _run(flow: Any) -> tuple[Any, MemoryStore]:
    store = MemoryStore()
    with anyio.fail_after(30):  # a barrier waiting for an epoch never delivered hangs
        result = await flow.run(checkpoint=store, commit_interval=0.01)
    return result, store


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_merge_with_repeat_input_does_not_hang(anyio_backend: str) -> None:
    # Barriers injected between two repetitions never came out of the repeat: the other
    # input waited for them with its source's gate closed.
    result, store = await _run(
        af.merge(af.repeat(_numbers(20), 5), _numbers(200)) | af.for_each(_slow)
    )
    assert result.value == 300
    assert store.commits > 5


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_merge_with_concat_input_does_not_hang(anyio_backend: str) -> None:
    for _ in range(3):
        flow = af.merge(af.concat(_numbers(20), _numbers(20), _numbers(20)), _numbers(200))
        result, _ = await _run(flow | af.for_each(_slow))
        assert result.value == 260


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_nested_merges_of_repeats_into_broadcast(anyio_backend: str) -> None:
    inner = af.merge(af.repeat(_numbers(10), 4), af.concat(_numbers(15), _numbers(15)))
    flow = af.merge(inner, af.repeat(af.merge(_numbers(5), _numbers(5)), 3), _numbers(150))
    result, store = await _run(
        flow | af.broadcast(af.for_each(_slow), af.collect())  # type: ignore[arg-type]
    )
    assert result.value[0] == 10 * 4 + 30 + 30 + 150
    assert sorted(result.value[1]) == sorted(
        [*range(10)] * 4 + [*range(15)] * 2 + [*range(5)] * 6 + [*range(150)]
    )
    assert store.commits > 5


async def _trickle() -> Any:
    for i in range(400):
        await anyio.sleep(0.002)
        yield i


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
@pytest.mark.parametrize("wrap", ["concat", "merge", "repeat"])
async def test_zip_input_made_of_flows_starts_afresh(
    anyio_backend: str, tmp_path: Any, wrap: str
) -> None:
    # zip pairs across its inputs, so they get no barriers; a read_lines inside a
    # concat/merge/repeat got them anyway and committed positions past the rows zip
    # held: the restart skipped them.
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line{i}\n" for i in range(300)))
    wrappers = {"concat": af.concat, "merge": af.merge, "repeat": lambda f: af.repeat(f, 1)}
    checkpoint = tmp_path / "state.db"

    def flow() -> Any:
        left = wrappers[wrap](af.read_lines(path))
        return af.zip(left, af.from_iterable(_trickle)) | af.collect()

    with anyio.fail_after(30):
        async with flow().open(checkpoint=checkpoint, commit_interval=0.02) as run:
            await anyio.sleep(0.2)
            run.stop()
            first = (await run.wait()).value
        assert 0 < len(first) < 300
        second = (await flow().run(checkpoint=checkpoint, commit_interval=0.02)).value
    # collect's state is committed: the second run appends a fresh zip from line 0
    fresh = second[len(first) :]
    assert second[: len(first)] == first
    assert fresh == [(f"line{i}", i) for i in range(300)]


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_asof_join_input_made_of_flows_gets_no_barriers(
    anyio_backend: str, tmp_path: Any
) -> None:
    rows = np.zeros(50, dtype=[("t", "f8"), ("value", "f8")])
    rows["t"] = np.arange(50)
    right = np.zeros(50, dtype=[("t", "f8"), ("other", "f8")])
    right["t"] = np.arange(50)
    right["other"] = np.arange(50) * 2
    store = MemoryStore()

    async def slow_rows() -> Any:
        for i in range(0, 50, 5):
            await anyio.sleep(0.01)
            yield rows[i : i + 5]

    flow = af.asof_join(
        af.concat(af.from_arrays(slow_rows)), af.merge(af.from_array(right, 5)), on="t"
    )
    with anyio.fail_after(30):
        result = await (flow | af.collect()).run(checkpoint=store, commit_interval=0.01)
    assert store.commits > 0
    # no source inside a join's inputs takes part in checkpoints: none has a position
    assert [k for k in store.checkpoint.positions if "from_array" in k] == []
    assert len(result.value) == 50

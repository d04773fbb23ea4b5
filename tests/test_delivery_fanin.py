"""Checkpoint barriers through fan-ins whose inputs are made of other flows."""

from __future__ import annotations

from typing import Any

import anyio
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

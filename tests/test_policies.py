"""Error policies: raise, skip and count, retry with backoff, dead letters."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import aflow as af

pytestmark = pytest.mark.anyio


def parse(text: str) -> float:
    return float(text)


DATA = ["1", "2", "oops", "4", "", "6"]


async def test_skip_drops_only_the_bad_items_and_counts_them() -> None:
    result = await (af.from_iterable(DATA) | af.map(parse, on_error="skip") | af.collect()).run()
    assert result.value == [1.0, 2.0, 4.0, 6.0]
    assert result.statistics.stage("map(parse)").errors == 2


async def test_dead_letter_receives_item_error_and_stage() -> None:
    dead: list[af.FailedItem] = []
    flow = af.from_iterable(DATA) | af.map(parse, on_error=af.dead_letter(dead)) | af.collect()
    result = await flow.run()
    assert result.value == [1.0, 2.0, 4.0, 6.0]
    assert [d.item for d in dead] == ["oops", ""]
    assert all(isinstance(d.error, ValueError) for d in dead)
    assert dead[0].stage == "map(parse)"


async def test_dead_letter_target_may_be_an_async_callable() -> None:
    send, receive = anyio.create_memory_object_stream[af.FailedItem](10)
    flow = af.from_iterable(DATA) | af.map(parse, on_error=af.dead_letter(send.send))
    await flow.run()
    send.close()
    async with receive:
        assert [d.item async for d in receive] == ["oops", ""]


async def test_retry_recovers_from_transient_failures() -> None:
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x % 3 == 0 and calls[x] < 3:
            raise ConnectionError(f"try again {x}")
        return x * 10

    policy = af.retry(3, backoff=0.001)
    result = await (af.from_iterable(range(7)) | af.map(flaky, on_error=policy)).run()
    assert result.value == [x * 10 for x in range(7)]
    assert calls == {0: 3, 1: 1, 2: 1, 3: 3, 4: 1, 5: 1, 6: 3}
    assert result.statistics.stage("map(flaky)").retries == 6


async def test_retry_gives_up_with_the_last_error_as_cause() -> None:
    def always(x: int) -> int:
        raise ConnectionError("down")

    flow = af.from_iterable([1]) | af.map(always, on_error=af.retry(2, backoff=0.001))
    with pytest.raises(af.RetriesExhaustedError, match="failed 2 times") as info:
        await flow.run()
    assert isinstance(info.value.__cause__, ConnectionError)


async def test_retry_then_dead_letter() -> None:
    dead: list[af.FailedItem] = []

    def always(x: int) -> int:
        raise ConnectionError("down")

    policy = af.retry(2, backoff=0.001, then=af.dead_letter(dead))
    result = await (af.from_iterable([1, 2]) | af.map(always, on_error=policy)).run()
    assert result.value == []
    assert [d.item for d in dead] == [1, 2]


async def test_async_map_with_policy_and_concurrency() -> None:
    async def parse_async(text: str) -> float:
        await anyio.lowlevel.checkpoint()
        return float(text)

    dead: list[af.FailedItem] = []
    flow = af.from_iterable(DATA) | af.map(
        parse_async, concurrency=3, on_error=af.dead_letter(dead)
    )
    result = await flow.run()
    assert result.value == [1.0, 2.0, 4.0, 6.0]
    assert sorted(d.item for d in dead) == ["", "oops"]


async def test_batch_stage_policy_applies_per_batch_with_provenance() -> None:
    dead: list[af.FailedItem] = []

    def check(b: np.ndarray) -> np.ndarray:
        if (b < 0).any():
            raise ValueError("negative reading")
        return b

    data = np.array([1, 2, 3, -4, 5, 6], dtype="f8")
    flow = af.from_array(data, 2, name="meter") | af.map_batches(
        check, on_error=af.dead_letter(dead)
    )
    result = await flow.run()
    np.testing.assert_array_equal(result.value, [1, 2, 5, 6])
    assert str(dead[0].provenance) == "meter rows 2..4"
    np.testing.assert_array_equal(dead[0].item, [3, -4])


async def test_an_error_note_names_the_batch_provenance() -> None:
    def check(b: np.ndarray) -> np.ndarray:
        raise ValueError("bad batch")

    flow = af.from_array(np.arange(4), 2, name="meter") | af.map_batches(check)
    with pytest.raises(ValueError, match="bad batch") as info:
        await flow.run()
    assert "on rows from meter rows 0..2" in info.value.__notes__[0]


def test_retry_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        af.retry(0)
    with pytest.raises(ValueError, match="backoff"):
        af.retry(3, backoff=-1)

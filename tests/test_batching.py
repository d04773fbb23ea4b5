"""Batching: the partial-batch rule, checked against a model with generated inputs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.testing import VirtualClock

RECORD = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])


def batches_of(flow: af.Flow[object]) -> list[af.Batch]:
    async def main() -> list[af.Batch]:
        async with flow.open() as run:
            return [b async for b in run.envelopes() if isinstance(b, af.Batch)]

    return anyio.run(main)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-(2**40), 2**40), max_size=300),
    size=st.integers(1, 50),
    max_rows_by_bytes=st.none() | st.integers(1, 60),
)
def test_batches_concatenate_to_the_input_and_respect_bounds(
    values: list[int], size: int, max_rows_by_bytes: int | None
) -> None:
    max_bytes = None if max_rows_by_bytes is None else max_rows_by_bytes * 8
    got = batches_of(af.from_iterable(values) | af.batch(size, batch_bytes=max_bytes, dtype="i8"))
    joined = np.concatenate([b.data for b in got]) if got else np.empty(0, "i8")
    np.testing.assert_array_equal(joined, np.asarray(values, dtype="i8"))
    limit = size if max_rows_by_bytes is None else min(size, max_rows_by_bytes)
    assert all(1 <= len(b) <= limit for b in got)
    assert all(len(b) == limit and b.reason in ("count", "bytes") for b in got[:-1])
    if got and got[-1].reason == "end":
        assert len(got[-1]) <= limit
    if max_bytes is not None:
        assert all(b.data.nbytes <= max_bytes for b in got)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    size=st.integers(1, 64),
)
def test_rebatch_is_independent_of_how_the_input_was_split(
    data: list[float], cuts: list[int], size: int
) -> None:
    arr = np.asarray(data, dtype="f4")
    pieces = np.split(arr, sorted(c % (len(arr) + 1) for c in cuts))
    got = batches_of(af.from_arrays(pieces) | af.rebatch(size))
    whole = batches_of(af.from_array(arr, len(arr)) | af.rebatch(size))
    assert [len(b) for b in got] == [len(b) for b in whole]
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def expected_timed_batches(delays: list[int], size: int, timeout: int) -> list[tuple[int, str]]:
    """Model of ``batch(size, timeout)``: (rows, reason) of each batch, times in ticks."""
    out: list[tuple[int, str]] = []
    now, rows, start = 0, 0, 0
    for d in delays:
        now += d
        if rows and now > start + timeout:
            out.append((rows, "time"))
            rows = 0
        if rows == 0:
            start = now
        rows += 1
        if rows == size:
            out.append((rows, "count"))
            rows = 0
    if rows:
        out.append((rows, "end"))
    return out


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(
    delays=st.lists(st.sampled_from([0, 1, 2, 5, 20]), max_size=40),
    size=st.integers(1, 8),
    timeout=st.sampled_from([3, 7, 15]),
)
def test_timed_batches_follow_the_model_on_a_virtual_clock(
    backend: str, delays: list[int], size: int, timeout: int
) -> None:
    tick = 0.01
    half = tick / 2  # no arrival ever coincides with a deadline

    async def arrivals() -> AsyncIterator[int]:
        for i, d in enumerate(delays):
            if d:
                await anyio.sleep(d * tick)
            yield i

    flow = af.from_iterable(arrivals) | af.batch(size, timeout=timeout * tick + half)
    clock = VirtualClock(backend=backend)
    result = clock.run(flow | af.for_each(lambda b: None))
    assert result.value == len(expected_timed_batches(delays, size, timeout))

    async def main() -> list[tuple[int, str]]:
        async with flow.open() as run:
            return [(len(b), b.reason) async for b in run.envelopes()]  # type: ignore[arg-type]

    got = clock.call(main)
    assert got == expected_timed_batches(delays, size, timeout)


def test_tuples_become_records_with_a_structured_dtype() -> None:
    rows = [(i * 10, i % 3, i / 4) for i in range(10)]
    got = batches_of(af.from_iterable(rows) | af.batch(4, dtype=RECORD))
    assert [b.data.dtype for b in got] == [RECORD] * 3
    joined = np.concatenate([b.data for b in got])
    assert joined["ts"].tolist() == [r[0] for r in rows]
    assert joined["value"].tolist() == pytest.approx([r[2] for r in rows])


def test_batch_of_arrays_rebatches_them() -> None:
    gen = [np.arange(i * 100, i * 100 + 100, dtype="f8") for i in range(10)]
    got = batches_of(af.from_arrays(gen) | af.batch(256))
    assert [len(b) for b in got] == [256, 256, 256, 232]
    np.testing.assert_array_equal(np.concatenate([b.data for b in got]), np.arange(1000.0))


def test_max_bytes_closes_batches_before_the_count() -> None:
    got = batches_of(af.from_array(np.zeros(100, RECORD), 100) | af.batch(50, batch_bytes=160))
    assert {b.reason for b in got[:-1]} == {"bytes"}
    assert all(b.data.nbytes <= 160 for b in got)
    assert sum(len(b) for b in got) == 100


def test_rebatch_keeps_row_provenance() -> None:
    got = batches_of(af.from_array(np.arange(10), 3, name="src") | af.rebatch(4))
    assert [str(b.provenance) for b in got] == ["src rows 0..4", "src rows 4..8", "src rows 8..10"]


def test_unbatch_returns_python_elements() -> None:
    flow = af.from_array(np.arange(5, dtype="i8"), 2) | af.unbatch() | af.map(lambda x: x * 2)
    assert af.run(flow).value == [0, 2, 4, 6, 8]
    records = af.run(af.from_array(np.zeros(3, RECORD), 2) | af.unbatch()).value
    assert [r["sensor"] for r in records] == [0, 0, 0]


def test_batch_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="size"):
        af.batch(0)
    with pytest.raises(ValueError, match="timeout"):
        af.batch(10, timeout=0)
    with pytest.raises(ValueError, match="batch_bytes"):
        af.batch(10, batch_bytes=0)

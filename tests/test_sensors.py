"""Sensor operators against brute-force references: reorder, resample, asof_join."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af

ROW = np.dtype([("ts", "i8"), ("key", "i4"), ("value", "f8")])


def rows_of(ts: Any, keys: Any, values: Any) -> np.ndarray[Any, Any]:
    out = np.zeros(len(ts), ROW)
    out["ts"], out["key"], out["value"] = ts, keys, values
    return out


def split(arr: np.ndarray[Any, Any], cuts: list[int]) -> list[np.ndarray[Any, Any]]:
    return np.split(arr, sorted({c % (len(arr) + 1) for c in cuts}))


def collect(flow: af.Flow[Any]) -> np.ndarray[Any, Any]:
    parts = list(af.run(flow | af.collect("list")).value)
    return np.concatenate(parts) if parts else np.empty(0)


@st.composite
def disordered(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], int]:
    n = draw(st.integers(1, 100))
    base = np.cumsum(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))
    horizon = draw(st.integers(0, 8))
    shift = draw(st.lists(st.integers(0, horizon), min_size=n, max_size=n))
    return rows_of(base + np.array(shift), np.zeros(n), np.arange(n)), horizon


@settings(max_examples=60, deadline=None)
@given(data=disordered(), cuts=st.lists(st.integers(0, 100), max_size=8))
def test_reorder_within_the_horizon_is_a_stable_sort(
    data: tuple[np.ndarray[Any, Any], int], cuts: list[int]
) -> None:
    rows, horizon = data
    late: list[Any] = []
    got = collect(af.from_arrays(split(rows, cuts)) | af.reorder("ts", horizon=horizon, late=late))
    want = rows[np.argsort(rows["ts"], kind="stable")]
    assert got.tolist() == want.tolist()
    assert late == []


@settings(max_examples=60, deadline=None)
@given(
    ts=st.lists(st.integers(0, 40), min_size=1, max_size=50),
    horizon=st.integers(0, 5),
    cuts=st.lists(st.integers(0, 50), max_size=8),
)
def test_reorder_routes_rows_behind_the_horizon_as_late(
    ts: list[int], horizon: int, cuts: list[int]
) -> None:
    rows = rows_of(ts, np.zeros(len(ts)), np.arange(len(ts)))
    batches = split(rows, cuts)
    late: list[Any] = []
    result = af.run(
        af.from_arrays(batches) | af.reorder("ts", horizon=horizon, late=late) | af.collect("list")
    )
    wm, want_late, kept = -np.inf, [], []
    for b in batches:  # the model
        for r in b.tolist():
            (want_late if r[0] < wm else kept).append(r)
        if len(b):
            wm = max(wm, int(b["ts"].max()) - horizon)
    got = np.concatenate(result.value).tolist() if result.value else []
    assert got == sorted(kept, key=lambda r: r[0])
    assert [r for part in late for r in part.tolist()] == want_late
    assert result.statistics.stage("reorder(on='ts')").errors == len(want_late)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(1, 9), min_size=0, max_size=40),
    start=st.integers(-20, 20),
    every=st.integers(1, 6),
    max_gap=st.integers(1, 8),
    fill=st.sampled_from(["last", "linear"]),
    cuts=st.lists(st.integers(0, 41), max_size=8),
)
def test_resample_equals_interpolation_over_the_whole_stream(
    steps: list[int], start: int, every: int, max_gap: int, fill: str, cuts: list[int]
) -> None:
    ts = start + np.cumsum([0, *steps])
    rows = rows_of(ts, np.arange(len(ts)), np.sin(ts))
    flow = af.from_arrays(split(rows, cuts)) | af.resample(
        "ts",
        every=every,
        fill=fill,  # type: ignore[arg-type]
        max_gap=max_gap,
    )
    got = collect(flow)
    grid = np.arange(-(-ts[0] // every), ts[-1] // every + 1) * every
    if not len(grid):
        assert len(got) == 0
        return
    assert got["ts"].tolist() == grid.tolist()
    i = np.searchsorted(ts, grid, side="right") - 1
    j = np.minimum(i + 1, len(ts) - 1)
    want = np.interp(grid, ts, rows["value"]) if fill == "linear" else rows["value"][i]
    np.testing.assert_allclose(got["value"], want, rtol=1e-12, atol=1e-12)
    assert got["key"].tolist() == i.tolist()  # non-float columns take the last value
    assert got["valid"].tolist() == ((ts[i] == grid) | (ts[j] - ts[i] <= max_gap)).tolist()


def test_resample_rejects_unsorted_input() -> None:
    rows = rows_of([0, 5, 3], [0, 0, 0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="reorder"):
        collect(af.from_array(rows) | af.resample("ts", every=1))


def asof_reference(
    left: np.ndarray[Any, Any], right: np.ndarray[Any, Any], by: bool, tol: int | None
) -> list[tuple[Any, ...]]:
    out = []
    for lt, lk, lv in left.tolist():
        best = None
        for rt, rk, rv in right.tolist():
            if rt <= lt and (not by or rk == lk) and (tol is None or lt - rt <= tol):
                best = (rt, rk, rv)
        if best is None:
            out.append((lt, lk, lv, None, None, None, False))
        else:
            out.append((lt, lk, lv, *best, True))
    return out


@settings(max_examples=60, deadline=None)
@given(
    lsteps=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    rsteps=st.lists(st.integers(0, 6), min_size=0, max_size=40),
    keys=st.lists(st.integers(0, 2), min_size=80, max_size=80),
    by=st.booleans(),
    tol=st.none() | st.integers(0, 6),
    lcuts=st.lists(st.integers(0, 40), max_size=6),
    rcuts=st.lists(st.integers(0, 40), max_size=6),
)
def test_asof_join_equals_brute_force(
    lsteps: list[int],
    rsteps: list[int],
    keys: list[int],
    by: bool,
    tol: int | None,
    lcuts: list[int],
    rcuts: list[int],
) -> None:
    left = rows_of(np.cumsum(lsteps), keys[: len(lsteps)], np.arange(len(lsteps)))
    right = rows_of(np.cumsum(rsteps) + 1, keys[40 : 40 + len(rsteps)], -np.arange(len(rsteps)))
    flow = af.asof_join(
        af.from_arrays(split(left, lcuts)),
        af.from_arrays(split(right, rcuts)),
        on="ts",
        key="key" if by else None,
        tolerance=tol,
    )
    got = collect(flow)
    want = asof_reference(left, right, by, tol)
    assert got["matched"].tolist() == [w[-1] for w in want]
    assert got[["ts", "key", "value"]].tolist() == [w[:3] for w in want]
    if len(right):
        found = got["matched"]
        assert got["ts_right"][found].tolist() == [w[3] for w in want if w[-1]]
        assert got["value_right"][found].tolist() == [w[5] for w in want if w[-1]]
        assert np.isnan(got["value_right"][~found]).all()
    if by and len(right):
        assert "key_right" not in (got.dtype.names or ())


@pytest.mark.anyio
async def test_asof_join_unmatched_rows_get_blanks() -> None:
    temp = np.array([(1, 20.5), (10, 21.0)], [("ts", "i8"), ("temp", "f4")])
    hum = np.array([(5, 0.4)], [("ts", "i8"), ("hum", "f4")])
    got = (await af.asof_join(af.from_array(temp), af.from_array(hum), on="ts").run()).value
    assert got["matched"].tolist() == [False, True]
    assert np.isnan(got["hum"][0])
    assert got["hum"][1] == pytest.approx(0.4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_asof_join_rejects_an_unsorted_side(side: str) -> None:
    sorted_rows = rows_of([1, 2, 3, 4], [0] * 4, [0.0] * 4)
    unsorted = rows_of([1, 3, 2, 4], [0] * 4, [0.0] * 4)
    left, right = (unsorted, sorted_rows) if side == "left" else (sorted_rows, unsorted)
    flow = af.asof_join(af.from_array(left), af.from_array(right), on="ts")
    with pytest.raises(ValueError, match=f"the {side} side is not sorted by 'ts'.*reorder"):
        collect(flow)


def test_asof_join_rejects_a_right_batch_behind_the_one_before() -> None:
    right = rows_of([5, 6, 1, 2], [0] * 4, [0.0] * 4)  # each batch sorted, not the stream
    flow = af.asof_join(af.from_array(rows_of([7], [0], [0.0])), af.from_array(right, 2), on="ts")
    with pytest.raises(ValueError, match="right side is not sorted"):
        collect(flow)


@pytest.mark.parametrize("by", [False, True])
def test_asof_join_one_row_left_batches_against_one_large_right_batch(by: bool) -> None:
    # The pruning of right rows runs once per left batch: exact matches whatever the
    # batching, and each right row copied O(1) times (see benchmarks/bench_windows.py).
    rng = np.random.default_rng(5)
    n = 3000
    left = rows_of(np.sort(rng.integers(0, 10 * n, n)), rng.integers(0, 4, n), np.arange(n))
    right = rows_of(np.sort(rng.integers(0, 10 * n, n)), rng.integers(0, 4, n), -np.arange(n))
    key = "key" if by else None
    one = collect(af.asof_join(af.from_array(left, 1), af.from_array(right), on="ts", key=key))
    big = collect(af.asof_join(af.from_array(left), af.from_array(right, 64), on="ts", key=key))
    assert one.tobytes() == big.tobytes()  # NaN blanks compare equal too
    # The reference: pandas.merge_asof.
    pd = pytest.importorskip("pandas")
    want = pd.merge_asof(
        pd.DataFrame(left),
        pd.DataFrame(right).rename(columns={"value": "value_right"}).assign(r_ts=right["ts"]),
        on="ts",
        by=key,
        suffixes=("", "_right"),
    )
    found = ~want["value_right"].isna().to_numpy()
    assert one["matched"].tolist() == found.tolist()
    np.testing.assert_array_equal(one["ts_right"][found], want["r_ts"].to_numpy()[found])
    np.testing.assert_array_equal(one["value_right"][found], want["value_right"][found])


def test_durations_with_units_and_a_plain_number_on_millisecond_data() -> None:
    start = 1_700_000_000_000  # epoch milliseconds
    rows = rows_of(start + np.arange(0, 10_000, 500), [0] * 20, np.arange(20.0))
    by_text = collect(af.from_array(rows) | af.resample("ts", every="2s"))
    by_delta = collect(af.from_array(rows) | af.resample("ts", every=datetime.timedelta(seconds=2)))
    by_number = collect(af.from_array(rows) | af.resample("ts", every=2000))
    np.testing.assert_array_equal(by_text, by_number)
    np.testing.assert_array_equal(by_delta, by_number)
    with pytest.raises(ValueError, match=r"epoch milliseconds.*694 days.*60000.*'1min'"):
        collect(af.from_array(rows) | af.resample("ts", every=60_000_000_000))

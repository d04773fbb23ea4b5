"""Windows against brute-force references: any batch split, late routing, virtual time."""

from __future__ import annotations

import datetime
from collections import defaultdict
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.abc import Provenance
from aflow.stages._watermarks import RETIRED_MAX
from aflow.testing import VirtualClock, from_schedule

ROW = np.dtype([("ts", "i8"), ("key", "i4"), ("value", "f8")])
STATS = ("count", "sum", "min", "max", "mean")


def rows_of(ts: list[int], keys: list[int], values: list[float]) -> np.ndarray[Any, Any]:
    out = np.zeros(len(ts), ROW)
    out["ts"], out["key"], out["value"] = ts, keys, values
    return out


def split(arr: np.ndarray[Any, Any], cuts: list[int]) -> list[np.ndarray[Any, Any]]:
    return np.split(arr, sorted({c % (len(arr) + 1) for c in cuts}))


def run_list(flow: af.Flow[Any]) -> list[Any]:
    return list(af.run(flow | af.collect("list")).value)


def reference(rows: np.ndarray[Any, Any], size: int, step: int) -> dict[tuple[int, int], Any]:
    """Per (window start, key): the stats, by brute force over every window and row."""
    groups: dict[tuple[int, int], list[float]] = defaultdict(list)
    for ts, key, value in rows.tolist():
        k = ts // step
        while k * step + size > ts:
            if k * step <= ts:
                groups[(k * step, key)].append(value)
            k -= 1
    return {g: (len(v), sum(v), min(v), max(v), sum(v) / len(v)) for g, v in sorted(groups.items())}


@st.composite
def jittered(draw: st.DrawFn, max_rows: int = 120) -> tuple[np.ndarray[Any, Any], int]:
    """Rows whose timestamps are at most ``jitter`` out of order, and that jitter."""
    n = draw(st.integers(1, max_rows))
    base = np.cumsum(draw(st.lists(st.integers(0, 7), min_size=n, max_size=n)))
    jitter = draw(st.integers(0, 10))
    shift = draw(st.lists(st.integers(0, jitter), min_size=n, max_size=n))
    keys = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n))
    return rows_of((base + np.array(shift) - 20).tolist(), keys, values), jitter


keyed_windows = given(
    data=jittered(),
    size=st.integers(1, 25),
    ratio=st.sampled_from([1, 1, 2, 3, 5]),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)


@settings(max_examples=25, deadline=None)
@keyed_windows
def test_keyed_window_stats_equal_brute_force_under_any_split(
    data: tuple[np.ndarray[Any, Any], int], size: int, ratio: int, cuts: list[int]
) -> None:
    keyed_windows_equal_brute_force(data, size, ratio, cuts)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@keyed_windows
def test_keyed_window_stats_equal_brute_force_under_many_more_splits(
    data: tuple[np.ndarray[Any, Any], int], size: int, ratio: int, cuts: list[int]
) -> None:
    keyed_windows_equal_brute_force(data, size, ratio, cuts)


def keyed_windows_equal_brute_force(
    data: tuple[np.ndarray[Any, Any], int], size: int, ratio: int, cuts: list[int]
) -> None:
    """Keyed window statistics, split anywhere, equal a brute-force computation; the
    allowed lateness covers the disorder, so no row is late."""
    rows, jitter = data
    step = max(1, size // ratio)
    stage = af.window(
        size, step=step, on="ts", key="key", value="value", stats=STATS, allowed_lateness=jitter
    )
    late: list[Any] = []
    stage_late = af.window(
        size, step=step, on="ts", key="key", value="value", stats=STATS,
        allowed_lateness=jitter, late=late,
    )  # fmt: skip
    got = np.concatenate(run_list(af.from_arrays(split(rows, cuts)) | stage))
    want = reference(rows, size, step)
    assert [(int(r["window_start"]), int(r["key"])) for r in got] == list(want)
    assert np.array_equal(got["window_end"], got["window_start"] + size)
    np.testing.assert_allclose([tuple(r)[3:] for r in got.tolist()], list(want.values()))
    run_list(af.from_arrays(split(rows, cuts)) | stage_late)
    assert late == []  # lateness covers the disorder: no row is late


@settings(max_examples=40, deadline=None)
@given(data=jittered(), size=st.integers(1, 20), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_window_rows_are_the_rows_of_each_window(
    data: tuple[np.ndarray[Any, Any], int], size: int, cuts: list[int]
) -> None:
    rows, jitter = data
    flow = af.from_arrays(split(rows, cuts)) | af.window(
        size, step=max(1, size // 2), on="ts", allowed_lateness=jitter
    )
    step = max(1, size // 2)
    got = run_list(flow)
    starts = sorted({k * step for ts in rows["ts"].tolist() for k in _covering(ts, size, step)})
    assert len(got) == len(starts)
    for start, win in zip(starts, got, strict=True):
        inside = rows[(rows["ts"] >= start) & (rows["ts"] < start + size)]
        assert sorted(win.tolist()) == sorted(inside.tolist())


def _covering(ts: int, size: int, step: int) -> list[int]:
    return [k for k in range((ts - size) // step, ts // step + 1) if k * step + size > ts]


@settings(max_examples=60, deadline=None)
@given(
    ts=st.lists(st.integers(0, 60), min_size=1, max_size=60),
    size=st.integers(1, 15),
    lateness=st.integers(0, 10),
    cuts=st.lists(st.integers(0, 60), max_size=8),
)
def test_late_rows_are_routed_exactly_as_the_watermark_model_says(
    ts: list[int], size: int, lateness: int, cuts: list[int]
) -> None:
    rows = rows_of(ts, [0] * len(ts), list(range(len(ts))))
    batches = split(rows, cuts)
    late: list[Any] = []
    flow = af.from_arrays(batches) | af.window(
        size, on="ts", stats=("count",), allowed_lateness=lateness, late=late
    )
    result = af.run(flow | af.collect("list"))
    wm, want_late, on_time = -np.inf, [], []
    for b in batches:  # the model: a row is late when its window ended before its batch
        for r in b.tolist():
            (want_late if (r[0] // size + 1) * size <= wm else on_time).append(r)
        if len(b):
            wm = max(wm, int(b["ts"].max()) - lateness)
    assert [r for part in late for r in part.tolist()] == want_late
    counts = defaultdict(int)
    for r in on_time:
        counts[r[0] // size * size] += 1
    got = np.concatenate(result.value) if result.value else np.empty(0, ROW)
    assert dict(zip(got["window_start"].tolist(), got["count"].tolist(), strict=True)) == counts
    assert result.statistics.stage("window(tumbling, event)").errors == len(want_late)


@settings(max_examples=50, deadline=None)
@given(
    ts=st.lists(st.integers(0, 200), min_size=1, max_size=80),
    keys=st.lists(st.integers(0, 3), min_size=80, max_size=80),
    gap=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 80), max_size=8),
)
def test_sessions_equal_brute_force(
    ts: list[int], keys: list[int], gap: int, cuts: list[int]
) -> None:
    ts = sorted(ts)
    rows = rows_of(ts, keys[: len(ts)], [float(t) for t in ts])
    flow = af.from_arrays(split(rows, cuts)) | af.window(
        gap=gap, on="ts", key="key", value="value", stats=("count", "max")
    )
    batches = run_list(flow)
    got = np.concatenate(batches)
    want = []
    for key in sorted(set(rows["key"].tolist())):
        t = rows["ts"][rows["key"] == key].tolist()
        start = 0
        for i in range(1, len(t) + 1):
            if i == len(t) or t[i] - t[i - 1] >= gap:
                want.append((t[start], t[i - 1] + gap, key, i - start, float(t[i - 1])))
                start = i
    assert sorted(got.tolist()) == sorted(want)
    # sessions come out as they close: sorted by start within each close, not across closes
    # (a long session that started earlier can close after a short one that started later)
    for b in batches:
        assert b["window_start"].tolist() == sorted(b["window_start"].tolist())


def test_datetime_columns_take_timedelta_sizes() -> None:
    rows = np.array(
        [("2024-01-01T00:00:05", 1.0), ("2024-01-01T00:00:50", 3.0), ("2024-01-01T00:01:10", 2.0)],
        dtype=[("ts", "M8[s]"), ("value", "f4")],
    )
    flow = af.from_array(rows, 1) | af.window(
        np.timedelta64(1, "m"), on="ts", value="value", stats=("mean",)
    )
    got = np.concatenate(run_list(flow))
    assert got.dtype["window_start"] == np.dtype("M8[s]")
    assert got["window_start"].astype(str).tolist() == [
        "2024-01-01T00:00:00",
        "2024-01-01T00:01:00",
    ]
    assert got["mean"].tolist() == [2.0, 2.0]


def test_count_windows_tumble_and_slide_from_row_zero() -> None:
    data = np.arange(10)
    assert [
        w.tolist() for w in run_list(af.from_array(data, 3) | af.window(4, domain="count"))
    ] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]
    sums = np.concatenate(
        run_list(af.from_array(data, 3) | af.window(4, step=2, domain="count", stats=("sum",)))
    )
    assert sums["window_start"].tolist() == [0, 2, 4, 6, 8]
    assert sums["sum"].tolist() == [6, 14, 22, 30, 17]


def test_open_windows_are_flushed_at_the_end() -> None:
    rows = rows_of([1, 2, 15], [0, 0, 0], [1.0, 2.0, 3.0])

    async def main() -> list[str]:
        flow = af.from_array(rows, 1) | af.window(10, on="ts", stats=("count",))
        async with flow.open() as run:
            return [b.reason async for b in run.envelopes()]  # type: ignore[union-attr]

    assert anyio.run(main) == ["time", "end"]


def test_processing_time_windows_close_on_the_virtual_clock() -> None:
    emitted: list[tuple[float, list[int]]] = []
    schedule = [(0.1, [1]), (0.5, [2, 3]), (1.2, [4]), (3.5, [5])]

    async def stamp(batch: np.ndarray[Any, Any]) -> None:
        emitted.append((round(anyio.current_time(), 6), batch.tolist()))

    flow = from_schedule(schedule) | af.window(1.0) | af.for_each(stamp)
    VirtualClock().run(flow)
    assert emitted == [(1.0, [1, 2, 3]), (2.0, [4]), (3.5, [5])]  # the last one at the end


def test_idle_timeout_closes_windows_and_later_rows_are_late() -> None:
    late: list[Any] = []
    emitted: list[tuple[float, list[int]]] = []
    schedule = [(0.0, rows_of([1, 2], [0, 0], [1, 1])), (10.0, rows_of([7, 12], [0, 0], [1, 1]))]

    async def stamp(batch: np.ndarray[Any, Any]) -> None:
        emitted.append((round(anyio.current_time(), 6), batch["count"].tolist()))

    stage = af.window(10, on="ts", stats=("count",), idle_timeout=2.0, late=late)
    VirtualClock().run(from_schedule(schedule) | stage | af.for_each(stamp))
    assert emitted == [(2.0, [2]), (10.0, [1])]
    assert [r["ts"] for part in late for r in part] == [7]


@pytest.mark.anyio
async def test_async_late_target_gets_each_batch_of_late_rows() -> None:
    seen: list[list[int]] = []

    async def on_late(rows: np.ndarray[Any, Any]) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(rows["ts"].tolist())

    batches = [rows_of([30], [0], [0]), rows_of([1, 2, 31], [0, 0, 0], [0, 0, 0])]
    flow = af.from_arrays(batches) | af.window(10, on="ts", key="key", late=on_late)
    result = await (flow | af.collect()).run()
    assert seen == [[1, 2]]
    assert result.value["count"].tolist() == [2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "either size"),
        ({"size": 5, "gap": 2}, "either size"),
        ({"size": 0, "on": "ts"}, "must be > 0"),
        ({"gap": 2, "step": 1, "on": "ts"}, "step="),
        ({"size": 5, "domain": "event"}, "needs on="),
        ({"size": 5, "idle_timeout": 1.0}, "event time"),
        ({"gap": 5, "domain": "count"}, "sessions"),
        ({"size": 5, "on": "ts", "stats": ("median",)}, "choose from"),
    ],
)
def test_bad_arguments_fail_at_build_time(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        af.window(**kwargs)


@pytest.mark.anyio
async def test_epoch_nanosecond_rows_within_allowed_lateness_are_not_late() -> None:
    sec = 10**9
    epoch = 1_700_000_000 * sec
    rows = np.array(
        [(epoch + 5 * sec - 1, 1, 1.0), (epoch - 1, 1, 2.0)],
        [("ts", "i8"), ("key", "i4"), ("value", "f8")],
    )
    late: list[np.ndarray] = []
    flow = af.from_array(rows, 1) | af.window(
        sec,
        on="ts",
        key="key",
        value="value",
        stats=("count",),
        allowed_lateness=5 * sec,
        late=late.append,
    )
    result = await flow.run()
    assert late == []
    assert int(result.value["count"].sum()) == 2


# -- watermarks per source: the docs/index.md example ---------------------------------------

READING = np.dtype([("ts", "i8"), ("sensor", "i4"), ("value", "f4")])
HOUR_START = 1_704_103_200_000_000_000  # 2024-01-01 10:00 UTC, epoch nanoseconds


def write_device_files(folder: Any, devices: int = 12, seconds: int = 3600) -> Any:
    """One CSV file per device, a reading a second over the same hour, some values NaN."""
    rng = np.random.default_rng(12)
    frames = []
    for device in range(devices):
        ts = HOUR_START + np.arange(seconds, dtype=np.int64) * 1_000_000_000
        value = rng.normal(20 + device, 2, seconds).astype(np.float32)
        value[rng.random(seconds) < 0.01] = np.nan
        lines = [f"{t},{device},{v}" for t, v in zip(ts.tolist(), value.tolist(), strict=True)]
        (folder / f"sensors-{device:02}.csv").write_text("\n".join(lines) + "\n")
        frames.append((ts, np.full(seconds, device), value))
    return frames


def docs_example_flow(folder: Any, out: Any, **window_args: Any) -> af.Flow[Any]:
    """The flow of docs/index.md, reading ``folder`` and writing ``out``."""
    return (
        af.read_csv(str(folder / "sensors-*.csv"), READING, on_error="skip")
        | af.filter_rows(lambda b: ~np.isnan(b["value"]))
        | af.window(
            60_000_000_000,
            on="ts",
            key="sensor",
            value="value",
            stats=("count", "mean", "max"),
            **window_args,
        )
    ) | af.to_jsonl(str(out))


@pytest.mark.parametrize("watermark", ["source", "key"])
def test_docs_window_example_counts_every_row_of_12_files_like_pandas(
    tmp_path: Any, watermark: str
) -> None:
    pd = pytest.importorskip("pandas")
    data = tmp_path / "data"
    data.mkdir()
    frames = write_device_files(data)
    out = tmp_path / "per-minute.jsonl"
    result = af.run(docs_example_flow(data, out, watermark=watermark))
    got = pd.read_json(out, lines=True).sort_values(["window_start", "sensor"])
    ts, sensor, value = (np.concatenate(c) for c in zip(*frames, strict=True))
    frame = pd.DataFrame({"ts": ts, "sensor": sensor, "value": value}).dropna()
    frame["window_start"] = frame["ts"] // 60_000_000_000 * 60_000_000_000
    want = (
        frame.groupby(["window_start", "sensor"])["value"]
        .agg(["count", "mean", "max"])
        .reset_index()
        .sort_values(["window_start", "sensor"])
    )
    assert result.statistics.stages[-2].errors == 0  # the window: no late rows
    assert int(got["count"].sum()) == len(frame) > 42_000
    assert len(got) == len(want) == 12 * 60  # one record per (minute, sensor)
    np.testing.assert_array_equal(got["window_start"], want["window_start"])
    np.testing.assert_array_equal(got["sensor"], want["sensor"])
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6)
    np.testing.assert_allclose(got["max"], want["max"], rtol=1e-7)


def test_one_global_watermark_drops_the_files_read_after_the_first(tmp_path: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_device_files(data, devices=6, seconds=600)
    late: list[Any] = []
    flow = docs_example_flow(data, tmp_path / "out.jsonl", watermark="global", late=late)
    af.run(flow)
    assert sum(len(x) for x in late) > 1000  # what the per-source default fixes


@pytest.mark.anyio
async def test_merged_inputs_hold_the_watermark_to_the_slowest() -> None:
    # Two sources interleaved, one far behind the other: the fast one must not close the
    # windows the slow one still fills (Flink's minimum across inputs).
    fast = rows_of(list(range(0, 100)), [1] * 100, [1.0] * 100)
    slow = rows_of(list(range(0, 100)), [2] * 100, [1.0] * 100)
    flow = af.merge(
        af.from_array(fast, 10, name="fast"), af.from_array(slow, 10, name="slow")
    ) | af.window(10, on="ts", key="key", stats=("count",))
    result = await (flow | af.collect()).run()
    counts = result.value
    assert counts["count"].sum() == 200
    assert sorted(set(counts["key"].tolist())) == [1, 2]
    assert len(counts) == 20  # one record per (window, key): shared windows


@pytest.mark.anyio
async def test_rows_behind_their_own_source_are_late() -> None:
    rows = rows_of([0, 25, 3, 30], [1, 1, 1, 1], [1.0] * 4)
    late: list[Any] = []
    flow = af.from_array(rows, 1) | af.window(10, on="ts", late=late)
    out = (await (flow | af.collect("list")).run()).value
    assert [x["ts"].tolist() for x in out] == [[0], [25], [30]]
    assert np.concatenate(late)["ts"].tolist() == [3]


def test_window_durations_are_checked_against_millisecond_timestamps() -> None:
    start = 1_700_000_000_000  # epoch milliseconds
    rows = rows_of((start + np.arange(0, 300_000, 1000)).tolist(), [0] * 300, [1.0] * 300)
    counts = [
        af.run(af.from_array(rows, 64) | af.window(size, on="ts", stats=("count",))).value
        for size in (60_000, "1min", datetime.timedelta(minutes=1), np.timedelta64(1, "m"))
    ]
    for c in counts[1:]:
        np.testing.assert_array_equal(c, counts[0])
    assert counts[0]["count"].sum() == 300
    assert (np.diff(counts[0]["window_start"]) == 60_000).all()  # one window per minute
    with pytest.raises(ValueError, match=r"epoch milliseconds.*694 days.*'1min'"):
        af.run(af.from_array(rows) | af.window(60_000_000_000, on="ts"))
    with pytest.raises(ValueError, match="not a duration"):
        af.window("1 minute", on="ts")
    with pytest.raises(TypeError, match="epoch timestamps"):  # small ints: no unit to use
        af.run(af.from_array(rows_of([1, 2], [0, 0], [0.0, 0.0])) | af.window("1s", on="ts"))


# -- idle inputs stop holding the watermark (window(idle_input=)) ---------------------------


def day_schedule(start: float, first_ts: int, batches: int) -> list[tuple[float, Any]]:
    """One batch of 100 rows a second from ``start``: timestamps ``first_ts`` onwards."""
    return [
        (
            start + k,
            rows_of(
                list(range(first_ts + 100 * k, first_ts + 100 * (k + 1))), [0] * 100, [1.0] * 100
            ),
        )
        for k in range(batches)
    ]


async def windows_by_time(flow: af.Flow[Any]) -> list[tuple[float, str, int]]:
    """(emission time, reason, window start) of each window the flow emits."""
    out = []
    async with flow.open() as run:
        async for batch in run.envelopes():
            assert isinstance(batch, af.Batch)
            now = round(anyio.current_time(), 6)
            out += [(now, batch.reason, int(s)) for s in batch.data["window_start"].tolist()]
    return out


def two_days(idle_input: float | None, late: list[Any]) -> af.Flow[Any]:
    day1 = from_schedule(
        [(k / 10, b) for k, (_, b) in enumerate(day_schedule(0, 0, 10))], name="day1"
    )
    day2 = from_schedule(day_schedule(1.0, 1000, 10), name="day2")
    stage = af.window(100, on="ts", stats=("count",), idle_input=idle_input, late=late)
    return af.concat(day1, day2) | stage


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_a_finished_input_stops_holding_the_next_one_after_idle_input() -> None:
    # day1: a batch every 0.1 s until t=0.9; then (concat) day2: one a second, t=1.9-10.9.
    # At t=5.9 day1 has been quiet for 5 s: forgotten, day2's own watermark closes windows.
    late: list[Any] = []
    got = await windows_by_time(two_days(5.0, late))
    day1 = [(round(0.1 * (k + 1), 6), "time", 100 * k) for k in range(9)]
    held = [(5.9, "time", s) for s in range(900, 1400, 100)]
    day2 = [(6.9 + k, "time", 1400 + 100 * k) for k in range(5)]
    assert got == [*day1, *held, *day2, (10.9, "end", 1900)]
    assert late == []


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_without_idle_input_a_finished_input_holds_windows_to_the_end() -> None:
    got = await windows_by_time(two_days(None, []))
    assert [(t, r) for t, r, s in got if s >= 900] == [(10.9, "end")] * 11


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_a_finite_concat_never_waits_for_idle_input_and_flushes_at_the_end() -> None:
    day1 = rows_of(list(range(1000)), [0] * 1000, [1.0] * 1000)
    day2 = rows_of(list(range(1000, 2000)), [0] * 1000, [1.0] * 1000)
    late: list[Any] = []
    flow = af.concat(af.from_array(day1, 100, name="day1"), af.from_array(day2, 100, name="day2"))
    with anyio.fail_after(1):
        got = await windows_by_time(flow | af.window(100, on="ts", stats=("count",), late=late))
    assert [s for _, _, s in got] == list(range(0, 2000, 100))
    assert {r for _, r, s in got if s < 900} == {"time"}  # day 1 while the run goes on
    assert {r for _, r, s in got if s >= 900} == {"end"}  # day 2: no idle wait, the flush
    assert {t for t, _, _ in got} == {0.0}
    assert late == []


def quiet_then_resumes(idle_input: float | None, late: list[Any]) -> af.Sink[Any, Any]:
    """Source a: ts 10-19 at t=0.5 (joins b's windows), then ts 20-29 at t=8; source b:
    10 rows a second, ts 0-129."""
    ones = [1.0] * 10
    a = from_schedule(
        [(0.5, rows_of(list(range(10, 20)), [1] * 10, ones)),
         (8, rows_of(list(range(20, 30)), [1] * 10, ones))],
        name="a",
    )  # fmt: skip
    b = from_schedule(
        [(k, rows_of(list(range(10 * k, 10 * k + 10)), [2] * 10, [1.0] * 10)) for k in range(13)],
        name="b",
    )
    stage = af.window(10, on="ts", stats=("count",), idle_input=idle_input, late=late, name="w")
    return af.merge(a, b) | stage | af.collect()


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_an_input_that_resumes_after_idle_input_has_its_rows_behind_late() -> None:
    late: list[Any] = []
    result = await quiet_then_resumes(5.0, late).run()
    assert np.concatenate(late)["ts"].tolist() == list(range(20, 30))
    assert result.statistics.stage("w").errors == 10
    assert result.value["count"].sum() == 130 + 10
    held: list[Any] = []  # without idleness, a holds the watermark: nothing is late
    result = await quiet_then_resumes(None, held).run()
    assert held == []
    assert result.value["count"].sum() == 130 + 20


async def reconnecting_peers(peers: int, idle_input: float | None) -> tuple[Any, list[Any]]:
    """A window fed by a server whose clients connect from a new port each time: one a
    second, each sending two batches then leaving. Returns the runner and its output."""
    (op,) = af.window(10, on="ts", stats=("count",), idle_input=idle_input).ops()
    runner, out = op.start(), []  # type: ignore[attr-defined]
    counters = af.stats.StageCounters("w")
    for i in range(peers):
        for half in range(2):
            rows = rows_of([10 * i + 5 * half + j for j in range(5)], [0] * 5, [1.0] * 5)
            prov = Provenance(f"127.0.0.1:{10_000 + i}", 5 * half, 5 * half + 5)
            out += await runner.step(af.Batch(rows, provenance=prov), counters, float(i))
        assert runner.groups.inputs() <= (peers if idle_input is None else 5)
    assert counters.errors == 0
    return runner, out


@pytest.mark.anyio
async def test_inputs_that_went_away_are_forgotten() -> None:
    runner, out = await reconnecting_peers(2000, 5.0)
    (group,) = runner.groups
    assert runner.groups.inputs() == len(group.marks) == 5  # the peers of the last 5 s
    assert len(group._heap) <= 2 * 5 + 8
    assert len(runner.groups.retired) == RETIRED_MAX
    assert len(out) == 2000 - 5  # each peer's window, 5 s after it went quiet
    assert sum(int(b.data["count"].sum()) for b in out) == 10 * (2000 - 5)


@pytest.mark.anyio
async def test_without_idle_input_the_first_peer_pins_the_watermark() -> None:
    runner, out = await reconnecting_peers(200, None)
    assert out == []  # nothing closes
    assert runner.groups.inputs() == 200

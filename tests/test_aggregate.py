"""KeyedStats (aflow/kernels/keyed.py) and to_aggregate against brute-force references."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.kernels._extremes import beyond
from aflow.kernels._grouping import group
from aflow.kernels.keyed import STATS, KeyedStats

ROW = np.dtype([("sensor", "i4"), ("value", "f8")])


def brute(keys: Any, values: Any, ddof: int = 0) -> dict[Any, dict[str, float]]:
    """Per-key statistics with a Python loop over rows."""
    rows: dict[Any, list[float]] = {}
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        rows.setdefault(k, []).append(v)
    out = {}
    for k, vs in rows.items():
        n, mean = len(vs), math.fsum(vs) / len(vs)
        var = math.fsum((v - mean) ** 2 for v in vs) / (n - ddof) if n > ddof else math.nan
        out[k] = {
            "count": n,
            "sum": math.fsum(vs),
            "min": min(vs),
            "max": max(vs),
            "mean": mean,
            "var": var,
            "std": math.sqrt(var),
            "first": vs[0],
            "last": vs[-1],
        }
    return out


def assert_matches(result: Any, want: dict[Any, dict[str, float]], key: str = "key") -> None:
    assert result[key].tolist() == sorted(want)
    for stat in STATS:
        expected = [want[k][stat] for k in result[key].tolist()]
        np.testing.assert_allclose(result[stat], expected, rtol=1e-9, atol=1e-12)


def fold(keys: Any, values: Any, cuts: list[int], **kw: Any) -> KeyedStats:
    acc = KeyedStats(**kw)
    bounds = [0, *sorted(cuts), len(keys)]
    for a, b in itertools.pairwise(bounds):
        acc.update(keys[a:b], values[a:b])
    return acc


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(np.arange(5000) % 37 - 18, id="dense-negative-int"),
        pytest.param((np.arange(5000) % 11) * 10**12, id="sparse-int"),
        pytest.param(np.arange(5000, dtype=np.uint64) % 5 + np.uint64(2**63 + 7), id="big-uint"),
        pytest.param(np.array(["b", "a", "ccc", "dd"])[np.arange(5000) % 4], id="str"),
        pytest.param(np.array([b"x", b"yy", b""])[np.arange(5000) % 3], id="bytes"),
    ],
)
def test_matches_brute_force(keys: Any) -> None:
    rng = np.random.default_rng(0)
    keys = rng.permutation(keys)
    values = rng.normal(5.0, 3.0, len(keys))
    acc = fold(keys, values, [1, 700, 701, 3000])
    assert_matches(acc.result(), brute(keys, values))


def test_dense_and_sparse_batches_mix() -> None:
    """Batches grouped by offset and by sorting merge into one state."""
    keys = np.array([1, 3, 4, 1, 10**15, 3, -(10**15), 4])
    values = np.arange(8.0)
    assert group(keys[:4]).present is not None  # by offset, slot 1 (key 2) empty
    assert group(keys[4:]).present is None
    assert_matches(fold(keys, values, [4]).result(), brute(keys, values))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(-3, 40), st.integers(-1000, 1000)), min_size=1, max_size=200
    ),
    cuts=st.lists(st.integers(0, 200), max_size=6),
    cuts2=st.lists(st.integers(0, 200), max_size=6),
)
def test_any_split_gives_identical_aggregates(
    data: list[tuple[int, int]], cuts: list[int], cuts2: list[int]
) -> None:
    keys = np.array([k for k, _ in data])
    values = np.array([v / 8 for _, v in data])  # exact in binary: sums are exact
    one = fold(keys, values, [c % (len(data) + 1) for c in cuts]).result()
    two = fold(keys, values, [c % (len(data) + 1) for c in cuts2]).result()
    for stat in ("key", "count", "sum", "min", "max", "mean", "first", "last"):
        assert np.array_equal(one[stat], two[stat]), stat
    np.testing.assert_allclose(one["var"], two["var"], rtol=1e-12, atol=1e-12)
    assert_matches(one, brute(keys, values))


def test_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    keys, values = rng.integers(0, 50, 3000), rng.normal(size=3000)
    a, b = fold(keys[:1000], values[:1000], [300]), fold(keys[1000:], values[1000:], [])
    a.merge(b)
    assert len(b) == len(np.unique(keys[1000:]))
    assert_matches(a.result(), brute(keys, values))


def test_variance_is_stable_for_large_offsets() -> None:
    """sum(x**2)/n - mean**2 loses every digit here; merged moments do not."""
    rng = np.random.default_rng(2)
    values = 1e9 + rng.normal(0.0, 1e-3, 100_000)
    keys = np.zeros(len(values), np.int64)
    got = fold(keys, values, list(range(0, 100_000, 4096))).result()["var"][0]
    assert got == pytest.approx(np.var(values), rel=1e-6)


def test_variance_keeps_its_digits_across_many_small_batches_and_merges() -> None:
    """Moments about each key's first value: 1e9 +- 1e-3 in 4-row batches lost 5 digits
    about absolute means; accumulators with different shifts merge alike."""
    rng = np.random.default_rng(3)
    values = 1e9 + rng.normal(0.0, 1e-3, 20_000)
    keys = rng.integers(0, 3, len(values))
    a = fold(keys[:10_000], values[:10_000], list(range(0, 10_000, 4)))
    b = fold(keys[10_000:][::-1], values[10_000:][::-1], list(range(0, 10_000, 4)))
    a.merge(b)  # b's shifts are other first values than a's
    got = a.result()["var"]
    truth = [np.var(values[keys == k] - values[keys == k][0]) for k in range(3)]
    np.testing.assert_allclose(got, truth, rtol=1e-12)


def test_constant_values_have_zero_variance() -> None:
    keys = np.repeat([1, 2], 50_000)
    values = np.where(keys == 1, 0.1, 1e12 + 0.3)
    res = fold(keys, values, [30_000, 70_000]).result()
    assert res["var"].tolist() == [0.0, 0.0]


def test_ddof_and_small_counts() -> None:
    acc = KeyedStats(("count", "var", "std"), ddof=1)
    acc.update(np.array([1, 2, 2]), np.array([5.0, 1.0, 3.0]))
    res = acc.result()
    assert math.isnan(res["var"][0])
    assert res["var"][1] == 2.0
    assert res["std"][1] == pytest.approx(math.sqrt(2.0))


def test_value_dtypes_are_kept_and_widened() -> None:
    acc = KeyedStats(("min", "max", "first", "last", "sum"))
    acc.update(np.array([1, 1]), np.array([3, 4], np.int16))
    assert acc.result()["min"].dtype == np.int16
    acc.update(np.array([1, 2]), np.array([0.5, 7.25], np.float32))
    res = acc.result()
    assert res["min"].dtype == np.float32
    assert res["min"].tolist() == [0.5, 7.25]
    assert res["first"].tolist() == [3.0, 7.25]
    assert res["last"].tolist() == [0.5, 7.25]
    assert res["sum"].dtype == np.float64


def test_empty_and_count_only() -> None:
    acc = KeyedStats(("count",))
    assert len(acc.result()) == 0
    acc.update(np.array(["x", "y", "x"]))
    acc.update(np.array([], "U1"))
    assert acc.result("name").tolist() == [("x", 2), ("y", 1)]
    assert KeyedStats().result().dtype.names == ("key", *STATS)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="choose one or more"):
        KeyedStats(("median",))
    with pytest.raises(ValueError, match="values are needed"):
        KeyedStats(("sum",)).update(np.array([1]))
    with pytest.raises(ValueError, match="shape"):
        KeyedStats().update(np.array([1, 2]), np.array([1.0]))
    with pytest.raises(TypeError, match="integers or floats"):
        KeyedStats().update(np.array([1]), np.array(["a"]))
    with pytest.raises(ValueError, match="cannot merge"):
        KeyedStats(("count",)).merge(KeyedStats())


@pytest.mark.anyio
async def test_sink_in_a_flow() -> None:
    rng = np.random.default_rng(3)
    rows = np.empty(10_000, ROW)
    rows["sensor"], rows["value"] = rng.integers(0, 20, len(rows)), rng.normal(size=len(rows))
    result = await (af.from_array(rows, batch_size=999) | af.to_aggregate("sensor", "value")).run()
    assert_matches(result.value, brute(rows["sensor"], rows["value"]), key="sensor")


@pytest.mark.anyio
async def test_sink_counts_plain_key_batches() -> None:
    keys = np.array(["b", "a", "b", "c"] * 10)
    flow = af.from_array(keys, batch_size=3) | af.to_aggregate(key=None, value=None)
    result = await flow.run()
    assert result.value.tolist() == [("a", 10), ("b", 20), ("c", 10)]


@pytest.mark.anyio
async def test_sink_rejects_elements() -> None:
    with pytest.raises(TypeError, match=r"af\.batch"):
        await (af.from_iterable([1, 2, 3]) | af.to_aggregate(key=None, value=None)).run()


def test_narrow_integer_keys_with_a_wide_span() -> None:
    stats = KeyedStats(("count", "sum"))
    stats.update(np.array([-100, 100, -100], np.int8), np.array([1.0, 2.0, 3.0]))
    out = stats.result("key")
    assert out["key"].tolist() == [-100, 100]
    assert out["sum"].tolist() == [4.0, 2.0]


@pytest.mark.parametrize("exact", [True, False])
def test_keyed_quantiles_match_numpy_nearest_rank(exact: bool) -> None:
    """Issue 13.5: p50/p99 per key in to_aggregate, exact (== NumPy's nearest rank) or
    sketched (within the relative accuracy of it), beside the other statistics."""
    rng = np.random.default_rng(7)
    rows = np.zeros(120_000, [("status", "<i4"), ("latency", "<f8")])  # packed: unaligned
    rows["status"] = rng.choice([200, 301, 404, 500], len(rows), p=[0.7, 0.1, 0.1, 0.1])
    rows["latency"] = rng.lognormal(3.0, 1.2, len(rows))
    rows["latency"][::997] = np.nan  # not ranked
    stats = ("count", "p50", "mean", "p99", "p99.9")
    flow = af.from_array(rows, 4096) | af.to_aggregate(
        "status", "latency", stats, exact=exact, relative_accuracy=0.005
    )
    got = af.run(flow).value
    assert got.dtype.names == ("status", *stats)
    for row in got:
        x = rows["latency"][rows["status"] == row["status"]]
        x = x[np.isfinite(x)]
        ref = np.quantile(x, [0.5, 0.99, 0.999], method="inverted_cdf")
        est = np.array([row["p50"], row["p99"], row["p99.9"]])
        if exact:
            assert np.array_equal(est, ref)
        else:
            assert (np.abs(est - ref) <= 0.005 * ref * (1 + 1e-9)).all()


def test_keyed_quantiles_of_keys_without_finite_values_are_nan() -> None:
    rows = np.array([(1, np.nan), (2, 5.0)], [("k", "i8"), ("v", "f8")])
    got = af.run(af.from_array(rows, 1) | af.to_aggregate("k", "v", ("count", "p50"))).value
    assert got["count"].tolist() == [1, 1]
    assert np.isnan(got["p50"][0])
    assert got["p50"][1] == pytest.approx(5.0, rel=0.01)
    with pytest.raises(ValueError, match="need value="):
        af.to_aggregate("k", None, ("p50",))


def test_packed_records_take_the_aligned_path() -> None:
    """A field of a packed record dtype is a misaligned view; the accumulator works on an
    aligned copy, with the same results (the 20x cliff is measured in bench_sinks)."""
    packed = np.zeros(10_000, [("sensor_id", "<i4"), ("value", "<f8")])
    packed["sensor_id"] = np.arange(10_000) % 37
    packed["value"] = np.linspace(-5, 5, 10_000)
    assert not packed["value"].flags.aligned
    aligned = np.zeros(10_000, [("sensor_id", "<i8"), ("value", "<f8")])
    aligned["sensor_id"], aligned["value"] = packed["sensor_id"], packed["value"]
    a = KeyedStats(("count", "min", "max", "mean"))
    b = KeyedStats(("count", "min", "max", "mean"))
    a.update(packed["sensor_id"], packed["value"])
    b.update(aligned["sensor_id"], aligned["value"])
    assert a.result().tolist() == b.result().tolist()


@pytest.mark.parametrize("accuracy", [0.05, 0.01, 0.005, 0.001, 1e-5])
def test_keyed_quantiles_hold_their_bound_at_any_accuracy_and_magnitude(accuracy: float) -> None:
    """Bucket codes are sized by the accuracy: fine accuracies over float64's whole range
    neither wrap into negatives nor spill into the next key (review finding)."""
    from aflow.kernels.quantiles import KeyedQuantiles

    values = np.array([1e-300, 2e-300, -3e-290, 5.0, 1e-200, 7e300, -1e308, 0.0, 3.5])
    keys = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    acc = KeyedQuantiles([0.0, 0.5, 1.0], relative_accuracy=accuracy)
    acc.update(keys, values)
    got = acc.result(np.array([0, 1, 2]))
    for k in range(3):
        ref = np.quantile(values[keys == k], [0.0, 0.5, 1.0], method="inverted_cdf")
        assert (np.abs(got[k] - ref) <= accuracy * np.abs(ref) * (1 + 1e-9)).all(), (k, got[k], ref)


GROUP_DTYPES = ["i1", "i2", "<i4", ">i4", "i8", "u1", "u2", "u4", "u8"]


def _laid_out(a: Any, layout: str) -> Any:
    """``a`` as it comes: contiguous, an aligned strided field, or a packed (misaligned) one."""
    if layout == "contiguous":
        return a
    rows = np.zeros(len(a), np.dtype([("ts", "<i8"), ("x", a.dtype)], align=layout == "aligned"))
    rows["x"] = a
    return rows["x"]


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(GROUP_DTYPES),
    where=st.sampled_from(["zero", "low", "high", "random"]),
    span=st.sampled_from([1, 2, 3, 100, 4095, 4096, 4097, 40_000, 2**40]),
    n=st.sampled_from([1, 7, 1000, 10_000]),
    layout=st.sampled_from(["contiguous", "aligned", "packed"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_group_matches_numpy_unique(
    dtype: str, where: str, span: int, n: int, layout: str, seed: int
) -> None:
    """Grouping by offset (keys as their own slots, shifted, or the uint64 path) or by
    sorting, across the dense limit, at both ends of every integer dtype, in any layout."""
    info = np.iinfo(dtype)
    span = min(span, int(info.max) - int(info.min))
    rng = np.random.default_rng(seed)
    lo = {
        "zero": max(0, int(info.min)),
        "low": int(info.min),
        "high": int(info.max) - span,
        "random": int(info.min) + seed * 7919 % (int(info.max) - span - int(info.min) + 1),
    }[where]
    offsets = rng.integers(0, span, n, endpoint=True, dtype=np.uint64)
    offsets[: min(n, 2)] = [0, span][: min(n, 2)]  # both ends of the range
    keys = (np.array(lo, dtype) + offsets.astype(dtype)).astype(dtype)  # wraps to lo + offset
    g = group(_laid_out(keys, layout))
    uniq, counts = np.unique(keys, return_counts=True)
    assert g.keys.tolist() == uniq.tolist()
    assert g.slots(g.counts).tolist() == counts.tolist()
    slot_key = np.zeros(g.size, np.int64) - 1
    slot_key[g.present if g.present is not None else np.arange(g.size)] = np.arange(len(uniq))
    assert uniq[slot_key[g.index]].tolist() == keys.tolist()  # every row in its key's slot


def _reference(batches: list[tuple[Any, Any]]) -> dict[Any, dict[str, Any]]:
    """count, sum, min, max, first and last per key with NumPy over all rows at once."""
    keys = np.concatenate([k for k, _ in batches])
    values = np.concatenate([v for _, v in batches])
    out = {}
    for key in np.unique(keys).tolist():
        v = values[keys == key]
        out[key] = {"count": len(v), "min": np.min(v), "max": np.max(v)}
        out[key] |= {"first": v[0], "last": v[-1], "sum": float(np.sum(v, dtype=np.float64))}
    return out


def _values(rng: Any, kind: str, keys: Any) -> Any:
    n = len(keys)
    if kind == "f4":  # eighths: sums are exact, ties at the extremes are common
        return (np.round(rng.normal(20, 5, n) * 8) / 8).astype("f4")
    if kind == "special":
        v = rng.normal(0, 1, n)
        pick = rng.random(n)
        v[pick < 0.002] = np.nan
        v[(pick > 0.5) & (pick < 0.6)] = 0.0
        v[(pick > 0.6) & (pick < 0.7)] = -0.0
        v[(pick > 0.7) & (pick < 0.701)] = np.inf
        v[(pick > 0.8) & (pick < 0.801)] = -np.inf
        return v
    if kind == "i8":  # not exact in float64: compared rounded
        v = 2**60 + rng.integers(-100_000, 100_000, n)  # float64 steps of 256 here
        v[::1001] = np.iinfo(np.int64).max
        return v
    if kind == "u8":
        return np.uint64(2**64 - 10) + rng.integers(0, 9, n).astype(np.uint64)
    if kind == "disjoint":  # each key its own range: no bound leaves rows out
        return keys.astype("f8") * 1000 + rng.normal(0, 1, n)
    if kind in ("zeros", "-zeros"):  # extremes of 0.0 and -0.0: which zero comes out
        v = np.where(rng.random(n) < 0.5, 0.0, -0.0)
        return np.where(rng.random(n) < 0.95, -1.0 if kind == "zeros" else 1.0, v)
    return rng.integers(-5, 5, n) > 0  # bool


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["f4", "special", "i8", "u8", "disjoint", "bool"]),
    keys=st.sampled_from([(0, 50), (1, 1000), (-40, 3), (0, 30_000)]),
    sizes=st.lists(st.sampled_from([1, 500, 8191, 8192, 20_000]), min_size=1, max_size=8),
    layout=st.sampled_from(["contiguous", "aligned", "packed"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_extremes_match_numpy_over_many_large_batches(
    kind: str, keys: tuple[int, int], sizes: list[int], layout: str, seed: int
) -> None:
    """Batches past ``MIN_ROWS`` take ``min``/``max`` over the rows beyond the state's
    bounds only: the same as NumPy over every row (NaN propagates, ties, infinities,
    integers that float64 rounds)."""
    rng = np.random.default_rng(seed)
    batches = []
    for n in sizes:
        k = rng.integers(keys[0], keys[0] + keys[1], n)
        batches.append((k, _values(rng, kind, k)))
    acc = KeyedStats(("count", "sum", "min", "max", "first", "last"))
    for k, v in batches:
        acc.update(_laid_out(k, layout), _laid_out(v, layout))
    got, want = acc.result(), _reference(batches)
    assert got["key"].tolist() == sorted(want)
    for stat in ("count", "min", "max", "first", "last"):
        np.testing.assert_array_equal(got[stat], [want[k][stat] for k in sorted(want)])
    if kind in ("f4", "bool"):  # exact sums
        assert got["sum"].tolist() == [want[k]["sum"] for k in sorted(want)]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(
    ("kind", "stats"),
    [
        ("f4", STATS),
        ("special", STATS),
        ("i8", STATS),
        ("disjoint", STATS),
        ("zeros", ("max",)),
        ("-zeros", ("min",)),
    ],
)
def test_extremes_are_bit_for_bit_those_of_every_row(
    kind: str, stats: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving out the rows inside the state's bounds changes no bit of any statistic
    (signed zeros and NaN included), against the same accumulator taking every row."""
    rng = np.random.default_rng(11)
    batches = []
    for i in range(12):
        k = rng.integers(0, 300, 20_000)
        v = _values(rng, kind, k)
        if i == 8:  # NaN first seen once the bounds leave rows out
            v = np.where(np.arange(len(v)) % 5000 == 7, np.nan, v.astype("f8"))
        batches.append((k, v))
    fast = KeyedStats(stats)
    for k, v in batches:
        fast.update(k, v)
    monkeypatch.setattr("aflow.kernels.keyed.MIN_ROWS", 10**9)
    every = KeyedStats(stats)
    for k, v in batches:
        every.update(k, v)
    assert fast.result().tobytes() == every.result().tobytes()


def test_beyond_keeps_every_row_that_can_change_an_extreme() -> None:
    """The rows left out lie strictly between the bounds; NaN rows are kept; a batch
    mostly beyond its bounds is not picked through."""
    v = np.array(([0.5, 1.0, np.nan, 3.0, -0.0] + [2.0, 2.5] * 20) * 300)
    rows = beyond(v, 1.0, 3.0)
    assert rows is not None
    assert rows.tolist() == np.flatnonzero(~((v > 1.0) & (v < 3.0))).tolist()
    assert beyond(v, 0.0, 0.1) is None  # nearly every row is beyond
    lower_only = beyond(np.arange(10_000.0), lower=1_000.0)  # no upper bound
    assert lower_only is not None
    assert lower_only.tolist() == list(range(1001))
    # the sample (every 16th row) is inside, most other rows are not: the full count
    # gives up too
    v = np.full(16_000, 5.0)
    v[::16] = 2.0
    assert beyond(v, 1.0, 3.0) is None


@pytest.mark.parametrize(
    ("dtype", "first"),
    [("i1", -128), ("i1", 100), ("i8", -(2**63)), ("i8", 2**63 - 40), ("u8", 2**64 - 40)],
)
def test_keys_of_a_whole_range_are_placed_by_offset(dtype: str, first: int) -> None:
    """A state holding every integer from its first key to its last places a batch's keys
    by their offset, at the ends of the dtype too; other batches are searched."""
    rng = np.random.default_rng(5)
    every = np.array([first + i for i in range(28)], dtype)
    batches = [every, every[3:9], every[::5], every[-2:], every[:1], every[10:20][::-1]]
    batches.append(np.concatenate([every[:4], every[:4]]).astype("i8" if dtype == "i1" else dtype))
    acc, want = KeyedStats(("count", "sum", "first")), {}
    for b in batches:
        v = rng.integers(0, 100, len(b)) / 4
        acc.update(b, v)
        for k, x in zip(b.tolist(), v.tolist(), strict=True):
            count, total, head = want.get(k, (0, 0.0, x))
            want[k] = (count + 1, total + x, head)
    got = acc.result()
    assert got["key"].tolist() == sorted(want)
    assert got[["count", "sum", "first"]].tolist() == [want[k] for k in sorted(want)]


@pytest.mark.parametrize("rows", [8, 20_000])
def test_nan_and_infinite_readings_propagate_without_a_warning(rows: int) -> None:
    """NaN and infinite values give their keys the statistics NumPy gives (NaN, inf), and
    no warning is raised (``np.minimum.at`` warned of every NaN, the variance of
    inf - inf: under ``-W error``, as here, one such reading stopped the pipeline)."""
    k = np.arange(rows) % 4
    v = np.arange(rows, dtype="f8")
    v[5] = np.nan  # key 1
    v[6] = np.inf  # key 2
    v[3], v[7] = np.inf, -np.inf  # key 3
    stats = ("count", "sum", "min", "max", "mean", "var")
    acc = KeyedStats(stats, ddof=1)
    for _ in range(3):  # the later batches take the min/max row filter when large
        acc.update(k, v)
    other = KeyedStats(stats, ddof=1)
    other.update(k, v)
    acc.merge(other)
    got = acc.result()
    every = np.tile(v, 4)
    with np.errstate(invalid="ignore"):
        for j in range(4):
            x = every[np.tile(k, 4) == j]
            want = [len(x), x.sum(), x.min(), x.max(), x.mean(), x.var(ddof=1)]
            assert np.allclose(list(got[j])[1:], want, equal_nan=True, rtol=1e-12), j

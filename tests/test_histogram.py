"""Histograms, the quantile sketch and the quantile sink, against NumPy's exact answers."""

from __future__ import annotations

import functools

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aflow as af
from aflow.sinks.histogram import Histogram, QuantileSketch, make_edges

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def brute_histogram(x: np.ndarray, edges: np.ndarray) -> tuple[list[int], int, int, int]:
    nan = int(np.isnan(x).sum())
    x = x[~np.isnan(x)]
    counts, _ = np.histogram(x[(x >= edges[0]) & (x <= edges[-1])], edges)
    return counts.tolist(), int((x < edges[0]).sum()), int((x > edges[-1]).sum()), nan


async def histogram_of(x: np.ndarray, batch: int, **kw: object) -> Histogram:
    flow = af.from_array(x, batch_size=batch) | af.to_histogram(**kw)  # type: ignore[arg-type]
    return (await flow.run()).value


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bins", "log"),
    [((-2.0, 3.0, 17), False), ([-5.0, -1.0, 0.0, 0.5, 4.0], False), ((0.01, 100.0, 40), True)],
)
async def test_histogram_matches_numpy(bins: object, log: bool) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.normal(0, 3, 5000), rng.lognormal(0, 2, 5000), [np.nan, np.inf, -np.inf, 0.0]]
    )
    x = np.concatenate([rng.permutation(x), [3.0, -2.0, 0.01, 100.0]])  # edges themselves
    edges = make_edges(bins, log)  # type: ignore[arg-type]
    h = await histogram_of(x, 777, bins=bins, log=log)
    assert (h.counts.tolist(), h.underflow, h.overflow, h.nan) == brute_histogram(x, edges)
    assert h.total == len(x)


@pytest.mark.anyio
async def test_histogram_of_a_column_and_of_chunks() -> None:
    rows = np.zeros(10, [("sensor", "i4"), ("value", "f4")])
    rows["value"] = np.arange(10)
    h = (await (af.from_array(rows, 3) | af.to_histogram("value", bins=(0, 5, 5))).run()).value
    assert (h.counts.tolist(), h.overflow) == ([1, 1, 1, 1, 2], 4)
    h = (await (af.from_iterable([1, 2, 3]) | af.to_histogram(bins=[0, 2, 4])).run()).value
    assert h.counts.tolist() == [1, 2]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-10, 10) | st.just(float("nan")), max_size=100),
    st.integers(1, 30),
    st.integers(1, 30),
)
def test_histogram_any_split_and_merge(xs: list[float], b1: int, b2: int) -> None:
    def run(x: np.ndarray, batch: int) -> Histogram:
        return anyio.run(functools.partial(histogram_of, x, batch, bins=(-5, 5, 7)))

    x = np.array(xs, np.float64)
    one, two = run(x, b1), run(x, b2)
    assert np.array_equal(one.counts, two.counts)
    assert (one.underflow, one.overflow, one.nan) == (two.underflow, two.overflow, two.nan)
    half = len(x) // 2
    merged = run(x[:half], b1).merge(run(x[half:], b2))
    assert np.array_equal(merged.counts, one.counts)
    assert merged.total == one.total == len(x)


def test_bad_bins() -> None:
    for bins, log in [((1.0, 0.0, 3), False), ((0.0, 1.0, 3), True), ([0.0, 0.0], False)]:
        with pytest.raises(ValueError, match="bins="):
            make_edges(bins, log)
    with pytest.raises(ValueError, match="log=True"):
        make_edges([1.0, 2.0], True)
    with pytest.raises(ValueError, match="different edges"):
        Histogram(np.arange(3.0), np.zeros(2, np.int64)).merge(
            Histogram(np.arange(4.0), np.zeros(3, np.int64))
        )


def assert_within_bound(sketch: QuantileSketch, x: np.ndarray, qs: np.ndarray) -> None:
    exact = np.quantile(x, qs, method="inverted_cdf")  # nearest rank
    got = sketch.quantile(qs)
    bound = sketch.relative_accuracy * np.abs(exact) * (1 + 1e-9)
    assert (np.abs(got - exact) <= bound).all(), (got, exact)


@settings(max_examples=80, deadline=None)
@given(
    xs=st.lists(finite | st.sampled_from([0.0, -0.0, 1e-320]), min_size=1, max_size=300),
    accuracy=st.sampled_from([0.001, 0.01, 0.05, 0.2]),
    cut=st.integers(0, 300),
)
def test_sketch_error_within_bound(xs: list[float], accuracy: float, cut: int) -> None:
    x = np.array(xs)
    sketch = QuantileSketch(accuracy)
    sketch.update(x[:cut])
    sketch.update(x[cut:])
    assert sketch.count == len(x)
    x = np.where(np.abs(x) < np.finfo(np.float64).tiny, 0.0, x)  # subnormals count as 0
    assert_within_bound(sketch, x, np.linspace(0, 1, 41))


def test_sketch_on_large_random_data_and_merge() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.lognormal(3, 2, 100_000), -rng.exponential(5, 50_000), [0.0] * 99])
    one, left, right = QuantileSketch(0.01), QuantileSketch(0.01), QuantileSketch(0.01)
    for part in np.array_split(rng.permutation(x), 17):
        one.update(part)
    left.update(x[:70_000])
    right.update(x[70_000:])
    left.merge(right)
    qs = np.array([0.0, 0.001, 0.1, 0.25, 0.3, 0.5, 0.9, 0.99, 0.999, 1.0])
    assert_within_bound(one, x, qs)
    assert np.array_equal(left.quantile(qs), one.quantile(qs))


def test_sketch_edges() -> None:
    s = QuantileSketch(0.02)
    assert np.isnan(s.quantile([0.5])).all()
    s.update([np.nan, np.inf, -np.inf, 1e308, -1e308, 5.0])
    assert (s.count, s.nonfinite) == (3, 3)
    assert np.isfinite(s.quantile([0.0, 1.0])).all()
    with pytest.raises(ValueError, match="must be in"):
        s.quantile(1.5)
    with pytest.raises(ValueError, match="cannot merge"):
        s.merge(QuantileSketch(0.01))
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch(0.0)


@pytest.mark.anyio
async def test_quantile_sink_exact_and_sketched() -> None:
    rng = np.random.default_rng(2)
    rows = np.zeros(50_000, [("sensor", "i4"), ("value", "f8")])
    rows["value"] = rng.gamma(2.0, 10.0, len(rows))
    qs = (0.1, 0.5, 0.99)
    source = af.from_array(rows, batch_size=4096)
    exact = (await (source | af.to_quantiles("value", qs, exact=True)).run()).value
    assert np.array_equal(exact, np.quantile(rows["value"], qs, method="inverted_cdf"))
    approx = (await (source | af.to_quantiles("value", qs, relative_accuracy=0.005)).run()).value
    lower = np.quantile(rows["value"], qs, method="inverted_cdf")
    assert (np.abs(approx - lower) <= 0.005 * lower * (1 + 1e-9)).all()
    empty = (await (af.from_iterable([]) | af.to_quantiles(exact=True)).run()).value
    assert np.isnan(empty).all()
    assert empty.shape == (3,)
    with pytest.raises(TypeError, match="name the column"):
        await (source | af.to_quantiles()).run()

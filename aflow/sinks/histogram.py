"""Distribution sinks: histograms over fixed (linear or log) bins, and quantiles.

* :func:`to_histogram` counts values per bin with one ``np.searchsorted`` and one
  ``np.bincount`` per batch. Values below the first edge, above the last and NaN are
  counted apart (``underflow``, ``overflow``, ``nan``), never dropped.
* :func:`to_quantiles` estimates quantiles with a :class:`QuantileSketch` (relative error
  bound, memory bounded by the data's dynamic range), or computes them exactly.

The exact rule: ``exact=True`` keeps every value (memory grows with the rows, so it is for
bounded data) and gives the nearest-rank quantiles of the finite ones (as the sketch
estimates them; per key: :func:`aflow.to_aggregate` with ``"p99"``). For unbounded streams
use the sketch, or a histogram when the values' range is known.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..abc import Batch, Context, SavedAttributes, SinkOperator, SinkWriter
from ..flow import Sink
from ..kernels.sketch import QuantileSketch

__all__ = ["Histogram", "QuantileSketch", "to_histogram", "to_quantiles"]

Bins = ArrayLike | tuple[float, float, int]


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts of values per bin.

    Attributes:
        edges: shape ``(n + 1,)``, float64, increasing. Bin ``i`` is
            ``[edges[i], edges[i + 1])``, the last bin also holds ``edges[-1]`` (as in
            ``np.histogram``).
        counts: shape ``(n,)``, int64: values per bin.
        underflow: values below ``edges[0]``.
        overflow: values above ``edges[-1]`` (including ``+inf``).
        nan: NaN values.
    """

    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    underflow: int = 0
    overflow: int = 0
    nan: int = 0

    @property
    def total(self) -> int:
        """Every value seen: in bins, under, over and NaN."""
        return int(self.counts.sum()) + self.underflow + self.overflow + self.nan

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both inputs (same edges)."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge histograms with different edges")
        return Histogram(
            self.edges,
            self.counts + other.counts,
            self.underflow + other.underflow,
            self.overflow + other.overflow,
            self.nan + other.nan,
        )


def make_edges(bins: Bins, log: bool) -> NDArray[np.float64]:
    """Bin edges from explicit edges or ``(lo, hi, n)``: n linear (or geometric) bins."""
    if isinstance(bins, tuple) and len(bins) == 3 and isinstance(bins[2], int):
        lo, hi, n = bins
        if n < 1 or not lo < hi or (log and lo <= 0):
            raise ValueError(f"bins={bins!r}: need n >= 1 and lo < hi (and lo > 0 for log)")
        return np.geomspace(lo, hi, n + 1) if log else np.linspace(lo, hi, n + 1)
    if log:
        raise ValueError("log=True builds the edges from bins=(lo, hi, n); not with edges")
    edges = np.asarray(bins, np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not (np.diff(edges) > 0).all():
        raise ValueError(f"bins={bins!r}: edges must be 1-D, increasing, at least two")
    return edges


class _HistogramWriter(SavedAttributes, SinkWriter[Any, Histogram]):
    saved = ("counts", "nan")  # the state committed at checkpoints

    def __init__(self, column: str | None, edges: NDArray[np.float64]) -> None:
        self.column = column
        self.edges = edges
        self.search = edges.copy()  # side="right" search, the last bin closed
        self.search[-1] = np.nextafter(edges[-1], np.inf)
        self.counts = np.zeros(len(edges) + 1, np.int64)  # underflow, bins..., overflow
        self.nan = 0

    async def write(self, item: Any) -> None:
        x = values_of(item, self.column)
        slots = np.searchsorted(self.search, x, side="right")  # NaN sorts last: overflow
        self.counts += np.bincount(slots, minlength=len(self.counts))
        if x.dtype.kind == "f":
            nan = int(np.isnan(x).sum())
            self.counts[-1] -= nan
            self.nan += nan

    async def write_chunk(self, items: list[Any]) -> None:
        await self.write(np.asarray(items))

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)

    def result(self) -> Histogram:
        c = self.counts
        return Histogram(self.edges, c[1:-1].copy(), int(c[0]), int(c[-1]), self.nan)


class _HistogramOp(SinkOperator[Any, Histogram]):
    def __init__(self, column: str | None, edges: NDArray[np.float64]) -> None:
        self.column, self.edges = column, edges
        self.name = f"to_histogram({column or ''})"

    def writer(self, ctx: Context) -> SinkWriter[Any, Histogram]:
        return _HistogramWriter(self.column, self.edges)


def to_histogram(
    value: str | None = None, *, bins: Bins, log: bool = False
) -> Sink[Any, Histogram]:
    """Count values per bin; nothing is dropped.

    Examples:
        >>> import aflow as af
        >>> h = af.run(af.from_array(np.arange(12.0)) | af.to_histogram(bins=(0, 10, 5))).value
        >>> h.counts.tolist(), h.overflow
        ([2, 2, 2, 2, 3], 1)

    Args:
        value: the value column of structured batches to count; ``None`` for 1-D
            batches (or chunks of numbers).
        bins: the edges (1-D, increasing), or ``(lo, hi, n)`` for ``n`` equal bins.
        log: with ``(lo, hi, n)``: bins of equal width in ``log(x)`` (``lo > 0``); zero and
            negative values go to ``underflow``.

    Returns:
        A sink whose result is a :class:`Histogram`.
    """
    return Sink(_HistogramOp(value, make_edges(bins, log)))


def values_of(item: Any, column: str | None) -> NDArray[Any]:
    """The values of a batch (its column ``column``, or the batch), as a 1-D array."""
    arr = np.asarray(item)
    if column is not None:
        return np.asarray(arr[column]).reshape(-1)
    if arr.dtype.names:
        raise TypeError(f"structured batches {arr.dtype}: name the column to use")
    return arr.reshape(-1)


class _QuantileWriter(SinkWriter[Any, NDArray[np.float64]]):
    def __init__(self, column: str | None, q: NDArray[np.float64], sketch: QuantileSketch | None):
        self.column, self.q, self.sketch = column, q, sketch
        self.kept: list[NDArray[np.float64]] = []

    async def write(self, item: Any) -> None:
        x = values_of(item, self.column)
        if self.sketch is not None:
            self.sketch.update(x)
        else:
            self.kept.append(np.array(x, np.float64))  # a copy: batches may be views

    async def write_chunk(self, items: list[Any]) -> None:
        await self.write(np.asarray(items))

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)

    def snapshot(self) -> Any:
        """The sketch, or the values kept (joined into one array), pickled."""
        if self.sketch is None and len(self.kept) > 1:
            self.kept = [np.concatenate(self.kept)]
        return pickle.dumps((self.sketch, self.kept), protocol=5)

    def restore(self, state: Any) -> None:
        self.sketch, self.kept = pickle.loads(state)

    def result(self) -> NDArray[np.float64]:
        if self.sketch is not None:
            return self.sketch.quantile(self.q)
        if not self.kept:
            return np.full(self.q.shape, np.nan)
        x = np.concatenate(self.kept).astype(np.float64, copy=False)
        x = x[np.isfinite(x)]  # not ranked, as in the sketch
        if not len(x):
            return np.full(self.q.shape, np.nan)
        out: NDArray[np.float64] = np.quantile(x, self.q, method="inverted_cdf")
        return out


class _QuantileOp(SinkOperator[Any, NDArray[np.float64]]):
    def __init__(self, column: str | None, q: Sequence[float], exact: bool, accuracy: float):
        self.column, self.exact, self.accuracy = column, exact, accuracy
        self.q = np.asarray(q, np.float64)
        QuantileSketch(accuracy).quantile(self.q)  # validate now, not at the end
        self.name = f"to_quantiles({column or ''})"

    def writer(self, ctx: Context) -> SinkWriter[Any, NDArray[np.float64]]:
        sketch = None if self.exact else QuantileSketch(self.accuracy)
        return _QuantileWriter(self.column, self.q, sketch)


def to_quantiles(
    value: str | None = None,
    q: Sequence[float] = (0.5, 0.9, 0.99),
    *,
    exact: bool = False,
    relative_accuracy: float = 0.01,
) -> Sink[Any, NDArray[np.float64]]:
    """Quantiles of the values, estimated in bounded memory or exactly.

    Args:
        value: the value column of structured batches; ``None`` for 1-D batches.
        q: probabilities in [0, 1].
        exact: keep every value and return the nearest-rank quantiles of the finite ones
            (``np.quantile(values, q, method="inverted_cdf")``: always a value that was
            seen). Memory grows with the rows: for bounded data only.
        relative_accuracy: the sketch's bound ``a``: each estimate is within ``a * |x|`` of
            that exact quantile ``x`` (see :class:`QuantileSketch`).

    Returns:
        A sink whose result is a float64 array of shape ``(len(q),)`` (NaN when empty).
    """
    return Sink(_QuantileOp(value, q, exact, relative_accuracy))

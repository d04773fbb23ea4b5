"""A mergeable quantile sketch with a relative-error guarantee (DDSketch), in NumPy.

Values are counted in logarithmic buckets: with ``gamma = (1 + a) / (1 - a)``, bucket ``k``
holds the magnitudes in ``(gamma**(k-1), gamma**k]`` and stands for
``2 * gamma**k / (gamma + 1)``, which is within a relative ``a`` of every value in it.
Negative values are counted by magnitude in a second store, zeros apart. Each store is a
dense ``int64`` array over the bucket keys seen so far, so memory is bounded by the
dynamic range of the data (``log(max / min) / log(gamma)`` buckets: 35 per decade at
``a = 0.01``), never by the row count. Reference: Masson, Rim, Lee, "DDSketch: a fast and
fully-mergeable quantile sketch with relative-error guarantees", VLDB 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["QuantileSketch", "bucket_codes", "bucket_values", "code_bits", "nearest_rank"]

MIN_MAGNITUDE = float(np.finfo(np.float64).tiny)
"""Magnitudes below this (subnormal numbers) are counted as zeros."""


class _Store:
    """Counts per bucket key, in a dense array starting at key ``offset``."""

    __slots__ = ("counts", "offset")

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.int64)
        self.offset = 0

    def add(self, keys: NDArray[np.int64]) -> None:
        """Count one value per key. ``keys``: shape ``(n,)``, int64."""
        if len(keys):
            self._cover(int(keys.min()), int(keys.max()))
            self.counts += np.bincount(keys - self.offset, minlength=len(self.counts))

    def merge(self, other: _Store) -> None:
        if other.counts.any():
            self._cover(other.offset, other.offset + len(other.counts) - 1)
            start = other.offset - self.offset
            self.counts[start : start + len(other.counts)] += other.counts

    def _cover(self, lo: int, hi: int) -> None:
        """Grow the array so keys ``lo..hi`` fit."""
        if not len(self.counts):
            self.counts, self.offset = np.zeros(hi - lo + 1, np.int64), lo
            return
        new_lo, new_hi = min(lo, self.offset), max(hi, self.offset + len(self.counts) - 1)
        if (new_lo, new_hi) != (self.offset, self.offset + len(self.counts) - 1):
            grown = np.zeros(new_hi - new_lo + 1, np.int64)
            grown[self.offset - new_lo : self.offset - new_lo + len(self.counts)] = self.counts
            self.counts, self.offset = grown, new_lo


class QuantileSketch:
    """Streaming quantiles within a relative error ``relative_accuracy``, mergeable.

    Guarantee: for ``q`` in [0, 1], ``quantile(q)`` is within ``relative_accuracy * |x|`` of
    ``x``, the nearest-rank quantile of the ``n`` finite values seen: the smallest value
    with at least ``q * n`` values at or below it (the ``ceil(q * n)``-th smallest, or the
    smallest for ``q = 0``; ``np.quantile(values, q, method="inverted_cdf")``). Zeros are exact;
    subnormal magnitudes count as zero; NaN and infinities are counted in ``nonfinite``
    and not ranked.

    Examples:
        >>> s = QuantileSketch(0.01)
        >>> s.update(np.arange(1.0, 1001.0))
        >>> abs(float(s.quantile(0.5)) - 500.0) <= 0.01 * 500.0
        True

    Args:
        relative_accuracy: ``a`` in (0, 1): the relative error bound.
    """

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy={relative_accuracy}: must be in (0, 1)")
        self.relative_accuracy = relative_accuracy
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self.gamma)
        self._positive = _Store()
        self._negative = _Store()
        self.zeros = 0
        self.nonfinite = 0

    @property
    def count(self) -> int:
        """Number of finite values seen."""
        return int(self._positive.counts.sum() + self._negative.counts.sum()) + self.zeros

    def update(self, values: ArrayLike) -> None:
        """Add a batch of values: shape ``(n,)``, any real dtype. NumPy per value."""
        x = np.asarray(values, np.float64).reshape(-1)
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite += int(len(x) - finite.sum())
            x = x[finite]
        mag = np.abs(x)
        big = mag >= MIN_MAGNITUDE
        self.zeros += int(len(x) - big.sum())
        keys = np.ceil(np.log(mag[big]) / self._log_gamma).astype(np.int64)
        negative = x[big] < 0
        self._positive.add(keys[~negative])
        self._negative.add(keys[negative])

    def merge(self, other: QuantileSketch) -> None:
        """Add the counts of ``other`` (same ``relative_accuracy``); ``other`` is unchanged."""
        if other.gamma != self.gamma:
            raise ValueError(
                f"cannot merge a sketch of accuracy {other.relative_accuracy} into one of "
                f"{self.relative_accuracy}"
            )
        self._positive.merge(other._positive)
        self._negative.merge(other._negative)
        self.zeros += other.zeros
        self.nonfinite += other.nonfinite

    def quantile(self, q: float | Sequence[float] | NDArray[Any]) -> NDArray[np.float64]:
        """Estimated quantiles.

        Args:
            q: one or more probabilities in [0, 1].

        Returns:
            float64 array of the shape of ``q``; NaN when no finite value was seen.
        """
        qs = np.asarray(q, np.float64)
        if ((qs < 0) | (qs > 1)).any():
            raise ValueError(f"quantiles must be in [0, 1], got {q!r}")
        n = self.count
        if n == 0:
            return np.full(qs.shape, np.nan)
        values, counts = self._ordered()
        out: NDArray[np.float64] = values[
            np.searchsorted(np.cumsum(counts), nearest_rank(qs, n), "right")
        ]
        return out

    def _ordered(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Representative values of all buckets in increasing order, with their counts."""
        neg, pos = self._negative, self._positive
        log_scale = math.log(2.0 / (self.gamma + 1.0))  # inside exp: no overflow at the top
        neg_keys = neg.offset + np.arange(len(neg.counts))[::-1]
        pos_keys = pos.offset + np.arange(len(pos.counts))
        with np.errstate(over="ignore"):  # the top bucket may stand for more than max
            values = np.concatenate(
                [
                    -np.exp(neg_keys * self._log_gamma + log_scale),
                    [0.0],
                    np.exp(pos_keys * self._log_gamma + log_scale),
                ]
            )
        biggest = np.finfo(np.float64).max  # clipping only brings it closer to the value
        np.clip(values, -biggest, biggest, out=values)
        counts = np.concatenate([neg.counts[::-1], [self.zeros], pos.counts])
        return values, counts


def nearest_rank(qs: NDArray[np.float64], n: NDArray[Any] | int) -> NDArray[np.float64]:
    """0-based rank of the nearest-rank ``q`` quantile among ``n`` values: ``ceil(q * n) - 1``,
    at least 0 (broadcasts over ``qs`` and ``n``)."""
    ranks: NDArray[np.float64] = np.maximum(np.ceil(qs * n) - 1, 0)
    return ranks


# Buckets as one sortable code: negatives (larger magnitude first), zero, positives.
_LN_RANGE = 710.0  # |ln| of float64 magnitudes counted (tiny: -708.4; max: 709.8)


def _half(log_gamma: float) -> int:
    """More than the largest |bucket key| of a float64 magnitude at this accuracy."""
    return math.ceil(_LN_RANGE / log_gamma) + 2


def code_bits(log_gamma: float) -> int:
    """Bits a bucket code needs at this accuracy (21 at 0.1 %, 14 at 1 %), so codes of
    keyed rows pack as ``slot << code_bits | code``."""
    return (4 * _half(log_gamma) + 3).bit_length()


def bucket_codes(x: NDArray[np.float64], log_gamma: float) -> NDArray[np.int64]:
    """The bucket of each finite value as an int64 code that sorts like the values, in
    ``[0, 2 ** code_bits(log_gamma))``."""
    half = _half(log_gamma)
    mag = np.abs(x)
    with np.errstate(divide="ignore"):
        k = np.ceil(np.log(np.maximum(mag, MIN_MAGNITUDE)) / log_gamma).astype(np.int64)
    codes = np.where(x < 0, half - k, 3 * half + 2 + k)
    codes[mag < MIN_MAGNITUDE] = 2 * half + 1
    return codes


def bucket_values(codes: NDArray[np.int64], gamma: float) -> NDArray[np.float64]:
    """The value each bucket code stands for (within the sketch's relative accuracy of
    every value in it; 0 for zeros)."""
    log_gamma = math.log(gamma)
    half = _half(log_gamma)
    zero = 2 * half + 1
    negative = codes < zero
    k = np.where(negative, half - codes, codes - 3 * half - 2)
    with np.errstate(over="ignore"):
        values = np.exp(k * log_gamma + math.log(2.0 / (gamma + 1.0)))
    biggest = np.finfo(np.float64).max
    np.clip(values, 0.0, biggest, out=values)
    out: NDArray[np.float64] = np.where(negative, -values, values)
    out[codes == zero] = 0.0
    return out

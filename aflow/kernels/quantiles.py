"""Keyed quantiles: p50, p99, ... per key, sketched in bounded memory or exact.

:class:`KeyedQuantiles` keeps, per key, either the counts of the logarithmic buckets of a
DDSketch (see :mod:`aflow.kernels.sketch`: each estimate within a relative
``relative_accuracy`` of the exact value; memory per key bounded by the values' dynamic
range, about 35 buckets per decade at 1 %, never by rows), or every value (``exact``:
memory grows with rows). Both answer the nearest-rank quantile: the smallest value with at
least ``q * n`` of the key's ``n`` values at or below it
(``np.quantile(values, q, method="inverted_cdf")``).

A batch costs one ``np.unique`` over its rows' ``(key, bucket)`` codes; the batches'
compressed counts are merged into the state once they outgrow it, so Python runs per batch
and the state stays sized by keys x buckets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .sketch import bucket_codes, bucket_values, code_bits, nearest_rank

__all__ = ["KeyedQuantiles", "parse_quantile"]

_NAME = re.compile(r"p(\d{1,2}(?:\.\d+)?|100)")


def parse_quantile(name: str) -> float | None:
    """``"p99"`` -> 0.99, ``"p99.9"`` -> 0.999, ``"p50"`` -> 0.5; None if not a quantile."""
    match = _NAME.fullmatch(name)
    return None if match is None else float(match.group(1)) / 100.0


class KeyedQuantiles:
    """Per-key quantiles of a stream of ``(key, value)`` rows, mergeable.

    Examples:
        >>> acc = KeyedQuantiles([0.5, 1.0], exact=True)
        >>> acc.update(np.array([1, 1, 2, 1]), np.array([3.0, 1.0, 7.0, 2.0]))
        >>> acc.result(np.array([1, 2, 3])).tolist()
        [[2.0, 3.0], [7.0, 7.0], [nan, nan]]

    Args:
        quantiles: probabilities in [0, 1].
        exact: keep every value (memory grows with rows) instead of a sketch.
        relative_accuracy: the sketch's bound ``a`` in (0, 1): each estimate is within
            ``a * |x|`` of the exact nearest-rank quantile ``x``.

    NaN and infinite values are not ranked; a key without finite values gets NaN.
    """

    def __init__(
        self, quantiles: Sequence[float], *, exact: bool = False, relative_accuracy: float = 0.01
    ) -> None:
        self.quantiles = np.asarray(quantiles, np.float64)
        if self.quantiles.ndim != 1 or ((self.quantiles < 0) | (self.quantiles > 1)).any():
            raise ValueError(f"quantiles must be probabilities in [0, 1], got {quantiles!r}")
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy={relative_accuracy}: must be in (0, 1)")
        self.exact = exact
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self.gamma)
        self._bits = code_bits(self._log_gamma)  # slot << bits | bucket
        if self._bits > 40:
            raise ValueError(f"relative_accuracy={relative_accuracy}: too fine (use >= 1e-6)")
        # sketch state: sorted keys; sorted codes slot << self._bits | bucket, with counts
        self._keys: NDArray[Any] = np.empty(0, np.int64)
        self._codes: NDArray[np.int64] = np.empty(0, np.int64)
        self._counts: NDArray[np.int64] = np.empty(0, np.int64)
        self._pending: list[tuple[NDArray[Any], NDArray[np.int64], NDArray[np.int64]]] = []
        self._pending_rows = 0
        self._values: list[tuple[NDArray[Any], NDArray[np.float64]]] = []  # exact mode

    def update(self, keys: NDArray[Any], values: NDArray[Any]) -> None:
        """Fold in one batch: ``keys`` and ``values`` of shape ``(n,)``."""
        x = np.asarray(values, np.float64)
        finite = np.isfinite(x)
        keys, x = (keys, x) if finite.all() else (keys[finite], x[finite])
        if not len(x):
            return
        if self.exact:
            self._values.append((np.array(keys), np.array(x)))
            return
        batch_keys, slot = np.unique(keys, return_inverse=True)
        codes, counts = np.unique(
            (slot.astype(np.int64) << self._bits) | bucket_codes(x, self._log_gamma),
            return_counts=True,
        )
        self._pending.append((batch_keys, codes, counts))
        self._pending_rows += len(codes)
        if self._pending_rows > max(1 << 20, 2 * len(self._codes)):
            self._consolidate()

    def merge(self, other: KeyedQuantiles) -> None:
        """Fold in another accumulator's rows (same quantiles, mode and accuracy)."""
        if other.exact != self.exact or other.gamma != self.gamma:
            raise ValueError("cannot merge keyed quantiles of another mode or accuracy")
        self._values.extend(other._values)
        other._consolidate()
        if len(other._codes):
            self._pending.append((other._keys, other._codes, other._counts))
            self._pending_rows += len(other._codes)

    def result(self, keys: NDArray[Any]) -> NDArray[np.float64]:
        """Quantiles of each of ``keys`` (shape ``(k,)``): float64 of shape
        ``(k, len(quantiles))``, NaN for a key without finite values."""
        out = np.full((len(keys), len(self.quantiles)), np.nan)
        seen, values = self._exact_result() if self.exact else self._sketch_result()
        if len(seen):
            pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
            found = seen[pos] == keys
            out[found] = values[pos[found]]
        return out

    def _consolidate(self) -> None:
        """Merge the pending batches' counts into the state."""
        if not self._pending:
            return
        parts = [(self._keys, self._codes, self._counts), *self._pending]
        self._pending, self._pending_rows = [], 0
        keys = np.unique(np.concatenate([k for k, _, _ in parts]))
        mask = (1 << self._bits) - 1
        codes = np.concatenate(
            [
                (np.searchsorted(keys, k)[c >> self._bits] << self._bits) | (c & mask)
                for k, c, _ in parts
            ]
        )
        merged, inverse = np.unique(codes, return_inverse=True)
        weights = np.concatenate([n for _, _, n in parts]).astype(np.float64)
        self._keys, self._codes = keys, merged
        self._counts = np.bincount(inverse, weights, len(merged)).astype(np.int64)

    def _sketch_result(self) -> tuple[NDArray[Any], NDArray[np.float64]]:
        self._consolidate()
        slots = self._codes >> self._bits
        totals = np.bincount(slots, self._counts.astype(np.float64), len(self._keys))
        starts = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        cum = np.cumsum(self._counts)
        targets = starts[:, None] + nearest_rank(self.quantiles[None, :], totals[:, None])
        index = np.searchsorted(cum, targets, "right")
        mask = (1 << self._bits) - 1
        return self._keys, bucket_values(self._codes[index] & mask, self.gamma)

    def _exact_result(self) -> tuple[NDArray[Any], NDArray[np.float64]]:
        if not self._values:
            return np.empty(0, np.int64), np.empty((0, len(self.quantiles)))
        keys = np.concatenate([k for k, _ in self._values])
        x = np.concatenate([v for _, v in self._values])
        self._values = [(keys, x)]
        order = np.lexsort((x, keys))
        seen, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
        ranks = nearest_rank(self.quantiles[None, :], counts[:, None]).astype(np.int64)
        return seen, x[order][starts[:, None] + ranks]

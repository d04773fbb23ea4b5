"""Grouping one batch of rows by key, vectorized: the first step of every keyed statistic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DENSE_FACTOR", "Groups", "group"]

DENSE_FACTOR = 4
"""Integer keys spanning at most ``DENSE_FACTOR * len(batch)`` values (or 4,096) are grouped
by offset (``key - min``) instead of by sorting: no ``np.unique``, an ``np.bincount``."""


@dataclass(frozen=True, slots=True)
class Groups:
    """The rows of one batch, grouped by key.

    Attributes:
        keys: shape ``(u,)``: the distinct keys of the batch, sorted, the keys' dtype.
        index: shape ``(n,)``, intp: the group slot of each row, in ``range(size)``.
        size: the number of group slots (``u``, or the key range for offset grouping).
        counts: shape ``(size,)``, int64: rows per slot.
        present: shape ``(u,)``, intp: the slots that hold rows, in key order; ``None`` when
            every slot does (slot ``i`` is then ``keys[i]``).
    """

    keys: NDArray[Any]
    index: NDArray[np.intp]
    size: int
    counts: NDArray[np.int64]
    present: NDArray[np.intp] | None

    def compress(self, per_slot: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Keep the slots that hold rows: arrays of shape ``(size,)`` become ``(u,)``."""
        if self.present is None:
            return per_slot
        return {name: col[self.present] for name, col in per_slot.items()}

    def slots(self, per_slot: NDArray[Any]) -> NDArray[Any]:
        """One array of shape ``(size,)`` as ``(u,)``, in the order of ``keys``."""
        return per_slot if self.present is None else per_slot[self.present]


def group(keys: NDArray[Any]) -> Groups:
    """Group the rows of a batch by key.

    Args:
        keys: shape ``(n,)``, ``n >= 1``: integers, strings or bytes (anything
            ``np.unique`` sorts).

    Returns:
        The groups. Dense integer keys take the offset path (one ``bincount``); others
        take ``np.unique(return_inverse=True)`` (a sort).
    """
    if keys.dtype.kind in "iu":
        lo, hi = int(keys.min()), int(keys.max())
        if hi - lo < max(DENSE_FACTOR * len(keys), 4096):
            return _by_offset(keys, lo, hi - lo + 1)
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    index = inverse.reshape(-1).astype(np.intp, copy=False)
    return Groups(uniq, index, len(uniq), counts.astype(np.int64, copy=False), None)


def _by_offset(keys: NDArray[Any], lo: int, span: int) -> Groups:
    """Group integer keys in ``[lo, lo + span)`` by their offset from ``lo``."""
    if keys.dtype.itemsize < 8:  # the span may not fit the keys' own narrow dtype
        shifted = keys.astype(np.int64) - lo
    else:
        shifted = keys - keys.dtype.type(lo) if lo else keys
    index = shifted.astype(np.intp, copy=False)
    counts = np.bincount(index, minlength=span).astype(np.int64, copy=False)
    present = np.flatnonzero(counts)
    uniq = present.astype(keys.dtype) + keys.dtype.type(lo)  # in the keys' dtype: no overflow
    return Groups(uniq, index, span, counts, present)

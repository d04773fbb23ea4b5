"""Keyed statistics: count, sum, min, max, mean, var, std, first and last per key.

:class:`KeyedStats` is the mergeable accumulator: ``update(keys, values)`` folds one batch
in with a few vectorized passes (group, ``np.bincount``, ``ufunc.at``), so its state is
sized by the number of distinct keys, never by rows. The sink :func:`aflow.to_aggregate`
and the keyed windows of :func:`aflow.window` both keep their state in it.

Grouping a batch: integer keys whose range is small next to the batch (``max - min`` at
most a few times its length) are counted directly with ``np.bincount`` over ``key - min``
(over the key itself when it is small and not negative); other keys (sparse integers,
strings, bytes) go through ``np.unique(return_inverse=True)``. Min and max use
``np.minimum.at``/``np.maximum.at``, which NumPy >= 1.25 runs in one pass: measured 25x
faster than sorting a 65,536-row batch for ``reduceat``. In a batch of 8,192 rows or more
whose keys all have extremes in the state, only the rows beyond those keys' least extremes
go through them (:mod:`aflow.kernels._extremes`): a few hundred of 43,000 readings, bit
for bit the same.

Variance is computed stably: each batch contributes its count, mean and the sum of squared
deviations from *its own* mean (two passes over a batch that sits in cache, plus the
correction pass of the corrected two-pass algorithm when the batch's naive sum could be off
enough to matter: values near 1e9 with a spread of 1e-3 would otherwise lose 4 digits), and
batches are merged with Chan et al.'s parallel formula on (count, mean, M2), never through
``sum(x**2) - sum(x)**2/n``. Means are kept about a per-key shift (the mean of the key's
first batch), and a batch whose values sit far from zero next to their spread takes its
moments about that shift too, so the means being merged are near zero: readings of 1e9
with a spread of 1e-3, in batches of 4 rows, keep the variance to ~2e-15 relative (5.8e-5
with moments about absolute means).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from ._extremes import MIN_ROWS, beyond, blank, extreme
from ._grouping import Groups, group

__all__ = ["STATS", "KeyedStats"]

STATS: Final = ("count", "sum", "min", "max", "mean", "var", "std", "first", "last")
"""Every statistic :class:`KeyedStats` knows, in the default column order."""

_NEEDS_SUM: Final = frozenset({"sum", "mean", "var", "std"})
_NEEDS_M2: Final = frozenset({"var", "std"})
_EXTREMES: Final = ("min", "max", "first", "last")
_EPS: Final = float(np.finfo(np.float64).eps)
_FAR: Final = 1e4  # |mean| / sd beyond which a batch's moments are taken about the shift


def _quiet() -> Any:
    """NumPy's warnings off for the statistics' arithmetic (a new context each time:
    NumPy's is not reentrant). Values are data: a NaN or an infinity gives its key a NaN
    or infinite statistic, as ``np.min`` and ``np.sum`` give, without a warning
    (``np.minimum.at`` warned of every NaN, the variance of inf - inf): under
    ``-W error`` one NaN reading stopped the pipeline."""
    return np.errstate(invalid="ignore", over="ignore")


class KeyedStats:
    """Per-key statistics of a stream of ``(key, value)`` rows, mergeable and bounded by keys.

    Examples:
        >>> acc = KeyedStats(("count", "mean", "max"))
        >>> acc.update(np.array([2, 1, 2]), np.array([1.0, 5.0, 3.0]))
        >>> acc.update(np.array([3]), np.array([7.0]))
        >>> acc.result("sensor").tolist()
        [(1, 1, 5.0, 5.0), (2, 2, 2.0, 3.0), (3, 1, 7.0, 7.0)]

    Args:
        stats: which statistics to keep, a subset of :data:`STATS`, in the order of the
            result's columns. ``count`` is always kept (it is needed to merge).
        ddof: delta degrees of freedom of ``var`` and ``std`` (0: population, as NumPy's
            default; 1: sample). A key with ``count <= ddof`` gets NaN.

    Keys are any sortable 1-D array (integers, strings, bytes). ``sum``, ``mean``, ``var``
    and ``std`` are float64; ``min``, ``max``, ``first`` and ``last`` keep the values'
    dtype. ``first`` and ``last`` follow update order: rows of a later ``update`` (or of
    ``other`` in ``merge``) come after the rows already seen. NaN values propagate as in
    ``np.min``/``np.sum``.
    """

    def __init__(self, stats: Sequence[str] = STATS, *, ddof: int = 0) -> None:
        unknown = [s for s in stats if s not in STATS]
        if unknown or not stats:
            raise ValueError(f"stats={tuple(stats)!r}: choose one or more of {STATS}")
        self.stats: tuple[str, ...] = tuple(dict.fromkeys(stats))
        self.ddof = ddof
        self._keys: NDArray[Any] | None = None
        self._cols: dict[str, NDArray[Any]] = {}
        self._sum = bool(_NEEDS_SUM.intersection(self.stats))
        self._m2 = bool(_NEEDS_M2.intersection(self.stats))
        self._values = self.stats != ("count",)

    @property
    def keys(self) -> NDArray[Any]:
        """The distinct keys seen so far, sorted: shape ``(n_keys,)``, the keys' dtype."""
        return self._keys if self._keys is not None else np.empty(0, np.int64)

    def __len__(self) -> int:
        return 0 if self._keys is None else len(self._keys)

    def update(self, keys: NDArray[Any], values: NDArray[Any] | None = None) -> None:
        """Fold in one batch of rows. Python runs per batch; NumPy per row.

        Args:
            keys: shape ``(n,)``: the key of each row (integers, strings or bytes).
            values: shape ``(n,)``, numeric: the value of each row. May be omitted when only
                ``count`` is kept.

        Raises:
            ValueError: the shapes differ, or values are missing for the statistics asked.
            TypeError: values are not numbers (integers, floats or booleans).
        """
        keys = np.asarray(keys)  # any layout: grouping reads it once
        vals = _aligned(self._check_values(keys, values))
        if len(keys) == 0:
            return
        g = group(keys)
        pos = self._lookup(g.keys)
        with _quiet():
            self._absorb(g.keys, self._partials(g, vals, pos), pos)

    def merge(self, other: KeyedStats) -> None:
        """Fold in another accumulator's state, as if its rows came after this one's.

        Both must keep the same statistics. ``other`` is left unchanged.
        """
        if other.stats != self.stats or other.ddof != self.ddof:
            raise ValueError(f"cannot merge stats {other.stats} into {self.stats}")
        if other._keys is not None:
            part = {k: v.copy() for k, v in other._cols.items()}
            with _quiet():
                self._absorb(other._keys, part, self._lookup(other._keys))

    def result(self, key_name: str = "key") -> NDArray[np.void]:
        """The statistics so far, one row per key, sorted by key.

        Args:
            key_name: name of the key column.

        Returns:
            A structured array of shape ``(n_keys,)`` with the field ``key_name`` (the keys'
            dtype), then one field per statistic in the order given to the constructor:
            ``count`` int64; ``sum``, ``mean``, ``var``, ``std`` float64; ``min``, ``max``,
            ``first``, ``last`` the values' dtype.
        """
        keys = self.keys
        with _quiet():
            cols = {key_name: keys, **{s: self._column(s) for s in self.stats}}
        out = np.empty(len(keys), np.dtype([(name, col.dtype) for name, col in cols.items()]))
        for name, col in cols.items():
            out[name] = col
        return out

    def _check_values(self, keys: NDArray[Any], values: NDArray[Any] | None) -> NDArray[Any]:
        if keys.ndim != 1:
            raise ValueError(f"keys must be 1-D, got shape {keys.shape}")
        if values is None:
            if self._values:
                raise ValueError(f"values are needed for the statistics {self.stats}")
            return np.empty(0)
        vals = np.asarray(values)
        if vals.shape != keys.shape:
            raise ValueError(f"values of shape {vals.shape} for keys of shape {keys.shape}")
        if vals.dtype.kind == "b":
            return vals.astype(np.int64)
        if vals.dtype.kind not in "iuf":
            raise TypeError(f"values must be integers or floats, not {vals.dtype}")
        return vals

    def _shift(self, g: Groups, mean: NDArray[np.float64]) -> NDArray[np.float64]:
        """Per slot: the key's shift (kept in the state; a new key's is this batch's mean),
        about which its moments are taken and merged without losing digits."""
        shift = mean.copy()
        if self._keys is not None:
            keyed = g.slots(shift)
            pos, known = _search(self._keys, g.keys)
            keyed[known] = self._cols["shift"][pos[known]]
            if g.present is not None:
                shift[g.present] = keyed
        return shift

    def _partials(
        self, g: Groups, vals: NDArray[Any], pos: slice | NDArray[np.intp] | None
    ) -> dict[str, NDArray[Any]]:
        """The batch's own statistics, one entry per distinct key of the batch (``pos``:
        where they sit in the state, when every one of them is there already)."""
        part: dict[str, NDArray[Any]] = {"count": g.counts}
        if not self._values:
            return g.compress(part)
        bounds = self._bounds(vals, pos) if pos is not None and len(vals) >= MIN_ROWS else {}
        if self._sum or bounds:
            v64 = _scratch(0, len(vals))  # float64 once: mixed dtypes are 8x slower
            v64[...] = vals
        if self._sum:
            part["sum"] = np.bincount(g.index, weights=v64, minlength=g.size)
        rows = (
            beyond(v64, bounds.get("min", -np.inf), bounds.get("max", np.inf)) if bounds else None
        )
        extremes = {  # before the moments, which overwrite v64
            name: extreme(ufunc, g, vals, rows if name in bounds else None)
            for name, ufunc in (("min", np.minimum), ("max", np.maximum))
            if name in self.stats
        }
        if self._m2:
            mean, m2 = _moments(g, v64, part["sum"])
            shift = self._shift(g, mean)
            if (np.abs(mean) > _FAR * np.sqrt(m2 / np.maximum(g.counts, 1))).any():
                # values far from zero next to their spread: moments of the shifted values
                v64[...] = vals
                np.subtract(v64, np.take(shift, g.index, out=_scratch(1, len(vals))), out=v64)
                total: NDArray[np.float64] = np.bincount(g.index, v64, g.size)  # type: ignore[assignment]
                mean, m2 = _moments(g, v64, total)
            else:
                mean = mean - shift  # digits lost here are negligible next to the spread
            part["mean"], part["m2"], part["shift"] = mean, m2, shift
        part = g.compress(part | extremes)
        if "first" in self.stats:
            part["first"] = vals[g.slots(extreme(np.minimum, g, np.arange(len(vals))))]
        if "last" in self.stats:
            part["last"] = vals[g.slots(extreme(np.maximum, g, np.arange(len(vals))))]
        return part

    def _bounds(self, vals: NDArray[Any], pos: slice | NDArray[np.intp]) -> dict[str, float]:
        """For ``min`` and ``max``, when kept in the dtype of ``vals``: the largest of the
        minima of the batch's keys (at ``pos`` in the state), the smallest of their maxima
        (NaN ignored; as float64, rounded). Rows strictly inside these cannot change any
        extreme (see :func:`~aflow.kernels._extremes.beyond`). An infinite bound (a key
        whose values were all infinite) is left out: no row is inside it. Only the batch's keys
        are looked at (tighter bounds, and a state of 1,000,000 keys took 96 us a
        statistic to reduce; the 9,950 keys of a 10,000-row batch, gathered, 16 us)."""
        bounds = {}
        for name, least in (("min", np.fmax), ("max", np.fmin)):
            col = self._cols.get(name)
            if col is not None and col.dtype == vals.dtype:
                bound = float(least.reduce(col[pos]))
                if math.isfinite(bound):
                    bounds[name] = bound
        return bounds

    def _absorb(
        self,
        keys: NDArray[Any],
        part: dict[str, NDArray[Any]],
        pos: slice | NDArray[np.intp] | None = None,
    ) -> None:
        """Merge partial statistics of the distinct, sorted ``keys`` into the state
        (``pos``: where the keys sit in it, from :meth:`_lookup`, when they all do)."""
        self._promote(part)
        if pos is None:
            pos = self._insert(keys, part)
        cols = self._cols
        na, nb = cols["count"][pos], part["count"]  # na: a view when pos is a slice
        new = na == 0 if "first" in cols else None  # now: na changes with the state
        if self._m2:  # Chan et al.: merge (count, mean, M2) of two sets of rows
            mean_a = cols["mean"][pos]
            shift_a = np.where(na == 0, part["shift"], cols["shift"][pos])
            cols["shift"][pos] = shift_a
            # both means about the key's shift (another accumulator's may differ: re-base)
            delta = part["mean"] + (part["shift"] - shift_a) - mean_a
            cols["mean"][pos] = mean_a + delta * (nb / (na + nb))
            cols["m2"][pos] += part["m2"] + delta * delta * (na * nb / (na + nb))
        if self._sum:
            cols["sum"][pos] += part["sum"]
        cols["count"][pos] = na + nb
        if "min" in cols:
            cols["min"][pos] = np.minimum(cols["min"][pos], part["min"])
        if "max" in cols:
            cols["max"][pos] = np.maximum(cols["max"][pos], part["max"])
        if new is not None:
            at = np.flatnonzero(new) if isinstance(pos, slice) else pos[new]
            cols["first"][at] = part["first"][new]
        if "last" in cols:
            cols["last"][pos] = part["last"]

    def _lookup(self, keys: NDArray[Any]) -> slice | NDArray[np.intp] | None:
        """Where each of the distinct, sorted ``keys`` sits in the state, or ``None`` when
        some are not in it. ``slice(None)`` when they are the state's keys, the common case
        (slices index columns faster than positions)."""
        if self._keys is None:
            return None
        if _whole_range(self._keys, keys):  # every integer from the first key to the last
            if len(keys) == len(self._keys):  # then every one of them: the state's keys
                return slice(None)
            offsets: NDArray[np.intp] = (
                (keys - self._keys[0]).astype(np.intp)  # uint64: may not fit intp
                if keys.dtype.kind == "u"
                else keys.astype(np.intp) - int(self._keys[0])
            )
            return offsets
        if len(keys) == len(self._keys) and np.array_equal(keys, self._keys):
            return slice(None)
        pos, known = _search(self._keys, keys)
        return pos if known.all() else None

    def _insert(self, keys: NDArray[Any], part: dict[str, NDArray[Any]]) -> NDArray[np.intp]:
        """Where each of ``keys`` sits in the state, after adding those not in it yet."""
        if self._keys is None:
            self._keys = keys.copy()
            self._cols = {name: blank(name, col.dtype, len(keys)) for name, col in part.items()}
            return np.arange(len(keys))
        _, known = _search(self._keys, keys)
        every = np.concatenate([self._keys, keys[~known]])
        order = np.argsort(every, kind="stable")
        self._keys = every[order]
        for name, col in self._cols.items():
            self._cols[name] = np.concatenate([col, blank(name, col.dtype, (~known).sum())])[order]
        result: NDArray[np.intp] = np.searchsorted(self._keys, keys)
        return result

    def _promote(self, part: dict[str, NDArray[Any]]) -> None:
        """Widen the state's value columns when a batch brings a wider dtype."""
        for name in _EXTREMES:
            if name in part and name in self._cols:
                wider = np.result_type(self._cols[name].dtype, part[name].dtype)
                self._cols[name] = self._cols[name].astype(wider, copy=False)

    def _column(self, stat: str) -> NDArray[Any]:
        n = len(self)
        if stat in ("mean", "var", "std"):
            count = self._cols["count"] if n else np.zeros(0, np.int64)
            total = self._cols["sum"] if n else np.zeros(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                if stat == "mean":
                    return total / count  # identical under any batch split for exact sums
                var = self._cols["m2"] / (count - self.ddof) if n else np.zeros(0)
                var[count <= self.ddof] = np.nan
                return var if stat == "var" else np.sqrt(var)
        if n:
            return self._cols[stat]
        return np.zeros(0, np.int64 if stat == "count" else np.float64)


_SCRATCH = threading.local()


def _scratch(i: int, n: int) -> NDArray[np.float64]:
    """Float64 work array ``i`` (0 or 1) of ``n`` rows, reused by every accumulator of this
    thread: fresh large temporaries cost page faults, measured at several times the
    arithmetic on them. Sized by the largest batch seen."""
    buffers: list[NDArray[np.float64]] | None = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = [np.empty(0), np.empty(0)]
    if len(buffers[i]) < n:
        buffers[i] = np.empty(n)
    return buffers[i][:n]


def _moments(
    g: Groups, v64: NDArray[np.float64], total: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-slot mean and sum of squared deviations (M2) of one batch, shape ``(size,)``.

    Two passes: deviations from the naive mean ``total / count``, then their squares. The
    naive mean is off by at most ``e = n * eps * (|mean| + sd)`` (a sequential sum), which
    inflates M2 by ``n * e**2``; where that could exceed 1e-12 of M2 (values far from zero
    next to their spread, or constant), a third pass applies the correction of the
    corrected two-pass algorithm (Chan, Golub, LeVeque): ``M2 -= sum(dev)**2 / n``.
    ``v64`` is overwritten.
    """
    counts = np.maximum(g.counts, 1)
    mean = total / counts
    dev = np.take(mean, g.index, out=_scratch(1, len(v64)))
    np.subtract(v64, dev, out=dev)
    squares = np.multiply(dev, dev, out=v64)
    m2: NDArray[np.float64] = np.bincount(g.index, squares, g.size)  # type: ignore[assignment]
    err = counts * _EPS * (np.abs(mean) + np.sqrt(m2 / counts))
    if (counts * err * err > 1e-12 * m2).any():
        fix = np.bincount(g.index, weights=dev, minlength=g.size)
        m2 -= fix * fix / counts
        mean += fix / counts
    return mean, m2


def _search(state: NDArray[Any], keys: NDArray[Any]) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """Where each of ``keys`` is or would go in the sorted ``state`` keys, and whether it is
    there."""
    pos: NDArray[np.intp] = np.searchsorted(state, keys)
    known = pos < len(state)
    known[known] = state[pos[known]] == keys[known]
    return pos, known


def _whole_range(state: NDArray[Any], keys: NDArray[Any]) -> bool:
    """Whether the sorted, distinct ``state`` keys are every integer from the first to the
    last, and the sorted ``keys`` of the same dtype lie between them: then a key's position
    is its offset from the first (no search: 0.55 ms of 0.68 for 24,000 keys in 30,000)."""
    if keys.dtype != state.dtype or keys.dtype.kind not in "iu":
        return False
    first, last = int(state[0]), int(state[-1])
    return last - first == len(state) - 1 and first <= int(keys[0]) and int(keys[-1]) <= last


def _aligned(a: NDArray[Any]) -> NDArray[Any]:
    """``a`` itself when aligned, else an aligned copy: a field of a packed record dtype
    (``[("id", "<i4"), ("value", "<f8")]``) is a misaligned view, on which ``ufunc.at``
    runs ~15x slower than a copy costs. An aligned strided field (of
    ``[("ts", "<i8"), ("id", "<i4"), ("value", "<f4")]``) is used as it is: ``ufunc.at``
    and the float64 conversion read it as fast as a contiguous copy, which would cost a
    pass of its own (measured on 43,000 rows: 13 us a copy, 60 us a ``ufunc.at`` either
    way)."""
    return a if a.flags.aligned else a.copy()

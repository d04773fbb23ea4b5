"""The keyed aggregate sink: per-key statistics of a whole flow (see :class:`aflow.KeyedStats`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Context, SinkOperator, SinkWriter
from ..flow import Sink
from ..kernels.keyed import STATS, KeyedStats
from ..kernels.quantiles import KeyedQuantiles, parse_quantile

__all__ = ["to_aggregate"]


class _AggregateWriter(SinkWriter[Any, NDArray[np.void]]):
    def __init__(self, op: _AggregateOp) -> None:
        self.op = op
        self.key, self.value = op.key, op.value
        self.acc = KeyedStats(op.plain or ("count",), ddof=op.ddof)
        self.quantiles = (
            KeyedQuantiles(
                list(op.quantiles.values()),
                exact=op.exact,
                relative_accuracy=op.relative_accuracy,
            )
            if op.quantiles
            else None
        )

    async def write(self, item: Any) -> None:
        if not isinstance(item, np.ndarray):
            raise TypeError(
                f"to_aggregate takes array batches, got {type(item).__name__}: put "
                "af.batch(size, dtype=...) before it"
            )
        keys = item if self.key is None else item[self.key]
        values = None if self.value is None else item[self.value]
        self.acc.update(keys, values)
        if self.quantiles is not None and values is not None:
            self.quantiles.update(keys, values)

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)

    def snapshot(self) -> Any:
        """The per-key accumulators (copied), committed with the sources' positions."""
        return copy.deepcopy((self.acc, self.quantiles))

    def restore(self, state: Any) -> None:
        """Take back the accumulators of a checkpoint."""
        self.acc, self.quantiles = copy.deepcopy(state)

    def result(self) -> NDArray[np.void]:
        stats = self.acc.result(self.key or "key")
        if self.quantiles is None:
            return stats
        keys = stats[self.key or "key"]
        qs = self.quantiles.result(keys)
        cols: dict[str, NDArray[Any]] = {self.key or "key": keys}
        for name in self.op.stats:
            cols[name] = (
                qs[:, list(self.op.quantiles).index(name)]
                if name in self.op.quantiles
                else stats[name]
            )
        out = np.empty(len(keys), np.dtype([(n, c.dtype) for n, c in cols.items()]))
        for name, col in cols.items():
            out[name] = col
        return out


class _AggregateOp(SinkOperator[Any, NDArray[np.void]]):
    def __init__(
        self,
        key: str | None,
        value: str | None,
        stats: Sequence[str],
        ddof: int,
        exact: bool,
        relative_accuracy: float,
    ) -> None:
        self.key, self.value, self.stats, self.ddof = key, value, tuple(stats), ddof
        self.exact, self.relative_accuracy = exact, relative_accuracy
        self.quantiles = {s: q for s in self.stats if (q := parse_quantile(s)) is not None}
        self.plain = tuple(s for s in self.stats if s not in self.quantiles)
        if self.quantiles and value is None:
            raise ValueError(f"to_aggregate: quantiles {tuple(self.quantiles)} need value=")
        KeyedStats(self.plain or ("count",), ddof=ddof)  # validate now, not at the first batch
        KeyedQuantiles(list(self.quantiles.values()), relative_accuracy=relative_accuracy)
        self.name = f"to_aggregate({key or ''})"

    def writer(self, ctx: Context) -> SinkWriter[Any, NDArray[np.void]]:
        return _AggregateWriter(self)


def to_aggregate(
    key: str | None,
    value: str | None,
    stats: Sequence[str] = STATS,
    *,
    ddof: int = 0,
    exact: bool = False,
    relative_accuracy: float = 0.01,
) -> Sink[Any, NDArray[np.void]]:
    """Per-key statistics of a flow of structured batches; memory grows with keys, not rows.

    Examples:
        >>> import aflow as af
        >>> rows = np.array([(1, 2.0), (2, 4.0), (1, 6.0)], [("sensor", "i4"), ("value", "f4")])
        >>> flow = af.from_array(rows, 2) | af.to_aggregate("sensor", "value", ("count", "mean"))
        >>> af.run(flow).value.tolist()
        [(1, 2, 4.0), (2, 1, 4.0)]

    Args:
        key: the key column (integers, strings or bytes). ``None``: each batch is a 1-D
            array of keys itself.
        value: the value column (numbers). ``None`` with ``stats=("count",)`` counts keys.
        stats: statistics to compute, in column order: any of :data:`STATS`, and
            quantiles named ``"p50"``, ``"p99"``, ``"p99.9"`` (float64 columns: the
            nearest-rank quantile of the key's finite values, see
            :class:`~aflow.kernels.quantiles.KeyedQuantiles`).
        ddof: delta degrees of freedom of ``var`` and ``std``.
        exact: quantiles from every value (memory grows with rows) instead of a sketch.
        relative_accuracy: the quantile sketch's bound ``a``: each estimate is within
            ``a * |x|`` of the exact quantile ``x``; memory per key is about
            ``35 * decades`` buckets of 16 bytes at ``a = 0.01`` (``decades``: the orders
            of magnitude the key's values span).

    Returns:
        A sink whose result is a structured array, one row per key sorted by key, with the
        key column then one column per statistic (see :meth:`KeyedStats.result`).
    """
    if value is None and tuple(stats) == STATS:
        stats = ("count",)
    return Sink(_AggregateOp(key, value, stats, ddof, exact, relative_accuracy))

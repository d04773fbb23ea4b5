"""The keyed aggregate sink: per-key statistics of a whole flow (see :class:`aflow.KeyedStats`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Context, SinkOperator, SinkWriter
from ..flow import Sink
from ..kernels.keyed import STATS, KeyedStats

__all__ = ["to_aggregate"]


class _AggregateWriter(SinkWriter[Any, NDArray[np.void]]):
    def __init__(self, key: str | None, value: str | None, acc: KeyedStats) -> None:
        self.key = key
        self.value = value
        self.acc = acc

    async def write(self, item: Any) -> None:
        if not isinstance(item, np.ndarray):
            raise TypeError(
                f"to_aggregate takes array batches, got {type(item).__name__}: put "
                "af.batch(size, dtype=...) before it"
            )
        keys = item if self.key is None else item[self.key]
        self.acc.update(keys, None if self.value is None else item[self.value])

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch.data)

    def result(self) -> NDArray[np.void]:
        return self.acc.result(self.key or "key")


class _AggregateOp(SinkOperator[Any, NDArray[np.void]]):
    def __init__(self, key: str | None, value: str | None, stats: Sequence[str], ddof: int):
        KeyedStats(stats, ddof=ddof)  # validate now, not at the first batch
        self.key, self.value, self.stats, self.ddof = key, value, tuple(stats), ddof
        self.name = f"to_aggregate({key or ''})"

    def writer(self, ctx: Context) -> SinkWriter[Any, NDArray[np.void]]:
        return _AggregateWriter(self.key, self.value, KeyedStats(self.stats, ddof=self.ddof))


def to_aggregate(
    key: str | None,
    value: str | None,
    stats: Sequence[str] = STATS,
    *,
    ddof: int = 0,
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
        stats: statistics to compute, a subset of :data:`STATS`, in column order.
        ddof: delta degrees of freedom of ``var`` and ``std``.

    Returns:
        A sink whose result is a structured array, one row per key sorted by key, with the
        key column then one column per statistic (see :meth:`KeyedStats.result`).
    """
    if value is None and tuple(stats) == STATS:
        stats = ("count",)
    return Sink(_AggregateOp(key, value, stats, ddof))

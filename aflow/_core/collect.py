"""The sink behind ``flow.run()`` and :func:`aflow.collect`: gather every item."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .messages import Batch
from .operators import Context, SavedAttributes, SinkOperator, SinkWriter

__all__ = ["CollectOperator", "CollectWriter"]


class CollectWriter(SavedAttributes, SinkWriter[Any, Any]):
    # Under a checkpoint, everything collected so far is committed with every epoch
    # (a result, meant for bounded flows: each commit costs O(rows collected)).
    saved = ("items", "arrays")

    def __init__(self, mode: Literal["auto", "list", "array"]) -> None:
        self.mode = mode
        self.items: list[Any] = []
        self.arrays: list[NDArray[Any]] = []

    async def write(self, item: Any) -> None:
        self.items.append(item)

    async def write_chunk(self, items: list[Any]) -> None:
        self.items.extend(items)

    async def write_batch(self, batch: Batch) -> None:
        if self.mode == "list":
            self.items.append(batch.data)
        else:
            self.arrays.append(batch.data)

    def result(self) -> Any:
        if self.mode == "array":
            parts = [*self.arrays, *([np.asarray(self.items)] if self.items else [])]
            return np.concatenate(parts) if parts else np.empty(0)
        if self.arrays and not self.items:
            return np.concatenate(self.arrays)
        return [*self.items, *self.arrays]


class CollectOperator(SinkOperator[Any, Any]):
    def __init__(self, mode: Literal["auto", "list", "array"]) -> None:
        self.mode = mode
        self.name = "collect"

    def writer(self, ctx: Context) -> SinkWriter[Any, Any]:
        return CollectWriter(self.mode)

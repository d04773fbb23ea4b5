"""The base of stateless stages that apply a user function item by item, with an error
policy (map, filter, flat_map, map_batches, filter_rows); and ``map``'s own step, which
both :mod:`.element` and :mod:`.concurrency` (in worker threads) build on."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from ..abc import Batch, Message, Operator, Processor, StageCounters, callable_name
from ..policies import ErrorPolicy, apply_policy, check_policy

__all__ = ["FunctionOp", "MapOp", "rewrap"]


class FunctionOp(Operator, Processor):
    """A stateless step applying a user function item by item, with an error policy.

    Subclasses implement ``apply_chunk`` (fast path over a list of elements), ``apply_batch``
    and ``apply_one`` (one element, for the guarded path). Being stateless, one object is
    both the description and its runner.
    """

    def __init__(self, name: str, on_error: ErrorPolicy) -> None:
        self.name = name
        self.on_error = check_policy(on_error)
        self.guarded = on_error != "raise"

    def start(self) -> Processor:
        return self

    def process(self, msg: Message) -> list[Message]:
        if isinstance(msg, Batch):
            return self.apply_batch(msg)
        out = self.apply_chunk(msg)
        return [out] if out else []

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        if isinstance(msg, Batch):
            try:
                return self.apply_batch(msg)
            except Exception as exc:
                return await apply_policy(
                    self.on_error,
                    msg.data,
                    exc,
                    self.name,
                    msg.provenance,
                    counters,
                    again=lambda: self.apply_batch(msg),
                )
        out: list[Any] = []
        for item in msg:
            try:
                out.extend(self.apply_one(item))
            except Exception as exc:
                out.extend(
                    await apply_policy(
                        self.on_error,
                        item,
                        exc,
                        self.name,
                        None,
                        counters,
                        again=lambda item=item: self.apply_one(item),  # type: ignore[misc]
                    )
                )
        return [out] if out else []

    @abstractmethod
    def apply_chunk(self, items: list[Any]) -> list[Any]: ...

    @abstractmethod
    def apply_one(self, item: Any) -> list[Any]: ...

    @abstractmethod
    def apply_batch(self, batch: Batch) -> list[Message]: ...


def rewrap(batch: Batch, value: Any) -> list[Message]:
    """A function's result on ``batch``'s array: an array keeps the batch's envelope
    (reason, provenance); anything else travels as an element."""
    if isinstance(value, np.ndarray):
        return [batch.with_data(value)]
    return [[value]]


class MapOp(FunctionOp):
    """``map(fn)``'s step: ``fn`` applied to every element (or batch's array)."""

    def __init__(self, fn: Callable[[Any], Any], on_error: ErrorPolicy, name: str | None) -> None:
        super().__init__(name or f"map({callable_name(fn)})", on_error)
        self.fn = fn

    def apply_chunk(self, items: list[Any]) -> list[Any]:
        return list(map(self.fn, items))

    def apply_one(self, item: Any) -> list[Any]:
        return [self.fn(item)]

    def apply_batch(self, batch: Batch) -> list[Message]:
        return rewrap(batch, self.fn(batch.data))

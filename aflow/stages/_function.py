"""The base of stateless stages that apply a user function item by item, with an error
policy (map, filter, flat_map, map_batches, filter_rows)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from ..abc import Batch, Message, Operator, Processor, StageCounters
from ..policies import ErrorPolicy, apply_policy, check_policy

__all__ = ["FunctionOp"]


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
                outs = await apply_policy(
                    self.on_error,
                    msg.data,
                    exc,
                    self.name,
                    msg.provenance,
                    counters,
                    again=lambda: self.apply_batch(msg),
                )
                return outs
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

    def shape(self, unit: Message, result: Any) -> list[Message]:
        """The output for one item (a one-element chunk, or a batch) given the awaited
        result of the stage's async function (see :func:`.concurrency.concurrent`)."""
        raise NotImplementedError(f"{self.name} has no async form")

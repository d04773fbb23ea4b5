"""What travels on an edge: a chunk of elements (a ``list``) or one array batch (a ``Batch``).

Elements travel in chunks so the cost of a channel hop is paid per chunk, not per element.
A batch travels alone, wrapped in a :class:`Batch` envelope that carries why it closed and
where its rows came from. User functions never see the envelope, only the array.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from numpy.typing import NDArray

__all__ = ["Barrier", "Batch", "BatchReason", "Item", "Message", "Provenance", "message_bytes"]

BatchReason: TypeAlias = Literal["count", "time", "bytes", "end", "source", "checkpoint"]
"""Why a batch closed: its row count was reached, its timeout expired, its byte limit was
reached, the input ended (or the run stopped), a source produced it whole, or a checkpoint
barrier passed (a run with a checkpoint cuts partial batches at each commit)."""


class Provenance:
    """Where the rows of a batch came from (treat it as immutable).

    Attributes:
        source: a path, an address or a source's name.
        start: first row (a 1-based line number when ``unit == "line"``, a byte offset
            when ``unit == "byte"``) of the batch in its source.
        stop: one past the last row (or line, or byte).
        unit: what ``start`` and ``stop`` count: ``"row"``, ``"line"`` or ``"byte"``.
        offset: byte offset of the first row in the source, when known.
        end_offset: byte offset just past the last row, when known.
    """

    __slots__ = ("end_offset", "offset", "source", "start", "stop", "unit")

    def __init__(
        self,
        source: str,
        start: int,
        stop: int,
        unit: Literal["row", "line", "byte"] = "row",
        offset: int | None = None,
        end_offset: int | None = None,
    ) -> None:
        self.source = source
        self.start = start
        self.stop = stop
        self.unit = unit
        self.offset = offset
        self.end_offset = end_offset

    def _key(self) -> tuple[object, ...]:
        return (self.source, self.start, self.stop, self.unit, self.offset, self.end_offset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Provenance) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Provenance({self.source!r}, {self.start}, {self.stop}, {self.unit!r}, "
            f"{self.offset}, {self.end_offset})"
        )

    def __str__(self) -> str:
        text = f"{self.source} {self.unit}s {self.start}..{self.stop}"
        if self.offset is not None and self.unit != "byte":
            text += f" (bytes {self.offset}..{self.end_offset})"
        return text


class Batch:
    """An array batch with its envelope (treat it as immutable).

    Attributes:
        data: the rows: a 1-D array of a scalar dtype or a structured array of records.
        reason: why the batch closed (see :data:`BatchReason`).
        provenance: where the rows came from, when the source knows.

    A plain slots class rather than a frozen dataclass: one is made per batch on the hot
    path, and this builds in a third of the time.
    """

    __slots__ = ("data", "provenance", "reason")

    def __init__(
        self,
        data: NDArray[Any],
        reason: BatchReason = "source",
        provenance: Provenance | None = None,
    ) -> None:
        self.data = data
        self.reason = reason
        self.provenance = provenance

    def with_data(self, data: NDArray[Any]) -> Batch:
        """Return the same envelope around other rows (what row-wise stages do)."""
        return Batch(data, self.reason, self.provenance)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (
            f"Batch({len(self.data)} rows of {self.data.dtype}, reason={self.reason!r}, "
            f"provenance={self.provenance!r})"
        )


Message: TypeAlias = "list[Any] | Batch"


class Barrier:
    """A checkpoint barrier: marks the end of epoch ``epoch`` in a stream of messages.

    The runtime injects ``Barrier(n)`` into every source every commit interval; it travels
    in-band on the same buffers as data, behind everything the source emitted before it.
    When it has reached every sink, everything before it is durably handled and the
    sources' positions at the barrier can be committed (see the "Delivery guarantees"
    page). User functions never see it: stages get ``on_barrier`` / ``snapshot`` calls,
    sinks ``commit``.

    Attributes:
        epoch: the number of the epoch the barrier closes (1, 2, ...).
    """

    __slots__ = ("epoch",)

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Barrier) and other.epoch == self.epoch

    def __hash__(self) -> int:
        return hash(("Barrier", self.epoch))

    def __repr__(self) -> str:
        return f"Barrier({self.epoch})"


Item: TypeAlias = "Message | Barrier"
"""What a buffer carries: a message, or a checkpoint barrier between messages."""


def message_bytes(msg: Message | Barrier) -> int:
    """Bytes held by the arrays of ``msg`` (0 for a chunk of plain Python elements)."""
    return msg.data.nbytes if isinstance(msg, Batch) else 0

"""What travels on an edge: a chunk of elements (a ``list``) or one array batch (a ``Batch``).

Elements travel in chunks so the cost of a channel hop is paid per chunk, not per element.
A batch travels alone, wrapped in a :class:`Batch` envelope that carries why it closed and
where its rows came from. User functions never see the envelope, only the array.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Batch",
    "BatchReason",
    "Message",
    "Provenance",
    "block_lines",
    "is_line_block",
    "message_bytes",
    "message_rows",
    "split_block",
]

BatchReason: TypeAlias = Literal["count", "time", "bytes", "end", "source"]
"""Why a batch closed: its row count was reached, its timeout expired, its byte limit was
reached, the input ended (or the run stopped), or a source produced it whole."""


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


def message_rows(msg: Message) -> int:
    """Number of elements (for a chunk) or rows (for a batch) in ``msg``."""
    return len(msg.data) if isinstance(msg, Batch) else len(msg)


def message_bytes(msg: Message) -> int:
    """Bytes held by the arrays of ``msg`` (0 for a chunk of plain Python elements)."""
    return msg.data.nbytes if isinstance(msg, Batch) else 0


def is_line_block(batch: Batch) -> bool:
    """Whether ``batch`` is a block of lines (uint8 bytes with line provenance)."""
    prov = batch.provenance
    return batch.data.dtype == np.uint8 and prov is not None and prov.unit == "line"


def block_lines(batch: Batch) -> int:
    """Number of lines in a line block."""
    return int(np.count_nonzero(batch.data == 10))


def split_block(batch: Batch, lines: int) -> tuple[Batch, Batch]:
    """A line block cut after its first ``lines`` lines (0 < lines < its line count)."""
    data, prov = batch.data, batch.provenance
    assert prov is not None
    cut = int(np.flatnonzero(data == 10)[lines - 1]) + 1
    middle = prov.start + lines
    offset = None if prov.offset is None else prov.offset + cut
    head = Provenance(prov.source, prov.start, middle, "line", prov.offset, offset)
    tail = Provenance(prov.source, middle, prov.stop, "line", offset, prov.end_offset)
    return Batch(data[:cut], batch.reason, head), Batch(data[cut:], batch.reason, tail)


def as_array(value: Any) -> NDArray[Any]:
    """``value`` as an ndarray without copying when it already is one."""
    return value if isinstance(value, np.ndarray) else np.asarray(value)

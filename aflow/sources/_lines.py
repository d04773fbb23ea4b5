"""The stage behind :func:`aflow.read_lines`: line blocks to ``str`` lines.

A block is decoded in one call; if that fails, line by line, and each line that does not
decode goes to the error policy as a :class:`~aflow.errors.DecodeError` naming its source
and line (the good lines around it go on).
"""

from __future__ import annotations

from typing import Any

from ..abc import Batch, Message, Operator, Processor, StageCounters
from ..errors import DecodeError
from ..flow import Stage
from ..policies import ErrorPolicy, apply_policy, check_policy

__all__ = ["split_lines"]


class _SplitLinesOp(Operator):
    def __init__(self, encoding: str, errors: str, on_error: ErrorPolicy) -> None:
        self.name = "split_lines"
        self.encoding = encoding
        self.errors = errors
        self.on_error = check_policy(on_error)

    def start(self) -> Processor:
        return _SplitLines(self)


class _SplitLines(Processor):
    guarded = True

    def __init__(self, op: _SplitLinesOp) -> None:
        self.op = op

    def process(self, msg: Message) -> list[Message]:  # pragma: no cover - guarded only
        raise NotImplementedError

    async def process_guarded(self, msg: Message, counters: StageCounters) -> list[Message]:
        raw = bytes(msg.data) if isinstance(msg, Batch) else b"".join(msg)
        try:
            lines = raw.decode(self.op.encoding, self.op.errors).split("\n")[:-1]
        except UnicodeDecodeError:
            lines = await self._one_by_one(raw, msg, counters)
        out = [line.removesuffix("\r") for line in lines]  # the block ends with \n
        return [out] if out else []

    async def _one_by_one(self, raw: bytes, msg: Message, counters: StageCounters) -> list[str]:
        prov = msg.provenance if isinstance(msg, Batch) else None
        lines: list[str] = []
        for index, line in enumerate(raw.split(b"\n")[:-1]):
            try:
                lines.append(line.decode(self.op.encoding, self.op.errors))
            except UnicodeDecodeError as exc:
                await self._report(line + b"\n", index, exc, prov, counters)
        return lines

    async def _report(
        self, line: bytes, index: int, exc: UnicodeDecodeError, prov: Any, counters: StageCounters
    ) -> None:
        numbered = prov is not None and prov.unit == "line"
        error = DecodeError(
            f"read_lines: line is not valid {self.op.encoding} ({exc.reason} at byte "
            f"{exc.start} of the line); pass errors='replace' to accept it with U+FFFD",
            source=prov.source if prov is not None else None,
            line=prov.start + index if numbered else None,
        )
        error.__cause__ = exc
        await apply_policy(self.op.on_error, line, error, self.op.name, None, counters)


def split_lines(encoding: str, errors: str, on_error: ErrorPolicy) -> Stage[Any, str]:
    """A stage splitting line blocks into ``str`` lines (see the module docstring)."""
    return Stage(_SplitLinesOp(encoding, errors, on_error))

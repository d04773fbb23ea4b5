"""Late rows: what :func:`aflow.window` and :func:`aflow.reorder` do with rows that come
after the watermark passed them, through the stage's error policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias

from numpy.typing import NDArray

from ..abc import Provenance, StageCounters, is_async_callable
from ..errors import LateDataError
from ..policies import DeadLetter, ErrorPolicy, Retry, apply_policy, check_policy

__all__ = ["LateTarget", "check_late", "reject_late", "waits_on_target"]

LateTarget: TypeAlias = (
    "Literal['drop'] | ErrorPolicy | list[NDArray[Any]] | Callable[[NDArray[Any]], None]"
    " | Callable[[NDArray[Any]], Awaitable[None]]"
)
"""Where late rows go: ``"drop"`` (or ``"skip"``: dropped and counted), ``"raise"`` (a
:class:`~aflow.LateDataError`), :func:`~aflow.dead_letter` (a :class:`~aflow.FailedItem`
of the late rows of each batch), or, for short, a list to append those arrays to or a
callable (sync or async) receiving them."""


def check_late(late: LateTarget) -> ErrorPolicy:
    """The error policy of ``late``: a list or callable of arrays becomes a dead letter
    that hands it the rows."""
    if late == "drop":
        return "skip"
    if isinstance(late, list):
        return DeadLetter(lambda failed: late.append(failed.item))
    if callable(late):
        receive = late
        return DeadLetter(lambda failed: receive(failed.item))
    try:
        return check_policy(late)
    except ValueError:
        raise ValueError(
            f"late={late!r}: use 'drop', 'raise', aflow.dead_letter(...), a list or a callable"
        ) from None


def waits_on_target(late: LateTarget) -> bool:
    """Whether ``late`` hands rows to an async function."""
    if isinstance(late, Retry):
        late = late.then
    target = late.target if isinstance(late, DeadLetter) else late
    return callable(target) and is_async_callable(target)


async def reject_late(
    policy: ErrorPolicy,
    rows: NDArray[Any],
    watermark: float,
    stage: str,
    provenance: Provenance | None,
    counters: StageCounters,
) -> None:
    """Hand the late ``rows`` of one batch (shape (n,)) to ``policy``; each counts as one
    error."""
    error = LateDataError(f"{stage}: {len(rows)} row(s) behind the watermark {watermark}")
    await apply_policy(policy, rows, error, stage, provenance, counters, count=len(rows))

"""Error policies: what a stage does when the user's function raises on one item.

A stage takes ``on_error=`` one of:

* ``"raise"`` (the default): the first error cancels the run and is raised as itself;
* ``"skip"``: the item is dropped and counted in the stage's ``errors`` statistic;
* :func:`retry`: the item is tried again with exponential backoff, then handed to a fallback;
* :func:`dead_letter`: the item goes, with its exception and provenance, to a target of yours.

A policy applies per item (an element, or a whole batch for batch-wise stages): one bad item
never costs its neighbours.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import anyio

from ._core.messages import Provenance
from .errors import RetriesExhaustedError

__all__ = ["DeadLetter", "ErrorPolicy", "FailedItem", "Retry", "dead_letter", "retry"]


@dataclass(frozen=True, slots=True)
class FailedItem:
    """An item a stage could not process, as handed to a dead-letter target.

    Attributes:
        item: the element, or the array of a batch, that failed.
        error: the exception the stage's function raised.
        stage: the stage's name.
        provenance: where the item's rows came from, when known.
    """

    item: Any
    error: BaseException
    stage: str
    provenance: Provenance | None = None


DeadLetterTarget: TypeAlias = (
    "list[FailedItem] | Callable[[FailedItem], None] | Callable[[FailedItem], Awaitable[None]]"
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Send failing items to ``target`` (see :func:`dead_letter`)."""

    target: DeadLetterTarget

    async def deliver(self, failed: FailedItem) -> None:
        target = self.target
        if isinstance(target, list):
            target.append(failed)
            return
        result = target(failed)
        if inspect.isawaitable(result):
            await result


@dataclass(frozen=True, slots=True)
class Retry:
    """Try a failing item again (see :func:`retry`)."""

    attempts: int = 3
    backoff: float = 0.1
    factor: float = 2.0
    max_backoff: float = 10.0
    then: Literal["raise", "skip"] | DeadLetter = "raise"

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2 for the first retry)."""
        return min(self.backoff * self.factor ** (attempt - 2), self.max_backoff)


ErrorPolicy: TypeAlias = 'Literal["raise", "skip"] | Retry | DeadLetter'


def retry(
    attempts: int = 3,
    *,
    backoff: float = 0.1,
    factor: float = 2.0,
    max_backoff: float = 10.0,
    then: Literal["raise", "skip"] | DeadLetter = "raise",
) -> Retry:
    """Retry a failing item up to ``attempts`` times in all, sleeping between attempts.

    Args:
        attempts: total attempts, the first included (>= 1).
        backoff: seconds before the second attempt.
        factor: each later wait is this many times the previous one.
        max_backoff: cap on a single wait.
        then: what to do once every attempt failed: ``"raise"`` (raises
            :class:`~aflow.errors.RetriesExhaustedError` from the last error), ``"skip"``, or a
            :func:`dead_letter` policy.
    """
    if attempts < 1:
        raise ValueError(f"retry(attempts={attempts}): need at least one attempt")
    if backoff < 0 or factor < 1 or max_backoff < 0:
        raise ValueError("retry(): backoff and max_backoff must be >= 0 and factor >= 1")
    return Retry(attempts, backoff, factor, max_backoff, then)


def dead_letter(target: DeadLetterTarget) -> DeadLetter:
    """Route failing items to ``target`` and go on with the rest.

    Args:
        target: a list to append :class:`FailedItem` records to, or a sync or async callable
            receiving each one (to write them to a file, a queue or a log).
    """
    return DeadLetter(target)


def check_policy(policy: object) -> ErrorPolicy:
    """Validate an ``on_error=`` argument early, at flow build time."""
    if policy in ("raise", "skip") or isinstance(policy, Retry | DeadLetter):
        return policy
    raise ValueError(
        f"on_error={policy!r}: use 'raise', 'skip', aflow.retry(...) or aflow.dead_letter(...)"
    )


async def recover(
    policy: ErrorPolicy,
    call: Callable[[], list[Any] | Awaitable[list[Any]]],
    item: Any,
    error: Exception,
    stage: str,
    provenance: Provenance | None,
    counters: Any,
) -> list[Any]:
    """Apply ``policy`` to one failed item; return its outputs when a retry succeeds.

    ``call`` re-runs the stage's function on the item. Raises when the policy says so.
    """
    fallback: ErrorPolicy = policy
    if isinstance(policy, Retry):
        for attempt in range(2, policy.attempts + 1):
            await anyio.sleep(policy.delay(attempt))
            counters.retries += 1
            try:
                result = call()
                return await result if inspect.isawaitable(result) else result
            except Exception as exc:
                error = exc
        fallback = policy.then
        if fallback == "raise":
            raise RetriesExhaustedError(
                f"stage {stage!r} failed {policy.attempts} times on one item: {error!r}"
            ) from error
    if fallback == "raise":
        raise error
    counters.errors += 1
    if isinstance(fallback, DeadLetter):
        await fallback.deliver(FailedItem(item, error, stage, provenance))
    return []

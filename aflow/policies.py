"""Error policies: what a stage does with an item it cannot process.

A stage (and a decoder, a source reading bad input, a window receiving late rows) takes
``on_error=`` one of:

* ``"raise"`` (the default): the first error cancels the run and is raised as itself;
* ``"skip"``: the item is dropped and counted in the stage's ``errors`` statistic;
* :func:`retry`: the item is tried again with exponential backoff, then handed to a fallback;
* :func:`dead_letter`: the item goes, with its exception and provenance, to a target of yours.

A policy applies per item (an element, a whole batch for batch-wise stages, one raw line,
frame, record or datagram for decoders and sources, the late rows of one batch for
windows): one bad item never costs its neighbours. Every one of them goes through
:func:`apply_policy`, so a policy means the same everywhere. Input that fails the same
way each time it is read (bytes that do not decode, rows that are late) is not retried: a
retry policy goes straight to its ``then``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import anyio

from ._core.messages import Provenance
from .errors import DecodeError, RetriesExhaustedError
from .stats import StageCounters

__all__ = [
    "DeadLetter",
    "ErrorPolicy",
    "FailedItem",
    "Reporter",
    "Retry",
    "apply_policy",
    "check_policy",
    "dead_letter",
    "retry",
    "where",
]


@dataclass(frozen=True, slots=True)
class FailedItem:
    """An item a stage could not process, as handed to a dead-letter target.

    Attributes:
        item: exactly what failed: the element; the array of a batch (batch-wise stages);
            the raw bytes of a line (its newline included), frame, record or datagram
            (decoders, sources; an over-long line or frame is not kept: ``b""``); or the late
            rows of one batch (windows, ``reorder``).
        error: why: the exception the stage's function raised; a
            :class:`~aflow.DecodeError` naming the source, line and byte offset for bad
            input; a :class:`~aflow.LateDataError` for late rows.
        stage: the stage's (or source's) name.
        provenance: where the item came from, when known: a batch's rows; for a bad line,
            that line alone (``unit == "line"``, ``stop == start + 1``).
    """

    item: Any
    error: BaseException
    stage: str
    provenance: Provenance | None = None


DeadLetterTarget: TypeAlias = "list[FailedItem] | Callable[[FailedItem], Awaitable[None] | None]"


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
            receiving each one (to write them to a file, a queue or a log). Neither is
            part of a checkpoint: after a restart from the last commit, the items that
            failed since it fail again and are appended (or passed) again.

    Raises:
        TypeError: ``target`` is neither a list nor a callable (a sink such as
            ``collect()`` cannot take dead letters).
    """
    if not isinstance(target, list) and not callable(target):
        raise TypeError(
            f"dead_letter({type(target).__name__}): give a list to append each FailedItem "
            "to, or a function (sync or async) called with each one; a sink cannot take "
            "dead letters"
        )
    return DeadLetter(target)


def check_policy(policy: object) -> ErrorPolicy:
    """Validate an ``on_error=`` argument early, at flow build time."""
    if policy in ("raise", "skip") or isinstance(policy, Retry | DeadLetter):
        return policy
    raise ValueError(
        f"on_error={policy!r}: use 'raise', 'skip', aflow.retry(...) or aflow.dead_letter(...)"
    )


async def apply_policy(
    policy: ErrorPolicy,
    item: Any,
    error: Exception,
    stage: str,
    provenance: Provenance | None,
    counters: StageCounters,
    *,
    again: Callable[[], list[Any] | Awaitable[list[Any]]] | None = None,
    count: int = 1,
) -> list[Any]:
    """Apply ``policy`` to one failed item: raise, retry, skip and count, or dead-letter.

    Every stage, decoder, source and late-data path hands its failures here.

    Args:
        policy: the stage's ``on_error``.
        item: exactly what failed (see :class:`FailedItem`).
        error: why it failed; raised as itself under ``"raise"``.
        stage: the stage's (or source's) name.
        provenance: where ``item`` came from. ``None``: the place a
            :class:`~aflow.errors.DecodeError` names (see :func:`where`), if any.
        counters: the stage's statistics; ``errors`` grows by ``count`` for an item
            skipped or dead-lettered, ``retries`` by one per attempt repeated.
        again: runs the stage on ``item`` again and returns its outputs (sync or async).
            ``None`` when that cannot help (the same bytes decode the same way, late rows
            stay late): a :func:`retry` policy then goes straight to its ``then``.
        count: how many items ``item`` stands for in ``errors`` (late rows count one each).

    Returns:
        The outputs of a retry that succeeded; otherwise ``[]``.

    Raises:
        Exception: ``error`` itself under ``"raise"``;
            :class:`~aflow.errors.RetriesExhaustedError` (from the last error) once every
            attempt of a :func:`retry` with ``then="raise"`` failed.

    Blocks for the retry waits and an async dead-letter target; cancellation interrupts
    both.
    """
    fallback: ErrorPolicy = policy
    if isinstance(policy, Retry):
        fallback = policy.then
        if again is not None:
            for attempt in range(2, policy.attempts + 1):
                await anyio.sleep(policy.delay(attempt))
                counters.retries += 1
                try:
                    result = again()
                    return await result if inspect.isawaitable(result) else result
                except Exception as exc:
                    error = exc
            if fallback == "raise":
                raise RetriesExhaustedError(
                    f"stage {stage!r} failed {policy.attempts} times on one item: {error!r}"
                ) from error
    if fallback == "raise":
        raise error
    counters.errors += count
    if isinstance(fallback, DeadLetter):
        counters.dead_lettered += count
        place = provenance if provenance is not None else where(error)
        await fallback.deliver(FailedItem(item, error, stage, place))
    return []


@dataclass(frozen=True, slots=True)
class Reporter:
    """:func:`apply_policy` bound to one source or stage: ``await report(item, error)``.

    For input that cannot succeed on a second try (bad bytes), so nothing is retried.
    """

    policy: ErrorPolicy
    stage: str
    counters: StageCounters

    async def __call__(
        self, item: Any, error: Exception, provenance: Provenance | None = None
    ) -> None:
        await apply_policy(self.policy, item, error, self.stage, provenance, self.counters)


def where(error: BaseException) -> Provenance | None:
    """The place a :class:`~aflow.errors.DecodeError` names, as a provenance: its line
    (``unit == "line"``, one line long) or else its byte offset; ``None`` for other errors
    and for decode errors that name no source, line or offset."""
    if not isinstance(error, DecodeError) or error.source is None:
        return None
    if error.line is not None:
        return Provenance(error.source, error.line, error.line + 1, "line", error.offset)
    if error.offset is not None:
        return Provenance(error.source, error.offset, error.offset, "byte", error.offset)
    return None

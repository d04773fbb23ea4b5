"""Errors raised by aflow.

Every error aflow raises on its own account derives from :class:`AflowError` and also from
the builtin exception whose meaning it shares, so ``except ValueError`` keeps working::

    AflowError
    ├── FlowDefinitionError (TypeError)   a flow was composed wrongly (caught at build time)
    ├── SourceReusedError (RuntimeError)  a single-use iterator was asked to run a second time
    ├── StageTimeoutError (TimeoutError)  ``timeout()`` saw no item within its limit
    ├── RetriesExhaustedError             ``retry()`` gave up; the last failure is ``__cause__``
    ├── DecodeError (ValueError)          a record could not be decoded (says where it came from)
    │   ├── LineTooLongError              a line grew past ``max_line`` bytes without ending
    │   ├── FrameTooLongError             a length prefix announced more than ``max_size`` bytes
    │   └── IncompleteFrameError          a stream ended inside a line, frame or record
    ├── LateDataError (ValueError)        rows came after the windows they belong to had closed
    ├── DataLossError (RuntimeError)      input was written but could not be read (rotation)
    ├── ReconnectError (ConnectionError)  a sink could not reconnect within its limit
    ├── CheckpointMismatch (ValueError)   a checkpoint does not belong to this flow or input
    └── CheckpointInUse (RuntimeError)    another run (or process) is using this checkpoint file

    AflowWarning (UserWarning)
    └── NotResumableWarning               a checkpointed run has a source that cannot resume

Errors raised by *user* functions inside a stage are never wrapped: the first one cancels the
run and is raised as itself, with a note naming the stage (and the batch's provenance when
known). Read it with ``traceback.print_exception`` or ``exc.__notes__``.
"""

from __future__ import annotations

__all__ = [
    "AflowError",
    "AflowWarning",
    "CheckpointInUse",
    "CheckpointMismatch",
    "DataLossError",
    "DecodeError",
    "FlowDefinitionError",
    "FrameTooLongError",
    "IncompleteFrameError",
    "LateDataError",
    "LineTooLongError",
    "NotResumableWarning",
    "ReconnectError",
    "RetriesExhaustedError",
    "SourceReusedError",
    "StageTimeoutError",
]


class AflowError(Exception):
    """Base class of every error aflow raises itself."""


class FlowDefinitionError(AflowError, TypeError):
    """A flow was composed wrongly, for example a sink placed before a stage."""


class SourceReusedError(AflowError, RuntimeError):
    """A single-use iterator (a generator object) was asked to run a second time.

    Pass the generator *function* (or any zero-argument callable returning an iterable) to
    :func:`aflow.from_iterable` to get a flow that can run many times.
    """


class StageTimeoutError(AflowError, TimeoutError):
    """No item arrived within the limit set by :func:`aflow.timeout`."""


class RetriesExhaustedError(AflowError):
    """A stage with a retry policy failed on every attempt; ``__cause__`` is the last failure."""


class DecodeError(AflowError, ValueError):
    """A record could not be decoded.

    Args:
        message: what went wrong.
        source: where the record came from (a path, an address or a stage name).
        line: 1-based line number of the record, when known.
        offset: byte offset of the record in its source, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = ", ".join(
            part
            for part in (
                f"source {source!r}" if source is not None else "",
                f"line {line}" if line is not None else "",
                f"byte offset {offset}" if offset is not None else "",
            )
            if part
        )
        super().__init__(f"{message} ({where})" if where else message)
        self.source = source
        self.line = line
        self.offset = offset


class LineTooLongError(DecodeError):
    """A line grew past a splitter's ``max_line`` bytes without ending.

    The line is skipped to its end; the lines around it are unaffected. Raise ``max_line``
    (or ``max_size`` for socket sources) to accept longer lines.
    """


class FrameTooLongError(DecodeError):
    """A length-prefixed frame announced more than ``max_size`` bytes.

    The stream cannot be resynchronized after it, so the connection is closed.
    """


class IncompleteFrameError(DecodeError):
    """A stream ended inside a line, frame or record (the peer left, went idle, the run
    stopped, or a file ended); those bytes are handed to the error policy."""


class LateDataError(AflowError, ValueError):
    """Rows arrived after every window they belong to had closed (the watermark had passed
    them), or behind what :func:`aflow.reorder` had already released.

    The error of the late rows handed to a window's ``late=`` policy; raised when that
    policy is ``"raise"``. Raise ``allowed_lateness`` (or ``horizon``) to accept them.
    """


class ReconnectError(AflowError, ConnectionError):
    """A sink lost its connection and could not open a new one within its limit
    (``reconnect_timeout``); the message names the server, what was not written and what
    to do. ``__cause__`` is the last attempt's failure."""


class DataLossError(AflowError, RuntimeError):
    """Input was written but could not be read, and aflow knows it.

    A followed file was rotated away before it could be opened (rotations faster than the
    follower), or a truncation (``copytruncate``) removed bytes that no copy held. Handed to
    the source's ``on_error`` policy, so ``"skip"`` counts the losses in its ``errors``
    statistic (``count`` files or truncations each) instead of ending the run.

    Args:
        message: what was lost, where, and what to do.
        source: the followed path.
        count: how many lost units (files, truncations) this error stands for.
    """

    def __init__(self, message: str, *, source: str, count: int = 1) -> None:
        super().__init__(message)
        self.source = source
        self.count = count


class CheckpointMismatch(AflowError, ValueError):
    """A checkpoint does not belong to the flow (or the input) resumed from it: the flow's
    stages changed, or a file it was reading is gone or different.

    Resuming would silently start over or skip data, so aflow refuses: use a new
    checkpoint path, or delete the old one to start from the beginning on purpose.
    """


class CheckpointInUse(AflowError, RuntimeError):
    """A checkpoint file is in use by another run, in this process or another one.

    Two runs committing to one checkpoint would overwrite each other's positions, so the
    second is refused; the message names the file. Give each running flow its own
    checkpoint path, or wait until the other run has ended (a crashed run's hold ends
    with its process).
    """


class AflowWarning(UserWarning):
    """Base class of the warnings aflow gives."""


class NotResumableWarning(AflowWarning):
    """A run with a checkpoint has a source that cannot resume (a generator, a plain
    socket): after a restart it starts afresh, so its part of the flow is at-most-once."""

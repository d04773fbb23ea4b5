"""Fake sources and sinks for tests: a counting source and a recording sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ..abc import (
    Batch,
    Context,
    Message,
    SinkOperator,
    SinkWriter,
)
from ..flow import Sink

T = TypeVar("T")


class CountingSource:
    """A re-runnable generator of ``0, 1, 2, ...`` that counts what it produced.

    Pass it to :func:`aflow.from_iterable`; ``produced`` tells how far the source got, which
    is how a test sees backpressure (a paused source stops counting) and early stops.

    Args:
        n: how many numbers to produce (``None``: forever).
        delay: seconds to sleep before each number; makes it an async source.
    """

    def __init__(self, n: int | None = None, *, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.produced = 0
        self.runs = 0
        self.closed = 0

    def __call__(self) -> Iterator[int] | AsyncIterator[int]:
        self.runs += 1
        return self._async() if self.delay else self._sync()

    def _sync(self) -> Iterator[int]:
        i = 0
        try:
            while self.n is None or i < self.n:
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed += 1

    async def _async(self) -> AsyncIterator[int]:
        i = 0
        try:
            while self.n is None or i < self.n:
                await anyio.sleep(self.delay)
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed += 1


class FakeSink(Sink[Any, list[Message]]):
    """A sink for tests that records every message it receives, envelopes included.

    ``flow | FakeSink()`` runs like any sink; the run's result is the list of messages
    (``list`` chunks of elements, or :class:`~aflow.Batch` envelopes with their
    ``reason`` and ``provenance``). It can be made slow (to exercise backpressure) or
    failing (to exercise error handling).

    Args:
        delay: seconds each write waits (a slow consumer: upstream stages then wait too).
        fail_at: raise ``error`` when receiving this message (0 for the first).
        error: the exception raised at ``fail_at`` (a ``RuntimeError`` by default).

    Attributes:
        messages: the messages of the latest run.
        runs, opened, flushed, closed: how often a run started, and how often the
            writer's ``open``, ``flush`` and ``aclose`` were called, over all runs.
    """

    def __init__(
        self, *, delay: float = 0.0, fail_at: int | None = None, error: Exception | None = None
    ) -> None:
        super().__init__(_FakeOp(self))
        self.delay = delay
        self.fail_at = fail_at
        self.error = error
        self.messages: list[Message] = []
        self.runs = self.opened = self.flushed = self.closed = 0

    def rows(self) -> int:
        """Items received in the latest run (rows of batches, elements of chunks)."""
        return sum(len(m) for m in self.messages)


class _FakeWriter(SinkWriter[Any, list[Message]]):
    def __init__(self, fake: FakeSink) -> None:
        self.fake = fake
        self.messages: list[Message] = []
        fake.messages = self.messages
        fake.runs += 1

    async def open(self) -> None:
        self.fake.opened += 1

    async def _record(self, msg: Message) -> None:
        fake = self.fake
        if fake.delay:
            await anyio.sleep(fake.delay)
        if fake.fail_at is not None and len(self.messages) == fake.fail_at:
            raise fake.error or RuntimeError(f"FakeSink: failing at message {fake.fail_at}")
        self.messages.append(msg)

    async def write(self, item: Any) -> None:
        await self._record([item])

    async def write_chunk(self, items: list[Any]) -> None:
        await self._record(list(items))

    async def write_batch(self, batch: Batch) -> None:
        await self._record(batch)

    async def flush(self) -> None:
        self.fake.flushed += 1

    async def aclose(self) -> None:
        self.fake.closed += 1

    def result(self) -> list[Message]:
        return self.messages


class _FakeOp(SinkOperator[Any, list[Message]]):
    name = "fake_sink"

    def __init__(self, fake: FakeSink) -> None:
        self.fake = fake

    @property
    def fused(self) -> bool:  # type: ignore[override]
        return not self.fake.delay  # a slow sink gets a task and buffer of its own

    def writer(self, ctx: Context) -> SinkWriter[Any, list[Message]]:
        return _FakeWriter(self.fake)


# -- conformance checks ------------------------------------------------------------------

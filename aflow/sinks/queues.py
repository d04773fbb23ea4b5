"""Queue sinks: hand a flow's output to the rest of an application.

``to_queue`` puts each item (an element, or a batch's array) into an ``asyncio.Queue`` or
sends it on an anyio ``MemoryObjectSendStream``, awaiting ``put``/``send``: a bounded queue
the consumer drains slowly suspends the flow (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from anyio.streams.memory import MemoryObjectSendStream

from ..abc import Batch, Context, SavedAttributes, SinkOperator, SinkWriter
from ..flow import Sink

__all__ = ["to_queue"]

_NO_END: Any = object()

Target = asyncio.Queue[Any] | MemoryObjectSendStream[Any]


class _QueueWriter(SavedAttributes, SinkWriter[Any, int]):
    saved = ("count",)

    def __init__(self, target: Target, end: Any, envelopes: bool, close: bool) -> None:
        self.target, self.end, self.envelopes, self.close = target, end, envelopes, close
        self.count = 0
        self.ended = False

    async def open(self) -> None:
        if isinstance(self.target, asyncio.Queue):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError(
                    "to_queue: an asyncio.Queue needs the asyncio backend; on trio pass an "
                    "anyio MemoryObjectSendStream"
                ) from None

    async def _put(self, item: Any) -> None:
        if isinstance(self.target, asyncio.Queue):
            await self.target.put(item)
        else:
            await self.target.send(item)

    async def write(self, item: Any) -> None:
        await self._put(item)
        self.count += 1

    async def write_batch(self, batch: Batch) -> None:
        await self.write(batch if self.envelopes else batch.data)

    async def flush(self) -> None:
        if self.end is not _NO_END and not self.ended:
            self.ended = True
            await self._put(self.end)

    async def aclose(self) -> None:
        if isinstance(self.target, asyncio.Queue):
            if self.end is not _NO_END and not self.ended:  # after an error: never block
                self.ended = True
                with contextlib.suppress(asyncio.QueueFull):
                    self.target.put_nowait(self.end)
        elif self.close:
            await self.target.aclose()

    def result(self) -> int:
        return self.count


class _QueueOp(SinkOperator[Any, int]):
    fused = False

    def __init__(self, target: Target, end: Any, envelopes: bool, close: bool) -> None:
        if not isinstance(target, asyncio.Queue | MemoryObjectSendStream):
            raise TypeError(
                f"to_queue takes an asyncio.Queue or an anyio MemoryObjectSendStream, "
                f"not {type(target).__name__}"
            )
        self.target, self.end, self.envelopes, self.close = target, end, envelopes, close
        self.name = "to_queue"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _QueueWriter(self.target, self.end, self.envelopes, self.close)


def to_queue(
    queue: asyncio.Queue[Any] | MemoryObjectSendStream[Any],
    *,
    end: Any = _NO_END,
    envelopes: bool = False,
    close: bool = True,
) -> Sink[Any, int]:
    """Put every item into ``queue``, waiting while it is full; the result is the count.

    Example (asyncio):
        >>> import asyncio, aflow as af
        >>> async def main():
        ...     q = asyncio.Queue(maxsize=2)
        ...     flow = af.from_iterable(range(5)) | af.to_queue(q, end=None)
        ...     async with asyncio.TaskGroup() as tg:
        ...         tg.create_task(flow.run())
        ...         got = []
        ...         while (x := await q.get()) is not None:
        ...             got.append(x)
        ...     return got
        >>> asyncio.run(main())
        [0, 1, 2, 3, 4]

    Args:
        queue: an ``asyncio.Queue`` (asyncio only) or an anyio ``MemoryObjectSendStream``
            (either backend). A bounded one gives backpressure: the flow waits for the
            consumer.
        end: a value put after the last item (at end of input or graceful stop; after an
            error too, when an ``asyncio.Queue`` has room) so the consumer knows to stop.
        envelopes: put :class:`~aflow.Batch` envelopes (with provenance) instead of the
            bare arrays of batches.
        close: close the send stream when the run ends, so the receiver sees
            ``EndOfStream`` (the stream is then good for one run).

    Returns:
        A sink whose result is the number of items put (``end`` excluded). Chunks of
        elements are put element by element; batches one array each.
    """
    return Sink(_QueueOp(queue, end, envelopes, close))

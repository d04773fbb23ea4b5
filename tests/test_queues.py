"""Queue sinks (aflow/sinks/queues.py): handing items to an application, with backpressure."""

from __future__ import annotations

import asyncio

import anyio
import numpy as np
import pytest
from _helpers import all_tasks_blocked

import aflow as af


@pytest.mark.anyio
@pytest.mark.virtual_time  # the slow consumer's sleeps take no real time
async def test_memory_stream_gets_items_batches_and_end_of_stream() -> None:
    send, receive = anyio.create_memory_object_stream[object](1)
    got: list[object] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async with receive:
                    async for item in receive:
                        got.append(item)
                        await anyio.sleep(0.001)  # a slow consumer

            tg.start_soon(consume)
            result = await (af.from_array(np.arange(10), batch_size=4) | af.to_queue(send)).run()
    assert result.value == 3
    assert [a.tolist() for a in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_envelopes_keep_provenance() -> None:
    send, receive = anyio.create_memory_object_stream[af.Batch](10)
    await (af.from_array(np.arange(5), batch_size=5) | af.to_queue(send, envelopes=True)).run()
    batch = receive.receive_nowait()
    assert batch.provenance is not None
    assert batch.provenance.stop == 5
    receive.close()


@pytest.mark.asyncio
async def test_asyncio_queue_backpressure_and_end() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=2)
    flow = af.from_iterable(range(100)) | af.to_queue(queue, end=None)
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        task = tg.create_task(flow.run())
        await all_tasks_blocked()
        assert not task.done()  # waiting for the consumer
        assert queue.full()
        got = []
        while (item := await queue.get()) is not None:
            got.append(item)
    assert got == list(range(100))
    assert task.result().value == 100


@pytest.mark.asyncio
async def test_asyncio_queue_gets_end_after_an_error() -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()

    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("boom")
        return x

    flow = af.from_iterable(range(10), chunk_size=1) | af.map(boom)
    with pytest.raises(ValueError, match="boom"):
        await (flow | af.to_queue(queue, end="END")).run()
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items[-1] == "END"
    assert items[:-1] == list(range(len(items) - 1))


@pytest.mark.anyio
async def test_bad_targets(anyio_backend: str) -> None:
    with pytest.raises(TypeError, match=r"asyncio\.Queue or an anyio"):
        af.to_queue([])  # type: ignore[arg-type]
    if anyio_backend == "trio":
        with pytest.raises(TypeError, match="needs the asyncio backend"):
            await (af.from_iterable([1]) | af.to_queue(asyncio.Queue())).run()

"""A trio program running a flow beside its other tasks, stopped gracefully on a deadline.

aflow runs on trio through anyio: the flow's tasks live in the run's own nursery, and
``async with flow.open()`` is an ordinary trio async context manager. Here a heartbeat task
prints the flow's live statistics while the flow sums a feed of readings; after
``--seconds`` the program leaves the ``open()`` block, which stops the run gracefully
(partial batches flushed), and prints how it ended::

    python examples/trio_service.py --seconds 1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import numpy as np
import trio

import aflow as af


async def readings() -> AsyncIterator[np.ndarray]:
    """An endless feed of readings, 1,000 per batch."""
    i = 0
    while True:
        yield np.arange(i, i + 1000, dtype="i8")
        i += 1000
        await trio.sleep(0.005)


async def heartbeat(run: af.Run[int]) -> None:
    """Another task of the program: reads the run's live statistics."""
    while True:
        await trio.sleep(0.2)
        print(f"heartbeat: {run.statistics().stage('reduce(lambda)').items_in:,} readings so far")


async def main(seconds: float) -> None:
    flow = af.from_arrays(readings) | af.reduce(lambda total, b: total + int(b.sum()), 0)
    async with flow.open() as run, trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, run)
        await trio.sleep(seconds)
        run.stop()  # graceful: what was read is summed
        result = await run.wait()
        nursery.cancel_scope.cancel()
    print(f"ended: {result.ended}; sum {result.value:,} (on trio)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to run")
    trio.run(main, parser.parse_args().seconds)

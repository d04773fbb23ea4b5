"""A plain asyncio service running a flow in the background, stopped gracefully on SIGTERM.

The flow counts readings from a generator (standing in for a socket or a followed log);
``/health`` state is the run's: ``running`` while it runs, then how it ended. On SIGTERM
or Ctrl-C the service stops the run (sources stop, partial batches are flushed), prints
its result and exits 0::

    python examples/asyncio_service.py &
    kill -TERM %1
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import numpy as np

import aflow as af


async def readings():
    """An endless feed of readings, 1,000 per batch, about 100 batches a second."""
    i = 0
    while True:
        yield np.arange(i, i + 1000, dtype="i8")
        i += 1000
        await asyncio.sleep(0.01)


def health(run: af.Run[object]) -> str:
    """What a health endpoint would report: the run's state."""
    return "running" if not run.done else f"ended: {run.ended}"


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    flow = af.from_arrays(readings) | af.reduce(lambda total, b: total + len(b), 0)
    async with flow.open() as run:
        print(f"service up; health: {health(run)}", flush=True)
        await stop.wait()
        run.stop()  # graceful: what was read is counted
        result = await run.wait()
    print(f"health: {health(run)}; {result.value:,} readings counted", flush=True)


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    asyncio.run(main())

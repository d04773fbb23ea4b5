"""One worker of the broker fault tests, run as a subprocess: reads a Redis stream as one
consumer of a group (or a JetStream durable) and appends the id of every message (the
payload is the id, a CSV integer) to its own file, synced at every commit, until the
source has been idle for ``--idle`` seconds.

    python tests/_broker_worker.py redis URL STREAM GROUP CONSUMER OUT [options]
    python tests/_broker_worker.py nats URL SUBJECT DURABLE - OUT [options]

A worker killed with SIGKILL may leave a last line half written: the next incarnation cuts
it off before appending (its message was never acknowledged, so it comes again).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aflow as af
from aflow.abc import Context, SinkOperator, SinkWriter

DT = [("i", "i8")]


def _append_whole_lines(path: str) -> BinaryIO:
    """``path`` opened to append, a half-written last line cut off first."""
    with open(path, "a+b") as f:
        f.seek(0)
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
    return open(path, "ab")  # closed by the writer's aclose


class _IdWriter(SinkWriter[Any, int]):
    def __init__(self, path: str) -> None:
        self.path = path
        self.rows = 0

    async def open(self) -> None:
        self.file = _append_whole_lines(self.path)

    async def write(self, item: Any) -> None:
        ids = item["i"].tolist()
        self.file.write(("\n".join(map(str, ids)) + "\n").encode())
        self.rows += len(ids)

    async def commit(self, epoch: int) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    async def flush(self) -> None:
        await self.commit(-1)

    async def aclose(self) -> None:
        if not self.file.closed:
            self.file.close()

    def result(self) -> int:
        return self.rows


class _IdSink(SinkOperator[Any, int]):
    def __init__(self, path: str) -> None:
        self.path, self.name = path, "ids"

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return _IdWriter(self.path)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("broker", "url", "stream", "group", "consumer", "out"):
        parser.add_argument(name)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--claim-idle", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=8.0)
    parser.add_argument("--commit-interval", type=float, default=0.5)
    parser.add_argument("--ack-wait", type=float, default=10.0)
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.broker == "redis":
        flow = af.read_redis(
            args.stream,
            args.group,
            url=args.url,
            consumer=args.consumer,
            dtype=DT,
            count=args.count,
            claim_idle=args.claim_idle,
            idle_timeout=args.idle,
            connect_timeout=args.connect_timeout,
        )
    else:
        flow = af.read_nats(
            args.stream,
            args.group,
            url=args.url,
            dtype=DT,
            count=args.count,
            ack_wait=args.ack_wait,
            idle_timeout=args.idle,
            connect_timeout=args.connect_timeout,
        )
    af.run(flow | af.Sink(_IdSink(args.out)), commit_interval=args.commit_interval)


if __name__ == "__main__":
    main()

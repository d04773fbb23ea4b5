"""Follow rotating nginx access logs; per-minute status counts and latencies to a file.

A writer task plays nginx: it appends combined-format lines (with a few malformed ones)
to ``access.log`` and rotates it every ``--rotate`` lines (rename to ``access.log.1``, new
file, as logrotate's ``create``), while the flow follows the path like ``tail -F``::

    read_log(follow=True) -> window(1 minute of log time, per status) -> to_jsonl
                          \\-> malformed lines, with file and line number -> dead.txt

It runs for ``--seconds``, then stops gracefully: what was read is flushed (open minutes
included) and the files are closed. The report checks that every line written was either
counted in a window or set aside in the dead-letter file: nothing is lost.

    python examples/log_pipeline.py --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from tempfile import mkdtemp

import anyio
import numpy as np

import aflow as af

LINE = (
    '10.0.0.{ip} - - [23/Nov/2026:{h:02d}:{m:02d}:{s:02d} +0000] "GET /api/{path} HTTP/1.1" '
    '{status} {size} "-" "demo/1.0" {latency:.3f}\n'
)
COLUMNS = {"time": "timestamp:%d/%b/%Y:%H:%M:%S %z", "status": "int", "request_time": "float"}


async def play_nginx(folder: Path, rate: int, rotate: int, stop: anyio.Event) -> int:
    """Write access-log lines at about ``rate`` per second; return how many."""
    rng = random.Random(7)
    log = folder / "access.log"
    written = since_rotation = 0
    t = 8 * 3600  # log time, in seconds since midnight: 10 lines per second of log time
    while not stop.is_set():
        with log.open("a") as f:
            for _ in range(rate // 20):
                if rng.random() < 0.002:
                    f.write("GET /favicon.ico -- not an access log line\n")
                else:
                    status = rng.choice((200, 200, 200, 200, 301, 404, 500))
                    f.write(
                        LINE.format(
                            ip=rng.randrange(255),
                            h=t // 3600,
                            m=t // 60 % 60,
                            s=t % 60,
                            path=rng.randrange(20),
                            status=status,
                            size=rng.randrange(99999),
                            latency=rng.lognormvariate(-4, 1),
                        )
                    )
                written += 1
                since_rotation += 1
                t += rng.random() < 0.1
        if since_rotation >= rotate:
            os.replace(log, folder / "access.log.1")  # logrotate's rename ...
            log.touch()  # ... and its 'create': the new file exists before nginx writes
            since_rotation = 0
        await anyio.sleep(0.05)
    return written


async def main_async(seconds: float, rate: int, rotate: int, folder: Path) -> int:
    (folder / "access.log").touch()
    dead = (folder / "dead.txt").open("w")

    def set_aside(failed: af.FailedItem) -> None:
        error = failed.error
        if isinstance(error, af.DataLossError):  # rotated away before it could be read
            with (folder / "lost.txt").open("a") as f:
                f.write(f"{error.count}\t{error}\n")
            return
        where = f"{getattr(error, 'source', '?')}:{getattr(error, 'line', '?')}"
        dead.write(f"{where}\t{failed.item.decode(errors='replace').rstrip()}\n")

    flow = (
        af.read_log(
            str(folder / "access.log"),
            columns=COLUMNS,
            follow=True,
            poll_interval=0.05,
            on_error=af.dead_letter(set_aside),
        )
        | af.window(
            np.timedelta64(1, "m"),
            on="time",
            key="status",
            value="request_time",
            stats=("count", "mean", "max"),
            allowed_lateness=np.timedelta64(1, "m"),
        )
        | af.to_jsonl(folder / "per_minute.jsonl")
    )
    stop = anyio.Event()
    written = 0

    async def nginx() -> None:
        nonlocal written
        written = await play_nginx(folder, rate, rotate, stop)

    async with anyio.create_task_group() as tg, flow.open() as run:
        await anyio.sleep(0.2)  # let the follower open access.log before nginx writes
        tg.start_soon(nginx)
        await anyio.sleep(seconds)
        stop.set()
        await anyio.sleep(0.5)  # let the reader catch up with the last lines
        run.stop()
        result = await run.wait()
    dead.close()
    return report(folder, written, result)


def report(folder: Path, written: int, result: af.RunResult[object]) -> int:
    rows = [json.loads(line) for line in (folder / "per_minute.jsonl").read_text().splitlines()]
    counted = sum(r["count"] for r in rows)
    dead = (folder / "dead.txt").read_text().splitlines()
    rotated = (folder / "access.log.1").exists()
    print(f"lines written by 'nginx': {written:,} (log rotated: {rotated})")
    print(f"per-minute windows written: {len(rows)} rows to per_minute.jsonl")
    for r in rows[:4]:
        print(
            f"  {r['window_start']}  status {r['status']}: {r['count']:>5} requests, "
            f"mean {r['mean'] * 1e3:.1f} ms, max {r['max'] * 1e3:.1f} ms"
        )
    print(f"malformed lines set aside in dead.txt: {len(dead)}, e.g. {dead[0] if dead else '-'}")
    print(f"counted {counted:,} + set aside {len(dead)} = {counted + len(dead):,} of {written:,}")
    lost = folder / "lost.txt"
    files = (
        sum(int(x.split("\t")[0]) for x in lost.read_text().splitlines()) if lost.exists() else 0
    )
    if counted + len(dead) != written:
        if files:  # reported by the source, never silent: rotations faster than reading
            print(
                f"{written - counted - len(dead):,} lines lost in {files} file(s) rotated away "
                "before they could be opened (reported as DataLossError)"
            )
            return 0
        print("LOST LINES", flush=True)
        return 1
    print("nothing lost")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    parser.add_argument("--rate", type=int, default=4000, help="lines per second")
    parser.add_argument("--rotate", type=int, default=3000, help="lines between rotations")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the logs, per_minute.jsonl and dead.txt (default: a new temporary"
        " folder, kept and named at the end)",
    )
    args = parser.parse_args()
    folder = args.out if args.out is not None else Path(mkdtemp(prefix="aflow-logs-"))
    folder.mkdir(parents=True, exist_ok=True)
    status = anyio.run(main_async, args.seconds, args.rate, args.rotate, folder)
    print(f"output kept in {folder}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

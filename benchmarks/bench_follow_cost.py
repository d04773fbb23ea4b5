"""CPU cost of following files: seconds of this process's CPU per million lines read.

``python benchmarks/bench_follow_cost.py [one|glob] [RATE] [SECONDS]``

``one``: one file written by a writer process (``tests/_logwriter.py``) at RATE lines/s;
``glob``: 100 files written round-robin by one writer process at RATE lines/s in all.
The writers run in other processes: only the follower's CPU is counted (user + system,
``resource.getrusage``; and its guards' process, ``/proc/PID/stat``), from the first line
to the last. ``AFLOW_FOLLOW_GUARD=auto`` compares with guards that read at every write
only around a copy.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

import anyio

import aflow as af
from aflow.sources._guardproc import _guards

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "_logwriter.py")

ROUND_ROBIN = r"""
import os, sys, time
paths, rate, seconds = sys.argv[1:-2], int(sys.argv[-2]), float(sys.argv[-1])
fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for p in paths]
print("ready", flush=True)
seq, start = 0, time.monotonic()
while (elapsed := time.monotonic() - start) < seconds:
    due = int(elapsed * rate)
    while seq < due:
        os.write(fds[seq % len(fds)], b"%d\n" % seq)
        seq += 1
    time.sleep(0.002)
print(seq, flush=True)
"""


def cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its guards' process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    guards = 0.0
    child = _guards._child
    if child is not None:
        with open(f"/proc/{child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        guards = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return r.ru_utime + r.ru_stime, guards


async def measure(kind: str, rate: int, seconds: float) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "one":
            paths = [os.path.join(tmp, "app.log")]
            cmd = [sys.executable, WRITER, paths[0], "plain", str(rate), str(seconds)]
            pattern = paths[0]
        else:
            paths = [os.path.join(tmp, f"app{i:03d}.log") for i in range(100)]
            cmd = [sys.executable, "-c", ROUND_ROBIN, *paths, str(rate), str(seconds)]
            pattern = os.path.join(tmp, "app*.log")
        for p in paths:
            open(p, "wb").close()  # noqa: ASYNC230 - before the run
        count = 0

        def seen(_: object) -> None:
            nonlocal count
            count += 1

        flow = af.read_lines(pattern, follow=True, poll_interval=0.1)
        async with (flow | af.for_each(seen)).open() as run:
            await anyio.sleep(2)  # every file open
            writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
            assert writer.stdout is not None
            await anyio.to_thread.run_sync(writer.stdout.readline)
            t0 = cpu()
            written = int(await anyio.to_thread.run_sync(writer.stdout.readline))
            await anyio.to_thread.run_sync(writer.wait)
            deadline = time.monotonic() + 30
            while count < written and time.monotonic() < deadline:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            t1 = cpu()
            run.stop()
        if count < written:
            print(f"read {count} of {written} lines in 30 s", file=sys.stderr)
        return count, t1[0] - t0[0], t1[1] - t0[1]


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "one"
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    count, used, guards = anyio.run(measure, kind, rate, seconds)
    mode = os.environ.get("AFLOW_FOLLOW_GUARD", "always")
    print(
        f"{kind} ({mode}): {count} lines, {used:.2f} CPU s + {guards:.2f} in the guards' "
        f"process: {used / count * 1e6:.2f} + {guards / count * 1e6:.2f} CPU s per million "
        f"(load {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()

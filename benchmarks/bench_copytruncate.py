"""Lines lost through real ``logrotate`` copytruncate rotations: aflow beside two
``tail -F`` processes following the same file in the same runs.

``python benchmarks/bench_copytruncate.py [RUNS]`` (default 16)

Each run: a writer process (``tests/_logwriter.py``) appends numbered lines at 20,000
lines/s for 10 s while ``logrotate -f`` rotates the file 8 times (copytruncate). aflow
(``read_lines(follow=True)``) and two ``tail -F`` read it; each run prints the lines each
of them lost. Lines written between logrotate's copy and its truncation that a reader
had not yet read are in no file: every reader may lose some. Two ``tail -F`` on the same
run show how far such losses vary between two equal readers.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import aflow as af

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.test_rotation import LOGROTATE, WRITER, write_config

RATE, SECONDS, ROTATIONS = 20_000, 10.0, 8
READERS = ("aflow", "tail -F (a)", "tail -F (b)")


def _lost(written: int, numbers: Counter[int]) -> int:
    return written - len(set(numbers) & set(range(written)))


async def one_run(tmp: Path) -> list[int]:
    """Lines lost by aflow and by each ``tail -F`` in one run."""
    log = tmp / "app.log"
    log.touch()
    seen: list[str] = []
    flow = af.read_lines(
        str(log), follow=True, poll_interval=0.05, rotate_wait=0.5, on_error="skip"
    ) | af.for_each(seen.append)
    outs = [(tmp / f"tail{i}.out").open("wb") for i in range(2)]
    tails = [
        await anyio.open_process(
            ["tail", "-n", "+1", "-F", str(log)], stdout=out, stderr=subprocess.DEVNULL
        )
        for out in outs
    ]
    every = max(1, int(RATE * SECONDS / (ROTATIONS + 1)))
    writer = await anyio.open_process(
        [sys.executable, str(WRITER), str(log), "copytruncate", str(RATE), str(SECONDS), str(every)]
    )
    try:
        assert writer.stdout is not None
        lines = BufferedByteReceiveStream(writer.stdout)
        assert await lines.receive_until(b"\n", 100) == b"ready"
        async with flow.open() as run:
            conf = write_config(tmp, log, "copytruncate", writer.pid, 0.0)
            for _ in range(ROTATIONS):
                await anyio.sleep(SECONDS / (ROTATIONS + 1))
                await anyio.run_process(
                    [LOGROTATE, "-f", "-s", str(tmp / "state"), str(conf)], check=True
                )
            written = int(await lines.receive_until(b"\n", 100))
            count = -1
            while count != len(seen):  # until aflow has read all it can
                count = len(seen)
                await anyio.sleep(1.0)
            run.stop()
    finally:
        with anyio.CancelScope(shield=True):
            await writer.wait()
            await anyio.sleep(0.3)
            for tail in tails:
                tail.send_signal(signal.SIGTERM)
                await tail.wait()
            for out in outs:
                out.close()
    lost = [_lost(written, Counter(int(x) for x in seen))]
    for i in range(2):
        text = (tmp / f"tail{i}.out").read_bytes().decode(errors="replace")
        lost.append(_lost(written, Counter(int(x) for x in text.split() if x.isdigit())))
    return lost


async def main(runs: int) -> None:
    print(f"{RATE:,} lines/s for {SECONDS:g} s, {ROTATIONS} copytruncate rotations a run; "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    print("run  " + "  ".join(f"{name:>12}" for name in READERS))
    rows = []
    for k in range(runs):
        with tempfile.TemporaryDirectory() as d:
            rows.append(await one_run(Path(d)))
        print(f"{k:3d}  " + "  ".join(f"{n:12d}" for n in rows[-1]), flush=True)
    print(f"after: load {os.getloadavg()[0]:.2f}")
    print(f"{'':12} {'min':>6} {'median':>7} {'max':>6} {'total':>7}")
    for i, name in enumerate(READERS):
        v = [r[i] for r in rows]
        print(f"{name:12} {min(v):6d} {statistics.median(v):7g} {max(v):6d} {sum(v):7d}")
    worse = [sum(r[i] > r[j] for r in rows) for i, j in ((0, 1), (0, 2), (2, 1), (1, 2))]
    print(
        f"runs where aflow lost more than tail -F (a): {worse[0]}, than (b): {worse[1]}; "
        f"where one tail -F lost more than the other: (b) > (a) {worse[2]}, (a) > (b) {worse[3]}"
    )


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 16)

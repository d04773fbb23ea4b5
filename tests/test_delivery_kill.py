"""The proof with real processes: a writer appends and rotates a log; an aflow follow
pipeline (file sink + keyed aggregate, checkpointed) is killed at random moments and
restarted each time; at the end nothing is lost, the file sink holds each line once and
the aggregate equals one uninterrupted pass."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aflow as af

HERE = Path(__file__).parent
ROOT = HERE.parent
N = 12_000
ROTATE_EVERY = 1500
RATE = 300  # lines per second: writing and rotations go on through all the kills
DT = np.dtype([("key", "i8"), ("value", "i8")])


def _start(args: list[str], err: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with err.open("ab") as f:
        return subprocess.Popen([sys.executable, *args], env=env, stderr=f)


def _lines(data: bytes) -> list[int]:
    lines = data.splitlines()
    return [int(line.split(b",")[1]) for line in lines if line and line != b"key,value"]


def _committed(db: Path) -> tuple[int, int, int]:
    """The checkpoint's epoch and the CSV sink's committed bytes and rows (0s if none)."""
    if not db.exists():
        return 0, 0, 0
    store = af.SqliteStore(db)
    try:
        cp = store.load()
    finally:
        store.close()
    if cp is None:
        return 0, 0, 0
    state = next((v for k, v in cp.states.items() if "to_csv" in k), None) or {}
    return cp.epoch, int(state.get("bytes", 0)), int(state.get("rows", 0))


def _wait(condition: Any, timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(step)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_and_restarted_pipeline_loses_nothing(
    tmp_path: Path, backend: str, signum: int
) -> None:
    log, out, db, result = (tmp_path / n for n in ("app.log", "out.csv", "cp.db", "agg.json"))
    err = tmp_path / "stderr.txt"
    log.touch()
    writer = _start(
        [str(HERE / "_delivery_writer.py"), str(log), str(N), str(ROTATE_EVERY), str(RATE)], err
    )
    args = [str(HERE / "_delivery_pipeline.py"), str(log), str(out), str(db), str(result), backend]
    rng = random.Random(15)
    in_flight: list[int] = []  # lines written to the sink after its last commit, per kill
    started = time.monotonic()
    proc = writer
    try:
        for i in range(20):
            epoch = _committed(db)[0]
            proc = _start(args, err)
            # up and committing (so each kill lands in a run that works), then a while;
            # every other kill waits first for lines written to the sink but not committed
            _wait(lambda: _committed(db)[0] > epoch or proc.poll() is not None, 30)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.8))
            if i % 2:
                _wait(lambda: out.stat().st_size > _committed(db)[1], 1.0, 0.005)
            proc.send_signal(signum)
            proc.wait(30)
            assert proc.returncode in (-signum, 0, 128 + signum), err.read_text()
            _, size, _ = _committed(db)
            in_flight.append(len(_lines(out.read_bytes()[size:])))
        writer.wait(120)
        epoch = _committed(db)[0]
        proc = _start(args, err)

        def done() -> bool:  # this run committed, and every line is in the sink
            now, _, rows = _committed(db)
            return (now > epoch and rows >= N) or proc.poll() is not None

        _wait(done, 60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode in (0, 143), err.read_text()
    finally:
        writer.kill()
        proc.kill()
    elapsed = time.monotonic() - started
    data = out.read_bytes()
    assert data.count(b"key,value") == 1  # the header once, not per restart
    values = _lines(data)
    lost = N - len(set(values))
    duplicates = len(values) - len(set(values))
    name = signal.Signals(signum).name
    print(
        f"\n{name} {backend}: {len(in_flight)} kills in {elapsed:.1f} s, lost {lost}, "
        f"duplicates {duplicates}, in flight at a kill: max {max(in_flight)}, "
        f"total {sum(in_flight)}"
    )
    assert lost == 0
    assert duplicates <= max(in_flight)
    assert duplicates == 0  # the file sink is truncated back to its committed length
    if signum == signal.SIGTERM:
        assert max(in_flight) == 0  # a graceful stop commits what it wrote
    # the keyed aggregate equals one uninterrupted pass over every line written
    agg = json.loads(result.read_text())
    files = sorted(str(p) for p in tmp_path.glob("app.log*"))
    one_pass = af.run(af.read_csv(files, DT) | af.to_aggregate("key", "value", ("count", "sum")))
    assert agg == {str(k): [int(c), int(s)] for k, c, s in one_pass.value.tolist()}
    assert sum(c for c, _ in agg.values()) == N
    assert sum(s for _, s in agg.values()) == N * (N - 1) // 2

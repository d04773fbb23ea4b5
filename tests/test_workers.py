"""``aflow run --workers N``: N processes of one flow sharing a Redis consumer group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import aflow as af
from tests._brokers import redis_or_skip, unique

# each starts worker processes and lasts 3-8 s: in the slow run (CI runs it)
pytestmark = pytest.mark.slow

# 20 ms a batch of 200: the work lasts longer than the workers' start-up skew under load
FLOW = """
import os
import time
import aflow as af

def flow(stream, out, idle="1.5"):
    dt = [("k", "i8"), ("v", "f8")]
    slow = af.map(lambda b: (time.sleep(0.02), b)[1])
    reader = af.read_redis(stream, "g", dtype=dt, count=200, idle_timeout=float(idle))
    return reader | slow | af.to_redis(f"{out}-{os.environ['AFLOW_WORKER']}")
"""


def test_workers_share_one_consumer_group(tmp_path: Path) -> None:
    import redis

    url = redis_or_skip()
    client = redis.Redis.from_url(url)
    stream, out = unique("aflow-test-"), unique("aflow-test-")
    try:
        data = np.zeros(20_000, [("k", "i8"), ("v", "f8")])
        data["k"] = np.arange(20_000)
        af.run(af.from_array(data, batch_size=1000) | af.to_redis(stream, url=url))
        (tmp_path / "wflow.py").write_text(FLOW)
        env = {**os.environ, "PYTHONPATH": str(Path(af.__file__).parent.parent)}
        done = subprocess.run(
            [sys.executable, "-m", "aflow", "run", f"{tmp_path / 'wflow.py'}:flow",
             "--arg", f"stream={stream}", "--arg", f"out={out}", "--workers", "3",
             "--no-progress"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        counts = [client.xlen(f"{out}-{i}") for i in range(3)]
        assert sum(counts) == 20_000
        assert sum(c > 0 for c in counts) >= 2, f"the work was shared: {counts}"
        assert client.xpending(stream, "g")["pending"] == 0
        names = {c["name"].decode() for c in client.xinfo_consumers(stream, "g")}
        assert len(names) == 3
        assert all(n.endswith(("-w0", "-w1", "-w2")) for n in names)
    finally:
        for key in [stream] + [f"{out}-{i}" for i in range(3)]:
            client.delete(key)
        client.close()


SLOW_FLOW = """
import time
import aflow as af

def flow(stream, out, idle="1.5"):
    dt = [("k", "i8"), ("v", "f8")]
    slow = af.map(lambda b: (time.sleep(0.05), b)[1])
    return (
        af.read_redis(stream, "g", dtype=dt, count=200, idle_timeout=float(idle))
        | slow
        | af.to_redis(out)
    )
"""

FAILING_FLOW = """
def flow():
    raise RuntimeError("this flow cannot be built")
"""


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _aflow(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(af.__file__).parent.parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "aflow", "run", *args, "--no-progress"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def test_a_killed_worker_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    import redis

    url = redis_or_skip()
    client = redis.Redis.from_url(url)
    stream, out = unique("aflow-test-"), unique("aflow-test-")
    try:
        data = np.zeros(12_000, [("k", "i8"), ("v", "f8")])
        data["k"] = np.arange(12_000)
        af.run(af.from_array(data, batch_size=1000) | af.to_redis(stream, url=url))
        (tmp_path / "sflow.py").write_text(SLOW_FLOW)
        proc = _aflow(
            tmp_path, f"{tmp_path / 'sflow.py'}:flow", "--arg", f"stream={stream}",
            "--arg", f"out={out}", "--workers", "2",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while client.xlen(out) < 1000:  # both workers are reading
            assert time.monotonic() < deadline, "the workers wrote nothing"
            time.sleep(0.05)
        first = _children(proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr
        assert "exited with status 137; restarting it" in stderr
        got = np.array([int(f[b"data"].split(b",")[0]) for _, f in client.xrange(out)])
        assert np.array_equal(np.unique(got), np.arange(12_000)), "every entry arrived"
        assert client.xpending(stream, "g")["pending"] == 0
        names = {c["name"].decode() for c in client.xinfo_consumers(stream, "g")}
        assert len(names) == 2, f"the restarted worker kept its consumer name: {names}"
    finally:
        client.delete(stream, out)
        client.close()


def test_too_many_restarts_within_a_minute_fail_the_run(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(FAILING_FLOW)
    proc = _aflow(tmp_path, f"{tmp_path / 'bad.py'}:flow", "--workers", "2", "--max-restarts", "2")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "after 2 restarts within 60 s (--max-restarts 2); stopping all workers" in stderr
    assert stderr.count("restarting it") == 2


def test_sigterm_stops_the_workers_and_restarts_none(tmp_path: Path) -> None:
    import redis

    url = redis_or_skip()
    client = redis.Redis.from_url(url)
    stream, out = unique("aflow-test-"), unique("aflow-test-")
    try:
        (tmp_path / "sflow.py").write_text(SLOW_FLOW)
        proc = _aflow(
            tmp_path, f"{tmp_path / 'sflow.py'}:flow", "--arg", f"stream={stream}",
            "--arg", f"out={out}", "--arg", "idle=60", "--workers", "2",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while (
            len(client.xinfo_groups(stream) if client.exists(stream) else []) == 0
            or len(client.xinfo_consumers(stream, "g")) < 2
        ):  # both workers joined the group
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert "restarting" not in stderr
        assert all(not Path(f"/proc/{w}").exists() for w in workers)
    finally:
        client.delete(stream, out)
        client.close()


def test_worker_offset_numbers_this_machines_workers(tmp_path: Path) -> None:
    import redis

    url = redis_or_skip()
    client = redis.Redis.from_url(url)
    stream, out = unique("aflow-test-"), unique("aflow-test-")
    try:
        data = np.zeros(3000, [("k", "i8"), ("v", "f8")])
        af.run(af.from_array(data, batch_size=1000) | af.to_redis(stream, url=url))
        (tmp_path / "wflow.py").write_text(FLOW)
        proc = _aflow(
            tmp_path, f"{tmp_path / 'wflow.py'}:flow", "--arg", f"stream={stream}",
            "--arg", f"out={out}", "--arg", "idle=0.5", "--workers", "2", "--worker-offset", "4",
        )  # fmt: skip
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert client.xlen(f"{out}-4") + client.xlen(f"{out}-5") == 3000
        names = {c["name"].decode() for c in client.xinfo_consumers(stream, "g")}
        host = socket.gethostname()
        assert names <= {f"{host}-w4", f"{host}-w5"}, names
    finally:
        client.delete(stream, out, f"{out}-4", f"{out}-5")
        client.close()

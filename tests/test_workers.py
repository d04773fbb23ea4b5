"""``aflow run --workers N``: N processes of one flow sharing a Redis consumer group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import aflow as af
from tests._brokers import redis_or_skip, unique

FLOW = """
import os
import aflow as af

def flow(stream, out):
    dt = [("k", "i8"), ("v", "f8")]
    return af.read_redis(stream, "g", dtype=dt, count=500, idle_timeout=1.5) | af.to_redis(
        f"{out}-{os.environ['AFLOW_WORKER']}"
    )
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

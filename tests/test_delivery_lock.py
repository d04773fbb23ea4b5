"""One checkpoint file, one run at a time: a second run is refused, a crashed one's
hold ends with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import aflow as af

ROOT = Path(__file__).parent.parent


async def _trickle(n: int) -> Any:
    for i in range(n):
        await anyio.sleep(0.002)
        yield i


def _flow(n: int = 200) -> Any:
    return af.from_iterable(lambda: _trickle(n)) | af.collect()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_second_run_on_one_checkpoint_is_refused(anyio_backend: str, tmp_path: Any) -> None:
    db = tmp_path / "state.db"
    with anyio.fail_after(30):
        async with _flow().open(checkpoint=db, commit_interval=0.01) as first:
            with pytest.raises(af.CheckpointInUse, match=r"state\.db.*in use by another run"):
                await _flow().run(checkpoint=db, commit_interval=0.01)
            # the same store object given to two runs at once: refused too
            store = af.SqliteStore(tmp_path / "other.db")
            async with _flow().open(checkpoint=store):
                with pytest.raises(af.CheckpointInUse):
                    await _flow().run(checkpoint=store)
            assert len((await first.wait()).value) == 200
        # looking at a checkpoint takes no lock; once the run has ended, the next one runs
        cp = af.SqliteStore(db).load()
        assert cp is not None
        again = await _flow().run(checkpoint=db, commit_interval=0.01)
    assert len(again.value) == 400  # collect's committed rows, then a fresh pass


class OwnedStore:
    """A user's store in memory that can be owned by one run at a time (the optional
    ``acquire``/``close`` of the store protocol)."""

    def __init__(self) -> None:
        self.saved: af.Checkpoint | None = None
        self.owned = False
        self.calls: list[str] = []

    def load(self) -> af.Checkpoint | None:
        return self.saved

    def commit(self, checkpoint: af.Checkpoint) -> None:
        self.saved = checkpoint

    def acquire(self) -> None:
        if self.owned:
            raise af.CheckpointInUse("owned by another run")
        self.owned = True
        self.calls.append("acquire")

    def close(self) -> None:
        self.owned = False
        self.calls.append("close")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_a_users_store_is_owned_through_acquire_and_close(anyio_backend: str) -> None:
    store = OwnedStore()
    with anyio.fail_after(30):
        async with _flow(50).open(checkpoint=store, commit_interval=0.01) as first:
            assert store.owned
            with pytest.raises(af.CheckpointInUse, match="owned by another run"):
                await _flow().run(checkpoint=store)
            assert len((await first.wait()).value) == 50
        assert not store.owned
        assert store.calls == ["acquire", "close"]
        assert store.saved is not None
        await _flow(50).run(checkpoint=store)  # free again once the first run has ended
    assert store.calls == ["acquire", "close", "acquire", "close"]


class ClosableStore(OwnedStore):
    """A store with a close() of its own but no acquire(): runs must leave it open."""

    acquire = None  # type: ignore[assignment]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
async def test_a_store_without_acquire_is_not_closed_by_a_run(anyio_backend: str) -> None:
    store = ClosableStore()
    await _flow(20).run(checkpoint=store)
    await _flow(20).run(checkpoint=store)
    assert store.calls == []
    assert store.saved is not None


_HOLDER = """
import sys, anyio, aflow as af

async def forever():
    i = 0
    while True:
        await anyio.sleep(0.01)
        i += 1
        yield i

flow = af.from_iterable(forever, name="ticks") | af.discard()
af.run(flow, checkpoint=sys.argv[1], commit_interval=0.05)
"""


@pytest.mark.filterwarnings("ignore::aflow.NotResumableWarning")
def test_checkpoint_of_a_killed_run_is_free(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db)], env=env)
    try:
        deadline = time.monotonic() + 30
        while (cp := db.exists() and af.SqliteStore(db).load()) is None or cp is False:
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(af.CheckpointInUse, match="in use by another run"):
            af.run(_flow(5), checkpoint=db)  # another process runs on it
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    flow = af.from_iterable(lambda: _trickle(5), name="ticks") | af.discard()
    assert af.run(flow, checkpoint=db).value > 0  # the dead process's lock is gone

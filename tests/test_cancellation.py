"""Cancellation and shutdown: nothing left running or open, partial batches flushed.

Slow fakes block every kind of task at once (a source waiting for data, a source waiting
for room, an async stage, a thread, a sink), then the run is cancelled from outside. Waits
for time run on the virtual clock (``pytest.mark.virtual_time``): a timeout there fires
once every task waits, never earlier.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from _helpers import python_env, settle

import aflow as af
from aflow.testing import CountingSource

pytestmark = pytest.mark.anyio


def hanging_source(n: int, closed: list[str]):  # type: ignore[no-untyped-def]
    """An async generator function: ``n`` items, then waits forever for the next."""

    async def gen() -> AsyncIterator[int]:
        try:
            for i in range(n):
                yield i
            await anyio.sleep_forever()
        finally:
            closed.append("source")

    return gen


@pytest.mark.virtual_time
async def test_external_cancel_flushes_partial_batches_and_closes_everything() -> None:
    closed: list[str] = []
    written: list[np.ndarray] = []
    flow = (
        af.from_iterable(hanging_source(250, closed))
        | af.batch(100)
        | af.map_batches(lambda b: b * 2)
        | af.for_each(written.append)
    )
    with anyio.move_on_after(0.3) as scope:
        await flow.run()
    assert scope.cancelled_caught
    assert closed == ["source"]
    assert [len(b) for b in written] == [100, 100, 50]  # the partial batch was flushed
    np.testing.assert_array_equal(np.concatenate(written), np.arange(250) * 2)


async def test_cancel_with_tasks_blocked_everywhere_leaves_nothing_running() -> None:
    closed: list[str] = []
    in_thread = threading.Event()
    release_thread = threading.Event()

    async def never(x: int) -> int:
        await anyio.sleep_forever()
        return x  # pragma: no cover

    def slow_in_thread(b: np.ndarray) -> np.ndarray:
        in_thread.set()
        release_thread.wait(0.5)  # a thread cannot be cancelled: the run waits for it
        return b

    async def slow_sink(x: object) -> None:
        await anyio.sleep_forever()

    fast = CountingSource()
    flow = (
        af.merge(
            af.from_iterable(hanging_source(3, closed)),  # waits for data
            af.from_iterable(fast) | af.buffer(1),  # waits for room
            af.from_array(np.arange(10), 5) | af.map_batches(slow_in_thread, thread=True),
        )
        | af.map(never, concurrency=2)
        | af.for_each(slow_sink)
    )
    before = _running_tasks()
    with anyio.CancelScope() as outside:
        async with flow.open(grace=0.2) as run:
            assert await anyio.to_thread.run_sync(in_thread.wait, 5)  # the thread is in
            await settle(lambda: fast.produced)  # every task blocked now: cancel
            outside.cancel()
            await run.wait()
    release_thread.set()
    assert closed == ["source"]
    assert fast.closed == 1
    assert in_thread.is_set()
    assert _running_tasks() == before


def _running_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # trio: tasks outlive nothing but their nursery
        return 0


@pytest.mark.virtual_time
async def test_error_in_a_stage_cancels_the_others_and_is_raised_as_itself() -> None:
    closed: list[str] = []

    def explode(x: int) -> int:
        if x == 2:
            raise KeyError("sensor 2 unknown")
        return x

    async def slow_sink(x: int) -> None:
        await anyio.sleep(0.01)

    flow = (
        af.from_iterable(hanging_source(5, closed))
        | af.map(explode, name="lookup")
        | af.for_each(slow_sink)
    )
    with anyio.fail_after(5), pytest.raises(KeyError, match="sensor 2 unknown") as info:
        await flow.run()
    assert any("stage '1:lookup'" in note for note in info.value.__notes__)
    assert closed == ["source"]


async def test_error_in_a_source_names_the_source() -> None:
    def broken():  # type: ignore[no-untyped-def]
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        await (af.from_iterable(broken) | af.collect()).run()
    assert "from_iterable(broken)" in info.value.__notes__[0]


async def test_error_in_an_async_sink_is_raised_as_itself() -> None:
    async def sink(x: int) -> None:
        raise ValueError(f"cannot store {x}")

    with pytest.raises(ValueError, match="cannot store 0"):
        await (af.from_iterable(range(10)) | af.for_each(sink)).run()


@pytest.mark.virtual_time
async def test_a_sink_stuck_in_graceful_stop_is_cancelled_after_the_grace_period() -> None:
    async def stuck(x: object) -> None:
        with anyio.CancelScope(shield=False):
            await anyio.sleep_forever()

    flow = af.from_iterable(CountingSource()) | af.for_each(stuck)
    started = anyio.current_time()
    with anyio.fail_after(5), anyio.move_on_after(0.1):
        await flow.run(grace=0.3)
    assert anyio.current_time() - started == pytest.approx(0.1 + 0.3)  # cancel, then grace


async def test_a_real_socket_is_closed_on_cancel() -> None:
    peer_saw_eof = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(b"1\n2\n3\n")
            try:
                await stream.receive()
            except anyio.EndOfStream:
                peer_saw_eof.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def lines() -> AsyncIterator[bytes]:
        async with await anyio.connect_tcp("127.0.0.1", port) as conn:
            while True:
                yield await conn.receive()

    got: list[bytes] = []
    all_in = anyio.Event()

    def keep(data: bytes) -> None:
        got.append(data)
        if b"".join(got) == b"1\n2\n3\n":
            all_in.set()

    async def cancel_once_all_in(scope: anyio.CancelScope) -> None:
        with anyio.fail_after(5):
            await all_in.wait()
        scope.cancel()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        with anyio.CancelScope() as outside:
            tg.start_soon(cancel_once_all_in, outside)
            await (af.from_iterable(lines) | af.for_each(keep)).run()
        with anyio.fail_after(2):
            await peer_saw_eof.wait()
        tg.cancel_scope.cancel()
    assert b"".join(got) == b"1\n2\n3\n"


async def test_a_real_file_is_closed_on_cancel(tmp_path: Path) -> None:
    path = tmp_path / "readings.txt"
    path.write_text("".join(f"{i}\n" for i in range(100)))
    handles: list[object] = []
    at_end = anyio.Event()

    async def follow() -> AsyncIterator[str]:
        async with await anyio.open_file(path) as f:
            handles.append(f)
            async for line in f:
                yield line
            at_end.set()
            await anyio.sleep_forever()  # like tail -f waiting for more

    seen: list[int] = []
    flow = af.from_iterable(follow) | af.map(int) | af.for_each(seen.append)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(flow.run)
            await at_end.wait()
            tg.cancel_scope.cancel()
    assert seen == list(range(100))
    assert handles[0].wrapped.closed  # type: ignore[attr-defined]


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import aflow as af
    from aflow.testing import CountingSource

    src = CountingSource()
    rows = []

    def write(batch):
        rows.append(len(batch))
        if len(rows) == 1:
            print("running", flush=True)

    flow = (af.from_iterable(src) | af.throttle(20_000, burst=500)
            | af.batch(1000, dtype="i8") | af.for_each(write))
    try:
        af.run(flow, backend=sys.argv[1])
    except KeyboardInterrupt:
        print(f"interrupted produced={src.produced} written={sum(rows)} "
              f"closed={src.closed} last={rows[-1]}", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_stops_promptly_and_flushes(tmp_path: Path, backend: str) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    time.sleep(0.3)  # a real process: let it run a while
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)  # stops, or TimeoutExpired
    assert proc.returncode == 130, err
    fields = dict(kv.split("=") for kv in out.split()[1:])
    # every produced row reached the sink, the last batch partial, the source closed
    assert fields["produced"] == fields["written"]
    assert int(fields["last"]) < 1000
    assert fields["closed"] == "1"


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys
    import aflow as af
    from aflow.testing import CountingSource

    src = CountingSource()

    def count(total, n):
        if not total:
            print("running", flush=True)  # signal handlers are in place by now
        return total + n

    flow = (af.from_iterable(src) | af.throttle(20_000, burst=500)
            | af.batch(1000) | af.map(len) | af.reduce(count, 0))
    result = af.run(flow, backend=sys.argv[1])
    print(f"stopped total={result.value} produced={src.produced}", flush=True)
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_stops_gracefully_and_returns_the_result(tmp_path: Path, backend: str) -> None:
    script = tmp_path / "sigterm.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), backend], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    fields = dict(kv.split("=") for kv in out.split()[1:])
    assert int(fields["total"]) == int(fields["produced"]) > 0


async def test_error_in_a_fused_sink_names_the_sink() -> None:
    def store(x: int) -> None:
        raise PermissionError("read-only")

    with pytest.raises(PermissionError) as info:
        await (af.from_iterable(range(3)) | af.map(str) | af.for_each(store)).run()
    assert "stage '2:for_each(store)'" in info.value.__notes__[0]

"""The extension API's examples (examples/extending_*.py) and the conformance checks of
aflow.testing, against real sockets on 127.0.0.1, on asyncio and trio.

The checks must pass on built-in sources and sinks and on the examples, and fail, saying
which property and what to do, on the broken ones defined here.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import numpy as np
import pytest
from _helpers import settle

import aflow as af
from aflow.abc import Batch, Context, Outlet, SinkOperator, SinkWriter, Source
from aflow.testing import CountingSource, FakeSink, check_sink, check_source

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


src = load("extending_source")
stage = load("extending_stage")
sink = load("extending_sink")


ALL_SOURCE_PROPERTIES = [
    "re-runnable",
    "early close",
    "graceful stop",
    "cancellation",
    "backpressure",
]


async def all_closed(server: Any) -> None:
    """Wait (2 s at most) until the test server has no connection open."""
    with anyio.fail_after(2):
        while server.open_connections:  # noqa: ASYNC110 - a counter, not an event
            await anyio.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the docs page shows the examples as they are -----------------------------------------


def test_the_docs_page_includes_each_example_whole() -> None:
    page = (ROOT / "docs" / "extending.md").read_text()
    for name in ("extending_source", "extending_stage", "extending_sink"):
        assert f'--8<-- "examples/{name}.py"' in page
    nav = (ROOT / "mkdocs.yml").read_text()
    assert "extending.md" in nav
    assert "pymdownx.snippets" in nav


# -- (a) the source ------------------------------------------------------------------------


async def test_source_reads_every_reading_once_across_dropped_connections() -> None:
    async with src.serve_readings(2_000, drop_every=250) as server:
        flow = src.read_readings("127.0.0.1", server.port, batch_rows=128)
        async with flow.open() as run:
            batches = [m async for m in run.envelopes()]
    assert all(isinstance(b, Batch) for b in batches)
    rows = np.concatenate([b.data for b in batches])
    np.testing.assert_array_equal(rows["seq"], np.arange(2_000))
    np.testing.assert_array_equal(rows["value"], np.arange(2_000) * 0.5)
    assert max(len(b) for b in batches) == 128
    for b in batches:  # provenance: the sequence numbers of the batch's rows
        assert b.provenance is not None
        assert b.provenance.source == f"tcp://127.0.0.1:{server.port}"
        assert (b.provenance.start, b.provenance.stop) == (b.data["seq"][0], b.data["seq"][-1] + 1)


async def test_source_fails_clearly_when_nothing_listens() -> None:
    port = free_port()
    flow = src.read_readings("127.0.0.1", port, retries=2, backoff=0.01)
    with pytest.raises(ConnectionError, match=r"3 attempts in a row brought no data") as info:
        await flow.run()
    assert f"readings(127.0.0.1:{port})" in str(info.value)
    assert any("raised in stage" in note for note in info.value.__notes__)


async def test_source_stop_while_waiting_emits_what_it_holds() -> None:
    async with src.serve_readings(None, pause_at=150) as server:
        flow = src.read_readings("127.0.0.1", server.port, batch_rows=1000, max_delay=60)
        with anyio.fail_after(5):
            async with flow.open() as run:
                while server.sent < 150:  # noqa: ASYNC110 - a counter, not an event
                    await anyio.sleep(0.01)
                await settle()  # the source read the 150 rows and waits for more
                run.stop()  # interrupts the wait in pull_scope(): the held rows go out
                got = [b async for b in run]
        assert len(got) == 1
        np.testing.assert_array_equal(got[0]["seq"], np.arange(150))
        await all_closed(server)


async def test_source_closes_its_connection_on_cancel() -> None:
    async with src.serve_readings(None) as server:
        flow = src.read_readings("127.0.0.1", server.port, batch_rows=100)
        with anyio.move_on_after(0.3) as scope:
            await (flow | af.discard()).run(grace=0)
        assert scope.cancelled_caught
        await all_closed(server)


async def test_source_passes_the_conformance_checks() -> None:
    async with src.serve_readings(None) as server:
        checked = await check_source(
            lambda: src.read_readings("127.0.0.1", server.port, batch_rows=100),
            limit=1_000,
            released=lambda: server.open_connections == 0,
        )
    assert checked == ALL_SOURCE_PROPERTIES


# -- (b) the stage -------------------------------------------------------------------------


def reference_dedupe(keys: list[int], window: int) -> list[int]:
    """Positions kept: a key is dropped if it occurred among the previous ``window`` keys."""
    last: deque[int] = deque(maxlen=window)
    kept = []
    for i, k in enumerate(keys):
        if k not in last:
            kept.append(i)
        last.append(k)
    return kept


@pytest.mark.parametrize(("window", "batch", "size"), [(1, 7, 5), (16, 100, 64), (300, 33, 1000)])
async def test_dedupe_matches_a_plain_python_reference(window: int, batch: int, size: int) -> None:
    rng = np.random.default_rng(window)
    keys = rng.integers(0, 40, 2_000)
    rows = np.zeros(len(keys), [("key", "i8"), ("pos", "i8")])
    rows["key"], rows["pos"] = keys, np.arange(len(keys))
    flow = af.from_array(rows, batch) | stage.dedupe("key", window=window, size=size)
    out = (await flow.run()).value
    assert out["pos"].tolist() == reference_dedupe(keys.tolist(), window)


async def test_dedupe_flush_hands_on_the_rows_held_at_end_of_input() -> None:
    seq = np.repeat(np.arange(1_000), 2)  # every row twice in a row
    flow = af.from_array(seq, 300, name="feed") | stage.dedupe(window=4, size=128)
    for _ in range(2):  # and the flow runs again with fresh state
        async with flow.open() as run:
            batches = [b async for b in run.envelopes()]
        assert [len(b) for b in batches] == [128] * 7 + [1_000 - 7 * 128]
        assert [b.reason for b in batches] == ["count"] * 7 + ["end"]  # the last from flush()
        np.testing.assert_array_equal(np.concatenate([b.data for b in batches]), np.arange(1_000))
        last = batches[-1].provenance  # spans the input batches its rows came from
        assert last is not None
        assert (last.source, last.stop) == ("feed", 2_000)
        assert last.start == 1_500  # its first rows came in the input batch 1500..1800


@pytest.mark.virtual_time
async def test_dedupe_flushes_on_a_graceful_stop() -> None:
    async def endless() -> AsyncIterator[np.ndarray]:
        i = 0
        while True:
            yield np.arange(i, i + 10)
            i += 10
            await anyio.sleep(0.001)

    flow = af.from_arrays(endless) | stage.dedupe(window=4, size=1_000_000)
    async with flow.open() as run:
        await anyio.sleep(0.1)
        run.stop()
        got = [b async for b in run.envelopes()]
    assert [b.reason for b in got] == ["end"]  # flush() handed on the held rows
    assert len(got[0]) > 0


async def test_dedupe_says_what_to_do_with_chunks_of_elements() -> None:
    with pytest.raises(TypeError, match=r"put af\.batch\(n, dtype=\.\.\.\) before it"):
        await (af.from_iterable(range(5)) | stage.dedupe(window=2)).run()


# -- (c) the sink --------------------------------------------------------------------------


def readings(n: int) -> np.ndarray:
    rows = np.zeros(n, sink.READING)
    rows["seq"] = np.arange(n)
    rows["value"] = np.arange(n) * 0.25
    return rows


async def test_sink_delivers_every_row_once_despite_busy_answers_and_lost_replies() -> None:
    rows = readings(2_500)
    async with sink.serve_ingest(busy_every=3, lose_reply_every=5) as server:
        flow = af.from_array(rows, 256) | sink.to_ingest(
            "127.0.0.1", server.port, request_rows=300, backoff=0.001
        )
        result = await flow.run()
    delivery = result.value
    np.testing.assert_array_equal(server.rows(), rows)  # in order, none twice
    assert [len(r) for r in server.taken.values()] == [300] * 8 + [100]  # flush: the 100
    assert (delivery.requests, delivery.rows) == (9, 2_500)
    assert delivery.retries > 0
    assert result.statistics.stages[-1].retries == delivery.retries
    assert server.open_connections == 0


async def test_sink_gives_up_after_its_attempts_and_says_so() -> None:
    async with sink.serve_ingest(busy_every=1) as server:
        flow = af.from_array(readings(10), 10) | sink.to_ingest(
            "127.0.0.1", server.port, attempts=3, backoff=0.001
        )
        with pytest.raises(sink.Unavailable, match=r"failed 3 times, the last with the server"):
            await flow.run()
        assert server.requests == 3


async def test_sink_fails_at_open_when_no_server_listens() -> None:
    flow = af.from_array(readings(10), 10) | sink.to_ingest("127.0.0.1", free_port())
    with pytest.raises(OSError, match=r"(?i)connect"):
        await flow.run()


async def test_sink_closes_its_connection_on_cancel() -> None:
    async def endless() -> AsyncIterator[np.ndarray]:
        while True:
            yield readings(50)
            await anyio.sleep(0.001)

    async def cancel_after_a_request(scope: anyio.CancelScope) -> None:
        with anyio.fail_after(5):
            while not server.requests:  # noqa: ASYNC110 - a counter, not an event
                await anyio.sleep(0.01)
        scope.cancel()

    async with sink.serve_ingest() as server, anyio.create_task_group() as tg:
        flow = af.from_arrays(endless) | sink.to_ingest("127.0.0.1", server.port, request_rows=64)
        with anyio.CancelScope() as scope:
            tg.start_soon(cancel_after_a_request, scope)
            await flow.run(grace=0)
        assert scope.cancelled_caught
        assert server.requests > 0
        await all_closed(server)


async def test_sink_rejects_elements_saying_what_to_do() -> None:
    async with sink.serve_ingest() as server:
        flow = af.from_iterable([1, 2]) | sink.to_ingest("127.0.0.1", server.port)
        with pytest.raises(TypeError, match=r"put af\.batch\(n, dtype=READING\) first"):
            await flow.run()


async def test_sink_passes_the_conformance_checks() -> None:
    async with sink.serve_ingest(busy_every=4, lose_reply_every=7) as server:
        checked = await check_sink(
            lambda: sink.to_ingest("127.0.0.1", server.port, request_rows=64, backoff=0.001),
            readings(1_000),
        )
        assert server.open_connections == 0
    assert checked == [
        "re-runnable",
        "flush at end of input",
        "idempotent aclose",
        "graceful stop",
        "cancellation",
    ]


async def test_the_stage_passes_the_source_checks_behind_a_source() -> None:
    rows = np.repeat(np.arange(500), 3)
    await check_source(lambda: af.from_array(rows, 64) | stage.dedupe(window=8, size=100))


# -- the checks pass on built-ins ---------------------------------------------------------


@pytest.mark.parametrize("make", [af.collect, af.discard], ids=["collect", "discard"])
async def test_builtin_sinks_pass(make: Any) -> None:
    await check_sink(make, np.arange(1_000.0))


async def test_file_sink_passes(tmp_path: Path) -> None:
    await check_sink(lambda: af.to_npy(tmp_path / "out.npy"), np.arange(1_000))


async def test_reduce_passes_with_a_delivered_function() -> None:
    await check_sink(
        lambda: af.reduce(lambda acc, b: acc + len(b), 0), np.arange(100), delivered=int
    )


async def test_fake_sink_passes_and_records_envelopes() -> None:
    fake = FakeSink()
    await check_sink(lambda: fake, np.arange(100), delivered=lambda msgs: sum(map(len, msgs)))
    await (af.from_array(np.arange(10), 4, name="xs") | fake).run()
    assert [(m.provenance.start, m.provenance.stop) for m in fake.messages] == [
        (0, 4),
        (4, 8),
        (8, 10),
    ]
    assert fake.rows() == 10


@pytest.mark.virtual_time  # the slow sink's waits and the deadline take no real time
async def test_fake_sink_can_be_slow_and_failing() -> None:
    counting = CountingSource()
    slow = FakeSink(delay=0.05)
    with anyio.move_on_after(0.3):
        await (af.from_iterable(counting, chunk_size=1) | slow).run(buffer=1, grace=0)
    assert counting.produced < 20  # the slow sink held the source back
    boom = FakeSink(fail_at=2, error=ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        await (af.from_array(np.arange(10), 2) | boom).run()
    assert len(boom.messages) == 2
    assert boom.closed == 1


async def test_builtin_sources_pass() -> None:
    await check_source(lambda: af.from_array(np.arange(1_000), 10))
    counting = CountingSource(1_000)
    await check_source(
        lambda: af.from_iterable(counting, chunk_size=10), progress=lambda: counting.produced
    )
    endless = CountingSource(delay=0.0005)
    await check_source(lambda: af.from_iterable(endless), limit=50)


async def test_builtin_tcp_client_passes() -> None:
    server = src.ReadingsServer()

    async def numbers(stream: Any) -> None:  # "0\n1\n2\n..." to every client, forever
        server.open_connections += 1
        try:
            async with stream:
                for start in itertools.count(0, 100):
                    await stream.send("".join(f"{i}\n" for i in range(start, start + 100)).encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            server.open_connections -= 1

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, numbers)
        checked = await check_source(
            lambda: af.tcp_client("127.0.0.1", port, reconnect=False),
            limit=500,
            released=lambda: server.open_connections == 0,
        )
        tg.cancel_scope.cancel()
    assert checked == ALL_SOURCE_PROPERTIES


# -- the checks fail on broken sinks ------------------------------------------------------


class Grouping(SinkWriter[Any, int]):
    """Sends rows in groups of 64 (to ``sent``); the variants below break it."""

    def __init__(self) -> None:
        self.held: list[np.ndarray] = []
        self.sent = 0
        self.closed = False

    async def write(self, item: Any) -> None:
        raise TypeError("batches only")

    async def write_batch(self, batch: Batch) -> None:
        self.held.append(batch.data)
        while sum(map(len, self.held)) >= 64:
            rows = np.concatenate(self.held)
            self.sent += 64
            self.held = [rows[64:]]

    async def flush(self) -> None:
        self.sent += sum(map(len, self.held))
        self.held = []

    def result(self) -> int:
        return self.sent


class NoFlush(Grouping):
    async def flush(self) -> None:
        pass


class ShortBatchMeansEnd(Grouping):
    """Sends the rest when a short batch comes, taking it for the end: wrong on a stop."""

    async def write_batch(self, batch: Batch) -> None:
        await super().write_batch(batch)
        if len(batch) < 100:
            await super().flush()

    async def flush(self) -> None:
        pass


class CloseTwiceRaises(Grouping):
    async def aclose(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


class SwallowsCancel(Grouping):
    async def write_batch(self, batch: Batch) -> None:
        try:
            await anyio.sleep(0.001)
        except anyio.get_cancelled_exc_class():
            return  # wrong: the cancellation is lost
        await super().write_batch(batch)


class Op(SinkOperator[Any, int]):
    fused = False
    name = "broken"

    def __init__(self, make: Any) -> None:
        self.make = make

    def writer(self, ctx: Context) -> SinkWriter[Any, int]:
        return self.make()  # type: ignore[no-any-return]


def broken(make: Any) -> Any:
    return lambda: af.Sink(Op(make))


async def expect_failure(pattern: str, check: Any) -> None:
    with pytest.raises(AssertionError, match=pattern):
        await check


async def test_a_working_grouping_sink_passes() -> None:
    await check_sink(broken(Grouping), np.arange(1_000))


async def test_a_shared_writer_fails_re_runnable() -> None:
    shared = Grouping()
    await expect_failure(
        r"^re-runnable: writer\(\) returned the same SinkWriter for two runs\. Make a fresh",
        check_sink(broken(lambda: shared), np.arange(1_000)),
    )


async def test_state_kept_in_the_operator_fails_re_runnable() -> None:
    class Counting(Grouping):
        total = 0  # wrong: shared by every writer

        def result(self) -> int:
            Counting.total += self.sent
            return Counting.total

    await expect_failure(
        r"^re-runnable: two runs of one flow gave different results: 1000 then 2000\. Keep",
        check_sink(broken(Counting), np.arange(1_000)),
    )


async def test_no_flush_fails_flush_at_end_of_input() -> None:
    await expect_failure(
        r"^flush at end of input: the sink delivered 960 of the 1000 rows it was given\. "
        r"SinkWriter\.flush\(\)",
        check_sink(broken(NoFlush), np.arange(1_000)),
    )


async def test_a_short_batch_taken_for_the_end_fails_graceful_stop() -> None:
    await expect_failure(
        r"^graceful stop: the source emitted 300 rows before run\.stop\(\) and the sink "
        r"delivered 256\. flush\(\) is also called on a graceful stop",
        check_sink(broken(ShortBatchMeansEnd), np.arange(1_050), batch_rows=100),
    )


async def test_a_second_aclose_raising_fails_idempotent_aclose() -> None:
    await expect_failure(
        r"^idempotent aclose: a second aclose\(\) raised RuntimeError\('already closed'\)",
        check_sink(broken(CloseTwiceRaises), np.arange(1_000)),
    )


async def test_swallowing_cancellation_fails_cancellation() -> None:
    await expect_failure(
        r"^cancellation: write_batch\(\) returned normally although its task was cancelled",
        check_sink(broken(SwallowsCancel), np.arange(1_000)),
    )


async def test_a_task_left_running_fails_cancellation() -> None:
    async with anyio.create_task_group() as outside:

        class Leaks(Grouping):
            async def open(self) -> None:
                outside.start_soon(anyio.sleep_forever)  # wrong: outlives the run

        await expect_failure(
            r"^cancellation: 1 task\(s\) started during the run still running after it ended",
            check_sink(broken(Leaks), np.arange(1_000)),
        )
        outside.cancel_scope.cancel()


# -- the checks fail on broken sources ----------------------------------------------------


class StateInInit(Source):
    """Creates its iterator once, in __init__: the second run finds it exhausted."""

    name = "state_in_init"

    def __init__(self) -> None:
        self.it: Iterator[int] = iter(range(100))

    async def produce(self, out: Outlet, ctx: Context) -> None:
        for i in self.it:
            await out.emit([i])


class StopsOnlyWhenCancelled(Source):
    """Waits for more input without pull_scope(): a graceful stop cannot reach it."""

    name = "ignores_stop"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        await out.emit([1, 2, 3])
        await anyio.sleep_forever()


class SwallowsHardCancel(Source):
    """Returns normally when cancelled during a stop: the cancellation is lost."""

    name = "swallows"

    async def produce(self, out: Outlet, ctx: Context) -> None:
        await out.emit([1, 2])
        try:
            with out.pull_scope():
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            if out.stopping:
                return  # wrong
            raise


class ReadsAhead(Source):
    """A reader task fills an unbounded list whatever the consumer does."""

    name = "reads_ahead"

    def __init__(self) -> None:
        self.read = 0

    async def produce(self, out: Outlet, ctx: Context) -> None:
        items: list[int] = []

        async def reader() -> None:
            for i in itertools.count():
                items.append(i)
                self.read += 1  # progress, over all runs
                await anyio.sleep(0.001)

        error: list[Exception] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            try:
                while not out.stopping:
                    if items:
                        chunk, items[:] = items[:], []
                        await out.emit(chunk)
                    await anyio.sleep(0.001)
            except Exception as exc:  # Closed: raised below, not wrapped in a group
                error.append(exc)
            tg.cancel_scope.cancel()
        if error:
            raise error[0]


async def test_state_in_init_fails_re_runnable() -> None:
    source = StateInInit()
    await expect_failure(
        r"^re-runnable: two runs of one flow gave different output: \[0, 1, 2, .* then \[\]\. "
        r"Make per-run state",
        check_source(lambda: af.Flow(source)),
    )


async def test_a_wait_outside_pull_scope_fails_graceful_stop() -> None:
    await expect_failure(
        r"^graceful stop: the run did not end within 1\.0 s of run\.stop\(\)\. Check "
        r"out\.stopping .* `with out\.pull_scope\(\):`",
        check_source(lambda: af.Flow(StopsOnlyWhenCancelled()), limit=3, seconds=1.0),
    )


async def test_a_source_swallowing_cancellation_fails_cancellation() -> None:
    await expect_failure(
        r"^cancellation: produce\(\) returned normally although its task was cancelled",
        check_source(lambda: af.Flow(SwallowsHardCancel()), limit=2),
    )


async def test_reading_ahead_without_bound_fails_backpressure() -> None:
    source = ReadsAhead()
    await expect_failure(
        r"^backpressure: the source kept reading \(progress \d+ -> \d+\) while its buffer was "
        r"full and nothing was consumed\. Read new input only once",
        check_source(lambda: af.Flow(source), limit=5, progress=lambda: source.read),
    )

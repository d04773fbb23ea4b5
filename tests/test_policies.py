"""Error policies: raise, skip and count, retry with backoff, dead letters; one path for
stages, decoders, sources and late rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import aflow as af
from aflow.codecs.lines import LineTooLongError
from aflow.policies import apply_policy, where
from aflow.stats import StageCounters

pytestmark = pytest.mark.anyio


def parse(text: str) -> float:
    return float(text)


DATA = ["1", "2", "oops", "4", "", "6"]


async def test_skip_drops_only_the_bad_items_and_counts_them() -> None:
    result = await (af.from_iterable(DATA) | af.map(parse, on_error="skip") | af.collect()).run()
    assert result.value == [1.0, 2.0, 4.0, 6.0]
    assert result.statistics.stage("map(parse)").errors == 2


async def test_dead_letter_receives_item_error_and_stage() -> None:
    dead: list[af.FailedItem] = []
    flow = af.from_iterable(DATA) | af.map(parse, on_error=af.dead_letter(dead)) | af.collect()
    result = await flow.run()
    assert result.value == [1.0, 2.0, 4.0, 6.0]
    assert [d.item for d in dead] == ["oops", ""]
    assert all(isinstance(d.error, ValueError) for d in dead)
    assert dead[0].stage == "map(parse)"


def test_dead_letter_refuses_a_sink_at_once() -> None:
    with pytest.raises(TypeError, match=r"dead_letter\(Collect\): give a list .* or a function"):
        af.dead_letter(af.collect())  # type: ignore[arg-type]


async def test_dead_letter_target_may_be_an_async_callable() -> None:
    send, receive = anyio.create_memory_object_stream[af.FailedItem](10)
    flow = af.from_iterable(DATA) | af.map(parse, on_error=af.dead_letter(send.send))
    await flow.run()
    send.close()
    async with receive:
        assert [d.item async for d in receive] == ["oops", ""]


async def test_retry_recovers_from_transient_failures() -> None:
    calls: dict[int, int] = {}

    def flaky(x: int) -> int:
        calls[x] = calls.get(x, 0) + 1
        if x % 3 == 0 and calls[x] < 3:
            raise ConnectionError(f"try again {x}")
        return x * 10

    policy = af.retry(3, backoff=0.001)
    result = await (af.from_iterable(range(7)) | af.map(flaky, on_error=policy)).run()
    assert result.value == [x * 10 for x in range(7)]
    assert calls == {0: 3, 1: 1, 2: 1, 3: 3, 4: 1, 5: 1, 6: 3}
    assert result.statistics.stage("map(flaky)").retries == 6


async def test_retry_gives_up_with_the_last_error_as_cause() -> None:
    def always(x: int) -> int:
        raise ConnectionError("down")

    flow = af.from_iterable([1]) | af.map(always, on_error=af.retry(2, backoff=0.001))
    with pytest.raises(af.RetriesExhaustedError, match="failed 2 times") as info:
        await flow.run()
    assert isinstance(info.value.__cause__, ConnectionError)


async def test_retry_then_dead_letter() -> None:
    dead: list[af.FailedItem] = []

    def always(x: int) -> int:
        raise ConnectionError("down")

    policy = af.retry(2, backoff=0.001, then=af.dead_letter(dead))
    result = await (af.from_iterable([1, 2]) | af.map(always, on_error=policy)).run()
    assert result.value == []
    assert [d.item for d in dead] == [1, 2]


async def test_async_map_with_policy_and_concurrency() -> None:
    async def parse_async(text: str) -> float:
        await anyio.lowlevel.checkpoint()
        return float(text)

    dead: list[af.FailedItem] = []
    flow = af.from_iterable(DATA) | af.map(
        parse_async, concurrency=3, on_error=af.dead_letter(dead)
    )
    result = await flow.run()
    assert result.value == [1.0, 2.0, 4.0, 6.0]
    assert sorted(d.item for d in dead) == ["", "oops"]


async def test_batch_stage_policy_applies_per_batch_with_provenance() -> None:
    dead: list[af.FailedItem] = []

    def check(b: np.ndarray) -> np.ndarray:
        if (b < 0).any():
            raise ValueError("negative reading")
        return b

    data = np.array([1, 2, 3, -4, 5, 6], dtype="f8")
    flow = af.from_array(data, 2, name="meter") | af.map_batches(
        check, on_error=af.dead_letter(dead)
    )
    result = await flow.run()
    np.testing.assert_array_equal(result.value, [1, 2, 5, 6])
    assert str(dead[0].provenance) == "meter rows 2..4"
    np.testing.assert_array_equal(dead[0].item, [3, -4])


async def test_an_error_note_names_the_batch_provenance() -> None:
    def check(b: np.ndarray) -> np.ndarray:
        raise ValueError("bad batch")

    flow = af.from_array(np.arange(4), 2, name="meter") | af.map_batches(check)
    with pytest.raises(ValueError, match="bad batch") as info:
        await flow.run()
    assert "on rows from meter rows 0..2" in info.value.__notes__[0]


def test_retry_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        af.retry(0)
    with pytest.raises(ValueError, match="backoff"):
        af.retry(3, backoff=-1)


# -- one error path: the same policies for decoders, sources and late rows ---------------

READING = np.dtype([("id", "i8"), ("value", "f8")])
OVERLONG = b"1,1.0\n" + b"9" * 40 + b"\n2,2.0\n"  # line 2 is longer than max_line=32


@dataclass
class Case:
    """A bad input through one path, and the failed item it must give."""

    run: Callable[[Path, Any], Awaitable[af.RunStatistics]]
    item: Any
    error: type[Exception]
    provenance: tuple[str, int, int, str]  # source (as {path} or a prefix), start, stop, unit
    count: int = 1


async def decoded(tmp_path: Path, policy: Any) -> af.RunStatistics:
    path = tmp_path / "m.csv"
    path.write_bytes(b"1,1.0\n2,oops\n3,3.0\n")
    flow = af.read_blocks(str(path)) | af.decode_csv(READING, on_error=policy)
    result = await flow.run()
    assert result.value["id"].tolist() == [1, 3]
    return result.statistics


async def read_from_file(tmp_path: Path, policy: Any) -> af.RunStatistics:
    path = tmp_path / "m.csv"
    path.write_bytes(OVERLONG)
    result = await af.read_csv(str(path), READING, max_line=32, on_error=policy).run()
    assert result.value["id"].tolist() == [1, 2]
    return result.statistics


async def read_from_socket(tmp_path: Path, policy: Any) -> af.RunStatistics:
    ports, addresses = anyio.create_memory_object_stream[Any](1)
    server = af.tcp_server(0, max_line=32, on_error=policy, on_listening=ports.send_nowait)
    rows: list[int] = []
    flow = server | af.decode_csv(READING) | af.for_each(lambda b: rows.extend(b["id"]))
    with ports, addresses, anyio.fail_after(5):
        async with flow.open() as run:
            async with await anyio.connect_tcp(*await addresses.receive()) as peer:
                await peer.send(OVERLONG)
            stage = "tcp_server(127.0.0.1:0)"
            while not run.done and not run.statistics().stage(stage).errors:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # (statistics have no event to wait on)
            run.stop()
            result = await run.wait()
    assert rows[:1] == [1]  # (the rest is lost if the over-long line spans two reads)
    return result.statistics


async def late_in_window(tmp_path: Path, policy: Any) -> af.RunStatistics:
    rows = np.array([(0, 1.0), (15, 2.0), (3, 3.0), (4, 4.0)], [("ts", "i8"), ("v", "f8")])
    flow = af.from_array(rows, 2, name="meter") | af.window(10, on="ts", late=policy)
    result = await (flow | af.collect("list")).run()
    assert [w["ts"].tolist() for w in result.value] == [[0], [15]]
    return result.statistics


CASES = {
    "decoder": Case(decoded, b"2,oops\n", af.DecodeError, ("{path}", 2, 3, "line")),
    # an over-long line keeps its first bytes (issue 12), from a file or a socket alike
    "file source": Case(read_from_file, b"9" * 40, LineTooLongError, ("{path}", 2, 3, "line")),
    "socket source": Case(read_from_socket, b"9" * 40, LineTooLongError, ("tcp://", 2, 3, "line")),
    "late rows": Case(
        late_in_window,
        np.array([(3, 3.0), (4, 4.0)], [("ts", "i8"), ("v", "f8")]),
        af.LateDataError,
        ("meter", 2, 4, "row"),
        count=2,
    ),
}


def the_failing_stage(stats: af.RunStatistics) -> af.StageStatistics:
    [stage] = [s for s in stats.stages if s.errors]
    return stage


@pytest.mark.parametrize("path", CASES)
@pytest.mark.parametrize("how", ["dead_letter", "retry_then_dead_letter"])
async def test_every_path_dead_letters_the_same_failed_item(
    tmp_path: Path, path: str, how: str
) -> None:
    case = CASES[path]
    dead: list[af.FailedItem] = []
    policy: Any = af.dead_letter(dead)
    if how == "retry_then_dead_letter":  # bad input fails alike each time: not retried
        policy = af.retry(3, backoff=60, then=policy)
    with anyio.fail_after(10):
        stats = await case.run(tmp_path, policy)
    [failed] = dead
    assert isinstance(failed, af.FailedItem)
    np.testing.assert_array_equal(failed.item, case.item)
    assert type(failed.item) is type(case.item)
    assert isinstance(failed.error, case.error)
    stage = the_failing_stage(stats)
    assert stage.name.endswith(f":{failed.stage}")
    assert (stage.errors, stage.retries) == (case.count, 0)
    prov = failed.provenance
    assert prov is not None
    source, start, stop, unit = case.provenance
    assert prov.source.startswith(source.format(path=tmp_path / "m.csv"))
    assert (prov.start, prov.stop, prov.unit) == (start, stop, unit)
    if isinstance(failed.error, af.DecodeError):  # a bad line: the error says where, too
        assert (failed.error.source, failed.error.line) == (prov.source, prov.start)


@pytest.mark.parametrize("path", CASES)
async def test_every_path_skips_and_counts(tmp_path: Path, path: str) -> None:
    case = CASES[path]
    with anyio.fail_after(10):
        stats = await case.run(tmp_path, "skip")
    assert the_failing_stage(stats).errors == case.count


@pytest.mark.parametrize("path", CASES)
async def test_every_path_raises_the_error_itself(tmp_path: Path, path: str) -> None:
    case = CASES[path]
    with anyio.fail_after(10), pytest.raises(case.error) as info:
        await case.run(tmp_path, "raise")
    assert type(info.value) is case.error


async def test_late_rows_may_still_go_to_a_list_of_arrays() -> None:
    late: list[np.ndarray] = []
    rows = np.array([(0,), (15,), (3,)], [("ts", "i8")])
    flow = af.from_array(rows, 2) | af.window(10, on="ts", late=late) | af.discard()
    result = await flow.run()
    assert [a["ts"].tolist() for a in late] == [[3]]
    assert result.statistics.stage("window(tumbling, event)").errors == 1


async def test_the_applier_fills_a_bad_lines_provenance_from_its_error() -> None:
    counters = StageCounters("s")
    dead: list[af.FailedItem] = []
    error = af.DecodeError("bad", source="f.csv", line=7, offset=70)
    await apply_policy(af.dead_letter(dead), b"x\n", error, "s", None, counters)
    assert dead[0].provenance == af.Provenance("f.csv", 7, 8, "line", 70)
    assert where(ValueError("no place")) is None
    assert counters.errors == 1


@pytest.mark.parametrize("thread", [False, True])
async def test_a_failed_item_names_its_stage_as_the_statistics_do(thread: bool) -> None:
    def check(b: np.ndarray) -> np.ndarray:
        if (b < 0).any():
            raise ValueError("negative reading")
        return b

    dead: list[af.FailedItem] = []
    data = np.array([1.0, -2.0, 3.0, 4.0])
    stage = af.map_batches(check, thread=thread, on_error=af.dead_letter(dead))
    result = await (af.from_array(data, 2) | stage).run()
    [failed] = dead
    assert the_failing_stage(result.statistics).name.endswith(f":{failed.stage}")


class _Reciprocal(af.abc.Operator):
    """A user-written stage offering ``on_error=`` through the public extension API."""

    def __init__(self, on_error: af.abc.ErrorPolicy) -> None:
        self.on_error = af.abc.check_policy(on_error)
        self.name = "reciprocal"

    def start(self) -> af.abc.Processor:
        return _ReciprocalRun(self)


class _ReciprocalRun(af.abc.Processor):
    guarded = True

    def __init__(self, op: _Reciprocal) -> None:
        self.op = op

    async def process_guarded(
        self, msg: af.abc.Message, counters: af.abc.StageCounters
    ) -> list[af.abc.Message]:
        out: list[float] = []
        for x in msg:
            try:
                out.append(1 / x)
            except ZeroDivisionError as exc:
                await af.abc.apply_policy(self.op.on_error, x, exc, self.op.name, None, counters)
        return [out] if out else []


async def test_a_user_stage_applies_policies_like_the_built_ins() -> None:
    dead: list[af.FailedItem] = []
    flow = af.from_iterable([1, 0, 2, 0]) | af.Stage(_Reciprocal(af.dead_letter(dead)))
    result = await (flow | af.collect()).run()
    assert result.value == [1.0, 0.5]
    assert [(d.item, d.stage, type(d.error)) for d in dead] == [
        (0, "reciprocal", ZeroDivisionError)
    ] * 2
    assert result.statistics.stage("reciprocal").dead_lettered == 2
    with pytest.raises(ZeroDivisionError):
        await (af.from_iterable([0]) | af.Stage(_Reciprocal("raise")) | af.collect()).run()
    with pytest.raises(ValueError, match="on_error="):
        _Reciprocal("ignore")  # type: ignore[arg-type]

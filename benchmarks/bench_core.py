"""Core throughput benchmark: one pipeline, four implementations, side by side.

What is measured (wall time with ``time.perf_counter``, best of ``--reps`` rounds, default 3;
each round runs every implementation of a case once, so load elsewhere hits them alike):

1. Batched path. 1,000,000 float64 values (``--quick``: 100,000) come from a generator that
   yields arrays of 4,096 values (drawn once, up front, from a seeded RNG, so drawing them is
   not timed). Pipeline: batch into B rows -> ``x * 1.8 + 32`` -> keep rows ``> 68`` ->
   reduce to (sum, min, max). For B in 1,024 / 8,192 / 65,536 it runs as

   * aflow: ``from_arrays | batch | map_batches | filter_rows | reduce`` via ``flow.run()``;
   * asyncio.Queue: hand-written, one task per stage (source, batch, map, filter, reduce),
     bounded queues of 4 (aflow's default buffer);
   * sync generators: the same stages as chained plain generators;
   * NumPy single-shot: the three NumPy calls on the whole pre-concatenated array (the
     physical limit: no per-batch overhead at all; the concatenation is not timed).

2. Element-wise path. 200,000 Python floats (``--quick``: 20,000) from a generator ->
   ``map`` -> ``filter`` -> ``reduce`` to a sum, through aflow
   (``from_iterable | map | filter | reduce``), a hand-written asyncio.Queue pipeline with
   one task per stage passing single elements, the same passing chunks of 256 elements
   (aflow's default chunk size, so the fairest hand-written rival), and sync generators.

3. Per-batch overhead. 50,000 one-row batches (``--quick``: 5,000) through 0 or 3 extra
   ``af.buffer(4)`` stages (each one a task boundary: a channel hop) and through 0 or 3
   fused ``af.map_batches`` stages; the difference, divided by batches x stages, is the cost
   of one hop (one fused stage) per batch. An asyncio.Queue relay is measured the same way
   for reference.

Every implementation must give the same results (``np.isclose``), else the script exits
with status 1. The targets at the end are informational: they do not change the exit code,
and with ``--quick`` they are printed without a verdict.

Ratios in the tables are time / reference time ("x numpy", "x aflow"): below 1 is faster.

Run: ``python benchmarks/bench_core.py`` (under a minute) or ``--quick`` (a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import math
import operator
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

import aflow as af

SEED = 20240601
SOURCE_CHUNK = 4_096
BATCH_SIZES = (1_024, 8_192, 65_536)
QUEUE_SIZE = 4
ELEMENT_CHUNK = 256
THRESHOLD = 68.0  # degrees Fahrenheit: keeps roughly half of the rows
HOPS = 3

TARGET_HOP_US = 20.0
TARGET_NUMPY_RATIO = 1.3

Stats = tuple[float, float, float]
EMPTY_STATS: Stats = (0.0, math.inf, -math.inf)
_END: Any = object()
Queue = asyncio.Queue[Any]
StageTask = Callable[[Queue, Queue], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Sizes:
    rows: int
    elements: int
    tiny_batches: int


@dataclass(frozen=True)
class Impl:
    """One implementation: ``fn`` is a plain function, or a coroutine function."""

    label: str
    fn: Callable[[], Any]
    is_async: bool = False


@dataclass(frozen=True)
class Timing:
    label: str
    seconds: float
    result: Any


# -- the work itself, shared by every implementation ----------------------------------------


def to_fahrenheit(x: Any) -> Any:
    """The map step: works on an array and on a Python float alike."""
    return x * 1.8 + 32.0


def is_warm(x: Any) -> Any:
    """The filter step: a boolean mask for an array, a bool for a float."""
    return x > THRESHOLD


def fold_stats(acc: Stats, batch: np.ndarray) -> Stats:
    """The reduce step for batches: running (sum, min, max)."""
    return (
        acc[0] + float(batch.sum()),
        min(acc[1], float(batch.min())),
        max(acc[2], float(batch.max())),
    )


def keep_rows(batch: np.ndarray) -> np.ndarray:
    kept: np.ndarray = batch[is_warm(batch)]
    return kept


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


class Rebatcher:
    """Cuts a stream of arrays into arrays of ``size`` rows (the last may be shorter)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[np.ndarray] = []
        self.rows = 0

    def add(self, arr: np.ndarray) -> list[np.ndarray]:
        self.parts.append(arr)
        self.rows += len(arr)
        if self.rows < self.size:
            return []
        data = self._take_all()
        cut = len(data) - len(data) % self.size
        out = [data[i : i + self.size] for i in range(0, cut, self.size)]
        if cut < len(data):
            self.parts, self.rows = [data[cut:]], len(data) - cut
        return out

    def flush(self) -> list[np.ndarray]:
        return [self._take_all()] if self.rows else []

    def _take_all(self) -> np.ndarray:
        parts = self.parts
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.parts, self.rows = [], 0
        return data


# -- data ----------------------------------------------------------------------------------


def make_chunks(rows: int) -> list[np.ndarray]:
    """The source data: arrays of ``SOURCE_CHUNK`` Celsius readings, seeded."""
    rng = np.random.default_rng(SEED)
    values = rng.normal(20.0, 10.0, rows)
    return [values[i : i + SOURCE_CHUNK].copy() for i in range(0, rows, SOURCE_CHUNK)]


def generator_of(items: list[Any]) -> Callable[[], Iterator[Any]]:
    """A generator function over ``items`` (re-callable, so a flow can run many times)."""

    def gen() -> Iterator[Any]:
        yield from items

    return gen


# -- timing --------------------------------------------------------------------------------


def time_once(impl: Impl) -> tuple[float, Any]:
    """Wall time of one call of ``impl`` (a coroutine is timed inside a fresh event loop,
    so creating the loop is not counted) and its result."""
    if impl.is_async:
        return asyncio.run(_time_coroutine(impl.fn))
    gc.collect()
    t0 = time.perf_counter()
    result = impl.fn()
    return time.perf_counter() - t0, result


async def _time_coroutine(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = await fn()
    return time.perf_counter() - t0, result


def race(impls: list[Impl], reps: int) -> list[Timing]:
    """Best time of each implementation over ``reps`` rounds. Each round runs every
    implementation once, so a burst of load elsewhere on the machine hits them alike."""
    best = [math.inf] * len(impls)
    results: list[Any] = [None] * len(impls)
    for _ in range(reps):
        for i, impl in enumerate(impls):
            seconds, results[i] = time_once(impl)
            best[i] = min(best[i], seconds)
    return [Timing(impl.label, t, r) for impl, t, r in zip(impls, best, results, strict=True)]


# -- hand-written asyncio.Queue pipeline ---------------------------------------------------


async def feed(items: Iterable[Any], out: asyncio.Queue[Any]) -> None:
    for item in items:
        await out.put(item)
    await out.put(_END)


async def relay(
    inbox: asyncio.Queue[Any], out: asyncio.Queue[Any], fn: Callable[[Any], Iterable[Any]]
) -> None:
    """One stage task: ``fn`` turns each input into zero or more outputs."""
    while (item := await inbox.get()) is not _END:
        for o in fn(item):
            await out.put(o)
    await out.put(_END)


async def batch_task(inbox: asyncio.Queue[Any], out: asyncio.Queue[Any], size: int) -> None:
    rebatcher = Rebatcher(size)
    while (arr := await inbox.get()) is not _END:
        for b in rebatcher.add(arr):
            await out.put(b)
    for b in rebatcher.flush():
        await out.put(b)
    await out.put(_END)


async def fold(inbox: asyncio.Queue[Any], fn: Callable[[Any, Any], Any], acc: Any) -> Any:
    while (item := await inbox.get()) is not _END:
        acc = fn(acc, item)
    return acc


async def queue_pipeline(
    items: Iterable[Any],
    stages: Sequence[StageTask],
    fn: Callable[[Any, Any], Any],
    initial: Any,
) -> Any:
    """Source task -> one task per stage -> fold, with bounded queues in between."""
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(QUEUE_SIZE) for _ in range(len(stages) + 1)]
    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed(items, queues[0]))
        for stage, inbox, out in zip(stages, queues, queues[1:], strict=False):
            tg.create_task(stage(inbox, out))
        folded = tg.create_task(fold(queues[-1], fn, initial))
    return folded.result()


def map_stage(fn: Callable[[Any], Any]) -> StageTask:
    return lambda inbox, out: relay(inbox, out, lambda x: (fn(x),))


def filter_stage(pred: Callable[[Any], Any]) -> StageTask:
    return lambda inbox, out: relay(inbox, out, lambda x: (x,) if pred(x) else ())


# -- 1. batched path -----------------------------------------------------------------------


def batched_aflow(gen: Callable[[], Iterator[np.ndarray]], size: int) -> af.SinkFlow[Stats]:
    return (
        af.from_arrays(gen)
        | af.batch(size)
        | af.map_batches(to_fahrenheit)
        | af.filter_rows(is_warm)
        | af.reduce(fold_stats, EMPTY_STATS)
    )


async def run_aflow(flow: af.SinkFlow[Any]) -> Any:
    return (await flow.run()).value


def batched_queue(gen: Callable[[], Iterator[np.ndarray]], size: int) -> Awaitable[Stats]:
    def kept(b: np.ndarray) -> tuple[np.ndarray, ...]:
        k = keep_rows(b)
        return (k,) if len(k) else ()

    stages = [
        lambda i, o: batch_task(i, o, size),
        map_stage(to_fahrenheit),
        lambda i, o: relay(i, o, kept),
    ]
    return queue_pipeline(gen(), stages, fold_stats, EMPTY_STATS)


def rebatched(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    rebatcher = Rebatcher(size)
    for arr in arrays:
        yield from rebatcher.add(arr)
    yield from rebatcher.flush()


def batched_sync(gen: Callable[[], Iterator[np.ndarray]], size: int) -> Stats:
    mapped = (to_fahrenheit(b) for b in rebatched(gen(), size))
    kept = (k for k in (keep_rows(b) for b in mapped) if len(k))
    acc = EMPTY_STATS
    for b in kept:
        acc = fold_stats(acc, b)
    return acc


def batched_numpy(values: np.ndarray) -> Stats:
    y = to_fahrenheit(values)
    y = y[is_warm(y)]
    return float(y.sum()), float(y.min()), float(y.max())


def bench_batched(sizes: Sizes, reps: int) -> list[tuple[int, list[Timing]]]:
    chunks = make_chunks(sizes.rows)
    gen = generator_of(chunks)
    values = np.concatenate(chunks)
    groups = []
    for size in BATCH_SIZES:
        flow = batched_aflow(gen, size)
        impls = [
            Impl("aflow", functools.partial(run_aflow, flow), is_async=True),
            Impl("asyncio.Queue", functools.partial(batched_queue, gen, size), is_async=True),
            Impl("sync generators", functools.partial(batched_sync, gen, size)),
            Impl("numpy single-shot", functools.partial(batched_numpy, values)),
        ]
        timings = race(impls, reps)
        check_same(f"batched B={size:,}", timings)
        groups.append((size, timings))
    return groups


# -- 2. element-wise path ------------------------------------------------------------------


def element_aflow(gen: Callable[[], Iterator[float]]) -> af.SinkFlow[float]:
    return (
        af.from_iterable(gen)
        | af.map(to_fahrenheit)
        | af.filter(is_warm)
        | af.reduce(operator.add, 0.0)
    )


def element_queue(gen: Callable[[], Iterator[float]]) -> Awaitable[float]:
    stages = [map_stage(to_fahrenheit), filter_stage(is_warm)]
    return queue_pipeline(gen(), stages, operator.add, 0.0)


def chunked(items: Iterable[float], size: int) -> Iterator[list[float]]:
    chunk: list[float] = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def element_queue_chunked(gen: Callable[[], Iterator[float]]) -> Awaitable[float]:
    def map_chunk(c: list[float]) -> tuple[list[float]]:
        return ([to_fahrenheit(x) for x in c],)

    def filter_chunk(c: list[float]) -> tuple[list[float], ...]:
        kept = [x for x in c if is_warm(x)]
        return (kept,) if kept else ()

    def add_chunk(acc: float, c: list[float]) -> float:
        return functools.reduce(operator.add, c, acc)

    stages = [
        lambda i, o: relay(i, o, map_chunk),
        lambda i, o: relay(i, o, filter_chunk),
    ]
    return queue_pipeline(chunked(gen(), ELEMENT_CHUNK), stages, add_chunk, 0.0)


def element_sync(gen: Callable[[], Iterator[float]]) -> float:
    mapped = (to_fahrenheit(x) for x in gen())
    return functools.reduce(operator.add, (x for x in mapped if is_warm(x)), 0.0)


def bench_elements(sizes: Sizes, reps: int) -> list[Timing]:
    floats = make_chunks(sizes.elements)
    gen = generator_of(np.concatenate(floats).tolist())
    flow = element_aflow(gen)
    impls = [
        Impl("aflow", lambda: run_aflow(flow), is_async=True),
        Impl("asyncio.Queue per element", lambda: element_queue(gen), is_async=True),
        Impl(
            f"asyncio.Queue chunks of {ELEMENT_CHUNK}",
            lambda: element_queue_chunked(gen),
            is_async=True,
        ),
        Impl("sync generators", lambda: element_sync(gen)),
    ]
    timings = race(impls, reps)
    check_same("element-wise", timings)
    return timings


# -- 3. per-batch overhead of one stage ----------------------------------------------------


def tiny_flow(
    gen: Callable[[], Iterator[np.ndarray]], stage: Callable[[], af.Stage[Any, Any]], n: int
) -> af.SinkFlow[int]:
    flow: af.Flow[Any] = af.from_arrays(gen)
    for _ in range(n):
        flow = flow | stage()
    return flow | af.discard()


async def queue_relay_chain(items: list[np.ndarray], hops: int) -> int:
    """Count items passed through ``hops`` asyncio.Queue relay tasks (0: a plain loop)."""
    if hops == 0:
        return sum(len(x) for x in items)
    stages = [map_stage(identity)] * hops
    rows: int = await queue_pipeline(items, stages, lambda acc, x: acc + len(x), 0)
    return rows


def overhead_us(t_base: float, t_more: float, batches: int) -> float:
    return (t_more - t_base) / (batches * HOPS) * 1e6


def bench_overhead(sizes: Sizes, reps: int) -> list[tuple[str, float, float, float]]:
    """Rows: (label, seconds with 0 extra stages, with ``HOPS``, us per batch per stage)."""
    n = sizes.tiny_batches
    tiny = [np.array([float(i)]) for i in range(n)]
    gen = generator_of(tiny)
    flows = [tiny_flow(gen, buffer4, 0), tiny_flow(gen, buffer4, HOPS), tiny_flow(gen, fused, HOPS)]
    impls = [Impl(repr(f), functools.partial(run_aflow, f), is_async=True) for f in flows]
    impls += [
        Impl(f"{k} queue relays", functools.partial(queue_relay_chain, tiny, k), is_async=True)
        for k in (0, HOPS)
    ]
    timings = race(impls, reps)
    for t in timings:
        if t.result != n:
            fail(f"overhead {t.label}: {t.result} rows, expected {n}")
    base, buf, fus, qbase, qrelay = (t.seconds for t in timings)
    return [
        ("aflow af.buffer(4) hop", base, buf, overhead_us(base, buf, n)),
        ("aflow fused map_batches", base, fus, overhead_us(base, fus, n)),
        ("asyncio.Queue relay hop", qbase, qrelay, overhead_us(qbase, qrelay, n)),
    ]


def buffer4() -> af.Stage[Any, Any]:
    return af.buffer(4)


def fused() -> af.Stage[Any, Any]:
    return af.map_batches(identity)


# -- checking and reporting ----------------------------------------------------------------


def fail(message: str) -> NoReturn:
    sys.exit(f"RESULT MISMATCH: {message}")


def check_same(case: str, timings: list[Timing]) -> None:
    """Every implementation must agree with the first one (sum, min, max or just sum)."""
    ref = np.atleast_1d(np.asarray(timings[0].result, dtype=float))
    for t in timings[1:]:
        got = np.atleast_1d(np.asarray(t.result, dtype=float))
        if got.shape != ref.shape or not np.isclose(got, ref, rtol=1e-9, atol=0).all():
            fail(f"{case}: {t.label} gave {t.result!r}, {timings[0].label} gave {ref.tolist()!r}")


def print_batched(groups: list[tuple[int, list[Timing]]], rows: int, reps: int) -> None:
    print(
        f"\n1. Batched: {rows:,} float64 rows in source arrays of {SOURCE_CHUNK:,}, "
        f"batch(B) -> map_batches -> filter_rows -> reduce(sum, min, max); best of {reps}"
    )
    head = (
        f"{'B':>7}  {'implementation':<20} {'ms':>9} {'Mrows/s':>9} {'x numpy':>8} {'x aflow':>8}"
    )
    print(head)
    print("-" * len(head))
    for size, timings in groups:
        numpy_s, aflow_s = timings[-1].seconds, timings[0].seconds
        for i, t in enumerate(timings):
            b = f"{size:,}" if i == 0 else ""
            print(
                f"{b:>7}  {t.label:<20} {t.seconds * 1e3:>9.2f} {rows / t.seconds / 1e6:>9.1f} "
                f"{t.seconds / numpy_s:>8.2f} {t.seconds / aflow_s:>8.2f}"
            )
    total = groups[0][1][0].result
    print(f"result: sum={total[0]:.6g} min={total[1]:.6g} max={total[2]:.6g} (all agree)")


def print_elements(timings: list[Timing], n: int, reps: int) -> None:
    print(f"\n2. Element-wise: {n:,} Python floats, map -> filter -> reduce(sum); best of {reps}")
    head = f"{'implementation':<29} {'ms':>9} {'Melem/s':>9} {'x aflow':>8}"
    print(head)
    print("-" * len(head))
    aflow_s = timings[0].seconds
    for t in timings:
        print(
            f"{t.label:<29} {t.seconds * 1e3:>9.2f} {n / t.seconds / 1e6:>9.2f} "
            f"{t.seconds / aflow_s:>8.2f}"
        )
    print(f"result: sum={timings[0].result:.6g} (all agree)")


def print_overhead(rows: list[tuple[str, float, float, float]], n: int, reps: int) -> None:
    print(
        f"\n3. Per-batch overhead: {n:,} one-row batches, 0 vs {HOPS} extra stages; best of {reps}"
    )
    head = f"{'stage':<25} {'0 stages ms':>12} {f'{HOPS} stages ms':>12} {'us/batch/stage':>15}"
    print(head)
    print("-" * len(head))
    for label, t0, t3, us in rows:
        print(f"{label:<25} {t0 * 1e3:>12.2f} {t3 * 1e3:>12.2f} {us:>15.2f}")


def print_targets(
    groups: list[tuple[int, list[Timing]]],
    elements: list[Timing],
    overhead: list[tuple[str, float, float, float]],
    *,
    judged: bool = True,
) -> None:
    hop_us = overhead[0][3]
    big = dict(groups)[max(BATCH_SIZES)]
    numpy_ratio = big[0].seconds / big[-1].seconds
    per_element, per_chunk = elements[1].seconds, elements[2].seconds
    checks = [
        (
            f"one stage hop < {TARGET_HOP_US:g} us per batch",
            f"{hop_us:.2f} us",
            hop_us < TARGET_HOP_US,
        ),
        (
            f"aflow with B={max(BATCH_SIZES):,} within {TARGET_NUMPY_RATIO}x of numpy",
            f"{numpy_ratio:.2f}x",
            numpy_ratio <= TARGET_NUMPY_RATIO,
        ),
        (
            "element-wise aflow >= asyncio.Queue per element",
            f"{per_element / elements[0].seconds:.2f}x faster",
            elements[0].seconds <= per_element,
        ),
        (
            f"element-wise aflow >= asyncio.Queue chunks of {ELEMENT_CHUNK} (extra)",
            f"{per_chunk / elements[0].seconds:.2f}x faster",
            elements[0].seconds <= per_chunk,
        ),
    ]
    if not judged:
        print("\nTargets: not judged with --quick (a tenth of the data, so each run's fixed")
        print("costs weigh ten times more); the figures, for the record:")
    else:
        print("\nTargets (informational)")
    for name, value, ok in checks:
        verdict = ("PASS" if ok else "FAIL") if judged else "  - "
        print(f"  {verdict}  {name:<58} {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x less data (CI smoke run)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; the best counts")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    scale = 10 if args.quick else 1
    sizes = Sizes(1_000_000 // scale, 200_000 // scale, 50_000 // scale)
    print(
        f"aflow {af.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}"
        f"{' (quick)' if args.quick else ''}; ratios are time / reference time (< 1 = faster)"
    )
    groups = bench_batched(sizes, args.reps)
    print_batched(groups, sizes.rows, args.reps)
    elements = bench_elements(sizes, args.reps)
    print_elements(elements, sizes.elements, args.reps)
    overhead = bench_overhead(sizes, args.reps)
    print_overhead(overhead, sizes.tiny_batches, args.reps)
    print_targets(groups, elements, overhead, judged=not args.quick)


if __name__ == "__main__":
    main()

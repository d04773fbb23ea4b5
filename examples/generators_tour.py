"""The classic generator examples, written as aflow flows, and what changes.

* Fibonacci: an infinite generator ends with ``| af.take(n)``, which also closes it. aflow
  pulls a sync generator in chunks (``chunk_size``, 256 by default), so a generator can run
  ahead of ``take``; ``chunk_size=1`` makes it as lazy as a plain ``islice``.
* Primes: an infinite incremental sieve, cut with ``| af.take_while(...)``.
* Squares: map/filter on elements, then ``af.batch`` turns them into NumPy arrays and
  ``af.map_batches`` makes one vectorized call per batch.
* ``yield from``: ``af.concat`` runs sub-flows one after the other; each may have stages.
* Re-running: a plain generator is exhausted after one pass; a flow built from a generator
  *function* runs again from scratch, while one built from a generator *object* raises
  ``SourceReusedError`` on its second run instead of silently yielding nothing.
* ``af.merge`` reads two async generators concurrently, interleaving items as they arrive.

Run ``python examples/generators_tour.py``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial

import anyio
import numpy as np

import aflow as af


def fibonacci() -> Iterator[int]:
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


class CountCalls:
    """Wraps a generator function and counts the values it produced (to see read-ahead)."""

    def __init__(self, gen_fn: Callable[[], Iterator[int]]) -> None:
        self.gen_fn = gen_fn
        self.produced = 0

    def __call__(self) -> Iterator[int]:
        for value in self.gen_fn():
            self.produced += 1
            yield value


def primes() -> Iterator[int]:
    """Incremental sieve of Eratosthenes: infinite, memory grows with the primes found."""
    composites: dict[int, list[int]] = {}
    for n in itertools.count(2):
        factors = composites.pop(n, None)
        if factors is None:
            composites[n * n] = [n]
            yield n
        else:
            for p in factors:
                composites.setdefault(n + p, []).append(p)


def squares_up_to(n: int) -> Iterator[int]:
    for i in range(n):
        yield i * i


def section(title: str) -> None:
    print(f"\n== {title}")


def tour_fibonacci() -> None:
    section("Fibonacci: infinite generator | take")
    plain = list(itertools.islice(fibonacci(), 10))
    eager, lazy = CountCalls(fibonacci), CountCalls(fibonacci)
    flowed = af.run(af.from_iterable(eager) | af.take(10)).value
    af.run(af.from_iterable(lazy, chunk_size=1) | af.take(10))
    assert flowed == plain
    print(f"fibonacci | take(10): {flowed}")
    print(
        f"values the generator produced: {eager.produced} with chunk_size=256 (read-ahead), "
        f"{lazy.produced} with chunk_size=1 (as lazy as islice)"
    )


def tour_primes() -> None:
    section("Primes: infinite sieve | take_while / take")
    below_100 = af.run(af.from_iterable(primes) | af.take_while(lambda p: p < 100)).value
    first_10 = af.run(af.from_iterable(primes) | af.take(10)).value
    assert below_100 == list(itertools.takewhile(lambda p: p < 100, primes()))
    print(f"primes | take_while(p < 100): {len(below_100)} primes, last {below_100[-1]}")
    print(f"primes | take(10): {first_10}")


def tour_squares() -> None:
    section("Squares: map / filter, then batch into NumPy arrays and map_batches")
    n = 10_000
    plain_sum = sum(x * x for x in range(n) if x % 2 == 0)
    # A flow is a description: build it once, end it differently below.
    squares = (
        af.from_iterable(range(n))
        | af.filter(lambda x: x % 2 == 0)
        | af.map(lambda x: x * x)
        | af.batch(1024, dtype=np.int64)  # elements -> int64 arrays of up to 1024 rows
    )
    batches = af.run(squares | af.collect("list")).value
    roots = af.run(squares | af.map_batches(np.sqrt)).value  # one NumPy call per batch
    total = sum(int(b.sum()) for b in batches)
    assert total == plain_sum
    assert np.array_equal(roots, np.arange(0, n, 2))
    print(
        f"squares of the even numbers below {n:,}: {len(batches)} {batches[0].dtype} batches "
        f"of {[len(b) for b in batches]} rows, sum {total:,} (= the generator expression)"
    )
    print(f"same flow | map_batches(np.sqrt): {roots.dtype} rows, first 5 {roots[:5].tolist()}")


def tour_yield_from() -> None:
    section("yield from: af.concat of sub-flows")

    def plain() -> Iterator[object]:
        yield from "abc"
        yield from itertools.islice(fibonacci(), 5)
        yield from range(3)

    flow = af.concat(
        af.from_iterable("abc"),
        af.from_iterable(fibonacci) | af.take(5),  # a sub-flow with its own stage
        af.from_iterable(range(3)),
    )
    flowed = af.run(flow).value
    assert flowed == list(plain())
    print(f"concat(letters, fibonacci | take(5), range(3)): {flowed}")


def tour_rerun() -> None:
    section("Re-running: generator objects are single-use, generator functions are not")
    gen = squares_up_to(5)
    first, second = list(gen), list(gen)
    print(f"plain generator: first pass {first}, second pass {second} (exhausted)")

    flow = af.from_iterable(partial(squares_up_to, 5)) | af.map(lambda x: x + 1)
    run1, run2 = af.run(flow).value, af.run(flow).value
    assert run1 == run2 == [1, 2, 5, 10, 17]
    print(f"flow from a generator function: run 1 {run1} == run 2 {run2}")

    once = af.from_iterable(squares_up_to(5))
    af.run(once)
    try:
        af.run(once)
    except af.SourceReusedError:
        print("flow from a generator object: run 1 ok, run 2 raises SourceReusedError")
    else:  # pragma: no cover - would be an aflow bug
        raise AssertionError("a second run of a generator object should raise")


async def ticks(name: str, count: int, interval: float) -> AsyncIterator[str]:
    for i in range(count):
        await anyio.sleep(interval)
        yield f"{name}{i}"


async def merged_arrivals() -> tuple[list[str], float]:
    flow = af.merge(
        af.from_iterable(partial(ticks, "a", 5, 0.04)),
        af.from_iterable(partial(ticks, "b", 5, 0.05)),
    )
    t0 = time.perf_counter()
    async with flow.open() as run:
        items = [item async for item in run]  # items as they arrive, from either source
    return items, time.perf_counter() - t0


def tour_merge() -> None:
    section("merge: two async generators read concurrently")
    items, elapsed = anyio.run(merged_arrivals)
    assert sorted(items) == [f"{n}{i}" for n in "ab" for i in range(5)]
    print(f"merge(a every 40 ms, b every 50 ms): {' '.join(items)}")
    print(f"10 items in {elapsed:.2f} s (one after the other would take 0.45 s)")


def main() -> None:
    tour_fibonacci()
    tour_primes()
    tour_squares()
    tour_yield_from()
    tour_rerun()
    tour_merge()
    print("\nall sections ok")


if __name__ == "__main__":
    argparse.ArgumentParser(  # no options; --help describes the example without running it
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()

"""What the conformance checks share: failures that say what to do, leak and
cancellation probes, tolerant comparisons."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import numpy as np

from ..abc import (
    Batch,
)

T = TypeVar("T")


def fail(prop: str, what: str, todo: str) -> AssertionError:
    return AssertionError(f"{prop}: {what}. {todo}")


def running_tasks() -> set[object]:
    """Tasks alive in this event loop (asyncio) or under the root task (trio)."""
    try:
        return set(asyncio.all_tasks())
    except RuntimeError:  # not asyncio
        import trio

        def walk(task: Any) -> Iterator[object]:
            yield task
            for nursery in task.child_nurseries:
                for child in nursery.child_tasks:
                    yield from walk(child)

        return set(walk(trio.lowlevel.current_root_task()))


async def check_no_leak(prop: str, before: set[object]) -> None:
    """Fail unless every task started since ``before`` has ended within a second."""
    with anyio.move_on_after(1.0):
        await wait_for(lambda: not running_tasks() - before)
    extra = running_tasks() - before
    if extra:
        raise fail(
            prop,
            f"{len(extra)} task(s) started during the run still running after it ended",
            "Start tasks only in a task group that you close before returning (or with "
            "ctx.start_soon, in the run's own), never with a bare create_task or in a task "
            "group from outside the run.",
        )


def cancelled() -> bool:
    return anyio.current_effective_deadline() == -math.inf


def equal(a: Any, b: Any) -> bool:
    """Deep equality that compares arrays element-wise (NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        try:
            return bool(np.array_equal(a, b, equal_nan=True))
        except TypeError:  # structured or object arrays
            return bool(np.array_equal(a, b))
    if isinstance(a, Batch) and isinstance(b, Batch):
        return equal(a.data, b.data) and (a.reason, a.provenance) == (b.reason, b.provenance)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    try:
        return bool(a == b)
    except Exception:
        return False


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- sinks --


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state of code under test, which sets no event we could await)."""
    while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await anyio.sleep(0.002)


# -- sources --

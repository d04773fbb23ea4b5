"""Helpers shared by the tests: bring a run to a known state without wall-clock sleeps.

A test holds a consumer (an ``anyio.Event``, or a :class:`Turnstile` letting items through
one by one), then :func:`settle` waits until the flow has gone as far as it can: every
other task waits and the source counts no more progress. What the test then reads (how far
the producer got, the buffers' high-water marks) is the same on every run and machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

import aflow


async def settle(progress: Callable[[], object] = lambda: None) -> None:
    """Return once every other task waits and ``progress()`` is the same before and after.

    ``progress`` reads something that moves while the flow works (``lambda: src.produced``);
    it matters when a task waits for a worker thread, which counts as waiting.
    """
    with anyio.fail_after(5):
        while True:
            before = progress()
            await all_tasks_blocked()
            if progress() == before:
                return


async def all_tasks_blocked() -> None:
    """``anyio.wait_all_tasks_blocked()``, without its 0.1 s naps between checks on asyncio."""
    try:
        this = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        await anyio.wait_all_tasks_blocked()
        return
    while True:
        await asyncio.sleep(0)
        waiting = (
            task is this or (task._fut_waiter is not None and not task._fut_waiter.done())  # type: ignore[attr-defined]
            for task in asyncio.all_tasks()
        )
        if all(waiting):
            return


class Turnstile:
    """Holds a consumer until the test lets items through.

    The consumer awaits :meth:`through` once per item; the test calls :meth:`allow` to let
    ``n`` more through, or :meth:`open` to let everything through from then on.
    """

    def __init__(self) -> None:
        self.passed = 0
        self._allowed = 0
        self._open = False
        self._changed = anyio.Event()

    async def through(self) -> None:
        while not self._open and not self._allowed:
            await self._changed.wait()
        if not self._open:
            self._allowed -= 1
        self.passed += 1

    def allow(self, n: int = 1) -> None:
        self._allowed += n
        self._wake()

    def open(self) -> None:
        self._open = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def idle() -> AsyncIterator[int]:
    """A source that yields 1 and 2, then waits forever: it ends only if stopped."""

    async def gen() -> AsyncIterator[int]:
        yield 1
        yield 2
        await anyio.sleep_forever()

    return gen()


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a Python subprocess: it imports the aflow under test (the one
    this process imported), not whichever one is installed, plus ``extra`` variables."""
    root = str(Path(aflow.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *([path] if path else [])]), **extra}


@asynccontextmanager
async def serving(make: Callable[[Any], Any], **options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """Open the flow ``make(on_listening)`` (a socket server) with ``flow.open(**options)``;
    yield the run and the bound address."""
    tx, rx = anyio.create_memory_object_stream[Any](4)
    with tx, rx:
        async with make(tx.send_nowait).open(**options) as run:
            with anyio.fail_after(5):
                address = await rx.receive()
            yield run, address


def connect_and_reset(address: tuple[str, int], payload: bytes = b"", delay: float = 0.0) -> None:
    """A hostile client: connects, maybe sends, then resets (RST, not FIN) the connection."""
    with socket.create_connection(address) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if payload:
            s.sendall(payload)
        if delay:
            time.sleep(delay)

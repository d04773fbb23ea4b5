"""A stage's own worker threads, for work whose allocators keep state per thread.

``anyio.to_thread`` runs every call on the run's shared threads, so the threads that
read files also decode blocks: each of them ends up holding what pyarrow's and malloc's
allocators keep per thread. A decoding stage with ``threads=2`` then ran its blocks on
three or four threads (a 2 M line log: 10-12 MB more peak RSS than on two). Here the
stage's calls run on at most ``n`` threads of its own, started as calls come and ended
with the run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["OwnThreads"]

T = TypeVar("T")


class OwnThreads:
    """At most ``n`` worker threads, each running one call at a time.

    The caller bounds how many calls run at once (at most ``n``: each call waits for
    a free thread otherwise). Use as an async context manager: leaving it ends the
    threads, which are idle by then (every call waited for its own result).
    """

    def __init__(self, n: int, name: str) -> None:
        self.n = max(1, n)
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    async def __aenter__(self) -> OwnThreads:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()  # idle: ends at once
        self._threads.clear()

    async def run_sync(self, func: Callable[[Any], T], arg: Any) -> T:
        """``func(arg)`` in one of the threads. Blocks the calling task, not the event
        loop; a cancelled caller still waits for the call to end (it cannot be stopped),
        then the cancellation is raised, as ``anyio.to_thread.run_sync`` does."""
        wake = _waker()
        done = anyio.Event()
        outcome: list[tuple[Any, BaseException | None]] = []

        def job() -> None:
            try:
                outcome.append((func(arg), None))
            except BaseException as exc:  # handed to the caller
                outcome.append((None, exc))
            wake(done.set)

        if len(self._threads) < self.n:
            thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._jobs.put(job)
        with anyio.CancelScope(shield=True):
            await done.wait()
        await anyio.lowlevel.checkpoint_if_cancelled()
        value, error = outcome[0]
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


def _waker() -> Callable[[Callable[[], None]], None]:
    """How a worker thread has the event loop call a function, without waiting for it
    (the thread takes its next job at once): asyncio's ``call_soon_threadsafe``, trio's
    ``run_sync_soon``; else anyio's ``from_thread.run_sync``, which waits."""
    token = anyio.lowlevel.current_token()
    native = getattr(token, "native_token", None)
    for name in ("call_soon_threadsafe", "run_sync_soon"):
        soon = getattr(native, name, None)
        if soon is not None:
            return soon  # type: ignore[no-any-return]
    return lambda func: anyio.from_thread.run_sync(func, token=token)

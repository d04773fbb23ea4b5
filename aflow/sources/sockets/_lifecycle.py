"""The life of a server's connections: what users see of it (:class:`ConnectionEvent`)
and what a connection's task counts while it lasts."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import anyio

__all__ = ["CloseReason", "ConnectionEvent", "OnConnection", "_Tally"]

CloseReason: TypeAlias = Literal["eof", "broken", "idle", "slow", "evicted", "overlong", "stopped"]
"""Why a connection ended:

* ``"eof"``: the peer closed it;
* ``"broken"``: it broke (the peer reset it, the network failed);
* ``"idle"``: nothing arrived for ``idle_timeout`` seconds;
* ``"slow"``: bytes arrived but no complete line or frame for ``line_timeout`` seconds
  (a slow or "slowloris" client);
* ``"evicted"``: every slot was taken and a new client came; this connection had gone
  longest without a complete line or frame;
* ``"overlong"``: a line or frame passed ``max_line``;
* ``"stopped"``: the run stopped (or the server ended).
"""


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A connection of a stream server opened or closed (see ``on_connection`` of
    :func:`~aflow.tcp_server`).

    Attributes:
        kind: ``"opened"`` or ``"closed"``.
        peer: the client, as provenance names it (``tcp://127.0.0.1:53211``,
            ``unix://<path>#3``).
        number: the connection's number in the run, from 1.
        bytes: bytes read from it so far.
        items: lines, frames or records handed on from it.
        errors: its bad input: over-long lines or frames, an unfinished one at the end.
        seconds: how long it has been open.
        reason: why it closed (a :data:`CloseReason`); ``None`` when it opened.
    """

    kind: Literal["opened", "closed"]
    peer: str
    number: int
    bytes: int = 0
    items: int = 0
    errors: int = 0
    seconds: float = 0.0
    reason: CloseReason | None = None


OnConnection: TypeAlias = Callable[[ConnectionEvent], Awaitable[None] | None]
"""Receives a :class:`ConnectionEvent` as each connection opens and closes; sync or
async (the connection waits for it)."""


@dataclass(slots=True, eq=False)
class _Tally:
    """What one connection's task counts while it lasts."""

    peer: str
    number: int
    started: float = field(default_factory=time.perf_counter)
    progress: float = field(default_factory=anyio.current_time)  # last complete line/frame
    bytes: int = 0
    items: int = 0
    errors: int = 0
    reason: CloseReason = "stopped"
    sending: bool = False  # waiting for room downstream: busy, not idle
    evicted: bool = False
    scope: anyio.CancelScope | None = None

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A scope around a wait for data, cancelled if the connection is evicted."""
        with anyio.CancelScope() as scope:
            if self.evicted:
                scope.cancel()
            self.scope = scope
            try:
                yield
            finally:
                self.scope = None

    def evict(self) -> None:
        """End the connection at its next wait for data (never while it hands data on)."""
        self.evicted = True
        if self.scope is not None:
            self.scope.cancel()

    def event(self, kind: Literal["opened", "closed"]) -> ConnectionEvent:
        seconds = time.perf_counter() - self.started
        reason = self.reason if kind == "closed" else None
        return ConnectionEvent(
            kind, self.peer, self.number, self.bytes, self.items, self.errors, seconds, reason
        )

"""What the broker connectors share: reconnecting with a capped backoff, payloads decoded in
bulk into structured arrays (and rows encoded into payloads) with :mod:`aflow.codecs`, where a
message came from, stable key sharding, and which worker of a ``--workers N`` run this is.

Small on purpose: each connector module (Redis, NATS, MQTT, PostgreSQL) keeps its own client
code and uses only these helpers.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

import anyio
import numpy as np
import sniffio
from numpy.typing import DTypeLike, NDArray

from ..abc import Provenance
from ..codecs import CsvDecoder, CsvEncoder, Decoded, JsonlDecoder, JsonlEncoder
from ..errors import DecodeError

__all__ = [
    "WORKERS_ENV",
    "WORKER_ENV",
    "Backoff",
    "BadPayload",
    "Format",
    "PayloadCodec",
    "consumer_name",
    "message_place",
    "require_asyncio",
    "shard_of",
    "worker_count",
    "worker_index",
]

logger = logging.getLogger("aflow")

T = TypeVar("T")

Format: TypeAlias = Literal["csv", "jsonl"]
"""How one message payload holds one row: a CSV line or a JSON object."""

WORKER_ENV = "AFLOW_WORKER"
"""Environment variable: this process's index among the workers (0-based), set by
``aflow run --workers N`` for each process it starts."""
WORKERS_ENV = "AFLOW_WORKERS"
"""Environment variable: how many workers share the flow's consumer group."""


def worker_index() -> int:
    """This process's worker index (``AFLOW_WORKER``), 0 when not set."""
    return int(os.environ.get(WORKER_ENV, "0"))


def worker_count() -> int:
    """How many workers run the flow (``AFLOW_WORKERS``), 1 when not set."""
    return int(os.environ.get(WORKERS_ENV, "1"))


def consumer_name() -> str:
    """A consumer name for this process: ``host-wI`` for worker I of ``aflow run
    --workers`` (stable, so a restarted worker reads its own pending messages first),
    else ``host-pid``."""
    if WORKER_ENV in os.environ:
        return f"{socket.gethostname()}-w{worker_index()}"
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Backoff:
    """Capped exponential backoff between reconnection attempts.

    ``await backoff.wait()`` sleeps ``backoff``, then twice as long each time, at most
    ``max_backoff``; ``reset()`` after a success starts again from ``backoff``;
    :meth:`retry` runs an attempt again with these waits until it succeeds or time is up.
    """

    backoff: float = 0.1
    max_backoff: float = 5.0
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay the next ``wait()`` sleeps."""
        return float(min(self.backoff * 2.0**self.attempts, self.max_backoff))

    async def wait(self, at_most: float = math.inf) -> None:
        """Sleep the next delay (``at_most`` seconds at the most) and count the attempt."""
        delay = min(self.next_delay(), at_most)
        self.attempts += 1
        await anyio.sleep(delay)

    def reset(self) -> None:
        """A connection succeeded: the next failure waits ``backoff`` again."""
        self.attempts = 0

    async def retry(
        self,
        attempt: Callable[[], Awaitable[T]],
        errors: tuple[type[BaseException], ...],
        within: float | None,
        what: str,
    ) -> T:
        """``await attempt()`` until it returns, again after each of ``errors`` once the
        next delay has passed, for ``within`` seconds: the last wait is cut to end at
        the deadline, and an attempt failing after it raises its error. A success resets
        the backoff.

        Args:
            attempt: one try (a connection, a write); it drops what a failure broke.
            errors: the errors worth trying again; any other raises at once.
            within: seconds to keep trying; ``None``: until it succeeds (or cancelled).
            what: what failed, for the warning logged before each wait
                (``"read_redis: redis://host:6379/s unreachable"``).

        Returns:
            What the attempt that succeeded returned.

        Raises:
            BaseException: the last attempt's error, one of ``errors``, when time is up.
        """
        deadline = math.inf if within is None else anyio.current_time() + within
        while True:
            try:
                result = await attempt()
            except errors as exc:
                left = deadline - anyio.current_time()
                if left <= 0:
                    raise
                logger.warning(
                    "%s (%r); retrying in %.2g s", what, exc, min(self.next_delay(), left)
                )
                await self.wait(at_most=left)
            else:
                self.reset()
                return result


def message_place(where: str, message_id: object) -> Provenance:
    """The provenance of one message: ``where`` (stream or subject URL) and its id."""
    return Provenance(f"{where}#{message_id}", 0, 1, "row")


@dataclass(frozen=True, slots=True)
class BadPayload:
    """A payload that did not decode: the raw bytes, why, and where it came from."""

    payload: bytes
    error: DecodeError
    provenance: Provenance


class PayloadCodec:
    """One row per message payload: many payloads decoded in one call into a structured
    array (``decode``), rows encoded into payloads (``encode``).

    Args:
        dtype: the rows' structured dtype; ``None``: payloads stay ``bytes``.
        format: ``"csv"`` (one CSV line per payload) or ``"jsonl"`` (one JSON object).
        delimiter: CSV field separator.
        fill_int: the value of a missing integer (see :class:`aflow.codecs.CsvDecoder`).
    """

    def __init__(
        self,
        dtype: DTypeLike | None,
        format: Format = "csv",
        *,
        delimiter: str = ",",
        fill_int: int | None = None,
    ) -> None:
        if format not in ("csv", "jsonl"):
            raise ValueError(f"format={format!r}: use 'csv' or 'jsonl'")
        self.format = format
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.decoder: CsvDecoder | JsonlDecoder | None = None
        if self.dtype is not None:
            self.decoder = (
                CsvDecoder(self.dtype, delimiter=delimiter, fill_int=fill_int)
                if format == "csv"
                else JsonlDecoder(self.dtype, fill_int=fill_int)
            )
        self.encoder = CsvEncoder(delimiter=delimiter) if format == "csv" else JsonlEncoder()

    def decode(
        self, payloads: Sequence[bytes], id_of: Callable[[int], object], where: str
    ) -> tuple[NDArray[Any], list[BadPayload]]:
        """The rows of ``payloads`` (in order) and the payloads that did not decode.

        ``id_of(i)`` is the broker's id of ``payloads[i]`` (asked for bad ones only);
        ``where`` names the stream or subject. A payload holding several lines
        (``b"1,2\\n3,4"``) gives several rows.
        """
        assert self.decoder is not None
        assert self.dtype is not None
        bad: list[tuple[int, BadPayload]] = []  # by the payload's index, to keep order
        index: Sequence[int] = range(len(payloads))
        if not all(payloads):  # an empty payload (or a missing field) holds no row: bad
            index = [i for i, p in enumerate(payloads) if p]
            bad += [
                (i, self._bad(b"", "empty payload", i, id_of, where))
                for i, p in enumerate(payloads)
                if not p
            ]
            payloads = [payloads[i] for i in index]
        if not payloads:
            return np.empty(0, self.dtype), [b for _, b in bad]
        # One block, one decoder call: payloads joined by newlines (those ending with a
        # newline of their own, rare, get none added, so no blank line shifts the count).
        block = b"\n".join(payloads) + b"\n"
        if b"\n\n" in block:
            block = b"".join(p if p.endswith(b"\n") else p + b"\n" for p in payloads)
        decoded: Decoded = self.decoder.decode(block)
        if decoded.bad:
            # line index in the block -> the message it belongs to
            ends = np.cumsum([p.count(b"\n") + (not p.endswith(b"\n")) for p in payloads])
            seen: set[int] = set()
            for line in decoded.bad:
                i = int(np.searchsorted(ends, line.index, side="right"))
                if i not in seen:
                    seen.add(i)
                    j = index[i]
                    bad.append((j, self._bad(payloads[i], str(line.error), j, id_of, where)))
        return decoded.rows, [b for _, b in sorted(bad, key=lambda ib: ib[0])]

    @staticmethod
    def _bad(
        payload: bytes, why: str, i: int, id_of: Callable[[int], object], where: str
    ) -> BadPayload:
        mid = id_of(i)
        error = DecodeError(f"message {mid} of {where}: {why}", source=f"{where}#{mid}")
        return BadPayload(bytes(payload), error, message_place(where, mid))

    def encode(self, item: Any) -> list[bytes]:
        """Payloads of one item: a row each for an array (a CSV line or JSON object,
        without its newline); ``bytes`` as they are; ``str`` as UTF-8."""
        if isinstance(item, bytes | bytearray | memoryview):
            return [bytes(item)]
        if isinstance(item, str):
            return [item.encode()]
        if isinstance(item, np.ndarray):
            if item.ndim == 0:
                item = item.reshape(1)
            text = self.encoder.encode(item)
            return text.split(b"\n")[:-1] if text else []
        if isinstance(item, np.void):
            return self.encode(np.array([item], item.dtype))
        raise TypeError(
            f"cannot send a {type(item).__name__} as a message: give arrays, bytes or str"
        )


def _mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64's finalizer: a stable, well-spread hash of 64-bit words."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shard_of(keys: NDArray[Any], shards: int) -> NDArray[np.intp]:
    """The shard (``0 <= s < shards``) of each key: a stable hash, the same in every
    process and on every machine (not Python's ``hash``, salted per process).

    Integers, booleans and floats hash their 64-bit value (SplitMix64); strings and bytes
    their UTF-8 bytes (CRC-32).
    """
    if shards < 1:
        raise ValueError(f"shards={shards}: need at least 1")
    keys = np.asarray(keys)
    kind = keys.dtype.kind
    if kind in "iub":
        words = keys.astype(np.int64).view(np.uint64)
    elif kind == "f":
        words = keys.astype(np.float64).view(np.uint64)
    elif kind in "SUO":
        words = np.fromiter(
            (zlib.crc32(k if isinstance(k, bytes) else str(k).encode()) for k in keys.tolist()),
            np.uint64,
            len(keys),
        )
    else:
        raise TypeError(f"cannot shard by keys of dtype {keys.dtype}: use integers or strings")
    return (_mix64(words) % np.uint64(shards)).astype(np.intp)


def require_asyncio(what: str, client: str) -> None:
    """Raise a clear error unless the run is on asyncio: ``client`` (the library) runs on
    asyncio only.

    Raises:
        RuntimeError: the run is on another backend (trio).
    """
    library = sniffio.current_async_library()
    if library != "asyncio":
        raise RuntimeError(
            f"{what}: {client} runs on asyncio only, not {library}; run the flow with the "
            "asyncio backend"
        )

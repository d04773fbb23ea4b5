"""Statistics of a run: per stage and for the whole run.

The runtime updates plain counters (:class:`StageCounters`) as messages pass; ``statistics()``
copies them into frozen records, so reading them live from another task is safe and cheap.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType

from ._core.messages import Batch, Message

resource: ModuleType | None
try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

__all__ = [
    "RunCounters",
    "RunStatistics",
    "StageCounters",
    "StageStatistics",
    "resident_memory",
]


@dataclass(frozen=True, slots=True)
class StageStatistics:
    """What one stage did, so far or in total.

    Attributes:
        name: the stage's name, unique within the run (``"2:map(parse)"``).
        items_in / items_out: elements, counting each row of an array batch as one.
        batches_in / batches_out: array batches (a chunk of plain elements is not a batch).
        bytes_in / bytes_out: ``nbytes`` of the array batches.
        errors: items that failed and were skipped or sent to a dead-letter target.
        dead_lettered: of those, the items sent to a dead-letter target (the rest were
            skipped: counted, not kept).
        retries: attempts repeated by a retry policy.
        busy_seconds: time spent in the stage's own work.
        blocked_seconds: time the stage's task waited for room in a full downstream buffer
            (backpressure). Stages fused into one task share their task's figure.
        buffer_size: capacity of the stage's input buffer in messages (0 when fused).
        buffer_high_water: most messages ever waiting in that buffer.
        dropped: input lost before the stage could read it, as its source learns: for
            :func:`~aflow.udp_server`, the datagrams the kernel dropped because its
            receive buffer was full (Linux ``SO_RXQ_OVFL``). Not part of ``errors``.
        unwatched: files a following source polls, unguarded, because the kernel refused
            inotify (its limits: ``fs.inotify.max_user_instances``, ``max_user_watches``):
            their changes are seen every ``poll_interval``, and lines a ``copytruncate``
            removes before they are read are lost uncounted. Raise the limits.
    """

    name: str
    items_in: int
    items_out: int
    batches_in: int
    batches_out: int
    bytes_in: int
    bytes_out: int
    errors: int
    dead_lettered: int
    retries: int
    busy_seconds: float
    blocked_seconds: float
    buffer_size: int
    buffer_high_water: int
    dropped: int = 0
    unwatched: int = 0


@dataclass(frozen=True, slots=True)
class RunStatistics:
    """What a whole run did.

    Attributes:
        stages: per-stage records in flow order (nested flows after their parent).
        seconds: wall time since the run started.
        peak_bytes_in_flight: most array bytes ever waiting in buffers at once.
        bytes_in_flight: array bytes waiting in buffers now.
        rss_bytes: the process's resident memory now (``None`` where the system does not
            tell: Linux and others with ``/proc`` do).
        peak_rss_bytes: the process's highest resident memory since it started (not
            since the run started: the system keeps one high-water mark per process).
    """

    stages: tuple[StageStatistics, ...]
    seconds: float
    peak_bytes_in_flight: int
    bytes_in_flight: int
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None

    def stage(self, name: str) -> StageStatistics:
        """The record of the first stage whose name equals or ends with ``name``."""
        for s in self.stages:
            if s.name == name or s.name.endswith(f":{name}"):
                return s
        raise KeyError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    @property
    def errors(self) -> int:
        """Items that failed in any stage (skipped or dead-lettered)."""
        return sum(s.errors for s in self.stages)

    @property
    def dead_lettered(self) -> int:
        """Items any stage sent to a dead-letter target."""
        return sum(s.dead_lettered for s in self.stages)

    @property
    def dropped(self) -> int:
        """Input lost before any stage could read it (datagrams the kernel dropped)."""
        return sum(s.dropped for s in self.stages)

    def format(self) -> str:
        """A plain-text table, one row per stage, with a line of totals.

        Stage names are shown whole (the column is as wide as the longest); ``errors``
        counts failed items, skipped or dead-lettered (``dead``). Input lost before it
        was read (``dropped``) is added to a stage's row and to the totals when any was;
        so are files followed without inotify (``unwatched``).
        """
        width = max([28, *(len(s.name) for s in self.stages)])
        head = (
            f"{'stage':<{width}} {'items in':>11} {'items out':>11} {'batches':>8} "
            f"{'MB out':>8} {'errors':>8} {'dead':>7} {'busy s':>7} {'blocked s':>9} "
            f"{'buf hw':>6}"
        )
        rows = [head, "-" * len(head)]
        rows.extend(
            f"{s.name:<{width}} {s.items_in:>11,} {s.items_out:>11,} {s.batches_out:>8,} "
            f"{s.bytes_out / 1e6:>8.1f} {s.errors:>8,} {s.dead_lettered:>7,} "
            f"{s.busy_seconds:>7.3f} {s.blocked_seconds:>9.3f} "
            f"{s.buffer_high_water:>3}/{s.buffer_size:<2}"
            + (f" {s.dropped:,} dropped" if s.dropped else "")
            + (f" {s.unwatched:,} unwatched" if s.unwatched else "")
            for s in self.stages
        )
        dropped = self.dropped
        unwatched = sum(s.unwatched for s in self.stages)
        rows.append(
            f"{self.seconds:.3f} s wall, peak {self.peak_bytes_in_flight / 1e6:.2f} MB in flight, "
            f"{self.errors:,} errors ({self.dead_lettered:,} dead-lettered, "
            f"{self.errors - self.dead_lettered:,} skipped)"
            + (f", {dropped:,} dropped before they were read" if dropped else "")
            + (f", {unwatched:,} files followed without inotify" if unwatched else "")
            + self._memory()
        )
        return "\n".join(rows)

    def _memory(self) -> str:
        if self.rss_bytes is None and self.peak_rss_bytes is None:
            return ""
        now = "?" if self.rss_bytes is None else f"{self.rss_bytes / 1e6:.1f}"
        peak = "?" if self.peak_rss_bytes is None else f"{self.peak_rss_bytes / 1e6:.1f}"
        return f", resident memory {now} MB (peak {peak} MB)"


@dataclass(slots=True)
class StageCounters:
    """Mutable counters of one stage, updated by the runtime."""

    name: str
    items_in: int = 0
    items_out: int = 0
    batches_in: int = 0
    batches_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    dead_lettered: int = 0
    retries: int = 0
    busy_seconds: float = 0.0
    blocked: list[float] = field(default_factory=lambda: [0.0])  # shared by a task's stages
    buffer_size: int = 0
    buffer_high_water: int = 0
    dropped: int = 0
    unwatched: int = 0

    def count_in(self, msg: Message) -> None:
        if isinstance(msg, Batch):
            self.items_in += len(msg.data)
            self.batches_in += 1
            self.bytes_in += msg.data.nbytes
        else:
            self.items_in += len(msg)

    def count_out(self, msg: Message) -> None:
        if isinstance(msg, Batch):
            self.items_out += len(msg.data)
            self.batches_out += 1
            self.bytes_out += msg.data.nbytes
        else:
            self.items_out += len(msg)

    def freeze(self) -> StageStatistics:
        return StageStatistics(
            self.name,
            self.items_in,
            self.items_out,
            self.batches_in,
            self.batches_out,
            self.bytes_in,
            self.bytes_out,
            self.errors,
            self.dead_lettered,
            self.retries,
            self.busy_seconds,
            self.blocked[0],
            self.buffer_size,
            self.buffer_high_water,
            self.dropped,
            self.unwatched,
        )


@dataclass(slots=True)
class RunCounters:
    """Mutable counters of a run."""

    stages: list[StageCounters] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    bytes_in_flight: int = 0
    peak_bytes_in_flight: int = 0

    def add_bytes(self, n: int) -> None:
        self.bytes_in_flight += n
        if self.bytes_in_flight > self.peak_bytes_in_flight:
            self.peak_bytes_in_flight = self.bytes_in_flight

    def freeze(self) -> RunStatistics:
        return RunStatistics(
            tuple(s.freeze() for s in self.stages),
            time.perf_counter() - self.started,
            self.peak_bytes_in_flight,
            self.bytes_in_flight,
            *resident_memory(),
        )


_PAGE_SIZE = mmap.PAGESIZE


def resident_memory() -> tuple[int | None, int | None]:
    """The process's resident memory now and its peak since it started, in bytes.

    Reads ``/proc/self/statm`` (Linux; elsewhere the current figure is ``None``) and the
    peak from ``getrusage``. Takes some microseconds (every run's statistics have it).
    """
    now = peak = None
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            now = int(os.read(fd, 256).split()[1]) * _PAGE_SIZE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        pass
    if resource is not None:
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = max_rss if sys.platform == "darwin" else max_rss * 1024  # bytes on macOS
    if now is not None and (peak is None or now > peak):
        peak = now
    return now, peak

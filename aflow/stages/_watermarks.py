"""Event-time watermarks per source (or per key) for :func:`aflow.window`.

One global watermark (the largest timestamp seen) drops rows as soon as inputs progress
at different speeds: the files of a glob read a few at a time, merged sockets, a device
that reconnects. So each *input* keeps its own watermark, and windows close on the
minimum over the inputs feeding them, as Flink and Beam do:

* ``"source"`` (the default): an input is a batch's provenance source (a file's path, a
  socket peer, a source's name); batches without provenance are one input.
* ``"key"``: an input is a value of the window's key column; each key's windows close on
  that key's own watermark.
* ``"global"``: one input (the largest timestamp seen closes windows).

Inputs share window state in *groups*. A new input joins the first group in which none of
its first rows is behind the watermark, so inputs read side by side share windows and
their aggregates; an input that starts behind (the fifth file of a glob read four at a
time) starts a group of its own instead of being dropped as late. Its windows are emitted
as its own watermark passes them. In ``"key"`` mode every key is a group.

*Idleness* (``"source"`` mode, as Flink's ``withIdleness``): an input that sent nothing
for ``idle`` seconds of processing time (a finished file, a quiet sender, a client that
reconnected from a new port) no longer holds its group's watermark back and is
forgotten, so the state grows with the active inputs only. A group left without inputs
keeps its watermark and open windows (nothing advances them, as in Flink when every input
is idle) until an input joins it, and is dropped once it has no open window. The last
:data:`RETIRED_MAX` forgotten inputs are remembered by id only, so one that sends again
rejoins its group: its rows behind the watermark are late as usual.

Each group finds its minimum on a heap with lazy deletion: O(log inputs) per batch, and
the heap is rebuilt when stale entries outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ._windowing import OpenWindows

__all__ = ["RETIRED_MAX", "Group", "Groups", "WatermarkMode"]

WatermarkMode: TypeAlias = Literal["source", "key", "global"]

RETIRED_MAX = 1024
"""How many forgotten inputs are remembered (by id, with their group) per window stage."""

_GONE = object()


class Group:
    """Window state shared by some inputs, and each member's largest timestamp."""

    def __init__(self, windows: OpenWindows) -> None:
        self.windows = windows
        self.marks: dict[Hashable, Any] = {}
        self._heap: list[tuple[Any, int, Hashable]] = []  # (mark, tie-break, input id)
        self._seq = itertools.count()

    def raise_mark(self, input_id: Hashable, top: Any) -> None:
        """Raise ``input_id``'s mark to ``top`` (a member joins with its first mark)."""
        old = self.marks.get(input_id)
        if old is not None and old >= top:
            return
        self.marks[input_id] = top
        heapq.heappush(self._heap, (top, next(self._seq), input_id))
        self._compact()

    def forget(self, input_id: Hashable) -> None:
        """Stop waiting for ``input_id`` (its heap entry goes stale)."""
        del self.marks[input_id]
        self._compact()

    def low(self) -> Any | None:
        """The smallest mark of a member, ``None`` without members."""
        heap = self._heap
        while heap:
            mark, _, input_id = heap[0]
            if self.marks.get(input_id, _GONE) == mark:
                return mark
            heapq.heappop(heap)
        return None

    def watermark(self, lateness: Any) -> Any | None:
        """The minimum over members of (largest timestamp - ``lateness``); ``None``
        without members (the watermark then stays where it is)."""
        low = self.low()
        if low is None:
            return None
        if isinstance(low, int | np.integer) and float(lateness).is_integer():
            return int(low) - int(lateness)  # exact: floats round epoch nanoseconds
        return float(low) - float(lateness)

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self.marks) + 8:
            self._heap = [(m, next(self._seq), i) for i, m in self.marks.items()]
            heapq.heapify(self._heap)


class Groups:
    """The groups of one window stage's run, and when each input was last seen."""

    def __init__(
        self, mode: WatermarkMode, make: Callable[[], OpenWindows], idle: float | None = None
    ) -> None:
        self.mode = mode
        self.make = make
        self.idle = idle if mode == "source" else None
        self.groups: dict[Group, None] = {}  # listed groups, oldest first
        self.seen: OrderedDict[Hashable, tuple[float, Group]] = OrderedDict()  # LRU first
        self.retired: OrderedDict[Hashable, Group] = OrderedDict()

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def inputs(self) -> int:
        """How many inputs hold a watermark (active, not forgotten)."""
        return len(self.seen)

    def expire(self, now: float) -> list[Group]:
        """Forget the inputs idle since before ``now - idle``; return their groups."""
        if self.idle is None:
            return []
        limit, touched = now - self.idle, []
        while self.seen:
            input_id, (last, group) = next(iter(self.seen.items()))
            if last > limit:
                break
            del self.seen[input_id]
            group.forget(input_id)
            self.retired[input_id] = group
            if len(self.retired) > RETIRED_MAX:
                self.retired.popitem(last=False)
            if not group.marks and group.windows.next_end() is None:
                self._unlist(group)
            elif group not in touched:
                touched.append(group)
        return touched

    def group_of(self, input_id: Hashable, ts: NDArray[Any], now: float = 0.0) -> Group:
        """The group of ``input_id``; a new input (first rows ``ts``) joins or starts one.

        Marks ``input_id`` as seen at ``now`` (processing time, for idleness).
        """
        entry = self.seen.get(input_id)
        if entry is not None:
            group = entry[1]
            self.seen.move_to_end(input_id)
        else:
            back = self.retired.pop(input_id) if input_id in self.retired else None
            group = back or self._join(ts)
            self.groups.setdefault(group)
        self.seen[input_id] = (now, group)
        return group

    def _join(self, ts: NDArray[Any]) -> Group:
        if self.mode != "key":
            low = ts.min()
            for group in self.groups:
                if low >= group.windows.wm:
                    return group
        return Group(self.make())

    def _unlist(self, group: Group) -> None:
        self.groups.pop(group, None)

    def prune(self) -> None:
        """Drop the groups left without inputs nor open windows (after a flush)."""
        for group in [g for g in self.groups if not g.marks and g.windows.next_end() is None]:
            self._unlist(group)

    def split(
        self, data: NDArray[Any], ts: NDArray[Any], source: Hashable, key: str | None
    ) -> list[tuple[Hashable, NDArray[Any], NDArray[Any]]]:
        """(input id, rows, timestamps) of each input among the rows of one batch."""
        if self.mode == "source":
            return [(source, data, ts)]
        if self.mode == "global":
            return [(None, data, ts)]
        assert key is not None
        keys = data[key]
        uniq, inverse = np.unique(keys, return_inverse=True)
        if len(uniq) == 1:
            return [(uniq[0].item(), data, ts)]
        order = np.argsort(inverse, kind="stable")
        cuts = np.flatnonzero(np.diff(inverse[order])) + 1
        parts = np.split(order, cuts)
        return [(uniq[i].item(), data[p], ts[p]) for i, p in enumerate(parts)]

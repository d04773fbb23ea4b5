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
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Literal, TypeAlias

import numpy as np
from numpy.typing import NDArray

from ._windowing import OpenWindows

__all__ = ["Group", "Groups", "WatermarkMode"]

WatermarkMode: TypeAlias = Literal["source", "key", "global"]


class Group:
    """Window state shared by some inputs, and each member's largest timestamp."""

    def __init__(self, windows: OpenWindows) -> None:
        self.windows = windows
        self.marks: dict[Hashable, Any] = {}

    def watermark(self, lateness: Any) -> Any:
        """The minimum over members of (largest timestamp - ``lateness``)."""
        low = min(self.marks.values())
        if isinstance(low, int | np.integer) and float(lateness).is_integer():
            return int(low) - int(lateness)  # exact: floats round epoch nanoseconds
        return float(low) - float(lateness)


class Groups:
    """The groups of one window stage's run."""

    def __init__(self, mode: WatermarkMode, make: Callable[[], OpenWindows]) -> None:
        self.mode = mode
        self.make = make
        self.groups: list[Group] = []
        self.member: dict[Hashable, Group] = {}

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def group_of(self, input_id: Hashable, ts: NDArray[Any]) -> Group:
        """The group of ``input_id``; a new input (first rows ``ts``) joins or starts one."""
        found = self.member.get(input_id)
        if found is not None:
            return found
        if self.mode != "key":
            low = ts.min()
            for group in self.groups:
                if low >= group.windows.wm:
                    return self._join(input_id, group)
        group = Group(self.make())
        self.groups.append(group)
        return self._join(input_id, group)

    def _join(self, input_id: Hashable, group: Group) -> Group:
        self.member[input_id] = group
        return group

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

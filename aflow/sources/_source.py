"""The file source behind every ``read_*``: paths and globs, small files, followers.

* **Paths and globs** (:func:`expand`): one rule for ``str`` and ``pathlib.Path``, alone or
  in a list: a glob that matches nothing raises :class:`FileNotFoundError` naming it,
  unless the source follows (then its files may appear later). A plain path is opened as
  it is (a missing one raises, or is waited for when following).
* **Many small files** are read whole, many per worker-thread call, instead of one task
  and four thread hops each.
* **Following a glob** re-matches it every ``max(poll_interval, 0.5)`` seconds and follows
  each new file from its start, as log shippers do.
"""

from __future__ import annotations

import glob as globlib
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import numpy as np

from ..abc import Batch, Context, Message, Outlet, Provenance, Source
from ..policies import ErrorPolicy, Reporter, check_policy
from ._follow import Follower
from ._open import MAGIC_BYTES, compression_of, read_small
from ._reader import FileReader, LastLine, Shape

__all__ = ["MiB", "Paths", "expand", "is_glob", "read_concurrently"]

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
MiB = 1 << 20
SMALL_GROUP = 256  # small files read per worker-thread call
DISCOVERY_INTERVAL = 0.5  # the shortest time between two matches of a followed glob


def is_glob(text: str) -> bool:
    """Whether ``text`` holds glob characters (``*``, ``?``, ``[``)."""
    return any(ch in text for ch in "*?[")


def _items(paths: Paths) -> list[str]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    return [os.fspath(item) for item in items]


def _match(pattern: str) -> list[str]:
    return sorted(p for p in globlib.glob(pattern, recursive=True) if not os.path.isdir(p))


def expand(paths: Paths, *, follow: bool = False, name: str = "read") -> list[str]:
    """Paths and glob patterns (``*``, ``?``, ``[``, ``**``) to a list of files: each glob's
    matches sorted, a file named twice read once.

    Raises:
        FileNotFoundError: a glob matched nothing and ``follow`` is false.
    """
    out: dict[str, None] = {}
    for text in _items(paths):
        if not is_glob(text):
            out[text] = None
            continue
        matches = _match(text)
        if not matches and not follow:
            raise FileNotFoundError(
                f"{name}: no file matches {text!r}; check the pattern, or pass follow=True "
                "to wait for matching files to appear"
            )
        out.update(dict.fromkeys(matches))
    return list(out)


class FilesSource(Source):
    """Reads each path with a :class:`FileReader`, up to ``max_open`` at once."""

    def __init__(
        self,
        paths: Paths,
        *,
        shape: Shape,
        name: str,
        dtype: np.dtype[Any] | None = None,
        row_shape: tuple[int, ...] = (),
        read_size: int = MiB,
        max_open: int = 4,
        max_line: int = MiB,
        follow: bool = False,
        poll_interval: float = 0.25,
        rotate_wait: float = 1.0,
        last_line: LastLine = "keep",
        on_error: ErrorPolicy = "raise",
        header_bytes: int = 0,
    ) -> None:
        if read_size < 1 or max_open < 1:
            raise ValueError(f"{name}: read_size and max_open must be at least 1")
        if last_line not in ("keep", "report"):
            raise ValueError(f"{name}: last_line={last_line!r}: use 'keep' or 'report'")
        self.paths = paths
        self.options: dict[str, Any] = {
            "shape": shape,
            "dtype": dtype,
            "row_shape": row_shape,
            "chunk_size": read_size,
            "max_line": max_line,
            "follow": follow,
            "poll_interval": poll_interval,
            "rotate_wait": rotate_wait,
            "last_line": last_line,
        }
        self.follow = follow
        self.max_open = max_open
        self.read_size = read_size
        self.on_error = check_policy(on_error)
        self.header_bytes = header_bytes
        self.name = name

    async def produce(self, out: Outlet, ctx: Context) -> None:
        files = await anyio.to_thread.run_sync(self._expand)  # a glob may be slow
        report = Reporter(self.on_error, self.name, out.counters)
        if self.follow:
            await self._follow(files, report, out)
            return
        # Even one file is read by a task of its own, a few reads ahead of the stages
        # fused behind this source, so reading and processing overlap.
        await read_concurrently([self._reader(f) for f in files], self.max_open, report, out)

    def size(self) -> tuple[int, str] | None:
        """Bytes of the files (rows for records); unknown when following them, or when one
        is compressed (its size on disk is not what is read)."""
        if self.follow:
            return None
        files = self._expand()
        sizes = []
        for f in files:
            info = os.stat(f)
            if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: no size, never opened
                return None
            with open(f, "rb") as raw:
                if compression_of(raw.read(MAGIC_BYTES)) is not None:
                    return None
            sizes.append(max(0, info.st_size - self.header_bytes))
        if self.options["shape"] != "records":  # bytes, or blocks of whole lines
            return sum(sizes), "bytes"
        dtype: np.dtype[Any] = self.options["dtype"]
        row = dtype.itemsize * int(np.prod(self.options["row_shape"], dtype=np.int64))
        return sum(n // row for n in sizes), "rows"

    def _expand(self) -> list[str]:
        return expand(self.paths, follow=self.follow, name=self.name)

    def _reader(self, path: str) -> FileReader:
        return FileReader(path, start=self.header_bytes, **self.options)

    async def _follow(self, files: list[str], report: Reporter, out: Outlet) -> None:
        """Follow every file, and the files that come to match a glob later."""
        patterns = [text for text in _items(self.paths) if is_glob(text)]
        followed = set(files)
        readers = [self._reader(f) for f in files]

        async def discover(start: Callable[[FileReader], None]) -> None:
            while not out.stopping:
                with out.pull_scope():
                    await anyio.sleep(max(self.options["poll_interval"], DISCOVERY_INTERVAL))
                found = await anyio.to_thread.run_sync(_match_all, patterns)
                for path in found:
                    if path not in followed:
                        followed.add(path)
                        start(self._reader(path))

        await read_concurrently(readers, len(readers) or 1, report, out, discover)


def _match_all(patterns: list[str]) -> list[str]:
    return [path for pattern in patterns for path in _match(pattern)]


async def _read_small_files(readers: list[FileReader], emit: Any, report: Reporter) -> list[int]:
    """Read the small regular files among ``readers`` whole, many per thread call; return
    the indexes of the others (large files, FIFOs), to be read as streams."""
    rest: list[int] = []
    for first in range(0, len(readers), SMALL_GROUP):
        group = readers[first : first + SMALL_GROUP]
        limit = group[0].chunk_size
        contents = await anyio.to_thread.run_sync(read_small, [r.path for r in group], limit)
        for index, (reader, (_, data)) in enumerate(zip(group, contents, strict=True)):
            if data is None:
                rest.append(first + index)
                continue
            if reader.shape == "lines" and data.endswith(b"\n") and len(data) <= reader.max_line:
                # whole lines, none too long: the block a framer would make, without one
                prov = Provenance(reader.path, 1, 1 + data.count(b"\n"), "line", 0, len(data))
                await emit(Batch(np.frombuffer(data, np.uint8), "source", prov))
                continue
            framer = reader.framer(0)
            if data:
                await reader.feed(framer, data, emit, report)
            await reader.finish(framer, emit, report)
    return rest


async def read_concurrently(
    readers: list[FileReader],
    max_open: int,
    report: Reporter,
    out: Outlet,
    discover: Any = None,
) -> None:
    """Run readers in tasks, at most ``max_open`` at a time, all emitting into ``out``
    through a buffer of ``max_open`` messages (the read-ahead).

    Small regular files (readers starting at 0, not following) are read first, many per
    thread call. ``discover(start)``, if given, runs beside them and may start more readers
    (no limit: followers never end) by calling ``start(reader)``. The first error (a
    reader's, or one raised downstream of ``out``) stops the others and is raised as itself.
    """
    # Small files first, in this task (no hop through the read-ahead buffer per file).
    small = [r for r in readers if not r.follow and r.start == 0]
    indexes = await _read_small_files(small, out.emit, report) if small else []
    readers = [small[i] for i in indexes] + [r for r in readers if r.follow or r.start]
    send, receive = anyio.create_memory_object_stream[Message](max_open)
    slots = anyio.Semaphore(max_open)
    failure: list[BaseException] = []

    async def guarded(work: Any, tx: Any, *args: Any) -> None:
        with tx:
            try:
                await work(tx, *args)
            except Exception as exc:
                failure.append(exc)
                tg.cancel_scope.cancel()

    async def read_one(tx: Any, reader: FileReader, limited: bool) -> None:
        if reader.follow:
            await Follower(reader, reader.rotate_wait).run(tx.send, report, out)
        elif limited:
            async with slots:
                await reader.run(tx.send, report, out)
        else:
            await reader.run(tx.send, report, out)

    async def run_discover(tx: Any) -> None:
        def start(reader: FileReader) -> None:
            tg.start_soon(guarded, read_one, tx.clone(), reader, False)

        await discover(start)

    async with anyio.create_task_group() as tg:
        with send:
            for reader in readers:
                tg.start_soon(guarded, read_one, send.clone(), reader, not reader.follow)
            if discover is not None:
                tg.start_soon(guarded, run_discover, send.clone())
        try:
            with receive:
                async for msg in receive:
                    await out.emit(msg)
        except Exception as exc:  # Closed, or an error downstream: raised below as itself
            failure.append(exc)
            tg.cancel_scope.cancel()
    if failure:
        raise failure[0]

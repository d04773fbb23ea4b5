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
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import numpy as np

from ..abc import Batch, Context, Message, Outlet, Provenance, Source
from ..errors import CheckpointMismatch
from ..policies import ErrorPolicy, Reporter, check_policy
from ._fileid import FINGERPRINT_BYTES as FINGERPRINT
from ._fileid import FileId, file_id
from ._follow import Follower
from ._open import MAGIC_BYTES, BufferPool, compression_of, read_small
from ._reader import FileReader, LastLine, Reading, Shape, position_of
from ._rotation import plan_catch_up
from ._watch import WatchHub, open_watch_hub

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
    """Reads each path with a :class:`FileReader`, up to ``max_open`` at once (see
    :func:`read_concurrently`).

    Resumable: each message's position is its file's identity (``"device:inode"``, with
    the fingerprint of its first bytes) and the byte offset past its last whole line or
    record; a run resumed from a checkpoint starts each file there, finds a rotated
    (renamed) unfinished file beside its old path by its fingerprint, and skips files
    read to their end.
    """

    resumable = True

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

    def identity(self) -> str:
        """The name, the paths or globs as given, following or not, and the framing
        (shape, record dtype and row shape): what the positions depend on."""
        o = self.options
        dtype = "" if o["dtype"] is None else f", dtype={np.dtype(o['dtype']).str}"
        if o["dtype"] is not None and np.dtype(o["dtype"]).names:
            dtype = f", dtype={np.dtype(o['dtype']).descr}"
        rows = f", rows={tuple(o['row_shape'])}" if o["row_shape"] else ""
        return (
            f"{self.name}[paths={_items(self.paths)}, follow={self.follow}, "
            f"shape={o['shape']}{dtype}{rows}, header_bytes={self.header_bytes}]"
        )

    async def produce(self, out: Outlet, ctx: Context) -> None:
        files = await anyio.to_thread.run_sync(self._expand)  # a glob may be slow
        report = Reporter(self.on_error, self.name, out.counters)
        resume = out.resume_positions
        readers = [self._reader(f) for f in files]
        if resume or self.follow:
            readers, changes = await anyio.to_thread.run_sync(self._resume, readers, resume)
            out.update_positions(changes)
        if self.follow:
            await self._follow(readers, report, out)
            return
        await read_concurrently(readers, self.max_open, report, out)

    def _resume(
        self,
        readers: list[FileReader],
        resume: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> tuple[list[FileReader], dict[str, Any]]:
        """Start each reader after its committed position; give each followed one the
        rotated files beside it to read first (:func:`plan_catch_up`); add readers for
        unfinished files of the checkpoint found renamed. Returns them and the changes to
        make to the position map (``options``: the readers', if not ``self.options``).
        Blocks: run it in a thread."""
        options = self.options if options is None else options
        done: set[str] = set()
        for reader in readers:
            ident = file_id(reader.path)
            if ident is None:
                continue
            key = f"{ident.device}:{ident.inode}"
            pos = resume.get(key)
            if pos is not None and _same(ident, pos, reader.path):
                if int(pos["offset"]) > reader.start:
                    reader.start = int(pos["offset"])
                    reader.start_line = int(pos.get("line", 1))
                reader.ident = ident
                done.add(key)
                continue
            before = [p for p in resume.values() if p.get("path") == reader.path]
            if before and not self.follow:
                raise CheckpointMismatch(
                    f"{self.name}: {reader.path} is not the file the checkpoint was reading "
                    "(another device, inode or first bytes): the input changed; use a new "
                    "checkpoint, or delete this one to read everything again"
                )
        followed = {reader.path for reader in readers}
        changes: dict[str, Any] = {}
        if self.follow:  # rotated files beside each path, not seen to their end
            for reader in readers:
                reader.catch_up, more = plan_catch_up(reader.path, resume, followed)
                look = reader.ident
                if look is not None and more.get(f"{look.device}:{look.inode}", 0) is None:
                    # the live file no longer holds what the look saw (copied and
                    # truncated since): the plan read on from the copy; this from 0
                    reader.start, reader.start_line, reader.ident = self.header_bytes, 1, None
                changes.update(more)
        extra: list[FileReader] = []
        for key, pos in resume.items():
            if key in done or (self.follow and pos.get("path") in followed):
                continue
            found = _find_rotated(pos)
            if found is None:
                continue
            path, ident, size = found
            if size > int(pos["offset"]):
                reader = FileReader(path, start=int(pos["offset"]), **{**options, "follow": False})
                reader.start_line = int(pos.get("line", 1))
                reader.ident = ident
                extra.append(reader)
        return extra + readers, changes

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

    async def _follow(self, readers: list[FileReader], report: Reporter, out: Outlet) -> None:
        """Follow every file, and the files that come to match a glob later."""
        patterns = [text for text in _items(self.paths) if is_glob(text)]
        followed = {r.path for r in readers}

        async def discover(start: Callable[[FileReader], None]) -> None:
            while not out.stopping:
                with out.pull_scope():
                    await anyio.sleep(max(self.options["poll_interval"], DISCOVERY_INTERVAL))
                found = await anyio.to_thread.run_sync(_match_all, patterns)
                for path in found:
                    if path not in followed:
                        followed.add(path)
                        start(self._reader(path))

        async with open_watch_hub() as hub:  # one inotify instance for all the files
            await read_concurrently(readers, len(readers) or 1, report, out, discover, hub)


def _same(ident: FileId, pos: dict[str, Any], path: str) -> bool:
    """Whether the file ``ident`` starts with the bytes a checkpoint position recorded."""
    n = int(pos.get("len", 0))
    if ident.length < n:
        return False
    if ident.length == n:
        return ident.fingerprint.hex() == pos.get("fp")
    full = FileId(ident.device, ident.inode, bytes.fromhex(str(pos.get("fp", ""))), n)
    with open(path, "rb") as f:
        return full.matches(f.read(n))


def _find_rotated(pos: dict[str, Any]) -> tuple[str, FileId, int] | None:
    """The file a checkpoint position was reading, by its first bytes, at its old path or
    renamed beside it (``app.log.1``, ``app.log-2026...``): path, identity, size."""
    path = str(pos.get("path", ""))
    directory, name = os.path.split(path)
    try:
        names = sorted(os.listdir(directory or "."))
    except OSError:
        return None
    for other in names:
        if not other.startswith(name):
            continue
        candidate = os.path.join(directory, other)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        ident = file_id(candidate)
        if ident is not None and _same(ident, pos, candidate):
            return candidate, ident, st.st_size
    return None


def _match_all(patterns: list[str]) -> list[str]:
    return [path for pattern in patterns for path in _match(pattern)]


async def read_in_turn(
    readers: list[FileReader],
    max_open: int,
    report: Reporter,
    out: Outlet,
    send: Callable[[Message, Any], Awaitable[None]] | None = None,
) -> None:
    """Read plain files in this task, ``max_open`` open at a time, a chunk of each in
    turn (side by side, as tasks would, without a task and a buffer hop per batch), each
    message and its position handed to ``send`` (by default: emitted into ``out``)."""
    waiting = deque(readers)
    pool = BufferPool()  # read one at a time: a buffer the flow let go serves every file
    open_: deque[tuple[Reading, Callable[[Message], Awaitable[None]]]] = deque()

    def emitter(reader: FileReader) -> Callable[[Message], Awaitable[None]]:
        if send is None:
            return _positioned(out, reader)

        async def emit(msg: Message) -> None:
            await send(msg, position_of(reader, msg))

        return emit

    try:
        while (waiting or open_) and not out.stopping:
            while waiting and len(open_) < max_open:
                reader = waiting.popleft()
                open_.append((await reader.open(pool), emitter(reader)))
            reading, emit = open_[0]
            if await reading.step(emit, report, out):
                open_.rotate(-1)
                continue
            open_.popleft()
            await reading.close()
            await reading.end(emit, report, out)
    finally:
        for reading, _ in open_:
            await reading.close()
    for reading, emit in open_:  # a stop: what each one began and left unread
        await reading.end(emit, report, out)


def _plain_files(readers: list[FileReader]) -> list[bool]:
    """Which readers read a regular file that is not compressed (and do not follow it).
    Blocks: run it in a thread."""
    out = []
    for reader in readers:
        try:
            plain = not reader.follow and stat.S_ISREG(os.stat(reader.path).st_mode)
            if plain:
                with open(reader.path, "rb", buffering=0) as f:
                    plain = compression_of(f.read(MAGIC_BYTES)) is None
        except OSError:  # raised where the reader opens it, as it always was
            plain = False
        out.append(plain)
    return out


def _positioned(out: Outlet, reader: FileReader) -> Callable[[Message], Awaitable[None]]:
    async def emit(msg: Message) -> None:
        await out.emit(msg, position=position_of(reader, msg))

    return emit


async def _read_small_files(readers: list[FileReader], emit: Outlet, report: Reporter) -> list[int]:
    """Read the small regular files among ``readers`` whole, many per thread call; return
    the indexes of the others (large files, FIFOs), to be read as streams."""
    rest: list[int] = []
    for first in range(0, len(readers), SMALL_GROUP):
        group = readers[first : first + SMALL_GROUP]
        limit = group[0].chunk_size
        contents = await anyio.to_thread.run_sync(read_small, [r.path for r in group], limit)
        for index, (reader, (st, data)) in enumerate(zip(group, contents, strict=True)):
            if data is None:
                rest.append(first + index)
                continue
            reader.ident = FileId.of(st, data[:FINGERPRINT])
            send = _positioned(emit, reader)
            if reader.shape == "lines" and data.endswith(b"\n") and len(data) <= reader.max_line:
                # whole lines, none too long: the block a framer would make, without one
                prov = Provenance(reader.path, 1, 1 + data.count(b"\n"), "line", 0, len(data))
                await send(Batch(np.frombuffer(data, np.uint8), "source", prov))
                continue
            framer = reader.framer(0)
            if data:
                await reader.feed(framer, data, send, report)
            await reader.finish(framer, send, report)
    return rest


async def read_concurrently(
    readers: list[FileReader],
    max_open: int,
    report: Reporter,
    out: Outlet,
    discover: Any = None,
    hub: WatchHub | None = None,
) -> None:
    """Run readers, all emitting into ``out``.

    Small regular files (readers starting at 0, not following) are read first, many per
    thread call. Then plain regular files (not compressed, not followed) are read by
    :func:`read_in_turn`, in this task when nothing else is read (no hop through a buffer
    per batch); the others (FIFOs, compressed files, followers) in tasks, at most
    ``max_open`` at a time, through a buffer of ``max_open`` messages (the read-ahead).
    ``discover(start)``, if given, runs beside them and may start more readers (no limit:
    followers never end) by calling ``start(reader)``. Followers share ``hub`` (by
    default one each). The first error (a reader's, or
    one raised downstream of ``out``) stops the others and is raised as itself.
    """
    # Small files first, in this task (no hop through the read-ahead buffer per file).
    small = [r for r in readers if not r.follow and r.start == 0]
    indexes = await _read_small_files(small, out, report) if small else []
    readers = [small[i] for i in indexes] + [r for r in readers if r.follow or r.start]
    plain: list[FileReader] = []
    if readers and discover is None:
        # Plain files need no task each (a read cannot wait long): read in turn by one
        # task, one read in flight, in this task when they are all there is. A task and
        # a read-ahead buffer per file cost cache misses and page faults; without them
        # bench_records is level with a bare anyio loop doing the same thread reads.
        kinds = await anyio.to_thread.run_sync(_plain_files, readers)
        plain = [r for r, p in zip(readers, kinds, strict=True) if p]
        readers = [r for r, p in zip(readers, kinds, strict=True) if not p]
        if not readers:
            await read_in_turn(plain, max_open, report, out)
            return
    send, receive = anyio.create_memory_object_stream[tuple[Message, Any]](max_open)
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
        async def emit(msg: Message) -> None:
            await tx.send((msg, position_of(reader, msg)))

        if reader.follow:
            await Follower(reader, reader.rotate_wait, hub).run(emit, report, out)
        elif limited:
            async with slots:
                await reader.run(emit, report, out)
        else:
            await reader.run(emit, report, out)

    async def read_plain(tx: Any) -> None:
        async def send(msg: Message, position: Any) -> None:
            await tx.send((msg, position))

        await read_in_turn(plain, max_open, report, out, send)

    async def run_discover(tx: Any) -> None:
        def start(reader: FileReader) -> None:
            tg.start_soon(guarded, read_one, tx.clone(), reader, False)

        await discover(start)

    async with anyio.create_task_group() as tg:
        with send:
            if plain:
                tg.start_soon(guarded, read_plain, send.clone())
            for reader in readers:
                tg.start_soon(guarded, read_one, send.clone(), reader, not reader.follow)
            if discover is not None:
                tg.start_soon(guarded, run_discover, send.clone())
        try:
            with receive:
                async for msg, position in receive:
                    await out.emit(msg, position=position)
        except Exception as exc:  # Closed, or an error downstream: raised below as itself
            failure.append(exc)
            tg.cancel_scope.cancel()
    if failure:
        raise failure[0]

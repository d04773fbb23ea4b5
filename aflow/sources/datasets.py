"""Datasets in a directory: files under class folders become batches of samples and labels.

:func:`list_dataset` walks a folder once and returns its table (:class:`DatasetFiles`: the
files, their labels and the class names); :func:`read_dataset` makes a flow that reads it,
epoch after epoch, in a new seeded order every epoch, decoding a few batches at once in
worker threads.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from numpy.typing import NDArray

from ..abc import Batch, Context, Outlet, Provenance, Source
from ..codecs.images import IMAGE_SUFFIXES, ImageDecoder, NpzDecoder, SampleDecoder, decode_npy
from ..flow import Flow
from ..policies import ErrorPolicy, Reporter, check_policy
from ._dataset_decode import BatchReader, Decoded, ProcessDecoding, Samples
from ._dataset_files import DatasetFiles, Labels, Split, list_dataset

__all__ = ["DatasetFiles", "DatasetProvenance", "Labels", "list_dataset", "read_dataset"]


class DatasetProvenance(Provenance):
    """Where a dataset batch came from: its files, epoch and place in the epoch's order.

    Attributes:
        source: the dataset's folder.
        start / stop: the batch's rows within its epoch's order (``unit == "row"``).
        epoch: the epoch, counted from 0.
        files: the rows' files, relative to ``source``, in row order.
    """

    __slots__ = ("epoch", "files")

    def __init__(self, source: str, start: int, epoch: int, files: tuple[str, ...]) -> None:
        super().__init__(source, start, start + len(files), "row")
        self.epoch = epoch
        self.files = files

    def _key(self) -> tuple[object, ...]:
        return (*Provenance._key(self), self.epoch, self.files)

    def __repr__(self) -> str:
        return (
            f"DatasetProvenance({self.source!r}, {self.start}, epoch={self.epoch}, "
            f"files={self.files!r})"
        )

    def __str__(self) -> str:
        shown = ", ".join(self.files[:4]) + (", ..." if len(self.files) > 4 else "")
        return f"{self.source} epoch {self.epoch} rows {self.start}..{self.stop} ({shown})"


Decoding = SampleDecoder | Mapping[str, SampleDecoder] | None


class _Decoders:
    """The decoder of each file, by suffix (the image decoder is made on first use, so a
    dataset of ``.npy`` files never needs Pillow)."""

    def __init__(self, decode: Decoding, image_size: tuple[int, int] | None) -> None:
        self.only = decode if callable(decode) else None
        self.table: dict[str, SampleDecoder] = {".npy": decode_npy, ".npz": NpzDecoder()}
        if isinstance(decode, Mapping):
            self.table.update({k.lower(): v for k, v in decode.items()})
        self.image_size = image_size

    def __call__(self, path: str) -> SampleDecoder:
        if self.only is not None:
            return self.only
        suffix = os.path.splitext(path)[1].lower()
        found = self.table.get(suffix)
        if found is None and suffix in IMAGE_SUFFIXES:
            found = self.table[suffix] = ImageDecoder(self.image_size)
        if found is None:
            raise ValueError(f"no decoder for {suffix!r} files: pass decode={{{suffix!r}: fn}}")
        return found


@dataclass(slots=True)
class _Job:
    """One batch to decode: its files (rows of the table) and, once done, its outcome."""

    epoch: int
    start: int
    rows: NDArray[np.intp]
    done: anyio.Event
    samples: Samples | None = None  # each file's array or error, unless all decoded alike
    records: NDArray[Any] | None = None  # the batch, when every file decoded alike
    error: BaseException | None = None


class _DatasetSource(Source):
    def __init__(
        self,
        root: str | os.PathLike[str] | DatasetFiles,
        *,
        labels: Labels,
        split: Split,
        validation: float,
        batch_size: int,
        epochs: int | None,
        shuffle: bool,
        seed: int,
        decoders: _Decoders,
        workers: int,
        processes: bool,
        drop_last: bool,
        on_error: ErrorPolicy,
        name: str,
    ) -> None:
        self.root = root
        self.labels = labels
        self.split = split
        self.validation = validation
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.seed = seed
        self.decoders = decoders
        self.workers = workers
        self.processes = processes
        self.drop_last = drop_last
        self.on_error = on_error
        self.name = name

    async def produce(self, out: Outlet, ctx: Context) -> None:
        table = self.root
        if not isinstance(table, DatasetFiles):
            table = await anyio.to_thread.run_sync(_list, table, self.labels)
        table = table.split(self.split, self.validation)
        if not len(table):
            raise FileNotFoundError(f"{self.name}: the {self.split!r} part holds no file")
        run = _DatasetRun(self, table, Reporter(self.on_error, self.name, out.counters))
        await run.produce(out)

    def jobs(self, n: int) -> Iterator[tuple[int, int, NDArray[np.intp]]]:
        """``(epoch, start, rows)`` of every batch, epoch after epoch."""
        epoch = 0
        step = self.batch_size
        while self.epochs is None or epoch < self.epochs:
            order = (
                np.random.default_rng([self.seed, epoch]).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            stop = n - n % step if self.drop_last else n
            for start in range(0, stop, step):
                yield epoch, start, order[start : start + step]
            epoch += 1
            if stop == 0:
                return  # fewer files than one batch, with drop_last: nothing, ever


def _list(root: str | os.PathLike[str], labels: Labels) -> DatasetFiles:
    return list_dataset(root, labels=labels)


class _DatasetRun:
    """One run of a dataset: up to ``workers`` batches decoding in threads (twice as many
    with worker processes), emitted in order (so a seed gives the same batches whatever
    the threads' timing)."""

    def __init__(self, source: _DatasetSource, table: DatasetFiles, report: Reporter) -> None:
        self.source = source
        self.table = table
        self.report = report
        # with processes, twice as many batches in flight keep every process busy
        self.window = source.workers * (2 if source.processes else 1)
        self.limiter = anyio.CapacityLimiter(self.window)
        self.dtype: np.dtype[Any] | None = None

    async def produce(self, out: Outlet) -> None:
        table = self.table
        reader = BatchReader(table.root, table.paths, table.labels, self.source.decoders)
        if not self.source.processes:
            await self.produce_with(reader, out)
            return
        pool = ProcessDecoding(reader, self.source.workers, self.source.name)
        failure: list[Exception] = []
        ended = False  # every batch was decoded and handed on
        try:
            async with anyio.create_task_group() as tg:
                # batches decode in threads here until the processes are up
                tg.start_soon(self.start_pool, pool, failure, tg.cancel_scope)
                try:
                    await self.produce_with(pool, out, abandon=True)
                except Exception as exc:  # raised as itself, not in a group
                    failure.append(exc)
                tg.cancel_scope.cancel()  # done: no need to wait for a process to start
            ended = not failure
        finally:
            with anyio.CancelScope(shield=True):
                # cancelled or failed: kill the processes rather than wait for them
                await anyio.to_thread.run_sync(pool.close, not ended)
        if failure:
            raise failure[0]

    @staticmethod
    async def start_pool(
        pool: ProcessDecoding, failure: list[Exception], scope: anyio.CancelScope
    ) -> None:
        try:
            # abandoned when the run ends first: closing the pool ends the thread's wait
            await anyio.to_thread.run_sync(pool.start, abandon_on_cancel=True)
        except Exception as exc:
            failure.append(exc)
            scope.cancel()

    async def produce_with(
        self,
        decode: Callable[[NDArray[np.intp]], Decoded],
        out: Outlet,
        abandon: bool = False,
    ) -> None:
        """Decode the batches, up to ``window`` at once, and emit them in order.

        ``abandon``: on cancellation or failure, do not wait for the threads decoding
        (they wait for worker processes, which closing the pool kills). Without it, a
        batch decoding in a thread finishes first: nothing can stop a decoder there.
        """
        jobs = self.source.jobs(len(self.table))
        window: deque[_Job] = deque()
        failure: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            try:
                while True:
                    while len(window) < self.window and not out.stopping:
                        spec = next(jobs, None)
                        if spec is None:
                            break
                        job = _Job(*spec, done=anyio.Event())
                        window.append(job)
                        tg.start_soon(self.decode, job, decode, abandon)
                    if not window:
                        break
                    job = window.popleft()
                    await job.done.wait()
                    batch = await self.finish(job)
                    if batch is not None:
                        await out.emit(batch)
            except Exception as exc:  # Closed, a bad file, an error downstream: as itself
                failure.append(exc)
            tg.cancel_scope.cancel()  # jobs already in threads finish (their files close)
        if failure:
            raise failure[0]

    async def decode(
        self, job: _Job, decode: Callable[[NDArray[np.intp]], Decoded], abandon: bool
    ) -> None:
        try:
            job.samples, job.records = await anyio.to_thread.run_sync(
                decode, job.rows, limiter=self.limiter, abandon_on_cancel=abandon
            )
        except Exception as exc:
            job.error = exc
        finally:
            job.done.set()

    async def finish(self, job: _Job) -> Batch | None:
        """The batch of a decoded job; bad files go to the error policy, in row order."""
        if job.error is not None:
            raise job.error
        files = tuple(self.table.paths[i] for i in job.rows.tolist())
        where = DatasetProvenance(self.table.root, job.start, job.epoch, files)
        if job.records is not None:
            if self.dtype is None:
                self.dtype = job.records.dtype
            if job.records.dtype == self.dtype:
                return Batch(job.records, "source", where)
            job.samples = list(job.records["x"])
        assert job.samples is not None
        good: list[int] = []
        for k, sample in enumerate(job.samples):
            i = int(job.rows[k])
            if isinstance(sample, np.ndarray):
                sample = self.check(sample, self.table.paths[i])
            if isinstance(sample, Exception):
                path = self.table.paths[i]
                place = DatasetProvenance(self.table.root, job.start + k, job.epoch, (path,))
                await self.report(os.path.join(self.table.root, path), sample, place)
            else:
                good.append(k)
        if not good:
            return None
        return self.partial(job, good)

    def partial(self, job: _Job, good: list[int]) -> Batch:
        """The batch of the files of ``job`` that decoded well (the others were reported)."""
        assert self.dtype is not None
        assert job.samples is not None
        rows = job.rows[good]
        data = np.empty(len(good), dtype=self.dtype)
        data["x"] = np.stack([job.samples[k] for k in good])  # type: ignore[misc]
        data["y"] = self.table.labels[rows]
        files = tuple(self.table.paths[i] for i in rows.tolist())
        # rows of the epoch's order are no longer contiguous: start names the first
        return Batch(
            data, "source", DatasetProvenance(self.table.root, job.start, job.epoch, files)
        )

    def check(self, sample: NDArray[Any], path: str) -> NDArray[Any] | Exception:
        """The sample, or an error when it differs in shape or dtype from the first."""
        if self.dtype is None:
            self.dtype = np.dtype([("x", sample.dtype, sample.shape), ("y", np.int32)])
        want = self.dtype["x"]
        if sample.shape == want.shape and sample.dtype == want.base:
            return sample
        return ValueError(
            f"{self.source.name}: {path} decodes to {sample.dtype} of shape {sample.shape}, "
            f"but the dataset's first sample was {want.base} of shape {want.shape}; give "
            "image_size= or a decoder that makes every sample the same shape"
        )


def read_dataset(
    root: str | os.PathLike[str] | DatasetFiles,
    *,
    labels: Labels = "folders",
    split: Split = "all",
    validation: float = 0.2,
    batch_size: int = 32,
    epochs: int | None = 1,
    shuffle: bool = True,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    decode: Decoding = None,
    workers: int = 4,
    processes: bool = False,
    drop_last: bool = False,
    on_error: ErrorPolicy = "raise",
) -> Flow[NDArray[Any]]:
    """Batches of samples and labels from a dataset folder, epoch after epoch.

    Each batch is a structured array of up to ``batch_size`` records with two fields:
    ``x``, one decoded file (the same shape and dtype for every file, e.g. ``uint8`` of
    shape ``(height, width, 3)`` for RGB images), and ``y``, its label as an ``int32``
    index into the class table (:func:`list_dataset` gives it: ``classes[y]``). Its
    provenance (a :class:`DatasetProvenance`) names its files and epoch.

    Files are listed when the run starts (at every run). Up to ``workers`` batches are
    read and decoded at once in worker threads and handed on in order, so memory holds at
    most ``workers`` batches beyond the run's buffers, and a seed gives the same batches
    whatever the threads' timing. With ``processes=True``, ``workers`` worker processes
    decode instead, without the GIL of the main process (worth it when decoding is
    mostly Python, as for small images), with up to ``2 * workers`` batches in flight;
    they start at every run (in about a second the first time, as the fork server
    imports aflow) and stop when it ends, is cancelled or fails.

    Cancellation: a run that is cancelled or fails kills its worker processes without
    waiting for the batches they decode. A thread cannot be stopped: with threads, a
    cancelled run waits for the batches being decoded (a decoder that never returns
    holds it); with processes, the first batches, decoded in threads while the processes
    start, are left to finish in the background.

    Args:
        root: the dataset's folder, or a table made by :func:`list_dataset`.
        labels: where labels come from (see :data:`Labels`); ignored for a table.
        split: ``"train"`` or ``"validation"`` to read one part (see
            :meth:`DatasetFiles.split`), ``"all"`` for every file.
        validation: the fraction of files in the validation part.
        batch_size: records per batch; the last batch of an epoch may be shorter.
        epochs: passes over the files; ``None`` repeats forever (stop with ``take`` or
            by leaving the loop).
        shuffle: read each epoch in a new order drawn from ``(seed, epoch)``; ``False``
            reads the files in table order every epoch.
        seed: seed of the epochs' orders.
        image_size: ``(height, width)`` of decoded images (see
            :class:`~aflow.codecs.images.ImageDecoder`, which brings each image to it by
            scaling and cropping the centre). ``None``: images must all be one size.
        decode: a function ``bytes -> array`` for every file, or a mapping of suffixes
            (``".wav"``) to such functions added to the built-in ones (``.npy``, ``.npz``
            and images); see :mod:`aflow.codecs.images`.
        workers: batches decoded at once, each in a worker thread; with ``processes``,
            the number of worker processes.
        processes: decode in worker processes (see above); ``decode`` must then be
            picklable: a module-level function or an instance of a module-level class.
        drop_last: leave out each epoch's last batch when it is short.
        on_error: what to do with a file that cannot be read or decoded (the item given
            to the policy is its path; the provenance names it).

    Raises:
        FileNotFoundError: at run time, when the folder or the chosen part is empty.
        TypeError: at run time, with ``processes=True``, when ``decode`` cannot be
            pickled.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(
            f"read_dataset: batch_size={batch_size} and workers={workers} must be >= 1"
        )
    if epochs is not None and epochs < 0:
        raise ValueError(f"read_dataset(epochs={epochs}): must be >= 0, or None for forever")
    if split not in ("all", "train", "validation"):
        raise ValueError(f"read_dataset(split={split!r}): use 'all', 'train' or 'validation'")
    where = root.root if isinstance(root, DatasetFiles) else os.fspath(root)
    part = "" if split == "all" else f", {split}"
    return Flow(
        _DatasetSource(
            root,
            labels=labels,
            split=split,
            validation=validation,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=shuffle,
            seed=seed,
            decoders=_Decoders(decode, image_size),
            workers=workers,
            processes=processes,
            drop_last=drop_last,
            on_error=check_policy(on_error),
            name=f"read_dataset({where}{part})",
        )
    )

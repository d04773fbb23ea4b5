"""Reading and decoding the files of a dataset's batches, in a thread or a worker process.

:class:`BatchReader` reads and decodes the files of one batch and stacks them into the
batch's records. :func:`read_dataset` calls it in worker threads, or, with
``processes=True``, hands it to a :class:`ProcessDecoding` pool once and sends each
worker process only the rows of a batch: the records come back pickled, so decoding runs
without the main process's GIL, as torch's ``DataLoader`` workers do.

Worker processes are started by the ``forkserver`` method where there is one (else
``spawn``), never by a bare ``fork`` of a process whose threads may hold locks; the fork
server imports this module once, so each worker starts in milliseconds. The fork server's
preload list is a setting of the whole process: it is set only while it is still
multiprocessing's default (a program that chose its own keeps it; its workers then import
aflow themselves, which takes longer).

A run that is cancelled or fails does not wait for the batches being decoded: their
worker processes are killed (a decoder stuck in a loop cannot hold the run). Batches
decoded in threads (``processes=False``, or while the processes start) cannot be stopped
that way: see :class:`ProcessDecoding`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..codecs.images import SampleDecoder

if sys.platform != "win32":  # where there is a fork server
    from multiprocessing import forkserver

__all__ = ["BatchReader", "Decoded", "ProcessDecoding"]

Samples = list[NDArray[Any] | Exception]
Decoded = tuple[Samples | None, NDArray[Any] | None]
"""A decoded batch: its records when every file decoded to one shape and dtype (then
``samples`` is ``None``), else each file's array or error, in row order."""


class BatchReader:
    """Reads and decodes the files of a batch (picklable when its decoders are).

    Args:
        root: the dataset's folder.
        paths: every file of the dataset's table, relative to ``root``.
        labels: ``int32`` label of each file.
        decoders: the decoder of a path.
    """

    def __init__(
        self,
        root: str,
        paths: tuple[str, ...],
        labels: NDArray[np.int32],
        decoders: Callable[[str], SampleDecoder],
    ) -> None:
        self.root = root
        self.paths = paths
        self.labels = labels
        self.decoders = decoders

    def __call__(self, rows: NDArray[np.intp]) -> Decoded:
        """The batch of ``rows`` (blocks: run it in a worker thread or process)."""
        return self.assemble(self.decode_files(rows), rows)

    def assemble(self, samples: Samples, rows: NDArray[np.intp]) -> Decoded:
        """The records of ``samples`` (the files of ``rows``) when they stack, else the
        samples themselves."""
        first = samples[0]
        if not isinstance(first, np.ndarray):
            return samples, None
        for s in samples:
            if not isinstance(s, np.ndarray) or s.shape != first.shape or s.dtype != first.dtype:
                return samples, None
        records = np.empty(len(samples), [("x", first.dtype, first.shape), ("y", np.int32)])
        np.stack(samples, out=records["x"])  # type: ignore[arg-type]
        records["y"] = self.labels[rows]
        return None, records

    def decode_files(self, rows: NDArray[np.intp]) -> Samples:
        """Each file's array, or the error that stopped it (with a note naming the file)."""
        out: Samples = []
        for i in rows.tolist():
            path = self.paths[i]
            try:
                data = read_whole(os.path.join(self.root, path))
                out.append(np.asarray(self.decoders(path)(data)))
            except Exception as exc:
                exc.add_note(f"aflow: while reading and decoding {path} under {self.root}")
                out.append(exc)
        return out


def read_whole(path: str) -> bytes:
    """The bytes of the file at ``path``: an open, a size, one read and a close (half
    the time of Python's buffered file object, which costs a dataset of small files ~10
    us per file); a file that grew or gave a short read is read on to its end."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)  # one more byte: a file that grew is seen
        if len(data) == size and size:
            return data
        parts = [data]
        while chunk := os.read(fd, max(size, 1 << 16)):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


_reader: BatchReader | None = None  # in a worker process: the reader its pool installed


def _install(reader: BatchReader) -> None:
    global _reader
    _reader = reader


def _ready() -> bool:
    return _reader is not None


def _decode_in_worker(rows: NDArray[np.intp]) -> Decoded:
    assert _reader is not None, "a dataset worker process without its reader"
    files = _reader.decode_files(rows)
    for k, sample in enumerate(files):
        if isinstance(sample, np.ndarray) and sample.dtype.hasobject:
            files[k] = _sendable(sample, _reader, int(rows[k]))
    samples, records = _reader.assemble(files, rows)
    if samples is not None:
        samples = [_picklable(s) if isinstance(s, Exception) else s for s in samples]
    return samples, records


def _sendable(sample: NDArray[Any], reader: BatchReader, row: int) -> NDArray[Any] | Exception:
    """``sample`` (an array of Python objects) when pickle can send it back, else the
    error, naming its file, for the run's error policy (not the whole batch's failure)."""
    try:
        pickle.dumps(sample, protocol=5)
    except Exception as exc:
        path = reader.paths[row]
        error = TypeError(
            f"the decoded array of {path} holds objects that cannot be sent back from the "
            f"worker process ({type(exc).__name__}: {exc}); return a numeric array, or use "
            "threads"
        )
        error.add_note(f"aflow: while reading and decoding {path} under {reader.root}")
        return error
    return sample


def _picklable(exc: Exception) -> Exception:
    """The error itself when it survives pickling, else a RuntimeError with its text and
    notes (a decoder's own exception class may take arguments pickle cannot rebuild)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        stand_in = RuntimeError(f"{type(exc).__qualname__}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            stand_in.add_note(note)
        return stand_in
    return exc


def _start_method() -> str:
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def _preload_aflow() -> None:
    """Have the fork server import this module once (so each worker starts in
    milliseconds), unless the program set the fork server's preload list itself: that
    setting belongs to the whole process, so a list of the program's own is left as is."""
    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_preload_modules", None) == ["__main__"]:  # the default
        # the fork server imports aflow once; "__main__" is multiprocessing's default
        forkserver.set_forkserver_preload(["__main__", __name__])


class ProcessDecoding:
    """Worker processes that decode the batches of one run.

    :meth:`start` starts them; each receives ``reader`` (the file table and the
    decoders) once, and each batch then costs its rows there and its pickled records
    back. Until they are up (the fork server's first start imports aflow: about half a
    second of CPU), batches are decoded in the calling thread, so the run does not wait
    for them. :meth:`close` stops them.

    Raises:
        TypeError: ``reader``'s decoders cannot be pickled (a lambda, a closure).
    """

    def __init__(self, reader: BatchReader, processes: int, name: str) -> None:
        try:
            pickle.dumps(reader.decoders)
        except Exception as exc:
            raise TypeError(
                f"{name}: processes=True sends the decoders to worker processes, but "
                f"they cannot be pickled ({exc}); pass a module-level function or an "
                "instance of a module-level class as decode=, or use threads"
            ) from exc
        self.reader = reader
        self.name = name
        self.processes = processes
        self.started = threading.Event()
        context = multiprocessing.get_context(_start_method())
        if context.get_start_method() == "forkserver":
            _preload_aflow()
        self.pool = ProcessPoolExecutor(
            processes, mp_context=context, initializer=_install, initargs=(reader,)
        )

    def start(self) -> None:
        """Start a worker process and wait until it can decode (blocks).

        Raises:
            BrokenProcessPool: a process could not start or receive its reader (e.g. a
                decoder's module cannot be imported there, or a script without an
                ``if __name__ == "__main__":`` guard).
        """
        try:
            # one process first: the others start as batches come (if that one cannot
            # start, none is starting meanwhile; Python 3.11's pool trips over its own
            # table of processes when one breaks while it starts another)
            self.pool.submit(_ready).result()
        except BrokenProcessPool as exc:
            raise BrokenProcessPool(
                f"{self.name}: the worker processes could not start ({exc}); the decoders "
                "must be importable there (defined in a module, not in a notebook), and a "
                'script needs the if __name__ == "__main__": guard (see multiprocessing)'
            ) from exc
        self.started.set()

    def __call__(self, rows: NDArray[np.intp]) -> Decoded:
        """The batch of ``rows``, decoded in a worker process (blocks this thread), or
        in this thread until :meth:`start` has finished.

        Raises:
            BrokenProcessPool: a worker process ended abruptly (killed, or crashed in
                a decoder); its message names the files of the batch.
        """
        if not self.started.is_set():
            return self.reader(rows)
        try:
            return self.pool.submit(_decode_in_worker, rows).result()
        except BrokenProcessPool as exc:
            files = [self.reader.paths[i] for i in rows.tolist()]
            shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
            # the pool gives every waiting batch the same error: each gets its own
            broken = BrokenProcessPool(
                f"{exc} (a worker process ended while the batch of {shown} under "
                f"{self.reader.root} was decoding: killed, or a decoder crashed)"
            )
            raise broken from exc

    def close(self, kill: bool = False) -> None:
        """Stop the worker processes (blocks; idempotent).

        Args:
            kill: kill them at once (a run cancelled or failed: the batches they decode
                are no longer wanted, and a decoder may never return), failing the
                batches being decoded with ``BrokenProcessPool``. Otherwise, and when
                the first process is up, the batches not started are cancelled and the
                others finish first.

        A batch decoding in a thread (before the processes are up) cannot be stopped: it
        runs until its decoder returns, in the background once its run has ended.
        """
        pool = self.pool
        if not kill and self.started.is_set():
            pool.shutdown(wait=True, cancel_futures=True)
            return
        # the pool's own table of processes (CPython), kept before shutdown drops it
        processes: dict[int, Any] | None = getattr(pool, "_processes", None)
        # no process starts after this returns: a submit under way (in a thread of a
        # cancelled run) finishes first and shows in the table, later ones are refused
        pool.shutdown(wait=False, cancel_futures=True)
        workers = list(processes.values()) if processes is not None else []
        for process in workers:
            process.kill()  # the pool sees it, fails its futures and ends its thread
        for process in workers:
            process.join()

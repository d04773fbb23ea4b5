"""Async file access for the file sources and the file sinks: one open for both.

On asyncio files go through aiofiles, on trio through anyio's file API; both hand each
call to a worker thread, so callers read and write in large pieces. The backend is asked
at every open, so one flow runs on either.

This module imports nothing of aflow: it sits low in the layers (beside the runtime), where
sources and sinks can both use it without one importing the other.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Protocol

import aiofiles
import anyio

__all__ = ["AsyncFile", "open_file"]


class AsyncFile(Protocol):
    """An open binary file; every method but ``fileno`` is one thread hop."""

    async def read(self, size: int = -1, /) -> bytes: ...

    async def write(self, data: bytes, /) -> int: ...

    async def seek(self, offset: int, whence: int = 0, /) -> int: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...

    def fileno(self) -> int: ...


async def open_file(path: str, mode: Literal["rb", "wb", "r+b"]) -> AsyncFile:
    """Open ``path`` in binary ``mode`` (``"rb"``, ``"wb"``, ``"r+b"``) with the running
    backend's file API.

    The open is shielded from cancellation: a cancelled open could leave the file open
    in its worker thread with no one to close it. Close the file with ``aclose()``.

    Raises:
        OSError: the file cannot be opened (``FileNotFoundError``, ``PermissionError``...).
    """
    file: AsyncFile
    with anyio.CancelScope(shield=True):
        if _on_asyncio():
            file = _AioFile(await aiofiles.open(path, mode))
        else:  # trio
            file = _AnyioFile(await anyio.open_file(path, mode))
    return file


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _AioFile:
    """An aiofiles handle under :class:`AsyncFile`."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    async def read(self, size: int = -1) -> bytes:
        data: bytes = await self._h.read(size)
        return data

    async def write(self, data: bytes) -> int:
        written: int = await self._h.write(data)
        return written

    async def seek(self, offset: int, whence: int = 0) -> int:
        pos: int = await self._h.seek(offset, whence)
        return pos

    async def flush(self) -> None:
        await self._h.flush()

    async def aclose(self) -> None:
        await self._h.close()

    def fileno(self) -> int:
        fd: int = self._h.fileno()
        return fd


class _AnyioFile:
    """An anyio file (on trio) under :class:`AsyncFile`."""

    def __init__(self, handle: anyio.AsyncFile[bytes]) -> None:
        self._h = handle

    async def read(self, size: int = -1) -> bytes:
        return await self._h.read(size)

    async def write(self, data: bytes) -> int:
        return await self._h.write(data)

    async def seek(self, offset: int, whence: int = 0) -> int:
        return await self._h.seek(offset, whence)

    async def flush(self) -> None:
        await self._h.flush()

    async def aclose(self) -> None:
        await self._h.aclose()

    def fileno(self) -> int:
        return self._h.wrapped.fileno()

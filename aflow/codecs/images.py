"""Decoders for the files of a dataset: one file's bytes to one NumPy array.

A *sample decoder* is any callable ``decode(data: bytes) -> array`` (see
:class:`SampleDecoder`); :func:`aflow.read_dataset` calls it in worker threads, once per
file, and stacks the arrays of a batch. Every array a dataset yields must have the same
shape and dtype, so image decoders bring every picture to a fixed size.

* :func:`decode_npy` — a ``.npy`` file, or one array of a ``.npz`` file (:class:`NpzDecoder`).
* :class:`ImageDecoder` — PNG, JPEG, BMP, GIF, WebP, TIFF through Pillow (the ``images``
  extra: ``pip install aflow-streams[images]``): ``uint8`` arrays of shape
  ``(height, width, channels)``, channels last, in the order of ``mode`` (``"RGB"``,
  ``"L"`` grey with one channel, ``"RGBA"``).
* Anything else (audio, a custom binary format): write a function of the bytes, e.g.
  ``lambda data: np.frombuffer(data, "<i2")[:16000]``.

>>> import io
>>> import numpy as np
>>> buf = io.BytesIO()
>>> np.save(buf, np.arange(6, dtype=np.int16).reshape(2, 3))
>>> decode_npy(buf.getvalue()).shape
(2, 3)
"""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from itertools import pairwise
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "IMAGE_SUFFIXES",
    "Engine",
    "Fit",
    "ImageDecoder",
    "NpzDecoder",
    "SampleDecoder",
    "decode_npy",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes (lower case) that :class:`ImageDecoder` reads."""

Engine = Literal["auto", "pillow", "imagecodecs"]
"""Who inflates and unfilters plain PNG files: ``"imagecodecs"`` (libpng through the
`imagecodecs <https://github.com/cgohlke/imagecodecs>`_ package, the ``images-fast`` extra:
a few microseconds of Python per image, the rest with the GIL released), ``"pillow"``
(Pillow's C decoder behind its Python image objects: about 1.7 times the CPU per small
image), or ``"auto"``: imagecodecs where it is installed, else Pillow."""

Fit = Literal["resize", "crop", "pad"]
"""How an image reaches the target size: ``"resize"`` stretches it; ``"crop"`` scales its
shorter side to fit and cuts the centre (keeps the aspect ratio); ``"pad"`` scales its
longer side to fit and pads the borders with zeros (keeps the whole picture)."""


class SampleDecoder(Protocol):
    """Decodes the bytes of one file into one array (runs in a worker thread).

    Raise any exception for bytes it cannot decode: the dataset's ``on_error`` policy then
    handles that file (by default the run fails, naming the file).
    """

    def __call__(self, data: bytes, /) -> NDArray[Any]: ...


# NumPy reads a .npy header with ast.literal_eval. CPython before 3.11.8 (and 3.12.0-1)
# keeps the AST constructor's recursion depth in one place for all threads: two threads
# parsing at once, at different stack depths, raise "SystemError: AST constructor recursion
# depth mismatch" (CPython gh-106905). There, headers are read one thread at a time.
_AST_SHARED = sys.version_info < (3, 11, 8) or (3, 12) <= sys.version_info < (3, 12, 2)
_NPY_HEADER_LOCK: AbstractContextManager[Any] = (
    threading.Lock() if _AST_SHARED else contextlib.nullcontext()
)


def decode_npy(data: bytes) -> NDArray[Any]:
    """The array of a ``.npy`` file's bytes (object arrays are refused)."""
    with _NPY_HEADER_LOCK:
        return np.load(io.BytesIO(data), allow_pickle=False)  # type: ignore[no-any-return]


class NpzDecoder:
    """One array of a ``.npz`` file: the one named ``key``, or its first one."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key

    def __call__(self, data: bytes, /) -> NDArray[Any]:
        with _NPY_HEADER_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
            key = self.key if self.key is not None else archive.files[0]
            return archive[key]  # type: ignore[no-any-return]


class ImageDecoder:
    """Decode an image file into a ``uint8`` array of shape ``(height, width, channels)``.

    Channels are last, in the order of ``mode`` (``"RGB"``: red, green, blue; ``"L"``:
    one grey channel; ``"RGBA"``: with alpha). Needs Pillow (the ``images`` extra).

    Args:
        size: ``(height, width)`` of every output array; ``None`` keeps each image's own
            size (then all images of a dataset must share it).
        mode: Pillow's colour mode to convert to.
        fit: how an image reaches ``size`` (see :data:`Fit`).
        resample: Pillow's resampling filter name (``"bilinear"``, ``"nearest"``,
            ``"bicubic"``, ``"lanczos"``).
        engine: who decodes plain PNG files (see :data:`Engine`); every other file, and
            a plain PNG file imagecodecs refuses, goes through Pillow.

    JPEG files are decoded at a reduced scale first when much larger than ``size``
    (Pillow's ``draft``), which is several times faster than decoding them whole. Plain
    8-bit PNG files already in ``mode`` (RGB, RGBA or grey, not interlaced) skip Pillow's
    file parsing: their chunks are walked here and their pixels inflated and unfiltered
    by imagecodecs (``engine``), else by Pillow's C decoder, with the GIL released; with
    imagecodecs a 32x32 image costs about 60 % of Pillow's CPU, so worker threads
    decode several at once. Both give the same pixels (tested against each other).

    Raises:
        ImportError: ``engine="imagecodecs"`` without imagecodecs, or no Pillow.
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        *,
        mode: str = "RGB",
        fit: Fit = "crop",
        resample: str = "bilinear",
        engine: Engine = "auto",
    ) -> None:
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"ImageDecoder(size={size!r}): give (height, width), both >= 1")
        if fit not in ("resize", "crop", "pad"):
            raise ValueError(f"ImageDecoder(fit={fit!r}): use 'resize', 'crop' or 'pad'")
        if engine not in ("auto", "pillow", "imagecodecs"):
            raise ValueError(
                f"ImageDecoder(engine={engine!r}): use 'auto', 'pillow' or 'imagecodecs'"
            )
        self.size = size
        self.mode = mode
        self.fit = fit
        self.resample = resample
        self.engine = engine
        self._pil = _pillow()
        self._png = None if engine == "pillow" else _imagecodecs_png(engine == "imagecodecs")
        self._filter = getattr(self._pil.Image.Resampling, resample.upper(), None)
        if self._filter is None:
            raise ValueError(f"ImageDecoder(resample={resample!r}): unknown filter")

    def __repr__(self) -> str:
        return (
            f"ImageDecoder(size={self.size}, mode={self.mode!r}, fit={self.fit!r}, "
            f"engine={self.engine!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled by its settings (for worker processes), not by its module references
        options = {
            "mode": self.mode,
            "fit": self.fit,
            "resample": self.resample,
            "engine": self.engine,
        }
        return (_image_decoder, (self.size, options))

    def __call__(self, data: bytes, /) -> NDArray[np.uint8]:
        fast = _plain_png(data, self.mode)
        if fast is not None:
            width, height = fast.width, fast.height
            arr = self._decode_png(fast.minimal(data), width, height)
            if arr is not None:
                if self.size is None or self.size == (height, width):
                    return arr
                img = self._pil.Image.fromarray(arr[:, :, 0] if self.mode == "L" else arr)
            else:
                pixels = fast.pixels(data)
                img = self._pil.Image.frombytes(
                    self.mode, (width, height), pixels, "zip", self.mode
                )
            if self.size is not None:
                img = self._fit(img, self.size)
            arr = np.asarray(img, dtype=np.uint8)
            return arr[:, :, None] if arr.ndim == 2 else arr
        with self._pil.Image.open(io.BytesIO(data)) as img:
            if self.size is not None:
                img.draft(self.mode, (self.size[1], self.size[0]))
            img = img.convert(self.mode)
            if self.size is not None:
                img = self._fit(img, self.size)
            arr = np.asarray(img, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def _decode_png(self, data: bytes, width: int, height: int) -> NDArray[np.uint8] | None:
        """The pixels of a plain PNG file by imagecodecs, channels last; None without it,
        or when it refuses the file or gives another layout (Pillow then decodes it, and
        raises Pillow's error for a broken file)."""
        if self._png is None:
            return None
        try:
            arr = self._png(data)
        except Exception:
            return None
        channels = len(self.mode)
        if arr.ndim == 2 and channels == 1:
            arr = arr[:, :, None]
        if arr.dtype != np.uint8 or arr.shape != (height, width, channels):
            return None  # e.g. a transparent colour (tRNS) expanded to an alpha channel
        return arr

    def _fit(self, img: Any, size: tuple[int, int]) -> Any:
        h, w = size
        if img.size == (w, h):
            return img
        if self.fit == "resize":
            return img.resize((w, h), self._filter)
        iw, ih = img.size
        scale = max(w / iw, h / ih) if self.fit == "crop" else min(w / iw, h / ih)
        sw, sh = max(1, round(iw * scale)), max(1, round(ih * scale))
        img = img.resize((sw, sh), self._filter)
        if self.fit == "crop":
            left, top = (sw - w) // 2, (sh - h) // 2
            return img.crop((left, top, left + w, top + h))
        canvas = self._pil.Image.new(img.mode, (w, h))
        canvas.paste(img, ((w - sw) // 2, (h - sh) // 2))
        return canvas


def _image_decoder(size: tuple[int, int] | None, options: dict[str, Any]) -> ImageDecoder:
    return ImageDecoder(size, **options)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MODES = {0: "L", 2: "RGB", 6: "RGBA"}  # colour type -> mode, at 8 bits per sample


IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class _PlainPng(NamedTuple):
    """Where a plain PNG file's pixels are: its size and its IDAT chunks' byte ranges."""

    width: int
    height: int
    idat: list[tuple[int, int]]  # each whole chunk: length, type, data, CRC

    def pixels(self, data: bytes) -> bytes:
        """The compressed pixels (the IDAT chunks' data, joined)."""
        return b"".join(data[a + 8 : b - 4] for a, b in self.idat)

    def minimal(self, data: bytes) -> bytes:
        """The file with only its IHDR, IDAT and IEND chunks (``data`` itself when it
        has no other): libpng then has no ancillary chunk (a colour profile, gamma, a
        bad CRC of one) to print a warning about on stderr for every image."""
        idat = self.idat
        if (
            idat[0][0] == 33
            and idat[-1][1] + 12 == len(data)
            and all(b == a2 for (_, b), (a2, _) in pairwise(idat))
        ):
            return data
        return b"".join([data[:33], *(data[a:b] for a, b in self.idat), IEND_CHUNK])


def _plain_png(data: bytes, mode: str) -> _PlainPng | None:
    """Where the pixels are of a PNG file that needs no more than inflating and
    unfiltering to be ``mode`` (8 bits per sample, the colour type of ``mode``, not
    interlaced, no palette); None for any other file (Pillow reads it the long way,
    with its checks and errors)."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 8 or interlace or PNG_MODES.get(colour) != mode or not width or not height:
        return None
    pos, end, idat = 33, len(data), []
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > end:
            return None  # truncated: Pillow says so
        if kind == b"IDAT":
            idat.append((pos, pos + 12 + length))
        elif kind == b"IEND":
            return _PlainPng(width, height, idat) if idat else None
        elif not kind[0] & 0x20:  # another critical chunk: not plain
            return None
        pos += 12 + length
    return None


def _imagecodecs_png(required: bool) -> Callable[[bytes], NDArray[Any]] | None:
    try:
        import imagecodecs  # the images-fast extra
    except ImportError as exc:
        if required:
            raise ImportError(
                "ImageDecoder(engine='imagecodecs') needs imagecodecs: "
                "pip install 'aflow-streams[images-fast]'"
            ) from exc
        return None
    return imagecodecs.png_decode


def _pillow() -> Any:
    try:
        import PIL.Image  # the images extra
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "decoding images needs Pillow: pip install 'aflow-streams[images]'"
        ) from exc
    return PIL

"""The table of a dataset: its files, their labels and the class names (see
:func:`~aflow.list_dataset`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ..codecs.images import IMAGE_SUFFIXES
from ._fileid import blake2b

__all__ = ["DATA_SUFFIXES", "DatasetFiles", "Labels", "Split", "list_dataset"]

Labels = str | os.PathLike[str] | Mapping[str, str] | Callable[[str], str]
"""Where labels come from: ``"folders"`` (the first folder under the root names the class),
the path of a label file (lines ``relative/path,label``; ``#`` starts a comment), a mapping
of relative paths to labels, or a function of the relative path returning its label."""

Split = Literal["all", "train", "validation"]
DATA_SUFFIXES = IMAGE_SUFFIXES | {".npy", ".npz"}


@dataclass(frozen=True, slots=True)
class DatasetFiles:
    """The table of a dataset: its files, their labels and the class names.

    Attributes:
        root: the dataset's folder.
        paths: file paths relative to ``root``, with ``/`` separators, sorted.
        labels: ``int32`` array of shape ``(len(paths),)``: each file's index in
            ``classes``.
        classes: the class names, sorted; a label ``y`` names ``classes[y]``.
    """

    root: str
    paths: tuple[str, ...]
    labels: NDArray[np.int32]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def split(self, part: Split, validation: float = 0.2) -> DatasetFiles:
        """The files of one part: ``"validation"`` holds the files whose path hashes
        (BLAKE2b) below ``validation``, ``"train"`` the others, ``"all"`` every file.

        A file stays in its part when files are added or removed and across machines and
        runs (the hash of its relative path decides, not a random draw). The class table
        is kept whole, so labels mean the same in both parts.
        """
        if part == "all":
            return self
        if part not in ("train", "validation") or not 0.0 <= validation <= 1.0:
            raise ValueError(
                f"split({part!r}, validation={validation}): part is 'all', 'train' or "
                "'validation' and validation a fraction within [0, 1]"
            )
        keep = np.array([_unit_hash(p) < validation for p in self.paths], dtype=bool)
        if part == "train":
            keep = ~keep
        kept = tuple(p for p, k in zip(self.paths, keep.tolist(), strict=True) if k)
        return DatasetFiles(self.root, kept, self.labels[keep], self.classes)

    def counts(self) -> dict[str, int]:
        """Files per class name."""
        n = np.bincount(self.labels, minlength=len(self.classes))
        return dict(zip(self.classes, n.tolist(), strict=True))


def _unit_hash(path: str) -> float:
    digest = blake2b(path.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def list_dataset(
    root: str | os.PathLike[str],
    *,
    labels: Labels = "folders",
    suffixes: frozenset[str] | set[str] | None = None,
) -> DatasetFiles:
    """Walk ``root`` and return its table (blocks: call it from a thread in async code).

    Args:
        root: the dataset's folder.
        labels: where labels come from (see :data:`Labels`). With ``"folders"``, files
            directly in ``root`` have no class and are left out.
        suffixes: file suffixes to keep (lower case, with the dot); by default images,
            ``.npy`` and ``.npz``. Hidden files and folders are always left out.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no file to keep.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"list_dataset: {top!r} is not a folder")
    keep = DATA_SUFFIXES if suffixes is None else frozenset(s.lower() for s in suffixes)
    found = [p for p in _walk(top) if os.path.splitext(p)[1].lower() in keep]
    paths, names = _label(top, found, labels)
    if not paths:
        raise FileNotFoundError(
            f"list_dataset: no file with a suffix in {sorted(keep)} under {top!r}"
            + (" inside a class folder" if labels == "folders" else " with a label")
        )
    classes = tuple(sorted(set(names)))
    index = {name: i for i, name in enumerate(classes)}
    ys = np.array([index[n] for n in names], dtype=np.int32)
    return DatasetFiles(top, tuple(paths), ys, classes)


def _walk(top: str) -> list[str]:
    out: list[str] = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, top)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + f for f in files if not f.startswith("."))
    return sorted(out)


def _label(top: str, found: list[str], labels: Labels) -> tuple[list[str], list[str]]:
    if isinstance(labels, str) and labels == "folders":
        pairs = [(p, p.split("/", 1)[0]) for p in found if "/" in p]
    elif isinstance(labels, str | os.PathLike):
        table = _read_label_file(os.fspath(labels))
        pairs = [(p, table[p]) for p in found if p in table]
    elif isinstance(labels, Mapping):
        pairs = [(p, str(labels[p])) for p in found if p in labels]
    else:
        pairs = [(p, str(labels(p))) for p in found]
    return [p for p, _ in pairs], [n for _, n in pairs]


def _read_label_file(path: str) -> dict[str, str]:
    table: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            name, sep, label = text.rpartition("," if "," in text else "\t")
            if not sep or not name.strip() or not label.strip():
                raise ValueError(
                    f"label file {path}, line {number}: expected 'relative/path,label', "
                    f"got {line.rstrip()!r}"
                )
            table[name.strip().replace(os.sep, "/")] = label.strip()
    return table

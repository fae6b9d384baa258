"""fairseq audio manifests (``.tsv``): a root folder, then one ``relative/path<TAB>num_samples``
line per utterance (read as in facebookresearch/fairseq ``fairseq/data/audio/hubert_dataset.py``).

Example (``train.tsv``)::

    /data/LibriSpeech
    train-clean-100/103/1240/103-1240-0000.flac<TAB>225360
    train-clean-100/103/1240/103-1240-0001.flac<TAB>255120

The audio of entry ``i`` is ``root / paths[i]``. As in fairseq the root is used as written, so a
relative root is relative to the CURRENT directory, not to the manifest's folder.
``read_manifest(path, root_override=DIR)`` replaces it. The shared test manifest
(``shared/data/lists/pretrain_manifest.tsv``) has the root ``.``, meaning ``shared/data/``; read
it with ``read_manifest(shared_data / "lists/pretrain_manifest.tsv", root_override=shared_data)``.

Entry ``i`` (0-based) is on line ``i + 2`` of the file. Label files (``.km``) have one line per
entry in the same order, so entry ``i`` is label line ``i + 1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.atomic import atomic_write_text
from speechkit.errors import DataError

__all__ = ["Manifest", "PackedStrings", "read_manifest", "write_manifest"]

_FORMAT = "'relative/path<TAB>num_samples'"


@dataclass
class Manifest:
    """A parsed manifest.

    Attributes:
        root: folder the entry paths are relative to.
        paths: (N,) entry paths as written (relative to ``root``).
        sizes: (N,) int64 lengths in samples, as written.
        source: the manifest file (for error messages); ``None`` when built in memory.
    """

    root: Path
    paths: list[str]
    sizes: np.ndarray
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def audio_path(self, index: int) -> Path:
        """Full path of entry ``index`` (0-based): ``root / paths[index]``."""
        return self.root / self.paths[index]

    @staticmethod
    def line_number(index: int) -> int:
        """1-based line of entry ``index`` in the manifest file (line 1 is the root)."""
        return index + 2

    def where(self, index: int) -> str:
        """``"manifest.tsv:LINE (relative/path)"`` for error messages."""
        name = self.source if self.source is not None else "<manifest>"
        return f"{name}:{self.line_number(index)} ({self.paths[index]})"


def read_manifest(
    path: str | os.PathLike, root_override: str | os.PathLike | None = None
) -> Manifest:
    """Read a fairseq manifest.

    Args:
        path: the ``.tsv`` file: root on line 1, then ``relative/path<TAB>num_samples`` lines.
            Trailing blank lines are ignored.
        root_override: use this folder instead of the root written on line 1.

    Returns:
        ``Manifest(root, paths, sizes, source)``.

    Raises:
        DataError: the file is missing or unreadable, has no root line or no entries, a line
            does not have exactly two tab-separated fields, a size is not a non-negative
            integer, or a blank line sits between entries. Messages name the file and line.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise DataError(f"{path}: manifest not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest ({e})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: the manifest is empty; expected a root folder on line 1")
    root = lines[0].strip()
    if not root or "\t" in root:
        raise DataError(
            f"{path}:1: expected the root folder on line 1, got {lines[0]!r}; the entries "
            f"{_FORMAT} start on line 2"
        )
    if len(lines) == 1:
        raise DataError(f"{path}: the manifest has a root but no entries; expected {_FORMAT} lines")
    paths: list[str] = []
    sizes = np.empty(len(lines) - 1, dtype=np.int64)
    for number, line in enumerate(lines[1:], start=2):
        fields = line.rstrip("\r\n").split("\t")
        if not line.strip():
            raise DataError(f"{path}:{number}: blank line between entries; expected {_FORMAT}")
        if len(fields) != 2:
            raise DataError(
                f"{path}:{number}: expected {_FORMAT} (2 tab-separated fields), got "
                f"{len(fields)}: {line!r}"
            )
        try:
            size = int(fields[1])
        except ValueError:
            size = -1
        if size < 0:
            raise DataError(
                f"{path}:{number}: num_samples must be a non-negative integer, got {fields[1]!r}"
            )
        paths.append(fields[0])
        sizes[number - 2] = size
    root_path = Path(root_override) if root_override is not None else Path(root)
    return Manifest(root=root_path, paths=paths, sizes=sizes, source=path)


def write_manifest(
    path: str | os.PathLike, root: str | os.PathLike, paths: Sequence[str], sizes: Sequence[int]
) -> None:
    """Write a manifest atomically (temporary file in the same folder, fsync, rename).

    Args:
        path: output ``.tsv``.
        root: written on line 1 as given.
        paths, sizes: (N,) entries, sizes in samples.

    Raises:
        DataError: a path holds a tab or newline, or ``paths`` and ``sizes`` differ in length.
    """
    if len(paths) != len(sizes):
        raise DataError(f"{path}: {len(paths)} paths but {len(sizes)} sizes")
    lines = [str(root)]
    for p, n in zip(paths, sizes):
        if any(c in p for c in "\t\r\n"):
            raise DataError(f"{path}: manifest paths cannot hold tabs or newlines: {p!r}")
        lines.append(f"{p}\t{int(n)}")
    atomic_write_text(path, "\n".join(lines) + "\n")


class PackedStrings:
    """An immutable list of strings stored as one UTF-8 byte array plus (N + 1,) offsets.

    DataLoader workers share a forked dataset copy-on-write; touching the items of a Python list
    updates their reference counts, so every worker gradually copies the whole list (the RAM
    growth reported for huge fairseq manifests, facebookresearch/fairseq issue #5640).
    Two numpy arrays are never written to, so they stay shared.

    Args:
        strings: the strings.
    """

    def __init__(self, strings: Sequence[str]):
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        return self._data[self._offsets[index] : self._offsets[index + 1]].tobytes().decode("utf-8")

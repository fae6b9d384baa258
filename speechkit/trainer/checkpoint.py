"""Checkpoint files: atomic writes, safe loading, last/best/numbered files and retention.

Layout of a run directory (``checkpoint.save_dir``)::

    checkpoint_last.pt          newest state (what a restarted or requeued job resumes from)
    checkpoint_best.pt          state with the best validation metric so far
    checkpoint_<E>_<U>.pt       numbered snapshots (epoch E, update U); the newest N are kept

A checkpoint is written once, to ``checkpoint_last.pt`` (temporary file, fsync, ``os.replace``,
fsync of the folder), and the other names are hard links to the same inode made with the same
link-then-rename dance (copies where the file system has no hard links). A crash at any moment
leaves every name pointing at a complete file: the old one or the new one.

Loading uses ``torch.load(weights_only=True)``: speechkit checkpoints hold only tensors and plain
containers, so a file carrying a pickled object (a malicious ``__reduce__``) is refused with
``CheckpointError`` instead of being executed.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from speechkit.atomic import atomic_link, atomic_open
from speechkit.errors import CheckpointError

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_NUMBERED = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    Raises:
        OSError: the folder is not writable or the disk is full (``path`` is then untouched).
    """
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a speechkit checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, or holds anything but tensors and plain
            containers (such a pickle is refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain "
            f"containers, which could execute code ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} is not a speechkit checkpoint (top level {type(obj).__name__})"
        )
    return obj


def numbered_checkpoints(save_dir: Path) -> list[Path]:
    """Numbered checkpoints in ``save_dir``, oldest first (by update, then epoch)."""
    found = []
    for p in save_dir.glob("checkpoint_*_*.pt"):
        m = _NUMBERED.match(p.name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for _, _, p in sorted(found)]


class CheckpointWriter:
    """Writes the run directory's checkpoint files (call on rank 0 only).

    Args:
        save_dir: the run directory.
        keep_last: number of numbered checkpoints to keep (-1: all).
    """

    def __init__(self, save_dir: str | os.PathLike, keep_last: int = 2):
        self.save_dir = Path(save_dir)
        self.keep_last = keep_last

    @property
    def last_path(self) -> Path:
        return self.save_dir / LAST

    def save(
        self, state: dict, epoch: int, num_updates: int, numbered: bool, is_best: bool
    ) -> Path:
        """Write ``state`` as checkpoint_last and link the numbered / best names to it."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, self.last_path)
        if numbered:
            atomic_link(self.last_path, self.save_dir / f"checkpoint_{epoch}_{num_updates}.pt")
            self.prune()
        if is_best:
            atomic_link(self.last_path, self.save_dir / BEST)
        return self.last_path

    def prune(self) -> None:
        if self.keep_last < 0:
            return
        old = numbered_checkpoints(self.save_dir)
        for p in old[: max(len(old) - self.keep_last, 0)]:
            p.unlink(missing_ok=True)

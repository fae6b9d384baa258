"""Base of the tasks whose items are made on the fly from a speaker list: one item per listed
utterance per epoch (its mixing or cropping seeded by ``[seed, epoch, index]`` inside the
dataset), and a fixed, seeded set of validation items.

Used by ``target_speaker_separation`` (mixtures) and ``voicevector_enrolment_distillation``
(enrolment clips). A subclass sets ``self.train_dataset`` and ``self.valid_dataset`` (or None)
in its constructor; its config has ``root``, ``metadata_format``, ``default_batch_size`` and
``valid_batch_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit.data.epoch_iterator import Batching
from speechkit.data.voicevector_metadata import separation_entries
from speechkit.errors import ConfigError
from speechkit.tasks.base import Task

__all__ = ["SpeakerListItemsTask"]


class SpeakerListItemsTask(Task):
    """Splits, batches and validation shared by the on-the-fly speaker-list tasks (see the
    module docstring)."""

    train_dataset: Any
    valid_dataset: Any = None

    def _entries(self, path: str) -> list[tuple[str, str, str, int]] | None:
        """The list's rows for a JSON ``metadata_format``; ``None``: a speechkit list."""
        if self.cfg.metadata_format == "speechkit":
            return None
        return separation_entries(path, self.cfg.root, str(self.cfg.metadata_format))

    def has_split(self, split: str) -> bool:
        return split == "train" or (split == "valid" and self.valid_dataset is not None)

    def load_dataset(self, split: str) -> Any:
        if split == "train":
            return self.train_dataset
        if split == "valid" and self.valid_dataset is not None:
            return self.valid_dataset
        raise ValueError(
            f"{getattr(self, '__speechkit_name__', type(self).__name__)} has no '{split}' dataset"
        )

    def _size(self, batch_size: int | None) -> int:
        size = batch_size or self.cfg.default_batch_size
        if size <= 0:
            raise ConfigError(f"dataset.batch_size must be positive, got {size}")
        return size

    def set_epoch(self, split: str, epoch: int) -> None:
        self.dataset(split).set_epoch(epoch)

    def batches(
        self,
        split: str,
        epoch: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[int]]:
        """Training: every utterance once, shuffled by ``(seed, epoch)``, in batches of
        ``batch_size`` (the last may be smaller); the items' randomness follows ``[seed, epoch,
        index]``. Validation: the fixed items in order."""
        dataset = self.dataset(split)
        size = self._size(batch_size)
        if split == "train":
            order = np.random.default_rng([self.seed, epoch]).permutation(len(dataset)).tolist()
        else:
            order = list(range(len(dataset)))
        return [order[i : i + size] for i in range(0, len(order), size)]

    @torch.no_grad()
    def validate_fixed(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None,
        count_key: str,
    ) -> dict[str, float] | None:
        """Means over the fixed validation items, in batches of ``valid_batch_size`` (0: the
        training batch size) shared out by :meth:`Task.validate_batches`, so the numbers are the
        same on every rank and for every world size; ``count_key`` reports the item count.
        ``None`` without a validation set."""
        if self.valid_dataset is None:
            return None
        dataset = self.valid_dataset
        size = self._size(self.cfg.valid_batch_size or (batching and batching.batch_size))
        batches = [
            list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)
        ]
        metrics = self.validate_batches(dataset, batches, model, criterion, device, env, batching)
        metrics[count_key] = float(len(dataset))
        return metrics

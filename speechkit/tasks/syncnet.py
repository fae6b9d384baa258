"""``syncnet``: self-supervised audio-visual training (joonson/syncnet_trainer, the VoxSRC 2020
self-supervised baseline, ``trainSyncNet.py`` / ``SyncNetDist.py``; Nagrani et al., "Disentangled
speech embeddings using cross-modal self-supervision", ICASSP 2020) on speechkit's trainer.

Data: lists of ``video.mp4 audio.wav offset num_frames`` lines (``scripts/make_syncnet_list.py``;
two-field ``video audio`` lines also work, see ``speechkit.data.syncnet_dataset``), paths
relative to ``task.root``. A batch is ``{"audio": (B, 4 * max_frames * 160 + 240) float32 in
[-1, 1], "video": (B, 3, max_frames, H, W) float32 0-255 BGR}`` for the ``syncnet`` criterion.

Epochs: ``num_train_per_epoch`` random clips per epoch (the reference's ``nTrainPerEpoch``,
100,000 on VoxCeleb2; null: every clip), shuffled per ``(common.seed, epoch)`` into batches of
``dataset.batch_size`` clips (default 30), the last partial batch dropped. Validation
(``validate``): the same losses and accuracies as training on the middle crop of each clip of
``valid_list`` (``num_valid`` caps it to a fixed random subset, the reference's
``nTestPerEpoch``), in fixed batches of ``valid_batch_size`` shared out across ranks, so the
numbers do not depend on the world size. Speaker-verification EER of the audio identity
embedding (section 2.5) is measured with ``scripts/eval_eer.py``, not during training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit.data.epoch_iterator import Batching
from speechkit.data.syncnet_dataset import SyncNetDataset, read_syncnet_list
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError
from speechkit.registry import register_task
from speechkit.tasks.base import Task

logger = logging.getLogger(__name__)


@dataclass
class SyncNetTaskConfig(SpeechkitDataclass):
    root: str = "."
    """Folder the list paths are relative to."""
    train_list: str = "???"
    """``video.mp4 audio.wav offset num_frames`` per line (``scripts/make_syncnet_list.py``)."""
    valid_list: str | None = None
    """Validation list in the same format; null: no validation."""
    max_frames: int = 50
    """Video frames per crop (25 fps); the audio crop is ``4 * max_frames * 160 + 240``
    samples."""
    image_size: int | None = None
    """Resize frames to this many pixels square; null keeps them (VoxCeleb2: 224). The
    ``syncnet_fbank`` lip CNN needs at least 211; a list mixing frame sizes needs it set."""
    num_train_per_epoch: int | None = None
    """Random clips per epoch (``nTrainPerEpoch``); null: all clips."""
    num_valid: int | None = None
    """Validate on at most this many clips (a fixed random subset); null: all."""
    valid_seed: int = 0
    """Seed of the ``num_valid`` subset (fixed: independent of ``common.seed`` and epoch)."""
    default_batch_size: int = 30
    """Clips per batch and rank when ``dataset.batch_size`` is null (the reference's 30)."""
    valid_batch_size: int | None = None
    """Clips per validation batch (the identity loss contrasts the clips of a batch, so its
    value depends on this); null: ``default_batch_size``."""
    fps: float = 25.0
    """Required video frame rate (640 samples of 16 kHz audio per frame)."""
    check_files: bool = True
    """Check that every listed file exists before training starts."""


@register_task(
    "syncnet",
    dataclass=SyncNetTaskConfig,
    default_model="syncnet_fbank",
    default_criterion="syncnet",
)
class SyncNetTask(Task):
    """SyncNet (identity + content) training on talking-face clips.

    Raises (at construction, before any model is built):
        ConfigError: no ``train_list``, ``max_frames < 1``, a non-positive ``image_size``,
            ``num_train_per_epoch`` or ``num_valid``.
        DataError: missing or malformed lists (``file:line``), listed files that do not exist,
            no clip long enough for ``max_frames``, or a first WAV not at 16 kHz.
    """

    required = ("train_list",)
    needs = (
        "task.train_list=FILE with 'video.mp4 audio.wav offset num_frames' lines "
        "(scripts/make_syncnet_list.py; paths relative to task.root) and optionally "
        "task.valid_list=FILE"
    )

    def __init__(self, cfg: SyncNetTaskConfig, seed: int = 1):
        super().__init__(cfg, seed)
        if cfg.max_frames < 1:
            raise ConfigError(f"task.max_frames must be >= 1, got {cfg.max_frames}")
        for key in ("image_size", "num_train_per_epoch", "num_valid"):
            value = getattr(cfg, key)
            if value is not None and value < 1:
                raise ConfigError(f"task.{key} must be positive or null, got {value}")
        self.lists = {"train": cfg.train_list}
        if cfg.valid_list:
            self.lists["valid"] = cfg.valid_list
        self._clips = {}
        for split, path in self.lists.items():
            clips = read_syncnet_list(path, cfg.root, cfg.check_files, cfg.fps)
            self._check_sample_rate(path, clips[0])
            self._clips[split] = clips
        # build the datasets now: a list with no usable clip fails before the model is built
        for split in self.lists:
            self.dataset(split)

    @staticmethod
    def _check_sample_rate(list_path: str, clip: Any) -> None:
        from speechkit.data.audio import audio_info

        try:
            rate = audio_info(clip.audio).sample_rate
        except DataError as e:
            raise DataError(f"{list_path}:{clip.line}: {e}") from None
        if rate != 16000:
            raise DataError(
                f"{list_path}:{clip.line}: {clip.audio}: sample rate is {rate} Hz, expected "
                "16000 Hz (640 samples per 25 fps frame)"
            )

    # -- data -----------------------------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        return split in self.lists

    def load_dataset(self, split: str) -> SyncNetDataset:
        if split not in self.lists:
            raise ValueError(f"syncnet has no '{split}' split (task.valid_list is not set)")
        cfg = self.cfg
        dataset = SyncNetDataset(
            self._clips[split],
            max_frames=cfg.max_frames,
            eval_mode=split != "train",
            image_size=cfg.image_size,
            expected_fps=cfg.fps,
            list_path=self.lists[split],
            seed=self.seed if split == "train" else cfg.valid_seed,
        )
        if dataset.num_dropped:
            logger.info(
                "%s: %d of %d clips are shorter than max_frames + 4 + |offset| and are skipped",
                self.lists[split],
                dataset.num_dropped,
                dataset.num_dropped + len(dataset),
            )
        return dataset

    def set_epoch(self, split: str, epoch: int) -> None:
        self.dataset(split).set_epoch(epoch)

    def batches(
        self,
        split: str,
        epoch: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[int]]:
        """Batches of ``batch_size`` clip indices, a deterministic function of (seed, epoch).

        Train: a random permutation per ``(seed, epoch)``, cut to ``num_train_per_epoch``,
        partial last batch dropped. Valid: a fixed subset (``num_valid``, drawn with
        ``valid_seed``) in list order; a short last batch is dropped unless it is the only one.

        Raises:
            ConfigError: a non-positive batch size.
            DataError: fewer training clips than one batch.
        """
        dataset = self.dataset(split)
        size = batch_size or self.cfg.default_batch_size
        if size <= 0:
            raise ConfigError(f"dataset.batch_size must be positive, got {size}")
        n = len(dataset)
        if split == "train":
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            if self.cfg.num_train_per_epoch:
                order = order[: self.cfg.num_train_per_epoch]
            usable = len(order) - len(order) % size
            if usable == 0:
                raise DataError(
                    f"{self.lists[split]}: {len(order)} usable clips, fewer than one batch of "
                    f"{size}; lower dataset.batch_size"
                )
            order = order[:usable].tolist()
            return [order[i : i + size] for i in range(0, usable, size)]
        order = np.arange(n)
        if self.cfg.num_valid and self.cfg.num_valid < n:
            pick = np.random.default_rng([self.cfg.valid_seed, 0]).permutation(n)
            pick = pick[: self.cfg.num_valid]
            order = np.sort(pick)
        order = order.tolist()
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if len(batches) > 1 and len(batches[-1]) < size:
            # a short batch would weigh as much as a full one in the per-batch mean, and its
            # identity task (a choice among fewer clips) would be easier
            batches.pop()
        return batches

    def validate(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float] | None:
        """The training losses and accuracies over the fixed validation batches, identical on
        every rank and for every world size (``Task.validate_batches``); ``None`` without a
        ``valid_list``."""
        if not self.has_split("valid"):
            return None
        size = self.cfg.valid_batch_size or self.cfg.default_batch_size
        self.set_epoch("valid", 1)
        batches = self.batches("valid", 1, size)
        return self.validate_batches(
            self.dataset("valid"), batches, model, criterion, device, env, batching
        )

"""``hubert``: HuBERT pretraining on k-means labels (facebookresearch/fairseq
``fairseq/tasks/hubert_pretraining.py`` and ``fairseq/data/audio/hubert_dataset.py``; Hsu et al.,
"HuBERT: Self-Supervised Speech Representation Learning by Masked Prediction of Hidden Units",
IEEE/ACM TASLP 2021).

Files (fairseq's layout): ``{data}/{split}.tsv`` manifests (root folder on line 1, then
``relative/path<TAB>num_samples``), ``{label_dir}/{split}.{label}`` label files (one line per
manifest entry) and ``{label_dir}/dict.{label}.txt`` for every ``label`` in ``labels``. The
``train`` split is required; ``valid`` is used when its manifest exists.

The task is the truth about the labels: ``build_model`` sets the model's ``num_classes`` (the
dictionary sizes, fairseq's 4 specials included: 504 for 500 clusters), ``label_rate`` and
``sample_rate`` from the task config, logging any value it changes, and writes them back into
the composed config so the saved ``config.yaml`` and checkpoints describe the model built.

Batches are fairseq's (``HubertDataset.batches``: sorted by length, packed by ``max_tokens``
samples per batch and rank, ``required_batch_size_multiple``); the crop starts are a function of
(``common.seed``, epoch, item ids). Masks: ``train_step`` / ``valid_step`` put a ``mask_seed``
derived from (``common.seed``, update number, item ids) into the sample, and the criterion seeds
the model's mask generator with it, so a resumed run draws the same masks as an uninterrupted one.

``task.shards=DIR`` streams the training split from tar shards packed from the train manifest
and its label files (``speechkit-pack-shards --manifest``; wespeaker's shard pipeline) instead of
``{data}/train.tsv``: ``dataset.batch_size`` utterances per batch and rank (a stream cannot be
sorted by length, so ``max_tokens`` is refused), collated as above (``HubertCollater``);
``min_sample_size`` / ``max_keep_size`` apply at packing (``--min-samples``, ``--max-samples``).
``task.data`` / ``label_dir`` still hold the dictionaries (and the ``valid`` split).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from speechkit.data.epoch_iterator import (
    Batching,
    StreamBatches,
    check_data_resume,
    shards_state,
    stream_layout,
)
from speechkit.data.hubert_dataset import HubertCollater, HubertDataset
from speechkit.data.labels import LabelDictionary
from speechkit.data.shard_dataset import HubertItems, ShardDataset
from speechkit.data.shards import ShardIndex
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError
from speechkit.registry import MODEL_REGISTRY, ChoiceEnum, register_task
from speechkit.tasks.base import Task

__all__ = ["HubertPretrainingConfig", "HubertPretrainingTask", "mask_seed"]

logger = logging.getLogger(__name__)

_TRAIN_STREAM, _VALID_STREAM = 1, 2


def mask_seed(seed: int, stream: int, update_num: int, ids: torch.Tensor | list[int]) -> int:
    """A 63-bit seed from (seed, stream, update number, batch item ids) via numpy SeedSequence.

    Raises:
        ValueError: a negative value (SeedSequence takes non-negative integers).
    """
    id_list = ids.tolist() if torch.is_tensor(ids) else list(ids)
    entropy = [int(seed), int(stream), int(update_num), *map(int, id_list)]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


# functional form: ``raise`` is a keyword, and a member's name must be its value
LengthCheck = ChoiceEnum("LengthCheck", [(v, v) for v in ("raise", "warn", "ignore")])
LengthCheck.__doc__ = """What an audio/label duration mismatch does: ``raise``, ``warn``
(fairseq's behaviour) or ``ignore``."""


@dataclass
class HubertPretrainingConfig(SpeechkitDataclass):
    data: str = "???"
    """Folder with the ``{split}.tsv`` manifests."""
    label_dir: str | None = None
    """Folder with ``{split}.{label}`` and ``dict.{label}.txt`` (null: ``data``)."""
    labels: list[str] = field(default_factory=lambda: ["km"])
    """Label streams (file extensions); one prediction head each."""
    label_rate: float = 50.0
    """Labels per second: 100 for MFCC labels (iteration 1), 50 for HuBERT-feature labels."""
    sample_rate: int = 16000
    """Audio rate in Hz; files at another rate are an error unless ``resample``."""
    normalize: bool = False
    """Per-utterance layer-normalised waveforms (HuBERT Large / X-Large)."""
    max_sample_size: int | None = 250000
    """Longest crop in samples (15.6 s)."""
    min_sample_size: int | None = 32000
    """Shorter manifest entries are dropped (2 s)."""
    max_keep_size: int | None = None
    """Longer manifest entries are dropped (null: none)."""
    random_crop: bool = True
    """Random crop start per item (else crops start at sample 0)."""
    pad_audio: bool = False
    """Pad to the longest item of a batch instead of cropping to the shortest."""
    root_override: str | None = None
    """Audio root replacing the manifests' line 1 (for manifests whose root is relative)."""
    resample: bool = False
    """Resample files at another rate (soxr) instead of raising."""
    length_check: LengthCheck = "raise"
    """Audio/label duration mismatch > ``length_tol`` s: ``raise``, ``warn`` (fairseq) or
    ``ignore``."""
    length_tol: float = 0.1
    required_batch_size_multiple: int = 8
    """Batch sizes are multiples of this when possible (fairseq's default 8)."""
    default_max_tokens: int = 1400000
    """Samples per batch and rank when ``dataset.max_tokens`` and ``batch_size`` are null
    (fairseq Base: 1,400,000 = 87.5 s)."""
    shards: str | None = None
    """Folder of tar shards packed from the train manifest and label files, streamed instead
    of ``{data}/train.tsv`` (task ``hubert`` only; needs ``dataset.batch_size``)."""
    shard_buffer: int = 1000
    """Shuffling-buffer size in utterances, per DataLoader worker (``shards`` only)."""


@register_task(
    "hubert", dataclass=HubertPretrainingConfig, default_model="hubert", default_criterion="hubert"
)
class HubertPretrainingTask(Task):
    """HuBERT pretraining: manifests + frame labels -> masked prediction.

    Raises (at construction):
        ConfigError: ``task.data`` not set, no label stream, a bad ``label_rate``, or
            ``shards`` whose label streams are not ``task.labels``.
        DataError: missing ``train.tsv``, label file or dictionary (the path is named), or a
            bad shard index.
    """

    required = ("data",)
    needs = (
        "task.data=DIR with train.tsv/valid.tsv manifests and task.label_dir=DIR (default: "
        "task.data) with train.km/valid.km and dict.km.txt (one set per task.labels entry)"
    )

    def __init__(self, cfg: HubertPretrainingConfig, seed: int = 1):
        super().__init__(cfg, seed)
        if not cfg.labels:
            raise ConfigError("task.labels is empty; expected e.g. [km]")
        if cfg.label_rate == 0:
            raise ConfigError("task.label_rate must be > 0 (or < 0 for sequence labels)")
        self.data_dir = Path(cfg.data)
        self.label_dir = Path(cfg.label_dir) if cfg.label_dir else self.data_dir
        self.shard_index = self._load_shard_index() if cfg.shards else None
        self.collater: HubertCollater | None = None
        if self.shard_index is not None:
            self.dictionaries = [
                LabelDictionary.load(self.label_dir / f"dict.{label}.txt") for label in cfg.labels
            ]
            return
        if not self.manifest_path("train").is_file():
            raise DataError(f"{self.manifest_path('train')}: training manifest not found")
        self.dictionaries = [
            LabelDictionary.load(self.label_dir / f"dict.{label}.txt") for label in cfg.labels
        ]
        for label in cfg.labels:
            path = self.label_dir / f"train.{label}"
            if not path.is_file():
                raise DataError(f"{path}: label file not found (one line per train.tsv entry)")

    def _load_shard_index(self) -> ShardIndex:
        """The checked index of ``task.shards`` (a manifest pack with ``task.labels``)."""
        cfg = self.cfg
        if type(self) is not HubertPretrainingTask:
            name = getattr(type(self), "__speechkit_name__", type(self).__name__)
            raise ConfigError(f"task.shards is supported by task hubert, not {name}")
        if cfg.shard_buffer < 0:
            raise ConfigError(f"task.shard_buffer must be >= 0, got {cfg.shard_buffer}")
        index = ShardIndex.load(cfg.shards)
        if index.kind != "manifest":
            raise DataError(
                f"{index.path}: packed from a {index.kind} list; task hubert needs shards "
                "packed from a manifest and its label files (--manifest --labels)"
            )
        if list(index.label_streams) != list(cfg.labels):
            raise ConfigError(
                f"{index.path}: label streams {index.label_streams}, but task.labels="
                f"{list(cfg.labels)}; set task.labels to the packed streams, in their order"
            )
        if index.sample_rate != cfg.sample_rate and not cfg.resample:
            raise ConfigError(
                f"{index.path}: packed at {index.sample_rate} Hz, task.sample_rate="
                f"{cfg.sample_rate}; set task.sample_rate or task.resample=true"
            )
        index.check_files()
        return index

    def check_resume(self, state: dict, env: Any, batching: Batching) -> None:
        """Called by the trainer with the checkpoint it resumes from: refuse a mid-epoch resume
        of a manifest run's checkpoint (``task.data``) from shards or the reverse, and, with
        ``shards``, one under another world size, worker count, buffer or batch size, or from
        another shard index (the stream's order depends on them;
        :func:`speechkit.data.epoch_iterator.check_data_resume`).

        Raises:
            ConfigError: naming the values or data sources that differ.
        """
        layout = stream_layout(env.world_size, batching, self.cfg.shard_buffer)
        check_data_resume(state, self.cfg, "data", layout, self.shard_index)

    def data_state(self) -> dict[str, Any]:
        """The shard index digest (``shards_state``); nothing for a manifest run."""
        return shards_state(self.shard_index)

    # -- building -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> list[int]:
        """Dictionary sizes (K + 4 per label stream)."""
        return [d.num_classes for d in self.dictionaries]

    def model_overrides(self) -> dict[str, Any]:
        """Model config values the task decides."""
        return {
            "num_classes": self.num_classes,
            "label_rate": float(self.cfg.label_rate),
            "sample_rate": int(self.cfg.sample_rate),
        }

    def build_model(self, cfg: Any) -> nn.Module:
        """Build the model with ``model_overrides`` applied (and written back into ``cfg``)."""
        name, obj = MODEL_REGISTRY.resolve_config(cfg)
        changes = {}
        for key, value in self.model_overrides().items():
            if not hasattr(obj, key):
                continue
            if getattr(obj, key) != value:
                changes[key] = value
                logger.info("model.%s: %s -> %s (from the task)", key, getattr(obj, key), value)
            setattr(obj, key, value)
        if changes and isinstance(cfg, DictConfig) and not OmegaConf.is_readonly(cfg):
            with open_dict(cfg):
                for key, value in changes.items():
                    cfg[key] = value
        normalized_input = getattr(obj, "extractor_mode", "default") == "layer_norm"
        if normalized_input != self.cfg.normalize:
            logger.warning(
                "task.normalize=%s with model.extractor_mode=%s: fairseq pairs normalize=true "
                "with the layer_norm extractor (Large) and false with default (Base)",
                self.cfg.normalize,
                getattr(obj, "extractor_mode", None),
            )
        return MODEL_REGISTRY.build(obj)

    # -- data -----------------------------------------------------------------------------------
    def manifest_path(self, split: str) -> Path:
        return self.data_dir / f"{split}.tsv"

    def label_paths(self, split: str) -> list[Path]:
        return [self.label_dir / f"{split}.{label}" for label in self.cfg.labels]

    def has_split(self, split: str) -> bool:
        if split == "train" and self.shard_index is not None:
            return True
        return self.manifest_path(split).is_file() and all(
            p.is_file() for p in self.label_paths(split)
        )

    def dataset_kwargs(self) -> dict[str, Any]:
        """``HubertDataset`` options from the task config."""
        cfg = self.cfg
        return {
            "sample_rate": cfg.sample_rate,
            "max_sample_size": cfg.max_sample_size,
            "min_sample_size": cfg.min_sample_size,
            "random_crop": cfg.random_crop,
            "pad_audio": cfg.pad_audio,
            "normalize": cfg.normalize,
            "max_keep_size": cfg.max_keep_size,
            "seed": self.seed,
            "resample": cfg.resample,
            "length_tol": cfg.length_tol,
            "length_check": cfg.length_check,
            "root_override": cfg.root_override,
        }

    def check_split(self, split: str) -> None:
        """Raise ``DataError`` naming the first missing file of ``split``."""
        for path in [self.manifest_path(split), *self.label_paths(split)]:
            if not path.is_file():
                raise DataError(f"{path}: not found (split {split!r})")

    def load_dataset(self, split: str) -> HubertDataset | ShardDataset:
        cfg = self.cfg
        if split == "train" and self.shard_index is not None:  # placed by the epoch iterator
            n = len(cfg.labels)
            self.collater = HubertCollater(
                [cfg.label_rate] * n,
                cfg.sample_rate,
                cfg.max_sample_size,
                cfg.random_crop,
                cfg.pad_audio,
                self.seed,
            )
            items = HubertItems(self.dictionaries, cfg.normalize)
            return ShardDataset(
                self.shard_index,
                items,
                buffer_size=cfg.shard_buffer,
                seed=self.seed,
                sample_rate=cfg.sample_rate,
                resample=cfg.resample,
            )
        self.check_split(split)
        return HubertDataset(
            self.manifest_path(split),
            self.label_paths(split),
            self.cfg.label_rate,
            self.dictionaries,
            **self.dataset_kwargs(),
        )

    def set_epoch(self, split: str, epoch: int) -> None:
        self.dataset(split).set_epoch(epoch)
        if split == "train" and self.collater is not None:
            self.collater.set_epoch(epoch)

    def batches(
        self,
        split: str,
        epoch: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[Any]] | StreamBatches:
        """fairseq batches of ``split`` (shuffled for ``train``); with ``shards`` the train
        split is a :class:`StreamBatches` of ``batch_size`` utterances.

        Raises:
            ConfigError: ``shards`` with ``max_tokens`` set or no ``batch_size``.
        """
        if split == "train" and self.shard_index is not None:
            if max_tokens is not None or not batch_size:
                raise ConfigError(
                    f"task.shards streams utterances unsorted, so batches have a fixed size: set "
                    f"dataset.batch_size (got {batch_size}) and dataset.max_tokens=null (got "
                    f"{max_tokens})"
                )
            self.dataset(split)  # builds the collater
            return StreamBatches(batch_size, self.collater.collater)
        if max_tokens is None and batch_size is None:
            max_tokens = self.cfg.default_max_tokens
        return self.dataset(split).batches(
            max_tokens,
            batch_size,
            seed=self.seed,
            epoch=epoch,
            required_batch_size_multiple=self.cfg.required_batch_size_multiple,
            shuffle=split == "train",
        )

    # -- steps ----------------------------------------------------------------------------------
    def train_step(
        self, sample: Any, model_and_criterion: nn.Module, update_num: int
    ) -> tuple[torch.Tensor, int, dict]:
        sample["mask_seed"] = mask_seed(self.seed, _TRAIN_STREAM, update_num, sample["id"])
        return model_and_criterion(sample)

    def valid_step(
        self, sample: Any, model: nn.Module, criterion: nn.Module
    ) -> tuple[torch.Tensor, int, dict]:
        # the same masks at every validation: losses are comparable across updates
        sample["mask_seed"] = mask_seed(self.seed, _VALID_STREAM, 0, sample["id"])
        return criterion(model, sample)

"""``contentvec``: ContentVec pretraining (reference task ``contentvec_pretraining``,
auspicious3000/contentvec ``contentvec/tasks/contentvec_pretraining.py`` and
``run_pretrain_single.sh``; Qian et al., "ContentVec: An Improved Self-Supervised Speech
Representation by Disentangling Speakers", ICML 2022).

The ``hubert`` task's files, plus ``task.spk2info``: the speaker table (``spk2info.dict``, the
reference's pickle or speechkit's format; ``scripts/make_spk2info.py`` writes it) with a
``train`` split and, for validation, a ``valid`` split. The speaker of a manifest entry is path
component ``speaker_path_index`` (1 for LibriSpeech's ``subset/speaker/chapter/file``).

Training items are two independently perturbed views of each utterance (Praat "Change gender"
and a random 10-band EQ, ``task.perturb``), cropped at the same start, with the speaker's
embedding (``ContentVecDataset``); validation uses the original and a fixed "Change gender"
view. ``build_model`` also sets the model's ``spk_dim`` from the table.

    python -m speechkit.train task=contentvec \\
        task.data=DIR task.label_dir=DIR task.spk2info=spk2info.dict ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit.data.contentvec_dataset import ContentVecDataset
from speechkit.data.contentvec_transforms import ContentVecPerturbConfig
from speechkit.data.spk2info import load_spk2info
from speechkit.errors import DataError
from speechkit.registry import register_task
from speechkit.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

__all__ = ["ContentVecPretrainingConfig", "ContentVecPretrainingTask"]


@dataclass
class ContentVecPretrainingConfig(HubertPretrainingConfig):
    spk2info: str = "???"
    """Speaker table with ``train`` (and ``valid``) splits."""
    speaker_path_index: int = 1
    """Manifest path component holding the speaker id (2 for ``shared/data``'s
    ``speech/<corpus>/<speaker>/...`` manifest)."""
    crop: bool = True
    """Read at most the manifest's ``num_samples`` of each file (the reference's scripts)."""
    perturb: ContentVecPerturbConfig = field(default_factory=ContentVecPerturbConfig)
    """Perturbation switches and ranges (defaults: the reference's)."""


@register_task(
    "contentvec",
    dataclass=ContentVecPretrainingConfig,
    default_model="contentvec",
    default_criterion="contentvec",
)
class ContentVecPretrainingTask(HubertPretrainingTask):
    """ContentVec pretraining: HuBERT's data + two perturbed views + speaker embeddings.

    Raises (at construction):
        ConfigError: ``task.spk2info`` not set; plus the ``hubert`` task's errors.
        DataError: unreadable ``spk2info`` or one without a ``train`` split.
    """

    required = ("data", "spk2info")
    needs = (
        HubertPretrainingTask.needs + ", and task.spk2info=FILE with train/valid speaker "
        "embeddings (scripts/make_spk2info.py)"
    )

    def __init__(self, cfg: ContentVecPretrainingConfig, seed: int = 1):
        super().__init__(cfg, seed)
        self.spk2info = load_spk2info(cfg.spk2info)
        if "train" not in self.spk2info or not self.spk2info["train"]:
            raise DataError(
                f"{cfg.spk2info}: no 'train' speakers (splits: {sorted(self.spk2info)})"
            )
        first = next(iter(self.spk2info["train"].values()))
        self.spk_dim = int(first.spk_emb.shape[-1])

    def model_overrides(self) -> dict[str, Any]:
        return {**super().model_overrides(), "spk_dim": self.spk_dim}

    def build_model(self, cfg: Any) -> nn.Module:
        """HuBERT's ``build_model``; with ``model.cond_layer_norm_init=mean_speaker`` the
        conditional norms start at unit gain for the mean ``train`` speaker embedding."""
        model = super().build_model(cfg)
        if getattr(model.cfg, "cond_layer_norm_init", "bert") == "mean_speaker":
            embs = np.stack([i.spk_emb for i in self.spk2info["train"].values()])
            model.init_conditional_norms(torch.from_numpy(embs.astype(np.float32)).mean(0))
        return model

    def has_split(self, split: str) -> bool:
        return super().has_split(split) and split in self.spk2info

    def load_dataset(self, split: str) -> ContentVecDataset:
        self.check_split(split)
        if split not in self.spk2info:
            raise DataError(
                f"{self.cfg.spk2info}: no {split!r} split (it has {sorted(self.spk2info)}); "
                "rebuild it with scripts/make_spk2info.py --valid-manifest"
            )
        cfg = self.cfg
        return ContentVecDataset(
            self.manifest_path(split),
            self.label_paths(split),
            cfg.label_rate,
            self.dictionaries,
            spk2info=self.spk2info,
            split=split,
            perturb=cfg.perturb,
            speaker_path_index=cfg.speaker_path_index,
            crop=cfg.crop,
            **self.dataset_kwargs(),
        )

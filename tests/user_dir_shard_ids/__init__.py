"""A test extension, loaded with ``common.user_dir=tests/user_dir_shard_ids``: the
``speaker_verification`` task that also writes down which items each rank trains on.

Task ``speaker_verification_ids`` (config: ``speaker_verification``'s plus ``ids_dir``) appends
one line per training micro-batch to ``<ids_dir>/rank<R>.txt``: the update number, then the
batch's item ids (the packed list's entry numbers), space-separated. The DDP shard test reads
the files back to check the rank split and the resumed order (tests/test_shards_ddp.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from speechkit.registry import register_task
from speechkit.tasks.speaker_verification import (
    SpeakerVerificationConfig,
    SpeakerVerificationTask,
)


@dataclass
class SpeakerIdsConfig(SpeakerVerificationConfig):
    ids_dir: str = "???"
    """Folder of the per-rank id logs (created if missing)."""


@register_task(
    "speaker_verification_ids",
    dataclass=SpeakerIdsConfig,
    default_model="resnet_se34l",
    default_criterion="aamsoftmax",
)
class SpeakerIdsTask(SpeakerVerificationTask):
    """``speaker_verification`` that logs each training batch's ids per rank."""

    required = ("ids_dir",)

    def train_step(self, sample, model_and_criterion, update_num):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        folder = Path(self.cfg.ids_dir)
        folder.mkdir(parents=True, exist_ok=True)
        ids = " ".join(str(i) for i in sample["id"].reshape(-1).tolist())
        with open(folder / f"rank{rank}.txt", "a") as f:
            f.write(f"{update_num} {ids}\n")
        return super().train_step(sample, model_and_criterion, update_num)

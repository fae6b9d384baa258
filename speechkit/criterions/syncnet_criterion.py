"""SyncNet content (sync) + identity losses with learnable scaled cosine logits.

References:
    * Nagrani, Chung, Albanie & Zisserman, "Disentangled speech embeddings using cross-modal
      self-supervision", ICASSP 2020 (content and identity losses); VoxSRC 2020 baseline
      (joonson/syncnet_trainer), which uses scaled cosine similarities instead of the paper's
      Euclidean distances.
    * Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops.
    * joonson/syncnet_trainer ``SyncNetDist.py``: ``SyncNet.sync_loss`` and
      ``train_network`` (losses) and ``LossScale`` (the ``__L__.{wI,bI,wC,bC}`` keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import register_criterion

__all__ = ["SyncNetCriterionConfig", "SyncNetCriterion"]


@dataclass
class SyncNetCriterionConfig(SpeechkitDataclass):
    """``syncnet`` criterion: loss weights, initial logit scale/bias, the identity-frame seed."""

    alpha_content: float = 1.0  # the reference's alphaC
    alpha_identity: float = 1.0  # alphaI; 0 gives a lip-sync-only model
    init_w: float = 10.0
    init_b: float = -5.0
    seed: int = 1  # seeds the choice of the visual identity frame (with the update number)


def _cosine_logits(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, bias: torch.Tensor):
    """``w * cos(a_i, b_j) + bias`` for a (..., P, D), b (..., Q, D) -> (..., P, Q)."""
    a = F.normalize(a, dim=-1, eps=1e-8)
    b = F.normalize(b, dim=-1, eps=1e-8)
    return torch.matmul(a, b.transpose(-1, -2)) * w + bias


@register_criterion("syncnet", dataclass=SyncNetCriterionConfig)
class SyncNetCriterion(Criterion):
    """Content loss + identity loss of syncnet_trainer, for a ``syncnet_fbank`` model.

    ``forward(model, sample)`` with ``sample["audio"]`` (B, S) float32 16 kHz and
    ``sample["video"]`` (B, 3, F, H, W) float32 0-255 (S = 4 F 160 + 240):

    * content: per clip, logits ``S[t, s] = wC * cos(video_content[:, :, t],
      audio_content[:, :, s]) + bC`` over the T' x T' grid, CE with target ``s = t`` (the other
      time offsets of the same clip are the negatives), mean over the B * T' rows (equal to the
      mean over clips of the per-clip mean, as the reference).
    * identity: audio identity = time-mean of ``netfcspk``; visual identity = ``netfcface`` at
      one random time index per clip; ``S[i, j] = wI * cos(video_id_i, audio_id_j) + bI`` over
      the batch, CE with target ``j = i``, mean over the B rows.
    * total = ``alpha_content * L_content + alpha_identity * L_identity``.

    The random frame indices come from a CPU ``torch.Generator`` seeded with ``seed`` and the
    update number (:meth:`set_num_updates`), so a run (and a resumed run) draws the same
    indices; micro-batches of one update and all ranks use the same seed (different clips).

    Parameters ``wI``, ``bI``, ``wC``, ``bC`` (0-dim, init ``init_w`` 10 / ``init_b`` -5) are the
    reference's ``__L__.*`` keys. The logits run in float32 with autocast disabled.

    Returns ``(loss, 1, logging_output)``: ``loss`` is the batch mean; ``logging_output`` has
    ``loss``, ``content_loss``, ``identity_loss`` (per-call means, divided by the summed
    ``sample_size`` = number of calls in :meth:`reduce_metrics`), ``content_correct`` /
    ``content_total`` and ``identity_correct`` / ``identity_total`` (counts, reported as
    ``content_accuracy`` / ``identity_accuracy`` in %), ``nsentences``.

    Raises:
        ConfigError: negative loss weights.
        ValueError: a sample without ``audio`` / ``video``, model outputs whose shapes disagree,
            or B < 2 with ``alpha_identity > 0`` (the identity loss needs other clips).
    """

    def __init__(self, cfg: SyncNetCriterionConfig, task: Any = None):
        super().__init__(cfg, task)
        if cfg.alpha_content < 0 or cfg.alpha_identity < 0:
            raise ConfigError(
                "criterion syncnet: alpha_content and alpha_identity must be >= 0, got "
                f"{cfg.alpha_content}, {cfg.alpha_identity}"
            )
        self.wI = nn.Parameter(torch.tensor(float(cfg.init_w)))
        self.bI = nn.Parameter(torch.tensor(float(cfg.init_b)))
        self.wC = nn.Parameter(torch.tensor(float(cfg.init_w)))
        self.bC = nn.Parameter(torch.tensor(float(cfg.init_b)))

    def identity_frame_generator(self) -> torch.Generator:
        """CPU generator seeded with ``(seed, num_updates)`` for the visual identity frames."""
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.num_updates)

    def content_loss(
        self, video_content: torch.Tensor, audio_content: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(B, D, T') video and audio content -> (mean CE, correct count, B * T')."""
        logits = _cosine_logits(
            video_content.transpose(1, 2), audio_content.transpose(1, 2), self.wC, self.bC
        )  # (B, T', T')
        b, t, _ = logits.shape
        target = torch.arange(t, device=logits.device).repeat(b)
        flat = logits.reshape(b * t, t)
        loss = F.cross_entropy(flat, target)
        correct = (flat.detach().argmax(dim=1) == target).sum()
        return loss, correct, b * t

    def identity_loss(
        self, video_identity: torch.Tensor, audio_identity: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(B, D, T') video and audio identity -> (mean CE, correct count, B).

        Raises:
            ValueError: B < 2.
        """
        b, _, t = video_identity.shape
        if b < 2:
            raise ValueError(
                f"criterion syncnet: the identity loss needs at least 2 clips per batch, got "
                f"B={b} (use a larger batch or alpha_identity=0)"
            )
        index = torch.randint(0, t, (b,), generator=self.identity_frame_generator())
        index = index.to(video_identity.device)
        video_id = video_identity[torch.arange(b, device=index.device), :, index]  # (B, D)
        audio_id = audio_identity.mean(dim=2)  # (B, D)
        logits = _cosine_logits(video_id, audio_id, self.wI, self.bI)  # (B, B)
        target = torch.arange(b, device=logits.device)
        loss = F.cross_entropy(logits, target)
        correct = (logits.detach().argmax(dim=1) == target).sum()
        return loss, correct, b

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        for key in ("audio", "video"):
            if key not in sample or not torch.is_tensor(sample[key]):
                raise ValueError(f"criterion syncnet: the sample needs a tensor '{key}'")
        audio, video = sample["audio"], sample["video"]
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"criterion syncnet: audio batch {audio.shape[0]} != video batch {video.shape[0]}"
            )
        use_identity = self.cfg.alpha_identity > 0
        if use_identity and audio.shape[0] < 2:
            raise ValueError(
                f"criterion syncnet: the identity loss needs at least 2 clips per batch, got "
                f"B={audio.shape[0]} (use a larger batch or alpha_identity=0)"
            )
        out = model(audio, video)
        with torch.autocast(device_type=audio.device.type, enabled=False):
            lc, c_correct, c_total = self.content_loss(
                out["video_content"].float(), out["audio_content"].float()
            )
            loss = self.cfg.alpha_content * lc
            if use_identity:
                li, i_correct, i_total = self.identity_loss(
                    out["video_identity"].float(), out["audio_identity"].float()
                )
                loss = loss + self.cfg.alpha_identity * li
            else:
                li, i_correct, i_total = torch.zeros(()), torch.zeros(()), 0
        values = torch.stack(
            [t.detach().double().cpu() for t in (loss, lc, li, c_correct, i_correct)]
        ).tolist()
        logging_output = {
            "loss": values[0],
            "content_loss": values[1],
            "identity_loss": values[2],
            "content_correct": int(values[3]),
            "content_total": c_total,
            "identity_correct": int(values[4]),
            "identity_total": i_total,
            "sample_size": 1,
            "nsentences": int(audio.shape[0]),
        }
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
        """Summed logging outputs -> ``loss``, ``content_loss``, ``identity_loss`` (mean per
        call), ``content_accuracy`` / ``identity_accuracy`` (%), ``sample_size``,
        ``nsentences``."""
        out: dict[str, float] = {}
        calls = max(sums.get("sample_size", 0.0), 1e-12)
        for key in ("loss", "content_loss", "identity_loss"):
            if key in sums:
                out[key] = sums[key] / calls
        for name in ("content", "identity"):
            total = sums.get(f"{name}_total", 0.0)
            if total > 0:
                out[f"{name}_accuracy"] = 100.0 * sums.get(f"{name}_correct", 0.0) / total
        for key in ("sample_size", "nsentences"):
            if key in sums:
                out[key] = sums[key]
        return out

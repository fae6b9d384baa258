"""Teacher-student loss of the VoiceVector enrolment nets: ``enrolment_l1`` (Rahimi, Afouras and
Zisserman, "VoiceVector", ICASSP 2024; upstream ``src/models/avEmbeddingModule.py``, an L1 loss
between the predicted 192-d vector and the precomputed ECAPA vector of the clip's utterance).

The model is called as ``model(lip=(B, F, D_lip)[, audio=(B, F * 640)][, face=(B, 3, D_face)])``
with the input keys the batch holds (``voicevector_embedding_v`` / ``_av`` / ``_iv``) and returns
``(B, D)`` vectors, compared with the batch's ``teacher`` (B, D).

Loss: per item ``mean_d |y_hat - y|`` (the reference's ``nn.L1Loss`` on a batch of equal-sized
vectors); ``forward`` returns the *sum* over the B items with ``sample_size = B``, so the trainer's
division by the summed ``sample_size`` trains on ``torch.nn.functional.l1_loss(y_hat, y)``.
Computed in float32 (half-precision outputs upcast, autocast disabled).

Logging (summed over micro-batches, ranks and intervals; :meth:`reduce_metrics` divides):
``loss``, ``sample_size``, ``nsentences`` (= B) and ``cosine``, the sum of the per-item cosine
similarities between prediction and teacher (``torch.nn.functional.cosine_similarity``, eps
1e-8), reported as their mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import DataError
from speechkit.registry import register_criterion

INPUT_KEYS = ("lip", "audio", "face")
"""Batch keys passed to the enrolment net by name (those present)."""


@dataclass
class EnrolmentL1Config(SpeechkitDataclass):
    """No options: the reference's L1 loss."""


@register_criterion("enrolment_l1", dataclass=EnrolmentL1Config)
class EnrolmentL1Criterion(Criterion):
    """L1 distance to the teacher vector; see the module docstring.

    Raises:
        DataError: a batch without ``lip`` or ``teacher``.
        ValueError: the model's output does not have the teacher's shape (B, D).
    """

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        missing = [k for k in ("lip", "teacher") if k not in sample]
        if missing:
            raise DataError(
                f"criterion enrolment_l1 needs batch keys ['lip', 'teacher'] (and 'audio' or "
                f"'face' for the av / iv nets), missing {missing}"
            )
        teacher = sample["teacher"]
        inputs = {k: sample[k] for k in INPUT_KEYS if k in sample}
        pred = model(**inputs)
        if pred.shape != teacher.shape or teacher.dim() != 2:
            raise ValueError(
                f"criterion enrolment_l1: output shape {tuple(pred.shape)} must equal the "
                f"teacher's (B, D) {tuple(teacher.shape)}"
            )
        b = int(teacher.shape[0])
        with torch.autocast(device_type=pred.device.type, enabled=False):
            est = pred.float()
            tgt = teacher.float()
            loss = (est - tgt).abs().mean(dim=-1).sum()
            with torch.no_grad():
                cosine = F.cosine_similarity(est.detach(), tgt, dim=-1, eps=1e-8).sum()
        log: dict[str, Any] = {
            "loss": float(loss.detach()),
            "cosine": float(cosine),
            "sample_size": b,
            "nsentences": b,
        }
        return loss, b, log

    @staticmethod
    def reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
        """Summed logs -> ``loss`` (mean L1 per element), ``cosine`` (mean over items),
        ``sample_size`` and ``nsentences`` (passed through)."""
        out: dict[str, float] = {}
        items = max(sums.get("sample_size", 0.0), 1e-12)
        if "loss" in sums:
            out["loss"] = sums["loss"] / items
        if "cosine" in sums:
            out["cosine"] = sums["cosine"] / max(sums.get("nsentences", items), 1e-12)
        for key in ("sample_size", "nsentences"):
            if key in sums:
                out[key] = sums[key]
        return out

"""Target-speaker separation loss on the waveform (VoiceVector, Rahimi et al., ICASSP
2024; the L1 loss of akamrahimi/VoiceVector's Lightning module): ``waveform_l1``.

The model is called as ``model(mixture (B, T), enrol (B, N, E), enrol_type (B, N) long,
enrol_mask (B, N) bool)`` (or ``model(mixture, lip (B, F, D))`` when the batch has ``lip``, the
audio-visual ``voicevector_av``) and returns the target estimate (B, T). When the batch has
enrolment clips (``enrol_lip``, from ``task.enrolment_source=clips``), the composite models
(``voicevector_vem`` / ``voicevector_avem`` / ``voicevector_ivem``) are called as
``model(mixture, enrol_type=..., enrol_mask=..., enrol_lip=(B, N, F, D_lip)[, enrol_audio=(B, N,
F * 640)][, enrol_face=(B, N, 3, D_face)])`` with the clip keys the batch holds.

Loss (``loss`` option):

* ``l1`` (default, the reference's): per item ``mean_t |s_hat - s|``. ``forward`` returns the
  *sum* over the B items with ``sample_size = B``; the trainer divides by the summed
  ``sample_size``, so one batch trains on the mean absolute error over all B * T samples (all
  items have the same T) - ``torch.nn.functional.l1_loss(estimate, target)``.
* ``si_sdr``: per item ``-SI-SDR(s_hat, s)`` (zero-mean, eps 1e-8, see
  :mod:`speechkit.metrics.separation`), summed the same way: the common alternative in
  Conv-TasNet-style training. It cannot ask for silence (WeSep #22), so prefer ``l1`` when
  target-absent mixtures are in the data.

Both are computed in float32 (half-precision outputs are upcast, autocast disabled).

Logging (summed over micro-batches, ranks and intervals; :meth:`reduce_metrics` divides):
``loss`` (sum of the per-item losses), ``sample_size``, ``nsentences`` (= B), and the per-item
sums of ``si_sdr``, ``si_sdri``, ``sdr`` (the MDX SNR, not BSS-Eval) and ``sdri`` in dB,
computed without gradients in float64 by :func:`speechkit.metrics.separation.separation_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import DataError
from speechkit.metrics.separation import separation_scores, si_sdr_batch
from speechkit.registry import ChoiceEnum, register_criterion

SCORE_KEYS = ("si_sdr", "si_sdri", "sdr", "sdri")
REQUIRED_KEYS = ("mixture", "target", "enrol", "enrol_type", "enrol_mask")
CLIP_KEYS = ("enrol_lip", "enrol_audio", "enrol_face")
"""Enrolment-clip batch keys passed to a composite model by name (those present)."""


class WaveformLoss(ChoiceEnum):
    """``l1`` (mean absolute waveform error, the reference's) or ``si_sdr`` (negative SI-SDR)."""

    l1 = "l1"
    si_sdr = "si_sdr"


@dataclass
class WaveformL1Config(SpeechkitDataclass):
    """``loss``: ``l1`` (mean absolute waveform error, the reference's) or ``si_sdr``
    (negative SI-SDR)."""

    loss: WaveformLoss = "l1"


@register_criterion("waveform_l1", dataclass=WaveformL1Config)
class WaveformL1Criterion(Criterion):
    """Waveform loss for target-speaker separation; see the module docstring.

    Raises:
        ConfigError: an unknown ``loss``.
        DataError: a batch without the keys listed in ``REQUIRED_KEYS``.
        ValueError: the model's estimate does not have the target's shape (B, T).
    """

    def __init__(self, cfg: WaveformL1Config, task: Any = None):
        super().__init__(cfg, task)
        self.loss_type = WaveformLoss.check(cfg.loss, "criterion waveform_l1: loss")

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        if "enrol_lip" in sample:
            needed = ("mixture", "target", "enrol_lip", "enrol_type", "enrol_mask")
        elif "lip" in sample:
            needed = ("mixture", "target", "lip")
        else:
            needed = REQUIRED_KEYS
        missing = [k for k in needed if k not in sample]
        if missing:
            raise DataError(
                f"criterion waveform_l1 needs batch keys {list(needed)}, missing {missing}"
            )
        mixture, target = sample["mixture"], sample["target"]
        if "enrol_lip" in sample:
            clips = {k: sample[k] for k in CLIP_KEYS if k in sample}
            estimate = model(
                mixture, enrol_type=sample["enrol_type"], enrol_mask=sample["enrol_mask"], **clips
            )
        elif "lip" in sample:
            estimate = model(mixture, sample["lip"])
        else:
            estimate = model(mixture, sample["enrol"], sample["enrol_type"], sample["enrol_mask"])
        if estimate.shape != target.shape or target.dim() != 2:
            raise ValueError(
                f"criterion waveform_l1: estimate shape {tuple(estimate.shape)} must equal the "
                f"target's (B, T) {tuple(target.shape)}"
            )
        b = int(target.shape[0])
        with torch.autocast(device_type=estimate.device.type, enabled=False):
            est = (
                estimate.float() if estimate.dtype in (torch.float16, torch.bfloat16) else estimate
            )
            tgt = target.to(est.dtype)
            if self.loss_type == "l1":
                per_item = (est - tgt).abs().mean(dim=-1)
            else:
                per_item = -si_sdr_batch(est, tgt)
            loss = per_item.sum()
        with torch.no_grad():
            scores = separation_scores(estimate.detach(), mixture.detach(), target.detach())
        log: dict[str, Any] = {
            "loss": float(loss.detach()),
            "sample_size": b,
            "nsentences": b,
        }
        for key in SCORE_KEYS:
            log[key] = float(scores[key].sum())
        return loss, b, log

    @staticmethod
    def reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
        """Summed logs -> ``loss`` (per-item mean), ``si_sdr``, ``si_sdri``, ``sdr``, ``sdri``
        (dB averages over items), ``sample_size`` and ``nsentences`` (passed through)."""
        out: dict[str, float] = {}
        items = max(sums.get("sample_size", 0.0), 1e-12)
        if "loss" in sums:
            out["loss"] = sums["loss"] / items
        count = max(sums.get("nsentences", sums.get("sample_size", 0.0)), 1e-12)
        for key in SCORE_KEYS:
            if key in sums:
                out[key] = sums[key] / count
        for key in ("sample_size", "nsentences"):
            if key in sums:
                out[key] = sums[key]
        return out

"""``contentvec``: HuBERT's loss plus ContentVec's contrastive loss with a linear weight ramp
(reference auspicious3000/contentvec ``contentvec/criterions/contentvec_criterion.py``; Qian et
al., "ContentVec: An Improved Self-Supervised Speech Representation by Disentangling Speakers",
ICML 2022).

``loss = hubert_loss + (loss_weights[-1] * num_updates) * ctr_loss``, where ``hubert_loss`` is
the ``hubert`` criterion's (``loss_weights[:-1]`` weigh the model's extra losses, i.e.
``features_pen``) and ``ctr_loss`` is the cross-entropy of the contrastive logits (target
column 0) SUMMED over the anchors of both views. ``sample_size`` stays the number of masked
frames of both views, so after the trainer's division the contrastive term weighs
``weight * ctr_loss / masked frames``, as in the reference. The reference scripts use
``loss_weights=[10, 1e-5]``: the weight grows linearly from 0 to 1.0 at 100k updates (the
trainer calls ``set_num_updates`` before every update). ``ctr_weight_max`` optionally caps it
(null: no cap, the reference).

Extra logged values: ``ctr_loss`` (bits per anchor), ``ctr_weighted_loss`` (bits per anchor,
after the weight), ``ctr_weight`` (its mean over the logged micro-batches) and
``ctr_accuracy`` (%: the positive scores above every negative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.hubert_criterion import (
    HubertCriterion,
    HubertCriterionConfig,
    count_correct,
)
from speechkit.errors import ConfigError
from speechkit.registry import register_criterion

__all__ = ["ContentVecCriterion", "ContentVecCriterionConfig"]


@dataclass
class ContentVecCriterionConfig(HubertCriterionConfig):
    loss_weights: list[float] = field(default_factory=lambda: [10.0, 1e-5])
    """``features_pen`` weight(s), then the contrastive ramp slope per update (last entry)."""
    ctr_weight_max: float | None = None
    """Upper limit of the contrastive weight (null: none, as the reference)."""


@register_criterion("contentvec", dataclass=ContentVecCriterionConfig)
class ContentVecCriterion(HubertCriterion):
    """HuBERT loss + ramped contrastive loss (ContentVec).

    Raises:
        ConfigError: ``loss_weights`` empty (the last entry is the ramp slope).
    """

    def __init__(self, cfg: ContentVecCriterionConfig, task=None):
        super().__init__(cfg, task)
        if not cfg.loss_weights:
            raise ConfigError(
                "criterion.loss_weights needs at least the contrastive ramp slope (last entry), "
                "e.g. [10, 1e-5]"
            )

    def extra_loss_weights(self, n_extra: int) -> list[float]:
        """The extra-loss weights are ``loss_weights[:-1]`` (the last one is the ramp)."""
        weights = list(self.cfg.loss_weights[:-1])
        if len(weights) > n_extra:
            raise ConfigError(
                f"criterion.loss_weights has {len(weights)} extra-loss weights (plus the ramp) "
                f"but the model has {n_extra} extra loss(es)"
            )
        return weights + [0.0] * (n_extra - len(weights))

    def ctr_weight(self) -> float:
        """``loss_weights[-1] * num_updates``, capped at ``ctr_weight_max`` if set."""
        weight = self.cfg.loss_weights[-1] * self.num_updates
        if self.cfg.ctr_weight_max is not None:
            weight = min(weight, self.cfg.ctr_weight_max)
        return weight

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        """Returns (summed loss, masked frames of both views, logging sums)."""
        net_output = self.net_output(model, sample)
        loss, sample_size, logs, _ = self.prediction_loss(model, net_output)
        logits = model.get_logits_ctr(net_output)
        weight = self.ctr_weight()
        n_ctr = 0
        if logits is not None and logits.size(0) > 0:
            target = logits.new_zeros(logits.size(0), dtype=torch.long)
            ctr = F.cross_entropy(logits, target, reduction="sum")
            if weight != 0:
                loss = loss + weight * ctr
            n_ctr = logits.size(0)
            logs["ctr_loss"] = ctr.detach()
            logs["ctr_weighted_loss"] = weight * ctr.detach()
            logs["ctr_correct"] = count_correct(logits.detach())[0]
        else:
            zero = torch.zeros((), device=net_output["features_pen"].device)
            logs.update(ctr_loss=zero, ctr_weighted_loss=zero, ctr_correct=zero)
        logs["loss"] = loss.detach()
        logging_output = self.to_numbers(logs)
        logging_output.update(
            sample_size=sample_size,
            ntokens=sample_size,
            nsentences=int(sample["net_input"]["source"].size(0)),
            ctr_sample_size=n_ctr,
            ctr_weight=weight,
            ctr_weight_count=1,
        )
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
        """HuBERT's metrics (``ctr_*`` excluded from the per-frame losses) plus ``ctr_loss``
        and ``ctr_weighted_loss`` in bits per anchor, ``ctr_accuracy`` (%) and the mean
        ``ctr_weight``."""
        plain = {k: v for k, v in sums.items() if not k.startswith("ctr_")}
        out = HubertCriterion.reduce_metrics(plain)
        n_ctr = sums.get("ctr_sample_size", 0.0)
        if n_ctr > 0:
            for key in ("ctr_loss", "ctr_weighted_loss"):
                out[key] = sums.get(key, 0.0) / n_ctr / math.log(2)
            out["ctr_accuracy"] = 100.0 * sums.get("ctr_correct", 0.0) / n_ctr
        if sums.get("ctr_weight_count", 0) > 0:
            out["ctr_weight"] = sums["ctr_weight"] / sums["ctr_weight_count"]
        return out

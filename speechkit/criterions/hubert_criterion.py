"""``hubert``: HuBERT's masked-prediction loss (facebookresearch/fairseq
``fairseq/criterions/hubert_criterion.py``; Hsu et al., "HuBERT: Self-Supervised Speech
Representation Learning by Masked Prediction of Hidden Units", IEEE/ACM TASLP 2021).

``loss = pred_masked_weight * sum_masked CE + pred_nomask_weight * sum_unmasked CE
+ sum_i loss_weights[i] * extra_i * sample_size``, where CE is the cross-entropy of the model's
cosine logits (target column 0, summed over frames and label sets) and the only extra loss is
``features_pen`` (mean squared conv feature; Base: weight 10). ``sample_size`` is the number of
masked frames (plus unmasked frames when their weight is > 0); the trainer divides the summed
gradients by the global ``sample_size``, so the optimised quantity is the mean per predicted frame.

Logged sums (``reduce_metrics``): ``loss``, ``loss_m_{i}`` / ``loss_u_{i}`` (per label set i),
``loss_features_pen``, all reported per ``sample_size`` IN BITS (divided by ln 2), as fairseq
prints them; chance level for K clusters is about log2(K + 4) bits. ``accuracy`` (%) is the
masked accuracy over all label sets, ``acc_m_{i}`` / ``acc_u_{i}`` (%) per set, from
``correct_*`` / ``count_*``: a frame is correct when its argmax is column 0 and the row is not
constant (fairseq's rule).

Masks: when the sample carries ``mask_seed`` (set by the ``hubert`` / ``contentvec`` tasks from
(seed, update number, batch ids)), the model's masks come from a ``torch.Generator`` seeded with
it, so an interrupted and resumed run draws exactly the same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import register_criterion

__all__ = ["HubertCriterion", "HubertCriterionConfig", "count_correct", "mask_generator"]


@dataclass
class HubertCriterionConfig(SpeechkitDataclass):
    pred_masked_weight: float = 1.0
    """Weight of the cross-entropy on masked frames."""
    pred_nomask_weight: float = 0.0
    """Weight of the cross-entropy on unmasked frames (logged even at 0)."""
    loss_weights: list[float] = field(default_factory=lambda: [10.0])
    """Weights of the model's extra losses (``features_pen``); empty: none."""


def count_correct(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """fairseq's accuracy count for logits (N, 1 + K) with target column 0.

    Returns ``(correct (scalar int64 tensor), N)``: rows whose argmax is 0, minus rows whose
    argmax AND argmin are 0 (constant rows).
    """
    if logits.numel() == 0:
        return logits.new_zeros((), dtype=torch.long), 0
    top = logits.argmax(-1) == 0
    both = top & (logits.argmin(-1) == 0)
    return top.long().sum() - both.long().sum(), logits.size(0)


def mask_generator(sample: dict, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``sample["mask_seed"]``, or None without one."""
    seed = sample.get("mask_seed")
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


@register_criterion("hubert", dataclass=HubertCriterionConfig)
class HubertCriterion(Criterion):
    """HuBERT masked / unmasked prediction loss with the feature penalty.

    Raises:
        ConfigError: negative weights, or (in forward) a positive weight on a prediction the
            model skipped (``skip_masked`` / ``skip_nomask``), or more ``loss_weights`` than the
            model has extra losses.
    """

    def __init__(self, cfg: HubertCriterionConfig, task=None):
        super().__init__(cfg, task)
        if cfg.pred_masked_weight < 0 or cfg.pred_nomask_weight < 0:
            raise ConfigError("criterion.pred_masked_weight / pred_nomask_weight must be >= 0")

    def net_output(self, model: nn.Module, sample: dict) -> dict:
        """Run the model on ``sample`` with its labels and the seeded mask generator."""
        net_input = sample["net_input"]
        generator = mask_generator(sample, net_input["source"].device)
        return model(**net_input, target_list=sample["target_list"], generator=generator)

    def extra_loss_weights(self, n_extra: int) -> list[float]:
        """Weights for the model's ``n_extra`` extra losses (one weight is broadcast)."""
        weights = list(self.cfg.loss_weights)
        if len(weights) == 1 and n_extra > 1:
            weights = weights * n_extra
        if len(weights) > n_extra:
            raise ConfigError(
                f"criterion.loss_weights has {len(weights)} entries but the model has "
                f"{n_extra} extra loss(es)"
            )
        return weights + [0.0] * (n_extra - len(weights))

    def prediction_loss(
        self, model: nn.Module, net_output: dict
    ) -> tuple[torch.Tensor, int, dict[str, torch.Tensor], list[str]]:
        """Masked / unmasked CE, feature penalty; returns (loss, sample_size, logs, extra names).

        ``logs`` maps names to scalar tensors (summed values; converted to numbers once).
        """
        cfg = self.cfg
        device = net_output["features_pen"].device
        loss = torch.zeros((), device=device)
        sample_size = 0
        logs: dict[str, torch.Tensor] = {}
        for is_masked, tag, weight in (
            (True, "m", cfg.pred_masked_weight),
            (False, "u", cfg.pred_nomask_weight),
        ):
            logits = model.get_logits(net_output, is_masked)
            if weight > 0 and not logits:
                raise ConfigError(
                    f"criterion.pred_{'masked' if is_masked else 'nomask'}_weight={weight} but "
                    "the model skipped those logits (model.skip_masked / skip_nomask)"
                )
            terms = []
            for i, lg in enumerate(logits):
                target = lg.new_zeros(lg.size(0), dtype=torch.long)
                ce = F.cross_entropy(lg, target, reduction="sum")
                terms.append(ce)
                correct, count = count_correct(lg.detach())
                logs[f"loss_{tag}_{i}"] = ce.detach()
                logs[f"correct_{tag}_{i}"] = correct
                logs[f"count_{tag}_{i}"] = torch.tensor(count)
            if weight > 0:
                loss = loss + weight * sum(terms)
                sample_size += logits[0].size(0)
        extra, names = model.get_extra_losses(net_output)
        for p, name, coef in zip(extra, names, self.extra_loss_weights(len(extra))):
            if coef != 0 and p is not None:
                p = coef * p.float() * sample_size
                loss = loss + p
                logs[f"loss_{name}"] = p.detach()
        return loss, sample_size, logs, names

    @staticmethod
    def to_numbers(logs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scalar tensors -> Python numbers with one device-to-host copy."""
        if not logs:
            return {}
        keys = list(logs)
        values = torch.stack([logs[k].detach().double().cpu() for k in keys]).tolist()
        return dict(zip(keys, values))

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        """Returns (summed loss, number of predicted frames, logging sums)."""
        net_output = self.net_output(model, sample)
        loss, sample_size, logs, _ = self.prediction_loss(model, net_output)
        logs["loss"] = loss.detach()
        logging_output = self.to_numbers(logs)
        logging_output.update(
            sample_size=sample_size,
            ntokens=sample_size,
            nsentences=int(sample["net_input"]["source"].size(0)),
        )
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
        """Summed logging outputs -> ``loss`` and ``loss_*`` in bits per predicted frame,
        ``accuracy`` / ``acc_m_i`` / ``acc_u_i`` in %, ``sample_size`` and ``nsentences``."""
        out: dict[str, float] = {}
        sample_size = max(sums.get("sample_size", 0.0), 1e-12)
        for key, value in sums.items():
            if key == "loss" or key.startswith("loss_"):
                out[key] = value / sample_size / math.log(2)
        for key, value in sums.items():
            if key.startswith("correct_"):
                count = sums.get("count_" + key[len("correct_") :], 0.0)
                if count > 0:
                    out["acc_" + key[len("correct_") :]] = 100.0 * value / count
        m_count = sum(v for k, v in sums.items() if k.startswith("count_m_"))
        if m_count > 0:
            m_correct = sum(v for k, v in sums.items() if k.startswith("correct_m_"))
            out["accuracy"] = 100.0 * m_correct / m_count
        for key in ("sample_size", "nsentences"):
            if key in sums:
                out[key] = sums[key]
        return out

"""Speaker-classification losses: ``softmax``, ``am_softmax`` (CosFace), ``aam_softmax`` (ArcFace).

The former names ``amsoftmax`` and ``aamsoftmax`` remain registered as aliases.

Follows clovaai/voxceleb_trainer ``loss/softmax.py``, ``loss/amsoftmax.py`` and
``loss/aamsoftmax.py`` ("In defence of metric learning for speaker recognition", Chung et al.,
Interspeech 2020), CosFace (Wang et al., CVPR 2018) and ArcFace (Deng et al., CVPR 2019). The
optional AAM margin ramp is wespeaker's ``MarginScheduler`` (wespeaker/utils/schedulers.py),
counted in updates instead of epochs.

Every utterance is classified on its own: with M utterances per speaker the B*M embeddings are
classified against their speaker's label (voxceleb_trainer only allows M = 1 here).

Defaults: the config dataclasses take voxceleb_trainer's command-line defaults (margin 0.1,
scale 30), which override the loss files' own defaults (margin 0.3, scale 15) that the head
classes keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from speechkit.criterions.speaker_losses import (
    LossOutput,
    SpeakerCriterion,
    check_classes,
    classification_output,
    resolve_size,
)
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import ChoiceEnum, register_criterion

# wespeaker's exponential ramp reaches 1 - 1e-3 of the margin at its end (its final_val / the
# 1e-6 it adds to initial_val to keep the log finite)
_EXP_RAMP_FLOOR = 1e-3 / (1.0 + 1e-6)


# --------------------------------------------------------------------------------------------
# heads (nn.Modules on embeddings)


class SoftmaxHead(nn.Module):
    """Linear classifier + cross-entropy (voxceleb_trainer ``softmax``).

    Parameters: ``fc.weight`` (C, D), ``fc.bias`` (C,), C = num_classes, D = embed_dim.
    ``forward(x (N, D), label (N,)) -> LossOutput`` (mean CE, top-1 count on the logits).
    """

    test_normalize = True

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> LossOutput:
        return classification_output(self.fc(x), label)


class AMSoftmaxHead(nn.Module):
    """Additive-margin softmax, CosFace (voxceleb_trainer ``amsoftmax``).

    ``cos = x_hat @ W_hat`` with x and the columns of ``W`` L2-normalised (norms clamped at
    1e-12); logits = ``scale * (cos - margin * onehot(label))``; mean CE. The top-1 count is
    taken on these margin logits, as the reference does.

    Parameters: ``W`` (D, C), i.e. transposed relative to the other heads (the reference's
    layout), Xavier-normal initialised.

    Args:
        embed_dim: D. num_classes: C.
        margin: additive cosine margin m (file default 0.3). scale: s (file default 15).
    """

    test_normalize = True

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.3, scale: float = 15.0):
        super().__init__()
        self.margin = float(margin)
        self.scale = float(scale)
        self.W = nn.Parameter(torch.empty(embed_dim, num_classes))
        nn.init.xavier_normal_(self.W, gain=1.0)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> LossOutput:
        x_hat = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        w_hat = self.W / self.W.norm(dim=0, keepdim=True).clamp(min=1e-12)
        cosine = x_hat @ w_hat
        margins = F.one_hot(label, cosine.shape[1]).to(cosine.dtype) * self.margin
        return classification_output(self.scale * (cosine - margins), label)


class AAMSoftmaxHead(nn.Module):
    """Additive angular margin softmax, ArcFace (voxceleb_trainer ``aamsoftmax``).

    ``cos = linear(x_hat, weight_hat)``; ``sin = sqrt(clamp(1 - cos^2, 0, 1))``;
    ``phi = cos(theta + m) = cos*cos(m) - sin*sin(m)``. The target logit is

    * ``easy_margin=False``: ``phi`` where ``cos > cos(pi - m)``, else ``cos - sin(pi - m) * m``
      (keeps the target logit decreasing in theta over [0, pi]);
    * ``easy_margin=True``: ``phi`` where ``cos > 0``, else ``cos``;

    the other logits are ``cos``; all are multiplied by ``scale``; mean CE. The top-1 count is
    taken on these margin logits, as the reference does.

    Parameters: ``weight`` (C, D), Xavier-normal initialised.

    Args:
        embed_dim: D. num_classes: C.
        margin: angular margin m in radians (file default 0.3); change it with
            :meth:`set_margin`. scale: s (file default 15).
        easy_margin: see above (default False).
    """

    test_normalize = True

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        margin: float = 0.3,
        scale: float = 15.0,
        easy_margin: bool = False,
    ):
        super().__init__()
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1.0)
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Set the angular margin m (radians) and the constants derived from it."""
        self.margin = float(margin)
        self.cos_m = math.cos(self.margin)
        self.sin_m = math.sin(self.margin)
        self.threshold = math.cos(math.pi - self.margin)
        self.fallback_offset = math.sin(math.pi - self.margin) * self.margin

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> LossOutput:
        cosine = F.linear(F.normalize(x), F.normalize(self.weight))
        sine = (1.0 - cosine * cosine).clamp(0.0, 1.0).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > self.threshold, phi, cosine - self.fallback_offset)
        target = F.one_hot(label, cosine.shape[1]).bool()
        logits = self.scale * torch.where(target, phi, cosine)
        return classification_output(logits, label)


def scheduled_margin(
    num_updates: int, margin: float, start: int, end: int, kind: str = "exp"
) -> float:
    """AAM margin after ``num_updates`` updates under wespeaker's ``MarginScheduler`` ramp.

    0 before ``start``; ``margin`` from ``end`` on; in between ``margin * r(t)`` with
    ``t = (num_updates - start) / (end - start)`` and

    * ``kind="exp"``: ``r = 1 - (1e-3 / (1 + 1e-6)) ** t`` (fast rise, then flat; reaches
      ~0.999 just before ``end``);
    * ``kind="linear"``: ``r = t``.

    wespeaker counts iterations from 0 and starts the ramp at ``(increase_start_epoch - 1) *
    epoch_iter``: its recipe "epochs 20 to 40" is ``start = 19 * updates_per_epoch``,
    ``end = 39 * updates_per_epoch`` here. ``start = end = 0`` (the default) means no ramp.

    Raises:
        ConfigError: ``start < 0``, ``end < start`` or an unknown ``kind``.
    """
    if start < 0 or end < start:
        raise ConfigError(
            f"aamsoftmax margin ramp needs 0 <= margin_warmup_start <= margin_warmup_end, "
            f"got {start} and {end}"
        )
    MarginRamp.check(kind, "margin_warmup_type")
    if num_updates >= end:
        return float(margin)
    if num_updates < start:
        return 0.0
    t = (num_updates - start) / (end - start)
    ratio = t if kind == "linear" else 1.0 - _EXP_RAMP_FLOOR**t
    return float(margin) * ratio


# --------------------------------------------------------------------------------------------
# configs


class MarginRamp(ChoiceEnum):
    """Shape of the AAM margin ramp: ``exp`` (wespeaker's default) or ``linear``."""

    exp = "exp"
    linear = "linear"


@dataclass
class SoftmaxConfig(SpeechkitDataclass):
    """``softmax`` criterion. ``None`` sizes are taken from the task (``task.num_classes``,
    ``task.embed_dim``)."""

    num_classes: int | None = None  # C: training speakers (voxceleb_trainer nClasses)
    embed_dim: int | None = None  # D: embedding size (voxceleb_trainer nOut)


@dataclass
class AMSoftmaxConfig(SoftmaxConfig):
    """``amsoftmax`` criterion (CosFace). Defaults are voxceleb_trainer's CLI defaults."""

    margin: float = 0.1  # additive cosine margin m
    scale: float = 30.0  # logit scale s


@dataclass
class AAMSoftmaxConfig(AMSoftmaxConfig):
    """``aamsoftmax`` criterion (ArcFace) with an optional wespeaker-style margin ramp."""

    easy_margin: bool = False
    margin_warmup_start: int = 0  # updates with margin 0 before the ramp starts
    margin_warmup_end: int = 0  # update from which the margin is ``margin``; 0 = no ramp
    margin_warmup_type: MarginRamp = "exp"


# --------------------------------------------------------------------------------------------
# criterions


class _ClassificationCriterion(SpeakerCriterion):
    """Classifies all B*M embeddings; labels are repeated per utterance."""

    def __init__(self, cfg: SoftmaxConfig, task: Any = None):
        super().__init__(cfg, task)
        name = self.loss_name
        self.num_classes = resolve_size(
            cfg.num_classes, task, "num_classes", name, "the number of training speakers"
        )
        self.embed_dim = resolve_size(
            cfg.embed_dim, task, "embed_dim", name, "the model's embedding size"
        )

    def compute_loss(self, embeddings: torch.Tensor, label: torch.Tensor) -> LossOutput:
        check_classes(self.loss_name, embeddings, label, self.embed_dim, self.num_classes)
        b, m, d = embeddings.shape
        return self.head(embeddings.reshape(b * m, d), label.repeat_interleave(m))


@register_criterion("softmax", dataclass=SoftmaxConfig)
class SoftmaxCriterion(_ClassificationCriterion):
    """Softmax speaker classification; keys ``fc.weight`` (C, D), ``fc.bias`` (C,)."""

    def __init__(self, cfg: SoftmaxConfig, task: Any = None):
        super().__init__(cfg, task)
        self.head = SoftmaxHead(self.embed_dim, self.num_classes)


@register_criterion("am_softmax", dataclass=AMSoftmaxConfig, aliases=("amsoftmax",))
class AMSoftmaxCriterion(_ClassificationCriterion):
    """CosFace speaker classification (:class:`AMSoftmaxHead`); key ``W`` (D, C)."""

    def __init__(self, cfg: AMSoftmaxConfig, task: Any = None):
        super().__init__(cfg, task)
        self.head = AMSoftmaxHead(self.embed_dim, self.num_classes, cfg.margin, cfg.scale)


@register_criterion("aam_softmax", dataclass=AAMSoftmaxConfig, aliases=("aamsoftmax",))
class AAMSoftmaxCriterion(_ClassificationCriterion):
    """ArcFace speaker classification (:class:`AAMSoftmaxHead`); key ``weight`` (C, D).

    With ``margin_warmup_end > 0`` the margin follows :func:`scheduled_margin` of
    ``self.num_updates`` (set by the trainer through ``set_num_updates``). The current margin is
    logged as ``margin`` (mean over the calls of a log interval).
    """

    averaged_keys = ("margin",)

    def __init__(self, cfg: AAMSoftmaxConfig, task: Any = None):
        super().__init__(cfg, task)
        scheduled_margin(
            0, cfg.margin, cfg.margin_warmup_start, cfg.margin_warmup_end, cfg.margin_warmup_type
        )  # validates the ramp settings
        self.head = AAMSoftmaxHead(
            self.embed_dim, self.num_classes, cfg.margin, cfg.scale, cfg.easy_margin
        )
        self._update_margin()

    def _update_margin(self) -> None:
        cfg = self.cfg
        margin = scheduled_margin(
            self.num_updates,
            cfg.margin,
            cfg.margin_warmup_start,
            cfg.margin_warmup_end,
            cfg.margin_warmup_type,
        )
        if margin != self.head.margin:
            self.head.set_margin(margin)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self._update_margin()

    def compute_loss(self, embeddings: torch.Tensor, label: torch.Tensor) -> LossOutput:
        self._update_margin()
        return super().compute_loss(embeddings, label)

    def extra_logging(self) -> dict[str, float]:
        return {"margin": self.head.margin}

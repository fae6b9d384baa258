"""Metric-learning speaker losses: ``angle_proto``, ``ge2e``, ``proto``, ``triplet``,
``softmax_proto`` (former names ``angleproto`` and ``softmaxproto`` remain aliases).

Criterions, not evaluation metrics: those (EER, minDCF) live in :mod:`speechkit.metrics`.

Follows clovaai/voxceleb_trainer ``loss/{angleproto,ge2e,proto,triplet,softmaxproto}.py`` and
"In defence of metric learning for speaker recognition" (Chung et al., Interspeech 2020); GE2E
is Wan et al., ICASSP 2018; prototypical networks Snell et al., NeurIPS 2017.

The heads take embeddings ``x`` (B, M, D): B speakers of the batch, M utterances each. The
speakers of the batch are the classes: row i's target is speaker i, whatever its global label.

Defaults: the config dataclasses take voxceleb_trainer's command-line defaults (triplet: margin
0.1, hard_rank 10, hard_prob 0.5), which override the loss files' own defaults (triplet: margin
0, hard_rank 0, hard_prob 0) that the head classes keep. ``init_w`` 10 and ``init_b`` -5 are the
same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from speechkit.criterions.speaker_classification import SoftmaxConfig, SoftmaxHead
from speechkit.criterions.speaker_losses import (
    LossOutput,
    SpeakerCriterion,
    check_classes,
    classification_output,
    require_utterances,
    resolve_size,
)
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError
from speechkit.metrics.verification import compute_eer
from speechkit.registry import register_criterion


def _speaker_targets(x: torch.Tensor) -> torch.Tensor:
    """(B,) targets 0..B-1 on x's device."""
    return torch.arange(x.shape[0], device=x.device)


def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, Q) cosine similarities of rows of ``a`` (P, D) and ``b`` (Q, D) (norms floored 1e-8)."""
    return F.normalize(a, dim=-1, eps=1e-8) @ F.normalize(b, dim=-1, eps=1e-8).T


# --------------------------------------------------------------------------------------------
# heads (nn.Modules on embeddings)


class _ScaledCosineHead(nn.Module):
    """Shared part of the angular prototypical and GE2E heads: learned scale ``w`` and bias
    ``b`` (0-dim, voxceleb_trainer's names and initial values) and M >= 2 utterances."""

    test_normalize = True
    loss_name = ""

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def check_utterances_per_speaker(self, m: int) -> None:
        require_utterances(self.loss_name, m, minimum=2)


class AngleProtoHead(_ScaledCosineHead):
    """Angular prototypical loss (voxceleb_trainer ``angleproto``).

    Query ``q_i`` = utterance 0 of speaker i; anchor ``a_j`` = mean of utterances 1..M-1 of
    speaker j. Logits ``S_ij = w * cos(q_i, a_j) + b``; mean CE with target i over the B rows.
    ``w`` is not clamped: the reference's intended ``w >= 1e-6`` clamp discards its result.

    Parameters: ``w``, ``b`` (0-dim), initialised to ``init_w`` 10 and ``init_b`` -5.
    ``forward(x (B, M, D), label=None) -> LossOutput``, M >= 2.

    Raises:
        ConfigError: M < 2.
    """

    loss_name = "angleproto"

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> LossOutput:
        self.check_utterances_per_speaker(x.shape[1])
        anchor = x[:, 1:, :].mean(dim=1)
        query = x[:, 0, :]
        logits = _cosine_matrix(query, anchor) * self.w + self.b
        return classification_output(logits, _speaker_targets(x))


class GE2EHead(_ScaledCosineHead):
    """Generalised end-to-end loss, softmax variant (voxceleb_trainer ``ge2e``).

    Centroid ``c_j`` = mean of speaker j's M utterances; for utterance ``x_ki`` its own
    speaker's centroid excludes ``x_ki`` (mean of the other M-1). Logits
    ``S_(ki),j = w * max(cos(x_ki, c_j), 1e-6) + b`` (the reference clamps the cosine, not w);
    mean CE with target k over all B*M rows (row order k*M + i).

    Parameters: ``w``, ``b`` (0-dim), initialised to ``init_w`` 10 and ``init_b`` -5.
    ``forward(x (B, M, D), label=None) -> LossOutput``, M >= 2.

    Raises:
        ConfigError: M < 2.
    """

    loss_name = "ge2e"

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> LossOutput:
        self.check_utterances_per_speaker(x.shape[1])
        b, m, d = x.shape
        centroids = x.mean(dim=1)  # (B, D)
        own_centroids = (x.sum(dim=1, keepdim=True) - x) / (m - 1)  # (B, M, D), self excluded
        cos_all = _cosine_matrix(x.reshape(b * m, d), centroids).reshape(b, m, b)
        cos_own = F.cosine_similarity(x, own_centroids, dim=-1, eps=1e-8)  # (B, M)
        own = torch.eye(b, dtype=torch.bool, device=x.device).unsqueeze(1)  # (B, 1, B)
        cosine = torch.where(own, cos_own.unsqueeze(-1), cos_all).clamp(min=1e-6)
        logits = (cosine * self.w + self.b).reshape(b * m, b)
        return classification_output(logits, _speaker_targets(x).repeat_interleave(m))


class ProtoHead(nn.Module):
    """Prototypical loss (voxceleb_trainer ``proto``); no parameters.

    Query and anchor as in :class:`AngleProtoHead`; logits ``-||q_i - a_j||^2`` (Euclidean,
    unnormalised); mean CE with target i. ``test_normalize`` is False.

    The distance matrix is ``torch.cdist`` of the (B, D) queries and anchors: the intended maths.
    The reference computes it with ``F.pairwise_distance`` on (B, D, 1) and (1, D, B) tensors,
    which broadcast to the B x B matrix only on torch < 1.10; on torch >= 1.10 that call takes
    the norm over the last dimension instead and the reference's proto loss is silently wrong.
    ``forward(x (B, M, D), label=None) -> LossOutput``, M >= 2.

    Raises:
        ConfigError: M < 2.
    """

    test_normalize = False
    loss_name = "proto"

    def check_utterances_per_speaker(self, m: int) -> None:
        require_utterances(self.loss_name, m, minimum=2)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> LossOutput:
        self.check_utterances_per_speaker(x.shape[1])
        anchor = x[:, 1:, :].mean(dim=1)
        query = x[:, 0, :]
        distance = torch.cdist(query, anchor, compute_mode="donot_use_mm_for_euclid_dist")
        return classification_output(-distance.pow(2), _speaker_targets(x))


class TripletHead(nn.Module):
    """Triplet loss with hard-negative mining (voxceleb_trainer ``triplet``); no parameters.

    Anchor ``a_i`` = utterance 0, positive ``p_i`` = utterance 1, both L2-normalised. The
    negative of anchor i is a positive ``p_j`` (j != i) picked by :meth:`mine_negatives`. Loss
    ``mean relu(||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)``. Also returns the EER (%) of the
    positive vs negative pair distances (the reference's training metric instead of accuracy),
    computed as the reference does: :func:`batch_eer`, sklearn ``roc_curve`` with its default
    ``drop_intermediate=True``.

    The similarity matrix for mining is ``torch.cdist`` of anchors and positives: the intended
    maths. The reference builds it with ``F.pairwise_distance`` on (B, D, 1) and (1, D, B)
    tensors, which broadcasts to B x B only on torch < 1.10; on torch >= 1.10 the reference's
    triplet loss fails with an IndexError.

    Args:
        margin: m (file default 0). hard_rank: see :meth:`mine_negatives` (file default 0).
        hard_prob: probability of a hard negative (file default 0).

    ``forward(x (B, 2, D), label=None, generator=None) -> LossOutput``; B >= 2.

    Raises:
        ConfigError: M != 2 or B < 2.
    """

    test_normalize = True
    loss_name = "triplet"

    def __init__(self, margin: float = 0.0, hard_rank: int = 0, hard_prob: float = 0.0):
        super().__init__()
        self.margin = float(margin)
        self.hard_rank = int(hard_rank)
        self.hard_prob = float(hard_prob)

    def check_utterances_per_speaker(self, m: int) -> None:
        require_utterances(self.loss_name, m, exact=2)

    def mine_negatives(
        self, similarity: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pick a negative column for every row of ``similarity`` (B, B), S_ij = -||a_i-p_j||^2.

        * ``hard_rank >= 0``: rank the columns j != i by decreasing S_ij. With probability
          ``hard_prob`` take one of the top ``hard_rank + 1`` uniformly (capped at B - 1 columns),
          else any j != i uniformly.
        * ``hard_rank < 0`` (semi-hard): uniformly one j with ``S_ii - margin < S_ij < S_ii``; if
          there is none, any j != i uniformly (the reference's fallback may also return i).

        Random draws come from ``generator`` (a CPU ``torch.Generator``) or the global CPU RNG.
        Returns (B,) long indices on CPU.
        """
        sim = similarity.detach().to("cpu", torch.float64)
        b = sim.shape[0]
        others = ~torch.eye(b, dtype=torch.bool)
        if self.hard_rank < 0:
            diag = sim.diagonal().unsqueeze(1)
            candidates = (sim > diag - self.margin) & (sim < diag)
            candidates = torch.where(candidates.any(dim=1, keepdim=True), candidates, others)
            return _uniform_choice(candidates, generator)
        # rows: columns j != i sorted by decreasing similarity
        ranked = sim.masked_fill(~others, -torch.inf).argsort(dim=1, descending=True)[:, : b - 1]
        top = min(self.hard_rank + 1, b - 1)
        hard = torch.rand(b, generator=generator) < self.hard_prob
        pick_hard = torch.randint(0, top, (b,), generator=generator)
        pick_any = torch.randint(0, b - 1, (b,), generator=generator)
        rank = torch.where(hard, pick_hard, pick_any)
        return ranked.gather(1, rank.unsqueeze(1)).squeeze(1)

    def forward(
        self,
        x: torch.Tensor,
        label: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        self.check_utterances_per_speaker(x.shape[1])
        if x.shape[0] < 2:
            raise ConfigError(f"triplet needs at least 2 speakers per batch, got B={x.shape[0]}")
        anchor = F.normalize(x[:, 0, :], dim=1)
        positive = F.normalize(x[:, 1, :], dim=1)
        distance = torch.cdist(anchor, positive, compute_mode="donot_use_mm_for_euclid_dist")
        negative_index = self.mine_negatives(-distance.pow(2), generator)
        negative = positive[negative_index.to(x.device)]
        d_pos = (anchor - positive).pow(2).sum(dim=1)
        d_neg = (anchor - negative).pow(2).sum(dim=1)
        loss = F.relu(d_pos - d_neg + self.margin).mean()
        scores = -torch.cat([d_pos, d_neg]).detach().cpu().double().numpy()
        labels = np.r_[np.ones(len(d_pos)), np.zeros(len(d_neg))]
        return LossOutput(loss, eer=batch_eer(scores, labels))


def batch_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER (%) of a batch's pair scores, as voxceleb_trainer's triplet loss reports it.

    The reference calls ``tuneThresholdfromScore``, i.e. sklearn ``roc_curve`` with its default
    ``drop_intermediate=True`` (only the ROC corner points are searched), then takes
    ``max(FPR, FNR)`` at the point minimising ``|FNR - FPR|``: this is
    ``speechkit.metrics.verification.compute_eer`` with its defaults.

    Args:
        scores: (N,) scores, higher = more likely the same speaker.
        labels: (N,) 1 = positive pair, 0 = negative pair.

    Raises:
        DataError: no positive or no negative pair.
    """
    labels = np.asarray(labels).astype(np.int64)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise DataError(f"EER needs targets and non-targets, got {n_pos} and {len(labels) - n_pos}")
    return compute_eer(np.asarray(scores, dtype=np.float64), labels)[0]


def _uniform_choice(mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """For every row of ``mask`` (B, B) bool (each row has a True), a uniform True column."""
    noise = torch.rand(mask.shape, generator=generator, dtype=torch.float64)
    return noise.masked_fill(~mask, -1.0).argmax(dim=1)


class SoftmaxProtoHead(nn.Module):
    """Softmax + angular prototypical loss (voxceleb_trainer ``softmaxproto``, baseline_v2).

    Loss = softmax CE over all 2B embeddings (labels repeated per utterance) + angleproto on
    (B, 2, D). The top-1 count is the softmax one. Parameters ``softmax.fc.weight`` (C, D),
    ``softmax.fc.bias``, ``angleproto.w``, ``angleproto.b``.
    ``forward(x (B, 2, D), label (B,)) -> LossOutput``.

    Raises:
        ConfigError: M != 2.
    """

    test_normalize = True
    loss_name = "softmaxproto"

    def __init__(
        self, embed_dim: int, num_classes: int, init_w: float = 10.0, init_b: float = -5.0
    ):
        super().__init__()
        self.softmax = SoftmaxHead(embed_dim, num_classes)
        self.angleproto = AngleProtoHead(init_w, init_b)

    def check_utterances_per_speaker(self, m: int) -> None:
        require_utterances(self.loss_name, m, exact=2)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> LossOutput:
        self.check_utterances_per_speaker(x.shape[1])
        b, m, d = x.shape
        classified = self.softmax(x.reshape(b * m, d), label.repeat_interleave(m))
        prototypical = self.angleproto(x)
        return classified._replace(loss=classified.loss + prototypical.loss)


# --------------------------------------------------------------------------------------------
# configs


@dataclass
class ProtoConfig(SpeechkitDataclass):
    """``proto`` criterion: no settings."""


@dataclass
class AngleProtoConfig(SpeechkitDataclass):
    """``angleproto`` / ``ge2e`` criterions: initial scale w and bias b of the logits."""

    init_w: float = 10.0
    init_b: float = -5.0


@dataclass
class TripletConfig(SpeechkitDataclass):
    """``triplet`` criterion; defaults are voxceleb_trainer's CLI defaults."""

    margin: float = 0.1
    hard_rank: int = 10  # < 0: semi-hard mining
    hard_prob: float = 0.5


@dataclass
class SoftmaxProtoConfig(SoftmaxConfig):
    """``softmaxproto`` criterion: the softmax sizes (from the task when None) and angleproto's
    initial w and b."""

    init_w: float = 10.0
    init_b: float = -5.0


# --------------------------------------------------------------------------------------------
# criterions


class _MetricCriterion(SpeakerCriterion):
    """Applies ``self.head`` to the (B, M, D) embeddings."""

    def check_utterances_per_speaker(self, m: int) -> None:
        self.head.check_utterances_per_speaker(m)

    def compute_loss(self, embeddings: torch.Tensor, label: torch.Tensor) -> LossOutput:
        return self.head(embeddings, label)


@register_criterion("angle_proto", dataclass=AngleProtoConfig, aliases=("angleproto",))
class AngleProtoCriterion(_MetricCriterion):
    """Angular prototypical loss (:class:`AngleProtoHead`); keys ``w``, ``b``; M >= 2."""

    def __init__(self, cfg: AngleProtoConfig, task: Any = None):
        super().__init__(cfg, task)
        self.head = AngleProtoHead(cfg.init_w, cfg.init_b)


@register_criterion("ge2e", dataclass=AngleProtoConfig)
class GE2ECriterion(_MetricCriterion):
    """GE2E loss (:class:`GE2EHead`); keys ``w``, ``b``; M >= 2."""

    def __init__(self, cfg: AngleProtoConfig, task: Any = None):
        super().__init__(cfg, task)
        self.head = GE2EHead(cfg.init_w, cfg.init_b)


@register_criterion("proto", dataclass=ProtoConfig)
class ProtoCriterion(_MetricCriterion):
    """Prototypical loss (:class:`ProtoHead`); no parameters; M >= 2."""

    def __init__(self, cfg: ProtoConfig, task: Any = None):
        super().__init__(cfg, task)
        self.head = ProtoHead()


@register_criterion("triplet", dataclass=TripletConfig)
class TripletCriterion(_MetricCriterion):
    """Triplet loss (:class:`TripletHead`); M == 2, B >= 2; negatives drawn from the global RNG.

    Logs ``eer`` (%, positive vs negative pair distances of the batch, as the reference:
    :func:`batch_eer`) instead of ``correct``/``total``; reported as the mean over the calls of
    a log interval.
    """

    averaged_keys = ("eer",)

    def __init__(self, cfg: TripletConfig, task: Any = None):
        super().__init__(cfg, task)
        self.head = TripletHead(cfg.margin, cfg.hard_rank, cfg.hard_prob)


@register_criterion("softmax_proto", dataclass=SoftmaxProtoConfig, aliases=("softmaxproto",))
class SoftmaxProtoCriterion(_MetricCriterion):
    """Softmax + angular prototypical loss (:class:`SoftmaxProtoHead`); M == 2.

    Keys ``softmax.fc.weight`` (C, D), ``softmax.fc.bias``, ``angleproto.w``, ``angleproto.b``.
    ``num_classes`` / ``embed_dim`` come from the task when None.
    """

    def __init__(self, cfg: SoftmaxProtoConfig, task: Any = None):
        super().__init__(cfg, task)
        name = self.loss_name
        self.num_classes = resolve_size(
            cfg.num_classes, task, "num_classes", name, "the number of training speakers"
        )
        self.embed_dim = resolve_size(
            cfg.embed_dim, task, "embed_dim", name, "the model's embedding size"
        )
        self.head = SoftmaxProtoHead(self.embed_dim, self.num_classes, cfg.init_w, cfg.init_b)

    def compute_loss(self, embeddings: torch.Tensor, label: torch.Tensor) -> LossOutput:
        check_classes(self.loss_name, embeddings, label, self.embed_dim, self.num_classes)
        return self.head(embeddings, label)

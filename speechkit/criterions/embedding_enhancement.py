"""Speaker-embedding enhancement losses (Dorika0203/proj_2022NC ``loss/m_Losses.py``).

``x`` is the network output for a single-utterance embedding, ``t`` its speaker's
multi-utterance target (``scripts/combine_embeddings.py``). The former names (``enh_*``) remain
registered as aliases.

============================  ====================  ============================================
name (former name)            reference             loss per item (the batch mean is reported)
============================  ====================  ============================================
``embedding_mse``             MSE                   mean_d (x - t)^2
(``enh_mse``)
``embedding_mae``             MAE                   mean_d |x - t|
(``enh_mae``)
``embedding_cosine``          CS                    1 - cos(x, t)
(``enh_cosine``)
``embedding_mse_cosine``      MSE_CS                w_cos (1 - cos(x, t)) + w_mse mean_d (x - t)^2
(``enh_mse_cosine``)
``embedding_softmax``         Softmax               CE(W x + b, speaker)
(``enh_softmax``)
``embedding_mse_softmax``     MSE_Softmax           w_ce CE(W x + b, speaker) + w_mse MSE(x, t)
(``enh_mse_softmax``)
``embedding_triplet_cosine``  MyTriplet_CS          w_pos (1 - cos(x, t)) + w_neg cos(x, t')
(``enh_triplet_cosine``)
``embedding_mmd_cosine``      DA                    w_mmd MMD(d_same, d_cross) + w_cos (1 - mean
(``enh_mmd_cosine``)                                cos(x, t)), d = 1 - cos of the pair outputs
``embedding_mmd_mse``         DA_MSE                w_mmd MMD(d_same, d_cross) + w_mse MSE(x, t),
(``enh_mmd_mse``)                                   d = RMS difference of the pair outputs
============================  ====================  ============================================

Names say what the loss compares: the enhanced embedding ``x`` against its target (as
``waveform_l1`` compares waveforms).

``t'`` is the target of the triplet line's other speaker. All weights default to 1 (the
reference's plain sums). MMD is the biased estimate with an RBF kernel on the scalar pair
distances: ``mean k(s, s') + mean k(c, c') - 2 mean k(s, c)``, ``k(u, v) = exp(-(u - v)^2 /
(2 sigma^2))``, over the same-session distances ``s`` and cross-session distances ``c`` of one
speaker's pairs; its second term averages over the outputs of both files of every pair.

Point-wise losses return the *sum* over the B items with ``sample_size = B`` (the trainer divides,
so a batch gives the reference's mean); the MMD losses do not decompose over items and return
the batch value with ``sample_size = 1``. ``test_normalize`` (L2-normalise outputs before
Euclidean scoring) is the reference's per-loss flag. The stray ``breakpoint()`` of the
reference's CS loss is not reproduced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.criterions.speaker_losses import resolve_size
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import CheckpointError, ConfigError, DataError
from speechkit.registry import register_criterion

logger = logging.getLogger(__name__)

COSINE_EPS = 1e-8


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (cosines near 1 are not representable in half precision);
    float32 and float64 are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def cosine_distance(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_i, t_i)`` per row: (N, D), (N, D) -> (N,)."""
    return 1.0 - F.cosine_similarity(x, t, dim=-1, eps=COSINE_EPS)


def squared_error(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``mean_d (x - t)^2`` per row: (N, D), (N, D) -> (N,)."""
    return (x - t).pow(2).mean(dim=-1)


def rbf_mmd(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """Biased squared MMD between two sets of scalars with an RBF kernel.

    Args:
        a: (Na,) samples of the first distribution; b: (Nb,) of the second (both non-empty).
        sigma: kernel bandwidth (same unit as the samples).

    Returns:
        0-dim tensor ``mean k(a, a') + mean k(b, b') - 2 mean k(a, b)`` (diagonals included).
    """

    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(u[:, None] - v[None, :]).pow(2) / (2.0 * sigma**2)).mean()

    return kernel(a, a) + kernel(b, b) - 2.0 * kernel(a, b)


class EnhancementCriterion(Criterion):
    """Base of the enhancement losses.

    Subclasses set ``list_formats`` (the train-list formats whose batches they read) and
    ``test_normalize``. ``forward(model, sample)`` returns ``(loss, sample_size, logging)``
    with ``loss``, ``sample_size``, ``nsentences`` and one ``<term>_loss`` per loss term
    (each reported as its batch mean).

    Raises:
        DataError: a sample without the keys the loss needs (e.g. a ``normal`` list batch given
            to a triplet loss); the task checks this when the criterion is built.
    """

    list_formats: tuple[str, ...] = ("normal", "triplet")
    test_normalize: bool = False
    required_keys: tuple[str, ...] = ("input", "target")

    @property
    def loss_name(self) -> str:
        return getattr(type(self), "__speechkit_name__", type(self).__name__)

    def _check(self, sample: dict) -> None:
        missing = [k for k in self.required_keys if k not in sample]
        if missing:
            raise DataError(
                f"criterion '{self.loss_name}' needs batch keys {list(self.required_keys)} "
                f"(a {' or '.join(self.list_formats)} list), missing {missing}"
            )


class PointwiseCriterion(EnhancementCriterion):
    """A weighted sum of per-item terms; subclasses implement ``terms``."""

    def terms(
        self, x: torch.Tensor, sample: dict, log: dict
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """``{name: (weight, per-item values (B,))}`` for outputs ``x`` (B, D); may add
        counters (``correct``, ``total``) to ``log``."""
        raise NotImplementedError

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        self._check(sample)
        x = model(sample["input"])
        b = int(sample["input"].shape[0])
        log: dict[str, Any] = {"sample_size": b, "nsentences": b}
        with torch.autocast(device_type=x.device.type, enabled=False):
            terms = self.terms(upcast(x), sample, log)
            loss = sum(w * v.sum() for w, v in terms.values())
        log["loss"] = float(loss.detach())
        for name, (_, values) in terms.items():
            log[f"{name}_loss"] = float(values.detach().sum())
        return loss, b, log


# --------------------------------------------------------------------------------------------
# configs


@dataclass
class MSECosineConfig(SpeechkitDataclass):
    mse_weight: float = 1.0
    cosine_weight: float = 1.0


@dataclass
class SoftmaxConfig(SpeechkitDataclass):
    num_classes: int | None = None
    """C, training speakers; ``None``: ``task.num_classes``."""
    embed_dim: int | None = None
    """D; ``None``: ``task.embed_dim``."""
    classifier_init: str | None = None
    """A speechkit speaker-model checkpoint whose softmax head (criterion ``*fc.weight`` (C, D)
    and ``*fc.bias``) initialises the classifier, as the reference does from
    baseline_v2_ap.model; its classes must be this task's speakers in sorted order."""
    softmax_weight: float = 1.0


@dataclass
class MSESoftmaxConfig(SoftmaxConfig):
    mse_weight: float = 1.0


@dataclass
class TripletCosineConfig(SpeechkitDataclass):
    positive_weight: float = 1.0
    negative_weight: float = 1.0


@dataclass
class MMDConfig(SpeechkitDataclass):
    sigma: float = 1.0
    """RBF bandwidth on the pair distances (the reference's ``--sigma``; its configs use 0.1
    or 1)."""
    mmd_weight: float = 1.0
    target_weight: float = 1.0
    """Weight of the second term (cosine for ``embedding_mmd_cosine``, MSE for
    ``embedding_mmd_mse``)."""


# --------------------------------------------------------------------------------------------
# point-wise losses


@register_criterion("embedding_mse", dataclass=SpeechkitDataclass, aliases=("enh_mse",))
class EnhancementMSE(PointwiseCriterion):
    """Reference ``MSE``: ``mean (x - t)^2``."""

    def terms(self, x, sample, log):
        return {"mse": (1.0, squared_error(x, sample["target"].to(x.dtype)))}


@register_criterion("embedding_mae", dataclass=SpeechkitDataclass, aliases=("enh_mae",))
class EnhancementMAE(PointwiseCriterion):
    """Reference ``MAE``: ``mean |x - t|``."""

    def terms(self, x, sample, log):
        return {"mae": (1.0, (x - sample["target"].to(x.dtype)).abs().mean(dim=-1))}


@register_criterion("embedding_cosine", dataclass=SpeechkitDataclass, aliases=("enh_cosine",))
class EnhancementCosine(PointwiseCriterion):
    """Reference ``CS``: ``1 - mean cos(x, t)``."""

    test_normalize = True

    def terms(self, x, sample, log):
        return {"cosine": (1.0, cosine_distance(x, sample["target"].to(x.dtype)))}


@register_criterion("embedding_mse_cosine", dataclass=MSECosineConfig, aliases=("enh_mse_cosine",))
class EnhancementMSECosine(PointwiseCriterion):
    """Reference ``MSE_CS``: ``w_cos (1 - mean cos(x, t)) + w_mse mean (x - t)^2``."""

    test_normalize = True

    def terms(self, x, sample, log):
        t = sample["target"].to(x.dtype)
        return {
            "cosine": (self.cfg.cosine_weight, cosine_distance(x, t)),
            "mse": (self.cfg.mse_weight, squared_error(x, t)),
        }


class _ClassifierMixin:
    """A trainable ``fc`` (D -> C) for the softmax losses, optionally from a checkpoint."""

    def _build_classifier(self, cfg: SoftmaxConfig, task: Any) -> None:
        name = self.loss_name
        self.num_classes = resolve_size(
            cfg.num_classes, task, "num_classes", name, "the number of training speakers"
        )
        self.embed_dim = resolve_size(cfg.embed_dim, task, "embed_dim", name, "the embedding size")
        self.fc = nn.Linear(self.embed_dim, self.num_classes)
        if cfg.classifier_init:
            self._load_classifier(cfg.classifier_init)

    def _load_classifier(self, path: str) -> None:
        from speechkit.trainer.checkpoint import load_checkpoint_file

        state = load_checkpoint_file(path).get("criterion") or {}
        weights = [k for k in state if k.endswith("fc.weight")]
        if len(weights) != 1:
            raise CheckpointError(
                f"{path}: expected one softmax head '*fc.weight' in the criterion state, "
                f"found {weights or 'none'}"
            )
        w = state[weights[0]]
        b = state.get(weights[0][: -len("weight")] + "bias")
        if tuple(w.shape) != (self.num_classes, self.embed_dim) or b is None:
            raise CheckpointError(
                f"{path}: {weights[0]} has shape {tuple(w.shape)}, expected "
                f"({self.num_classes}, {self.embed_dim}) with a bias (same speakers and D)"
            )
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)
        logger.info("%s: classifier initialised from %s (%s)", self.loss_name, path, weights[0])

    def _cross_entropy(self, x: torch.Tensor, label: torch.Tensor, log: dict) -> torch.Tensor:
        """Per-item CE (B,) of ``fc(x)``; adds the top-1 ``correct`` / ``total`` to ``log``."""
        if x.shape[-1] != self.embed_dim:
            raise ConfigError(
                f"criterion '{self.loss_name}': outputs are {x.shape[-1]}-d, embed_dim="
                f"{self.embed_dim}"
            )
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= self.num_classes):
            raise DataError(
                f"criterion '{self.loss_name}': labels must lie in [0, {self.num_classes})"
            )
        logits = self.fc(x)
        log["correct"] = int((logits.detach().argmax(-1) == label).sum())
        log["total"] = int(label.numel())
        return F.cross_entropy(logits, label, reduction="none")


@register_criterion("embedding_softmax", dataclass=SoftmaxConfig, aliases=("enh_softmax",))
class EnhancementSoftmax(_ClassifierMixin, PointwiseCriterion):
    """Reference ``Softmax``: cross-entropy of a trainable linear speaker classifier on ``x``
    (reports top-1 ``accuracy``). Parameters ``fc.weight`` (C, D), ``fc.bias`` (C,)."""

    required_keys = ("input", "label")

    def __init__(self, cfg: SoftmaxConfig, task: Any = None):
        super().__init__(cfg, task)
        self._build_classifier(cfg, task)

    def terms(self, x, sample, log):
        return {"ce": (self.cfg.softmax_weight, self._cross_entropy(x, sample["label"], log))}


@register_criterion(
    "embedding_mse_softmax", dataclass=MSESoftmaxConfig, aliases=("enh_mse_softmax",)
)
class EnhancementMSESoftmax(_ClassifierMixin, PointwiseCriterion):
    """Reference ``MSE_Softmax``: ``w_ce CE + w_mse mean (x - t)^2``."""

    required_keys = ("input", "target", "label")

    def __init__(self, cfg: MSESoftmaxConfig, task: Any = None):
        super().__init__(cfg, task)
        self._build_classifier(cfg, task)

    def terms(self, x, sample, log):
        return {
            "ce": (self.cfg.softmax_weight, self._cross_entropy(x, sample["label"], log)),
            "mse": (self.cfg.mse_weight, squared_error(x, sample["target"].to(x.dtype))),
        }


@register_criterion(
    "embedding_triplet_cosine", dataclass=TripletCosineConfig, aliases=("enh_triplet_cosine",)
)
class EnhancementTripletCosine(PointwiseCriterion):
    """Reference ``MyTriplet_CS``: ``1 - mean cos(x, t) + mean cos(x, t')`` (weighted), with
    ``t'`` the other speaker's target from a triplet list."""

    list_formats = ("triplet",)
    required_keys = ("input", "target", "negative_target")
    test_normalize = True

    def terms(self, x, sample, log):
        return {
            "positive": (
                self.cfg.positive_weight,
                cosine_distance(x, sample["target"].to(x.dtype)),
            ),
            "negative": (
                self.cfg.negative_weight,
                F.cosine_similarity(
                    x, sample["negative_target"].to(x.dtype), dim=-1, eps=COSINE_EPS
                ),
            ),
        }


# --------------------------------------------------------------------------------------------
# domain adaptation (MMD)


class MMDCriterion(EnhancementCriterion):
    """Base of the reference's ``DA`` losses on one speaker's pairs (distribution lists)."""

    list_formats = ("distribution",)
    required_keys = ("input1", "input2", "same", "target")
    test_normalize = True
    target_term = ""

    def pair_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(P, D), (P, D) outputs -> (P,) distances."""
        raise NotImplementedError

    def target_loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(N, D) outputs and targets -> 0-dim batch mean."""
        raise NotImplementedError

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        self._check(sample)
        same = sample["same"].bool()
        if not bool(same.any()) or bool(same.all()):
            raise DataError(
                f"criterion '{self.loss_name}' needs same-session and cross-session pairs in "
                f"every batch, got {int(same.sum())} and {int((~same).sum())}"
            )
        p = int(same.shape[0])
        x = model(torch.cat([sample["input1"], sample["input2"]]))
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = upcast(x)
            d = self.pair_distance(x[:p], x[p:])
            mmd = rbf_mmd(d[same], d[~same], self.cfg.sigma)
            t = sample["target"].to(x.dtype)
            second = self.target_loss(x, torch.cat([t, t]))
            loss = self.cfg.mmd_weight * mmd + self.cfg.target_weight * second
        log = {
            "loss": float(loss.detach()),
            "sample_size": 1,
            "nsentences": 2 * p,
            "mmd_loss": float(mmd.detach()),
            f"{self.target_term}_loss": float(second.detach()),
        }
        return loss, 1, log


@register_criterion("embedding_mmd_cosine", dataclass=MMDConfig, aliases=("enh_mmd_cosine",))
class EnhancementMMDCosine(MMDCriterion):
    """Reference ``DA``: MMD of ``1 - cos`` pair distances + ``(1 - mean cos(x, t))``."""

    target_term = "cosine"

    def pair_distance(self, a, b):
        return cosine_distance(a, b)

    def target_loss(self, x, t):
        return cosine_distance(x, t).mean()


@register_criterion("embedding_mmd_mse", dataclass=MMDConfig, aliases=("enh_mmd_mse",))
class EnhancementMMDMSE(MMDCriterion):
    """Reference ``DA_MSE``: MMD of RMS pair distances ``sqrt(mean_d (a - b)^2)`` + MSE(x, t).

    The squared error is clamped at 1e-12 before the square root, so two identical outputs give
    a finite (zero) gradient instead of NaN.
    """

    target_term = "mse"

    def pair_distance(self, a, b):
        return squared_error(a, b).clamp_min(1e-12).sqrt()

    def target_loss(self, x, t):
        return squared_error(x, t).mean()

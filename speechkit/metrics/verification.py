"""Speaker-verification metrics: EER, minDCF, DET curves.

Trials are given as ``scores`` (N,) (higher means "same speaker") and ``labels`` (N,) in {0, 1}
(1 = target trial, same speaker). Every function sorts the scores once (O(N log N)) and reads
the miss and false-alarm counts at every distinct score from cumulative sums, so one million
trials take well under a second.

Conventions (those of scikit-learn's ``roc_curve``): a trial is accepted when
``score >= threshold``; the operating points run from ``threshold = inf`` (reject everything:
FPR 0, FNR 1) through every distinct score in decreasing order to the lowest score (accept
everything: FPR 1, FNR 0). Tied scores form one operating point.

- EER follows voxceleb_trainer (clovaai/voxceleb_trainer ``tuneThreshold.py``,
  ``tuneThresholdfromScore``): among the ROC points, take the one minimising ``|FNR - FPR|`` (the
  first one on a tie) and report ``max(FPR, FNR) * 100``. By default the ROC keeps only the
  corner points, exactly like ``sklearn.metrics.roc_curve`` with its default
  ``drop_intermediate=True`` that the reference calls, so published numbers are reproduced bit for
  bit.
- minDCF is the normalised detection cost of NIST SRE 2016 (evaluation plan, eq. 2-4):
  ``C_det = c_miss * p_target * FNR + c_fa * (1 - p_target) * FPR``, minimised over all operating
  points and divided by ``min(c_miss * p_target, c_fa * (1 - p_target))``. voxceleb_trainer's
  default is ``p_target = 0.05`` (VoxSRC); wespeaker and the ECAPA-TDNN paper use 0.01. Unlike
  the Kaldi-derived reference code, tied scores are one operating point (the reference's result
  then depends on the input order) and "accept everything" is an operating point too; with
  distinct scores and ``p_target <= 0.5`` both give the same value.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VerificationResult",
    "compute_eer",
    "compute_min_dcf",
    "det_curve",
    "evaluate_scores",
    "plot_det_curve",
]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_trials(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (float64 scores, int64 labels); see ``compute_eer`` for errors."""
    scores = _to_numpy(scores)
    labels = _to_numpy(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D arrays of trials, got shapes {scores.shape} and "
            f"{labels.shape}"
        )
    if len(scores) != len(labels):
        raise ValueError(
            f"scores and labels differ in length: {len(scores)} scores, {len(labels)} labels"
        )
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(
        scores.dtype, np.complexfloating
    ):
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64, copy=False)
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(
            f"scores contain {len(bad)} NaN or infinite value(s), first at trial index {bad[0]} "
            f"(value {scores[bad[0]]})"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    valid = (labels == 0) | (labels == 1)
    if not valid.all():
        bad = np.flatnonzero(~valid)[0]
        raise ValueError(
            f"labels must be 0 (non-target) or 1 (target), got {labels[bad].item()!r} at trial index {bad}"
        )
    labels = labels.astype(np.int64, copy=False)
    num_targets = int(labels.sum())
    if num_targets == 0:
        raise ValueError(
            f"no target trials (label 1) among the {len(labels)} trials: EER and minDCF are undefined"
        )
    if num_targets == len(labels):
        raise ValueError(
            f"no non-target trials (label 0) among the {len(labels)} trials: EER and minDCF are "
            "undefined"
        )
    return scores, labels


@dataclass
class _RocCounts:
    """Cumulative counts at every operating point, thresholds decreasing (``inf`` first).

    ``tps[i]`` / ``fps[i]``: number of targets / non-targets with ``score >= thresholds[i]``.
    """

    thresholds: np.ndarray  # (U + 1,) float64
    tps: np.ndarray  # (U + 1,) int64
    fps: np.ndarray  # (U + 1,) int64
    num_targets: int
    num_nontargets: int

    @classmethod
    def from_trials(cls, scores: Any, labels: Any) -> _RocCounts:
        scores, labels = _check_trials(scores, labels)
        order = np.argsort(scores)[::-1]
        sorted_scores = scores[order]
        # Last index of each group of equal scores (in decreasing order).
        last = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
        last = np.append(last, len(scores) - 1)
        tps = np.cumsum(labels[order])[last]
        fps = last + 1 - tps
        zero = np.zeros(1, dtype=np.int64)
        return cls(
            thresholds=np.concatenate(([np.inf], sorted_scores[last])),
            tps=np.concatenate((zero, tps)),
            fps=np.concatenate((zero, fps)),
            num_targets=int(tps[-1]),
            num_nontargets=int(fps[-1]),
        )

    def rates(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, FNR) at every operating point, as fractions."""
        fpr = self.fps / self.num_nontargets
        fnr = 1 - self.tps / self.num_targets
        return fpr, fnr

    def corners(self) -> np.ndarray:
        """Indices of the points ``roc_curve(drop_intermediate=True)`` keeps (collinear ones go)."""
        tps, fps = self.tps[1:], self.fps[1:]  # the (0, 0) point is prepended after the drop
        if len(tps) <= 2:
            return np.arange(len(self.tps))
        corner = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        keep = np.flatnonzero(np.concatenate(([True], corner, [True])))
        return np.concatenate(([0], keep + 1))

    def eer(self, drop_intermediate: bool = True) -> tuple[float, float, float, float]:
        """(EER %, threshold, FPR, FNR) at the point minimising ``|FNR - FPR|``."""
        fpr, fnr = self.rates()
        thresholds = self.thresholds
        if drop_intermediate:
            keep = self.corners()
            fpr, fnr, thresholds = fpr[keep], fnr[keep], thresholds[keep]
        i = int(np.argmin(np.abs(fnr - fpr)))
        eer = float(max(fpr[i], fnr[i])) * 100.0
        return eer, float(thresholds[i]), float(fpr[i]), float(fnr[i])

    def min_dcf(self, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
        """(normalised minimum detection cost, threshold at the minimum)."""
        if not 0.0 < p_target < 1.0:
            raise ValueError(f"p_target must be in (0, 1), got {p_target}")
        if c_miss <= 0 or c_fa <= 0:
            raise ValueError(f"c_miss and c_fa must be positive, got {c_miss} and {c_fa}")
        fpr, fnr = self.rates()
        c_det = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
        i = int(np.argmin(c_det))
        c_def = min(c_miss * p_target, c_fa * (1.0 - p_target))
        return float(c_det[i] / c_def), float(self.thresholds[i])


def compute_eer(scores: Any, labels: Any, drop_intermediate: bool = True) -> tuple[float, float]:
    """Equal error rate, defined as voxceleb_trainer does (``tuneThresholdfromScore``).

    Args:
        scores: (N,) trial scores, higher = more likely the same speaker (numpy, list or tensor).
        labels: (N,) 1 for target (same-speaker) trials, 0 for non-target trials.
        drop_intermediate: search only the ROC corner points, as ``sklearn.metrics.roc_curve``
            does by default (the reference). ``False`` searches every distinct threshold; the
            result can then be lower by a fraction of one trial's share.

    Returns:
        ``(eer, threshold)``: EER in percent (0-100) = ``max(FPR, FNR) * 100`` at the ROC point
        minimising ``|FNR - FPR|``, and that point's threshold (accept when ``score >= threshold``;
        ``inf`` means reject everything).

    Raises:
        ValueError: lengths differ, arrays are not 1-D, a score is NaN or infinite, a label is not
            0/1, or there are no target or no non-target trials.
    """
    eer, threshold, _, _ = _RocCounts.from_trials(scores, labels).eer(drop_intermediate)
    return eer, threshold


def compute_min_dcf(
    scores: Any, labels: Any, p_target: float = 0.05, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST SRE 2016 evaluation plan, eq. 2-4).

    Args:
        scores: (N,) trial scores, higher = more likely the same speaker.
        labels: (N,) 1 for target trials, 0 for non-target trials.
        p_target: prior of a target trial; 0.05 (voxceleb_trainer, VoxSRC) or 0.01 (wespeaker).
        c_miss: cost of a miss (rejected target).
        c_fa: cost of a false alarm (accepted non-target).

    Returns:
        ``(min_dcf, threshold)``: ``min over thresholds of (c_miss * p_target * FNR +
        c_fa * (1 - p_target) * FPR) / min(c_miss * p_target, c_fa * (1 - p_target))``, in [0, 1],
        and the threshold reaching it (accept when ``score >= threshold``).

    Raises:
        ValueError: as ``compute_eer``; also ``p_target`` outside (0, 1) or a cost <= 0.
    """
    return _RocCounts.from_trials(scores, labels).min_dcf(p_target, c_miss, c_fa)


def det_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection error trade-off: error rates at every distinct threshold.

    Args:
        scores: (N,) trial scores, higher = more likely the same speaker.
        labels: (N,) 1 for target trials, 0 for non-target trials.

    Returns:
        ``(fpr, fnr, thresholds)``, each (U + 1,) for U distinct scores: false-alarm and miss
        rates as fractions (not percent), thresholds decreasing from ``inf`` (FPR 0, FNR 1) to
        the lowest score (FPR 1, FNR 0). Equals ``sklearn.metrics.roc_curve(labels, scores,
        drop_intermediate=False)`` with ``fnr = 1 - tpr``.

    Raises:
        ValueError: as ``compute_eer``.
    """
    counts = _RocCounts.from_trials(scores, labels)
    fpr, fnr = counts.rates()
    return fpr, fnr, counts.thresholds


@dataclass
class VerificationResult:
    """Summary of one trial list's scores.

    Attributes:
        eer: equal error rate in percent.
        min_dcf_005: minDCF at p_target 0.05, c_miss = c_fa = 1 (voxceleb_trainer, VoxSRC).
        min_dcf_001: minDCF at p_target 0.01, c_miss = c_fa = 1 (wespeaker, ECAPA-TDNN paper).
        thresholds: score thresholds of the three operating points, keys ``eer``,
            ``min_dcf_005``, ``min_dcf_001`` (accept when ``score >= threshold``).
        num_trials: number of trials.
        num_targets: number of target (same-speaker) trials.
    """

    eer: float
    min_dcf_005: float
    min_dcf_001: float
    thresholds: dict[str, float] = field(default_factory=dict)
    num_trials: int = 0
    num_targets: int = 0

    def summary(self) -> str:
        """One line, e.g. ``EER 1.0180% minDCF(0.05) 0.0712 minDCF(0.01) 0.1101 (37720 trials)``."""
        return (
            f"EER {self.eer:.4f}% minDCF(0.05) {self.min_dcf_005:.4f} "
            f"minDCF(0.01) {self.min_dcf_001:.4f} ({self.num_trials} trials, "
            f"{self.num_targets} targets)"
        )


def evaluate_scores(scores: Any, labels: Any) -> VerificationResult:
    """EER and minDCF at p_target 0.05 and 0.01 from one sort of the scores.

    Args:
        scores: (N,) trial scores, higher = more likely the same speaker.
        labels: (N,) 1 for target trials, 0 for non-target trials.

    Returns:
        ``VerificationResult`` (EER as ``compute_eer`` with its defaults, minDCF with c_miss =
        c_fa = 1).

    Raises:
        ValueError: as ``compute_eer``.
    """
    counts = _RocCounts.from_trials(scores, labels)
    eer, eer_threshold, _, _ = counts.eer()
    dcf_005, dcf_005_threshold = counts.min_dcf(0.05, 1.0, 1.0)
    dcf_001, dcf_001_threshold = counts.min_dcf(0.01, 1.0, 1.0)
    return VerificationResult(
        eer=eer,
        min_dcf_005=dcf_005,
        min_dcf_001=dcf_001,
        thresholds={
            "eer": eer_threshold,
            "min_dcf_005": dcf_005_threshold,
            "min_dcf_001": dcf_001_threshold,
        },
        num_trials=counts.num_targets + counts.num_nontargets,
        num_targets=counts.num_targets,
    )


_DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
_DET_LIMITS = (0.0005, 0.6)


def _thin_det_points(x: np.ndarray, y: np.ndarray, step: float = 0.005) -> np.ndarray:
    """Indices of a DET curve to draw: at most one point per ``step`` of probit path length.

    Along the curve x (probit FPR) never decreases and y (probit FNR) never increases, so
    ``x - y`` is monotone and bucketing it bounds the number of points (~3,000) for any N.
    """
    bucket = np.floor((x - y) / step)
    keep = np.concatenate(([True], bucket[1:] != bucket[:-1]))
    keep[-1] = True
    return np.flatnonzero(keep)


def plot_det_curve(
    curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw DET curves (miss rate vs false-alarm rate on normal-deviate axes) to a PNG file.

    Axes are probit-scaled (Martin et al. 1997, "The DET curve in assessment of detection task
    performance"), ticks at 0.1, 0.5, 1, 2, 5, 10, 20, 40 %; each curve's EER point (as
    ``compute_eer``) is marked and quoted in the legend. Uses matplotlib's Agg renderer without
    pyplot, so no global backend is changed. The file is written atomically (temporary file,
    ``os.replace``).

    Args:
        curves: system name -> ``(scores (N,), labels (N,))``.
        path: output PNG file; its folder is created if needed.
        title: optional figure title.

    Returns:
        The written path.

    Raises:
        ValueError: ``curves`` is empty, or a curve's trials are invalid (as ``compute_eer``).
    """
    from matplotlib.figure import Figure
    from scipy.special import ndtri  # inverse of the standard normal CDF (probit)

    if not curves:
        raise ValueError("plot_det_curve needs at least one curve, got an empty mapping")
    eps = 1e-7  # probit of 0 and 1 is infinite; clip far outside the drawn range
    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, (scores, labels) in curves.items():
        counts = _RocCounts.from_trials(scores, labels)
        fpr, fnr = counts.rates()
        x = ndtri(np.clip(fpr, eps, 1 - eps))
        y = ndtri(np.clip(fnr, eps, 1 - eps))
        idx = _thin_det_points(x, y)
        (line,) = ax.plot(x[idx], y[idx], linewidth=1.5)
        eer, _, eer_fpr, eer_fnr = counts.eer()
        line.set_label(f"{name} (EER {eer:.2f}%)")
        ax.plot(
            ndtri(np.clip(eer_fpr, eps, 1 - eps)),
            ndtri(np.clip(eer_fnr, eps, 1 - eps)),
            marker="o",
            markersize=6,
            color=line.get_color(),
            linestyle="none",
        )
    lo, hi = ndtri(np.array(_DET_LIMITS))
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="0.6", linewidth=0.8)  # FNR = FPR
    ticks = ndtri(np.array(_DET_TICKS))
    tick_labels = [f"{100 * t:g}" for t in _DET_TICKS]
    ax.set_xticks(ticks, tick_labels)
    ax.set_yticks(ticks, tick_labels)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("False alarm rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.grid(True, color="0.85")
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

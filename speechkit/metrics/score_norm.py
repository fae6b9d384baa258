"""Cohort score normalisation for cosine-scored speaker verification: S-norm and AS-norm.

Symmetric normalisation standardises a trial score twice, once with the statistics of the
enrolment side's scores against a cohort of impostor embeddings and once with the test side's,
and averages the two:

    s' = 0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)

- S-norm uses every cohort score.
- AS-norm ("adaptive S-norm", variant AS-norm1 of Matejka et al. 2017, "Analysis of score
  normalization in multilingual speaker recognition", Interspeech) uses, for each side, only its
  ``top_k`` highest cohort scores (the cohort members most similar to that side). wespeaker's
  VoxCeleb recipe uses ``top_k = 300`` with per-speaker mean embeddings of VoxCeleb2-dev as the
  cohort (wenet-e2e/wespeaker ``examples/voxceleb/v2/run.sh``).

The statistics of one embedding do not depend on the trial, so for a trial list where each file
occurs in many trials, call ``cohort_stats`` once per unique file and ``normalize_scores`` per
trial; ``as_norm`` is the per-trial convenience form. Computation runs on the cohort's device
(put it on a GPU for large lists) in chunks of rows, so memory stays ``chunk_size * C`` scores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["as_norm", "cohort_stats", "normalize_scores", "s_norm"]

_STD_FLOOR = 1e-12  # guards the division when every selected cohort score is equal


def _as_tensor(x: Any, name: str, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != ndim or not torch.is_floating_point(t):
        raise ValueError(
            f"{name} must be a {ndim}-D floating-point array, got {tuple(t.shape)} "
            f"of dtype {t.dtype}"
        )
    return t


def cohort_stats(
    emb: Any,
    cohort_emb: Any,
    top_k: int | None = 300,
    *,
    normalize: bool = True,
    unbiased: bool = False,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each embedding's top-K cosine scores against a cohort.

    Args:
        emb: (N, D) embeddings (one per file or per trial side).
        cohort_emb: (C, D) cohort (impostor) embeddings; C >= 2.
        top_k: number of highest cohort scores per embedding (AS-norm); ``None`` uses all C
            (S-norm). A value above C is clipped to C, as in wespeaker.
        normalize: L2-normalise ``emb`` and ``cohort_emb`` first, so cohort scores are cosine
            similarities (a no-op for already normalised embeddings).
        unbiased: standard deviation with Bessel's correction (N - 1, SpeechBrain's
            ``torch.std``); the default divides by K (wespeaker's ``np.std``).
        chunk_size: rows of ``emb`` scored at once (memory ``chunk_size * C`` values).

    Returns:
        ``(mean, std)``, each (N,), on the cohort's device, in the promoted float dtype of the
        inputs; ``std`` is floored at 1e-12.

    Raises:
        ValueError: shapes are wrong, the embedding sizes differ, C < 2, top_k < 2 or
            chunk_size < 1.
    """
    emb = _as_tensor(emb, "emb", 2)
    cohort = _as_tensor(cohort_emb, "cohort_emb", 2)
    if emb.shape[1] != cohort.shape[1]:
        raise ValueError(
            f"embedding size {emb.shape[1]} differs from the cohort's {cohort.shape[1]}"
        )
    num_cohort = cohort.shape[0]
    if num_cohort < 2:
        raise ValueError(f"the cohort needs at least 2 embeddings, got {num_cohort}")
    if top_k is not None and top_k < 2:
        raise ValueError(
            f"top_k must be >= 2 (a standard deviation of one score is 0), got {top_k}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = torch.promote_types(emb.dtype, cohort.dtype)
    cohort = cohort.to(dtype)
    if normalize:
        cohort = F.normalize(cohort, dim=1)
    k = num_cohort if top_k is None else min(top_k, num_cohort)
    means, stds = [], []
    for start in range(0, emb.shape[0], chunk_size):
        chunk = emb[start : start + chunk_size].to(device=cohort.device, dtype=dtype)
        if normalize:
            chunk = F.normalize(chunk, dim=1)
        cohort_scores = chunk @ cohort.T  # (chunk, C)
        if k < num_cohort:
            cohort_scores = torch.topk(cohort_scores, k, dim=1, sorted=False).values
        std, mean = torch.std_mean(cohort_scores, dim=1, correction=1 if unbiased else 0)
        means.append(mean)
        stds.append(std.clamp_min(_STD_FLOOR))
    if not means:
        empty = torch.empty(0, dtype=dtype, device=cohort.device)
        return empty, empty.clone()
    return torch.cat(means), torch.cat(stds)


def normalize_scores(scores: Any, mean_e: Any, std_e: Any, mean_t: Any, std_t: Any) -> torch.Tensor:
    """Symmetric normalisation ``0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)``.

    Args:
        scores: (N,) raw trial scores.
        mean_e, std_e: (N,) cohort statistics of each trial's enrolment side (``cohort_stats``).
        mean_t, std_t: (N,) cohort statistics of each trial's test side.

    Returns:
        (N,) normalised scores, on the statistics' device and dtype.

    Raises:
        ValueError: the five inputs are not all of shape (N,).
    """
    mean_e = torch.as_tensor(mean_e)
    scores = torch.as_tensor(scores).to(device=mean_e.device, dtype=mean_e.dtype)
    parts = [torch.as_tensor(x) for x in (std_e, mean_t, std_t)]
    if scores.ndim != 1 or any(p.shape != scores.shape for p in (mean_e, *parts)):
        raise ValueError(
            "scores, mean_e, std_e, mean_t and std_t must all have shape (N,), got "
            f"{[tuple(p.shape) for p in (scores, mean_e, *parts)]}"
        )
    std_e, mean_t, std_t = (p.to(device=mean_e.device, dtype=mean_e.dtype) for p in parts)
    return 0.5 * ((scores - mean_e) / std_e + (scores - mean_t) / std_t)


def as_norm(
    scores: Any,
    enrol_emb: Any,
    test_emb: Any,
    cohort_emb: Any,
    top_k: int | None = 300,
    *,
    normalize: bool = True,
    unbiased: bool = False,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Adaptive symmetric score normalisation (AS-norm1, Matejka et al. 2017) of cosine scores.

    Args:
        scores: (N,) cosine scores of the trials (``scoring.cosine_scores(enrol_emb, test_emb)``).
        enrol_emb: (N, D) enrolment-side embedding of each trial.
        test_emb: (N, D) test-side embedding of each trial.
        cohort_emb: (C, D) cohort embeddings (speakers absent from the trials).
        top_k: cohort scores kept per side; ``None`` for plain S-norm (all C).
        normalize, unbiased, chunk_size: as ``cohort_stats``.

    Returns:
        (N,) normalised scores (torch tensor on the cohort's device).

    Raises:
        ValueError: as ``cohort_stats``, or ``scores``/``enrol_emb``/``test_emb`` disagree in N.
    """
    enrol = _as_tensor(enrol_emb, "enrol_emb", 2)
    test = _as_tensor(test_emb, "test_emb", 2)
    n = torch.as_tensor(scores).shape
    if enrol.shape != test.shape or n != enrol.shape[:1]:
        raise ValueError(
            f"scores {tuple(n)}, enrol_emb {tuple(enrol.shape)} and test_emb "
            f"{tuple(test.shape)} must be (N,), (N, D) and (N, D)"
        )
    kwargs = {
        "top_k": top_k,
        "normalize": normalize,
        "unbiased": unbiased,
        "chunk_size": chunk_size,
    }
    mean_e, std_e = cohort_stats(enrol, cohort_emb, **kwargs)
    mean_t, std_t = cohort_stats(test, cohort_emb, **kwargs)
    return normalize_scores(scores, mean_e, std_e, mean_t, std_t)


def s_norm(
    scores: Any,
    enrol_emb: Any,
    test_emb: Any,
    cohort_emb: Any,
    *,
    normalize: bool = True,
    unbiased: bool = False,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Symmetric score normalisation over the whole cohort (``as_norm`` with ``top_k=None``).

    Shapes, returns and errors as ``as_norm``.
    """
    return as_norm(
        scores,
        enrol_emb,
        test_emb,
        cohort_emb,
        None,
        normalize=normalize,
        unbiased=unbiased,
        chunk_size=chunk_size,
    )

"""Trial scoring and the trial-list / score-file formats of speaker verification.

- ``cosine_scores``: cosine similarity of paired embeddings (wespeaker, SpeechBrain).
- ``mean_crop_distance_score``: voxceleb_trainer's score (clovaai/voxceleb_trainer
  ``SpeakerNet.py``, ``evaluateFromList``): minus the mean Euclidean distance between all crop
  embeddings of the two files (10 x 10 by default), L2-normalising the crops first when the
  training loss sets ``test_normalize``.
- ``mean_crop_cosine_score``: syncnet_trainer's speaker-verification score (``scoring=
  syncnet_reference``; joonson/syncnet_trainer ``SyncNetDist.py``, ``evaluateFromListSave``): the
  mean cosine similarity over all crop pairs of the two files, each crop embedding normalised on
  its own. This is the rule that reproduces the released ``voxsrc2020_baseline.model`` EER
  20.4348.
- Trial list (voxceleb_trainer's ``veri_test.txt`` format): one trial per line,
  ``label path1 path2`` with label 1 = same speaker, 0 = different speakers; paths relative to
  a root folder. A list of ``path1 path2`` lines (no labels, e.g. a challenge's blind list) is
  read with ``labels = None``: scores can be written, but no EER computed.
- Score file: ``score label path1 path2`` per line (``score path1 path2`` without labels); scores
  are written with ``repr`` so they read back bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from speechkit.atomic import atomic_write_text
from speechkit.errors import DataError

__all__ = [
    "ScoreFile",
    "TrialList",
    "cosine_scores",
    "mean_crop_cosine_score",
    "mean_crop_distance_score",
    "read_score_file",
    "read_trial_list",
    "write_score_file",
]


def cosine_scores(emb1: torch.Tensor, emb2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity of each pair of embeddings.

    Args:
        emb1: (N, D) embeddings of the first file of each trial.
        emb2: (N, D) embeddings of the second file.
        eps: floor of the vector norms (a zero vector scores 0).

    Returns:
        (N,) scores in [-1, 1].

    Raises:
        ValueError: the shapes are not both (N, D).
    """
    emb1, emb2 = torch.as_tensor(emb1), torch.as_tensor(emb2)
    if emb1.ndim != 2 or emb1.shape != emb2.shape:
        raise ValueError(
            f"emb1 and emb2 must both be (N, D), got {tuple(emb1.shape)} and {tuple(emb2.shape)}"
        )
    return (F.normalize(emb1, dim=1, eps=eps) * F.normalize(emb2, dim=1, eps=eps)).sum(dim=1)


def _batched_crops(
    crops1: torch.Tensor, crops2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Check two crop-embedding sets; returns them as (N, K, D) and whether one trial was given.

    Raises:
        ValueError: ranks differ or are not 2/3, N or D differ.
    """
    crops1, crops2 = torch.as_tensor(crops1), torch.as_tensor(crops2)
    if crops1.ndim != crops2.ndim or crops1.ndim not in (2, 3):
        raise ValueError(
            f"crops must both be (K, D) or (N, K, D), got {tuple(crops1.shape)} and "
            f"{tuple(crops2.shape)}"
        )
    single = crops1.ndim == 2
    if single:
        crops1, crops2 = crops1.unsqueeze(0), crops2.unsqueeze(0)
    if crops1.shape[0] != crops2.shape[0] or crops1.shape[2] != crops2.shape[2]:
        raise ValueError(
            f"crops1 {tuple(crops1.shape)} and crops2 {tuple(crops2.shape)} must agree in N and D"
        )
    return crops1, crops2, single


def mean_crop_distance_score(
    crops1: torch.Tensor, crops2: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """voxceleb_trainer's trial score: minus the mean Euclidean distance over all crop pairs.

    Args:
        crops1: (N, K1, D) crop embeddings of the first file of N trials, or (K1, D) for one trial.
        crops2: (N, K2, D) (or (K2, D)) crop embeddings of the second file.
        normalize: L2-normalise every crop embedding first (the reference does this when its
            loss has ``test_normalize``, i.e. every loss but ``proto``).

    Returns:
        (N,) scores (a 0-d tensor for one trial), <= 0; higher = more likely the same speaker.

    Raises:
        ValueError: ranks differ or are not 2/3, N or D differ.
    """
    crops1, crops2, single = _batched_crops(crops1, crops2)
    if normalize:
        crops1, crops2 = F.normalize(crops1, dim=-1), F.normalize(crops2, dim=-1)
    # The direct kernel is exact for unit vectors, where |a|^2 + |b|^2 - 2ab cancels badly.
    dist = torch.cdist(crops1, crops2, compute_mode="donot_use_mm_for_euclid_dist")
    scores = -dist.mean(dim=(1, 2))
    return scores[0] if single else scores


def mean_crop_cosine_score(
    crops1: torch.Tensor, crops2: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """syncnet_trainer's trial score (``evaluateFromListSave``): mean cosine over all crop pairs.

    Each file is embedded as K crops (the reference: 10 evenly spaced crops of 200 frames,
    32,240 samples, each the time-mean of the audio identity head). The score is
    ``mean_{i,j} cos(crops1[i], crops2[j])`` over the K1 x K2 pairs, each crop normalised on
    its own (norm floored at ``eps``), so it does not depend on whether the crops were already
    L2-normalised. It differs from ``cosine_scores`` of the mean crops: that renormalises the
    mean vectors, this equals the dot product of the mean UNIT crop vectors, so files whose
    crops disagree score lower. This rule reproduces the released SyncNet SV number (EER
    20.4348 on VoxCeleb1 with ``voxsrc2020_baseline.model``).

    Args:
        crops1: (N, K1, D) crop embeddings of the first file of N trials, or (K1, D) for one trial.
        crops2: (N, K2, D) (or (K2, D)) crop embeddings of the second file.
        eps: floor of each crop's norm (``F.cosine_similarity``'s 1e-8).

    Returns:
        (N,) scores in [-1, 1] (a 0-d tensor for one trial); higher = more likely the same
        speaker.

    Raises:
        ValueError: ranks differ or are not 2/3, N or D differ.
    """
    crops1, crops2, single = _batched_crops(crops1, crops2)
    unit1 = crops1 / crops1.norm(dim=-1, keepdim=True).clamp(min=eps)
    unit2 = crops2 / crops2.norm(dim=-1, keepdim=True).clamp(min=eps)
    scores = (unit1 @ unit2.transpose(1, 2)).mean(dim=(1, 2))
    return scores[0] if single else scores


@dataclass
class TrialList:
    """A parsed trial list.

    Attributes:
        paths1, paths2: (N,) file paths of each trial as written in the list.
        labels: (N,) int64 array, 1 = target (same speaker), 0 = non-target; ``None`` for a list
            without labels.
        source: the list file.
        root: folder the paths are relative to (``None``: as written).
    """

    paths1: list[str]
    paths2: list[str]
    labels: np.ndarray | None
    source: Path
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths1)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def resolve(self, path: str) -> Path:
        """The file to read for ``path``: ``root / path`` (absolute paths are kept)."""
        return Path(path) if self.root is None else self.root / path

    def unique_paths(self) -> list[str]:
        """Every file of the list once, in order of first appearance (embed each only once)."""
        return list(dict.fromkeys(p for pair in zip(self.paths1, self.paths2) for p in pair))


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text: {e}") from None


def _parse_label(token: str, path: Path, lineno: int, line: str) -> int:
    if token not in ("0", "1"):
        raise DataError(f"{path}:{lineno}: label must be 0 or 1, got {token!r} in line {line!r}")
    return int(token)


def read_trial_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> TrialList:
    """Read a trial list of ``label path1 path2`` lines (or ``path1 path2`` lines, no labels).

    Fields are separated by whitespace, so paths cannot contain spaces (as in the reference).
    Blank lines and lines starting with ``#`` are skipped. All lines must have the same number
    of fields.

    Args:
        path: the list file (UTF-8).
        root: folder the list's paths are relative to, used by ``TrialList.resolve``.

    Returns:
        ``TrialList``; ``labels`` is ``None`` for the 2-field format (no EER can be computed).

    Raises:
        DataError: the file is missing, not UTF-8, empty, or a line (its 1-based number is
            named) has a field count other than 2 or 3, a count other than the first line's, or
            a label other than 0/1.
    """
    path = Path(path)
    paths1: list[str] = []
    paths2: list[str] = []
    labels: list[int] = []
    num_fields = None
    for lineno, line in enumerate(_read_lines(path, "trial list"), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3):
            raise DataError(
                f"{path}:{lineno}: expected 'label path1 path2' (or 'path1 path2'), "
                f"got {len(fields)} fields in line {line!r}"
            )
        if num_fields is None:
            num_fields = len(fields)
        elif len(fields) != num_fields:
            raise DataError(
                f"{path}:{lineno}: {len(fields)} fields, but the first trial line "
                f"has {num_fields}; a list is either all labelled or all unlabelled"
            )
        if num_fields == 3:
            labels.append(_parse_label(fields[0], path, lineno, line))
        paths1.append(fields[-2])
        paths2.append(fields[-1])
    if not paths1:
        raise DataError(f"trial list {path} has no trials")
    return TrialList(
        paths1=paths1,
        paths2=paths2,
        labels=np.asarray(labels, dtype=np.int64) if num_fields == 3 else None,
        source=path,
        root=None if root is None else Path(root),
    )


def write_score_file(
    path: str | os.PathLike,
    scores: Any,
    labels: Any | None,
    paths1: Sequence[str],
    paths2: Sequence[str],
) -> Path:
    """Write ``score label path1 path2`` lines (``score path1 path2`` when ``labels`` is None).

    The file appears complete or not at all (temporary file in the same folder, fsync,
    ``os.replace``); its folder is created if needed.

    Args:
        path: output file.
        scores: (N,) trial scores (written with ``repr``: exact round trip).
        labels: (N,) 0/1 labels, or ``None``.
        paths1, paths2: (N,) file paths of each trial.

    Returns:
        The written path.

    Raises:
        ValueError: lengths differ, a label is not 0/1, or a path is empty or contains
            whitespace (it could not be read back).
        OutputError: the file cannot be written (disk full, read-only folder); ``path`` is
            then untouched.
    """
    scores = np.asarray(
        scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64
    ).reshape(-1)
    n = len(scores)
    if labels is not None:
        labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
        labels = labels.reshape(-1)
    lengths = [n, len(paths1), len(paths2)] + ([] if labels is None else [len(labels)])
    if len(set(lengths)) != 1:
        raise ValueError(f"scores, labels, paths1 and paths2 differ in length: {lengths}")
    if labels is not None and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    lines = []
    for i in range(n):
        p1, p2 = str(paths1[i]), str(paths2[i])
        for p in (p1, p2):
            if not p or len(p.split()) != 1 or p != p.strip():
                raise ValueError(f"trial {i}: path {p!r} is empty or contains whitespace")
        label = "" if labels is None else f" {int(labels[i])}"
        lines.append(f"{float(scores[i])!r}{label} {p1} {p2}\n")

    path = Path(path)
    atomic_write_text(path, "".join(lines))
    return path


@dataclass
class ScoreFile:
    """A parsed score file: ``scores`` (N,) float64, ``labels`` (N,) int64 or ``None``, paths."""

    scores: np.ndarray
    labels: np.ndarray | None
    paths1: list[str]
    paths2: list[str]


def read_score_file(path: str | os.PathLike) -> ScoreFile:
    """Read a file written by ``write_score_file``.

    Raises:
        DataError: the file is missing or not UTF-8, or a line (named by its 1-based number)
            has a field count other than 3 or 4 (or other than the first line's), a score that
            is not a number or a label other than 0/1.
    """
    path = Path(path)
    scores: list[float] = []
    labels: list[int] = []
    paths1: list[str] = []
    paths2: list[str] = []
    num_fields = None
    for lineno, line in enumerate(_read_lines(path, "score file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (3, 4) or (num_fields is not None and len(fields) != num_fields):
            raise DataError(
                f"{path}:{lineno}: expected 'score label path1 path2' or 'score path1 "
                f"path2' (as the first line), got {len(fields)} fields"
            )
        num_fields = len(fields)
        try:
            scores.append(float(fields[0]))
        except ValueError:
            raise DataError(f"{path}:{lineno}: score {fields[0]!r} is not a number") from None
        if num_fields == 4:
            labels.append(_parse_label(fields[1], path, lineno, line))
        paths1.append(fields[-2])
        paths2.append(fields[-1])
    return ScoreFile(
        scores=np.asarray(scores, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int64) if num_fields == 4 else None,
        paths1=paths1,
        paths2=paths2,
    )

"""``embedding_enhancement``: train a network that maps a single-utterance speaker embedding
towards its speaker's multi-utterance embedding (Dorika0203/proj_2022NC ``m_trainer.py``), on
embeddings dumped by ``scripts/dump_embeddings.py``.

Pipeline::

    scripts/dump_embeddings.py --checkpoint sv.pt --list train.txt --root DATA --out emb/
    scripts/combine_embeddings.py --emb-dir emb/ --list train.txt --out targets/
    scripts/make_enhancement_lists.py --list train.txt --out-dir lists/ --name train
    python -m speechkit.train experiment=enhancement_demo task.embedding_dir=emb/ ...

Inputs are the per-utterance vectors (crop mean, L2-normalised); targets the combined speaker
(or session) vectors. Every ``.npy`` the lists name is read when the task is built, so a
missing file, a wrong dimension or a speaker without target fails before training, naming the
list line. ``dataset.batch_size`` counts utterances (default 1000, the reference's); with a
``distribution`` list (the MMD losses) a batch is every pair of one speaker, as the reference's
batch size 1.

Validation scores the trials of ``test_list`` twice, on the raw vectors and on the network
outputs, and reports ``eer_raw`` / ``eer_enhanced`` (%), ``min_dcf_raw`` / ``min_dcf_enhanced``
(p_target 0.05), ``min_dcf_001_raw`` / ``min_dcf_001_enhanced`` (0.01) and ``num_trials``:
the same trials, labels and scoring for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechkit import distributed as dist_utils
from speechkit.data.embedding_dataset import (
    EmbeddingTable,
    EnhancementDataset,
    PairDistributionDataset,
    TargetTable,
    build_dataset,
    read_enhancement_list,
)
from speechkit.data.epoch_iterator import Batching
from speechkit.data.lists import speaker_to_label
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError
from speechkit.metrics.scoring import cosine_scores
from speechkit.metrics.verification import evaluate_scores
from speechkit.registry import ChoiceEnum, register_task
from speechkit.tasks.base import Task, model_embed_dim


class EnhancementListFormat(ChoiceEnum):
    """Train-list layouts of ``make_enhancement_lists.py`` (``test`` lists are for scoring)."""

    normal = "normal"
    triplet = "triplet"
    distribution = "distribution"


class TargetLevel(ChoiceEnum):
    """``speaker`` (``<spk>.npy``) or ``session`` (``<spk>/<session>.npy``) targets."""

    speaker = "speaker"
    session = "session"


class SessionRule(ChoiceEnum):
    """How a session is read from a path at session level."""

    auto = "auto"
    librispeech = "librispeech"
    parent = "parent"
    none = "none"


class EnhancementScoring(ChoiceEnum):
    """``cosine`` or ``euclidean`` (``-||a - b||``) trial scores."""

    cosine = "cosine"
    euclidean = "euclidean"


@dataclass
class EmbeddingEnhancementConfig(SpeechkitDataclass):
    embedding_dir: str = "???"
    """Folder of the per-utterance ``.npy`` files (``dump_embeddings.py --out``); list paths
    are relative to it."""
    target_dir: str = "???"
    """Folder of the targets (``combine_embeddings.py --out``)."""
    train_list: str = "???"
    """Train list (``make_enhancement_lists.py``) in ``list_format``."""
    list_format: EnhancementListFormat = "normal"
    """``normal``, ``triplet`` or ``distribution`` (which one the criterion needs)."""
    test_list: str | None = None
    """``label file1 file2`` trials for validation (``.wav`` names are read as ``.npy``);
    null: no validation."""
    test_embedding_dir: str | None = None
    """Folder the test-list paths are relative to; null: ``embedding_dir``."""
    target_level: TargetLevel = "speaker"
    """``speaker`` (``<spk>.npy``) or ``session`` (``<spk>/<session>.npy``) targets."""
    session_rule: SessionRule = "auto"
    """How a session is read from a path at session level (``auto``, ``librispeech``,
    ``parent``, ``none``)."""
    embed_dim: int = 0
    """Expected D; 0: taken from the first embedding file."""
    scoring: EnhancementScoring = "cosine"
    """Trial score: ``cosine``, or ``euclidean`` (``-||a - b||``, outputs L2-normalised first
    when the criterion's ``test_normalize`` is set: the reference's two scorings)."""
    default_batch_size: int = 1000
    """Utterances per batch when ``dataset.batch_size`` is null (the reference's 1000)."""


@dataclass
class TrialScores:
    """Raw and enhanced scores of one trial list (same trials, same order).

    Attributes:
        paths1, paths2: (N,) files of each trial, as in the test list (``.npy`` names).
        labels: (N,) int64, 1 = same speaker.
        raw: (N,) float64 scores of the input vectors.
        enhanced: (N,) float64 scores of the network outputs.
    """

    paths1: list[str]
    paths2: list[str]
    labels: np.ndarray
    raw: np.ndarray
    enhanced: np.ndarray


@register_task(
    "embedding_enhancement",
    dataclass=EmbeddingEnhancementConfig,
    default_model="enhancement_residual",
    default_criterion="enh_cosine",
)
class EmbeddingEnhancementTask(Task):
    """Speaker-embedding enhancement training with raw-vs-enhanced EER validation.

    Raises (at construction, before any model is built):
        ConfigError: a missing required path, an unknown list format, scoring, target level or
            session rule.
        DataError: see ``speechkit.data.embedding_dataset`` (every file is checked).
    """

    required = ("embedding_dir", "target_dir", "train_list")
    needs = (
        "task.embedding_dir=DIR with per-utterance .npy files (scripts/dump_embeddings.py), "
        "task.target_dir=DIR with speaker targets (scripts/combine_embeddings.py) and "
        "task.train_list=FILE (scripts/make_enhancement_lists.py)"
    )

    def __init__(self, cfg: EmbeddingEnhancementConfig, seed: int = 1):
        super().__init__(cfg, seed)
        # choice fields fail at composition; a config built in Python is checked here
        EnhancementListFormat.check(cfg.list_format, "task.list_format")
        EnhancementScoring.check(cfg.scoring, "task.scoring")
        TargetLevel.check(cfg.target_level, "task.target_level")
        SessionRule.check(cfg.session_rule, "task.session_rule")
        self.table = EmbeddingTable(cfg.embedding_dir, cfg.embed_dim or None)
        self.train = read_enhancement_list(cfg.train_list, cfg.list_format)
        self.label_of_speaker = speaker_to_label(self.train.speakers())
        # the first file fixes D; targets are then checked against it
        first = self.train.entries[0]
        self.table.get(first.files[0], self.train.where(first))
        self.targets = TargetTable(
            cfg.target_dir, self.table.embed_dim, cfg.target_level, cfg.session_rule
        )
        self.train_dataset = build_dataset(
            self.train, self.table, self.targets, self.label_of_speaker
        )
        self.embed_dim: int = int(self.table.embed_dim)
        self.trials = None
        self.trial_vectors: np.ndarray | None = None
        if cfg.test_list:
            self._load_trials(cfg)

    def _load_trials(self, cfg: EmbeddingEnhancementConfig) -> None:
        trials = read_enhancement_list(cfg.test_list, "test")
        labels = {e.flag for e in trials.entries}
        if labels != {0, 1}:
            raise DataError(
                f"{cfg.test_list}: EER needs both target (1) and non-target (0) "
                f"trials, got only label(s) {sorted(labels)}"
            )
        root = cfg.test_embedding_dir or cfg.embedding_dir
        table = self.table if root == cfg.embedding_dir else EmbeddingTable(root, self.embed_dim)
        files = list(dict.fromkeys(f for e in trials.entries for f in e.files))
        where = {}
        for e in trials.entries:
            for f in e.files:
                where.setdefault(f, trials.where(e))
        self.trials = trials
        self.trial_files = files
        self.trial_vectors = table.stack(files, [where[f] for f in files])
        index = {f: i for i, f in enumerate(files)}
        self.trial_index = np.array([[index[f] for f in e.files] for e in trials.entries])
        self.trial_labels = np.array([e.flag for e in trials.entries], dtype=np.int64)

    # -- building -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Training speakers (the classifier size of the softmax losses)."""
        return len(self.label_of_speaker)

    def build_model(self, cfg: Any) -> nn.Module:
        """Build the model and check its ``embed_dim`` against the embedding files'.

        Raises:
            ConfigError: the model declares no integer ``embed_dim``, or another one.
        """
        model = super().build_model(cfg)
        dim = model_embed_dim(model, "embedding_enhancement")
        if dim != self.embed_dim:
            raise ConfigError(
                f"model.embed_dim={dim} but the embeddings in {self.cfg.embedding_dir} are "
                f"{self.embed_dim}-d; set model.embed_dim={self.embed_dim}"
            )
        return model

    def build_criterion(self, cfg: Any) -> nn.Module:
        criterion = super().build_criterion(cfg)
        formats = getattr(criterion, "list_formats", None)
        if formats is not None and self.cfg.list_format not in formats:
            raise ConfigError(
                f"criterion '{cfg._name if hasattr(cfg, '_name') else cfg}' trains on "
                f"{' or '.join(formats)} lists, but task.list_format={self.cfg.list_format}; "
                "make one with scripts/make_enhancement_lists.py"
            )
        return criterion

    # -- data -----------------------------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        return split == "train"

    def load_dataset(self, split: str) -> EnhancementDataset | PairDistributionDataset:
        if split != "train":
            raise ValueError(
                f"embedding_enhancement has no '{split}' dataset (validation uses the test list)"
            )
        return self.train_dataset

    def batches(
        self,
        split: str,
        epoch: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[int]]:
        """Shuffled batches of ``batch_size`` items (a deterministic function of seed, epoch);
        distribution lists: one speaker's pairs per batch, speakers shuffled."""
        dataset = self.dataset(split)
        rng = np.random.default_rng([self.seed, epoch])
        if isinstance(dataset, PairDistributionDataset):
            labels = sorted(dataset.groups)
            return [list(dataset.groups[labels[i]]) for i in rng.permutation(len(labels))]
        size = batch_size or self.cfg.default_batch_size
        if size <= 0:
            raise ConfigError(f"dataset.batch_size must be positive, got {size}")
        order = rng.permutation(len(dataset)).tolist()
        return [order[i : i + size] for i in range(0, len(order), size)]

    # -- validation -----------------------------------------------------------------------------
    def _score(self, vectors: torch.Tensor, normalize: bool) -> np.ndarray:
        a = vectors[self.trial_index[:, 0]]
        b = vectors[self.trial_index[:, 1]]
        if self.cfg.scoring == "cosine":
            return np.asarray(cosine_scores(a, b), dtype=np.float64)
        if normalize:
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return -np.linalg.norm((a - b).numpy().astype(np.float64), axis=1)

    @torch.no_grad()
    def trial_scores(
        self, model: nn.Module, device: torch.device, normalize: bool = False, chunk: int = 4096
    ) -> TrialScores:
        """Scores of every test trial on the raw vectors and on ``model``'s outputs.

        Args:
            model: the enhancement network, (N, D) -> (N, D); the caller sets eval mode.
            normalize: L2-normalise outputs before ``euclidean`` scoring.
            chunk: vectors per forward pass.

        Raises:
            ConfigError: the task has no ``test_list``.
        """
        if self.trials is None:
            raise ConfigError("task.test_list is not set: no trials to score")
        raw = torch.from_numpy(self.trial_vectors)
        outs = [
            model(raw[i : i + chunk].to(device)).float().cpu() for i in range(0, len(raw), chunk)
        ]
        enhanced = torch.cat(outs)
        entries = self.trials.entries
        return TrialScores(
            paths1=[e.files[0] for e in entries],
            paths2=[e.files[1] for e in entries],
            labels=self.trial_labels,
            raw=self._score(raw, True),
            enhanced=self._score(enhanced, normalize),
        )

    def validate(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float] | None:
        """Raw and enhanced EER / minDCF of the test trials, computed on rank 0 and broadcast
        (identical on every rank and for every world size); ``None`` without ``test_list``.
        Outputs are L2-normalised before ``euclidean`` scoring when the criterion's
        ``test_normalize`` says so."""
        if self.trials is None:
            return None
        result = None
        if env is None or env.rank == 0:
            normalize = bool(criterion.test_normalize)
            with torch.autocast(device_type=device.type, enabled=False):
                scores = self.trial_scores(model, device, normalize)
            raw = evaluate_scores(scores.raw, scores.labels)
            enh = evaluate_scores(scores.enhanced, scores.labels)
            result = {
                "eer_raw": raw.eer,
                "eer_enhanced": enh.eer,
                "min_dcf_raw": raw.min_dcf_005,
                "min_dcf_enhanced": enh.min_dcf_005,
                "min_dcf_001_raw": raw.min_dcf_001,
                "min_dcf_001_enhanced": enh.min_dcf_001,
                "num_trials": float(raw.num_trials),
            }
        return dist_utils.broadcast_object(result)

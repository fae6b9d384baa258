"""Embedding lists, speaker targets and datasets for speaker-embedding enhancement.

The enhancement system (Dorika0203/proj_2022NC) trains an MLP that maps one utterance's speaker
embedding towards its speaker's multi-utterance embedding.
Its inputs are files written by ``scripts/dump_embeddings.py``: one ``.npy`` per utterance,
mirroring the audio tree, holding the crop embeddings ``(K, D)`` (or one vector ``(D,)``).

Per-utterance vector (the reference's): the mean over the K crops, then L2-normalised
(:mod:`speechkit.data.embedding_table`, shared with the separation dataset).

List formats (whitespace-separated; paths relative to an embedding folder; an audio suffix such
as ``.wav`` is swapped for ``.npy`` when read, as the reference does):

============  ===========================================  ======================================
format        line                                         used by
============  ===========================================  ======================================
normal        ``speaker_id file``                          MSE / MAE / cosine / softmax losses
test          ``label file1 file2`` (1 = same speaker)     EER validation
triplet       ``speaker_id file other_speaker_id``         triplet + cosine loss
distribution  ``speaker_id file1 file2 same_flag``         domain-adaptation (MMD) losses; flag 1
                                                           = both files from one session
============  ===========================================  ======================================

Targets (``scripts/combine_embeddings.py``) are ``<target_dir>/<speaker_id>.npy`` (speaker level)
or ``<target_dir>/<speaker_id>/<session>.npy`` (session level), each a ``(D,)`` vector.

Bad input raises ``DataError`` naming the list file and line, and the ``.npy`` file where there
is one: a missing file, an embedding of the wrong dimension, a zero or non-finite vector, a
speaker without a target, a distribution speaker without both kinds of pairs.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from speechkit.data.embedding_table import (
    EmbeddingTable,
    crop_mean,
    embedding_path,
    l2_normalize,
    load_embedding,
    load_npy,
    utterance_vector,
)
from speechkit.data.lists import read_list_fields
from speechkit.errors import DataError

# EmbeddingTable, crop_mean, embedding_path, l2_normalize, load_embedding and utterance_vector
# live in speechkit.data.embedding_table; they stay importable from here.
__all__ = [
    "LIST_FORMATS",
    "SESSION_RULES",
    "EmbeddingTable",
    "EnhancementDataset",
    "EnhancementList",
    "ListEntry",
    "PairDistributionDataset",
    "TargetTable",
    "build_dataset",
    "check_speaker_id",
    "crop_mean",
    "embedding_path",
    "format_entry",
    "l2_normalize",
    "load_embedding",
    "read_enhancement_list",
    "session_of",
    "target_path",
    "utterance_vector",
    "write_enhancement_list",
]

LIST_FORMATS = ("normal", "test", "triplet", "distribution")
LIST_LAYOUT = {
    "normal": "speaker_id file",
    "test": "label file1 file2",
    "triplet": "speaker_id file other_speaker_id",
    "distribution": "speaker_id file1 file2 same_flag",
}
SESSION_RULES = ("auto", "librispeech", "parent", "none")
_LIBRISPEECH_STEM = re.compile(r"^(\d+)-(\d+)-\d+$")


# --------------------------------------------------------------------------------------------
# paths


def session_of(path: str, rule: str = "auto") -> str:
    """The recording session of an utterance path, for session-level targets and categories.

    Rules:
        ``librispeech``: ``<speaker>-<chapter>`` from a LibriSpeech file name
        ``<speaker>-<chapter>-<utterance>``; ``parent``: the name of the file's folder
        (VoxCeleb ``id/<youtube_id>/00001.wav`` -> the video id); ``auto``: ``librispeech`` when
        the file name has that pattern, else ``parent``; ``none``: one session (``""``).

    Raises:
        ValueError: an unknown rule, or ``librispeech`` on a name without the pattern.
    """
    if rule not in SESSION_RULES:
        raise ValueError(f"unknown session rule {rule!r}; expected one of {SESSION_RULES}")
    if rule == "none":
        return ""
    stem = os.path.splitext(os.path.basename(path))[0]
    match = _LIBRISPEECH_STEM.match(stem)
    if rule == "librispeech" or (rule == "auto" and match):
        if not match:
            raise ValueError(f"{path}: not a LibriSpeech name 'speaker-chapter-utterance'")
        return f"{match.group(1)}-{match.group(2)}"
    return os.path.basename(os.path.dirname(path)) or "."


def check_speaker_id(speaker: str, where: str) -> str:
    """Return ``speaker`` if it can name a target file, else raise ``DataError`` at ``where``."""
    if speaker in (".", "..") or "/" in speaker or "\\" in speaker:
        raise DataError(
            f"{where}: speaker id {speaker!r} cannot name a target file (no '/', '\\', '.' or '..')"
        )
    return speaker


def target_path(target_dir: str | os.PathLike, speaker: str, session: str | None = None) -> Path:
    """``<target_dir>/<speaker>.npy``, or ``<target_dir>/<speaker>/<session>.npy``."""
    if session is None:
        return Path(target_dir) / f"{speaker}.npy"
    return Path(target_dir) / speaker / f"{session}.npy"


# --------------------------------------------------------------------------------------------
# lists


@dataclass(frozen=True)
class ListEntry:
    """One line of an enhancement list.

    Attributes:
        files: one file (normal, triplet) or two (test, distribution), ``.npy`` names.
        speaker: the speaker id (``None`` in a test list).
        other_speaker: the negative speaker of a triplet line.
        flag: the test label or the distribution same-session flag (0/1).
        lineno: the 1-based line number in its file (0 for entries made in memory).
    """

    files: tuple[str, ...]
    speaker: str | None = None
    other_speaker: str | None = None
    flag: int | None = None
    lineno: int = 0


@dataclass
class EnhancementList:
    """A parsed list: its ``path``, ``format`` (one of ``LIST_FORMATS``) and ``entries``."""

    path: Path
    format: str
    entries: list[ListEntry]

    def where(self, entry: ListEntry) -> str:
        """``path:line`` of an entry, for messages."""
        return f"{self.path}:{entry.lineno}"

    def speakers(self) -> list[str]:
        """Speaker ids of the entries in order of first appearance (none for a test list)."""
        return list(dict.fromkeys(e.speaker for e in self.entries if e.speaker is not None))


def _check_format(fmt: str) -> None:
    if fmt not in LIST_FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; expected one of {LIST_FORMATS}")


def _parse_flag(token: str, path: str, lineno: int, what: str) -> int:
    if token not in ("0", "1"):
        raise DataError(f"{path}:{lineno}: {what} must be 0 or 1, got {token!r}")
    return int(token)


def read_enhancement_list(path: str | os.PathLike, fmt: str) -> EnhancementList:
    """Read a list of format ``fmt`` (see the module docstring); audio suffixes become ``.npy``.

    Raises:
        ValueError: an unknown ``fmt``.
        DataError: the file is missing, unreadable or empty, a line has the wrong number of
            fields for ``fmt``, a label/flag is not 0/1, or a speaker id cannot name a file
            (messages name the file and line).
    """
    _check_format(fmt)
    path = os.fspath(path)
    num_fields = len(LIST_LAYOUT[fmt].split())
    entries = []
    for lineno, fields in read_list_fields(path, (num_fields,), LIST_LAYOUT[fmt]):
        where = f"{path}:{lineno}"
        if fmt == "normal":
            entry = ListEntry(
                (embedding_path(fields[1]),), check_speaker_id(fields[0], where), lineno=lineno
            )
        elif fmt == "test":
            flag = _parse_flag(fields[0], path, lineno, "the label")
            entry = ListEntry(
                (embedding_path(fields[1]), embedding_path(fields[2])), flag=flag, lineno=lineno
            )
        elif fmt == "triplet":
            entry = ListEntry(
                (embedding_path(fields[1]),),
                check_speaker_id(fields[0], where),
                other_speaker=check_speaker_id(fields[2], where),
                lineno=lineno,
            )
        else:
            flag = _parse_flag(fields[3], path, lineno, "same_flag")
            entry = ListEntry(
                (embedding_path(fields[1]), embedding_path(fields[2])),
                check_speaker_id(fields[0], where),
                flag=flag,
                lineno=lineno,
            )
        entries.append(entry)
    return EnhancementList(Path(path), fmt, entries)


def format_entry(fmt: str, entry: ListEntry) -> str:
    """One line (without newline) of ``entry`` in format ``fmt``.

    Raises:
        ValueError: an unknown format, or an entry missing a field the format needs.
    """
    _check_format(fmt)
    need = {
        "normal": (1, True, False, False),
        "test": (2, False, False, True),
        "triplet": (1, True, True, False),
        "distribution": (2, True, False, True),
    }[fmt]
    n_files, has_speaker, has_other, has_flag = need
    if (
        len(entry.files) != n_files
        or (entry.speaker is None) == has_speaker
        or (entry.other_speaker is None) == has_other
        or (entry.flag is None) == has_flag
    ):
        raise ValueError(f"entry {entry} does not fit the {fmt} format '{LIST_LAYOUT[fmt]}'")
    if fmt == "normal":
        fields = [entry.speaker, entry.files[0]]
    elif fmt == "test":
        fields = [str(entry.flag), *entry.files]
    elif fmt == "triplet":
        fields = [entry.speaker, entry.files[0], entry.other_speaker]
    else:
        fields = [entry.speaker, *entry.files, str(entry.flag)]
    for f in fields:
        if not f or len(str(f).split()) != 1:
            raise ValueError(f"field {f!r} of {entry} is empty or contains whitespace")
    return " ".join(str(f) for f in fields)


def write_enhancement_list(path: str | os.PathLike, fmt: str, entries: Iterable[ListEntry]) -> Path:
    """Write ``entries`` as a list of format ``fmt``, atomically (temporary file + rename).

    Raises:
        ValueError: see ``format_entry``.
    """
    text = "".join(format_entry(fmt, e) + "\n" for e in entries)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------------------------
# targets


class TargetTable:
    """Speaker (or session) target vectors written by ``scripts/combine_embeddings.py``.

    Args:
        target_dir: the combine script's ``--out`` folder.
        embed_dim: expected D (``None``: not checked).
        level: ``speaker`` (``<speaker>.npy``) or ``session`` (``<speaker>/<session>.npy``).
        session_rule: how a session is read from a path (``session_of``).

    Raises (``get``):
        DataError: the speaker (session) has no target file, or it is not a (D,) vector; the
            list line asking for it is named.
    """

    def __init__(
        self,
        target_dir: str | os.PathLike,
        embed_dim: int | None = None,
        level: str = "speaker",
        session_rule: str = "auto",
    ):
        if level not in ("speaker", "session"):
            raise ValueError(f"target level must be 'speaker' or 'session', got {level!r}")
        self.target_dir = Path(target_dir)
        self.embed_dim = embed_dim
        self.level = level
        self.session_rule = session_rule
        self._cache: dict[Path, np.ndarray] = {}

    def get(self, speaker: str, file: str | None, where: str) -> np.ndarray:
        """(D,) float32 target of ``speaker`` (of ``file``'s session at session level)."""
        session = None
        if self.level == "session" and file is not None:
            session = session_of(file, self.session_rule)
        path = target_path(self.target_dir, speaker, session)
        vec = self._cache.get(path)
        if vec is not None:
            return vec
        if not path.is_file():
            what = f"speaker {speaker!r}" + (f" session {session!r}" if session else "")
            raise DataError(
                f"{where}: {what} has no target {path} (an empty or unknown speaker? build "
                "targets with scripts/combine_embeddings.py over the same lists)"
            )
        array = load_npy(path, where)
        if array.ndim != 1 or (self.embed_dim is not None and array.shape[0] != self.embed_dim):
            raise DataError(
                f"{path} (target for {where}): shape {array.shape}, expected ({self.embed_dim},)"
            )
        if not np.isfinite(array).all():
            raise DataError(f"{path} (target for {where}): non-finite values")
        vec = array.astype(np.float32)
        self._cache[path] = vec
        return vec


# --------------------------------------------------------------------------------------------
# datasets


class EnhancementDataset(Dataset):
    """Single-utterance inputs with their targets (normal and triplet lists).

    Args:
        inputs: (N, D) float32 unit vectors.
        targets: (N, D) float32 targets of each item's speaker.
        labels: (N,) int64 speaker labels (index of the speaker among the sorted train ids).
        negatives: (N, D) targets of each item's other speaker (triplet lists), or ``None``.

    Items are dicts of tensors; ``collater`` stacks them into
    ``{"input": (B, D), "target": (B, D), "label": (B,), ["negative_target": (B, D)]}``.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        labels: np.ndarray,
        negatives: np.ndarray | None = None,
    ):
        self.inputs = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.negatives = (
            None
            if negatives is None
            else torch.from_numpy(np.ascontiguousarray(negatives, dtype=np.float32))
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {
            "input": self.inputs[index],
            "target": self.targets[index],
            "label": self.labels[index],
        }
        if self.negatives is not None:
            item["negative_target"] = self.negatives[index]
        return item

    def collater(self, items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Stack items: ``{"input": (B, D), "target": (B, D), "label": (B,), ...}``."""
        if not items:
            return {}
        return {key: torch.stack([it[key] for it in items]) for key in items[0]}


class PairDistributionDataset(Dataset):
    """Pairs of one speaker's utterances with a same-session flag (distribution lists).

    Args:
        inputs1, inputs2: (P, D) float32 unit vectors of the two files of each pair.
        same: (P,) bool, True when both files come from one session (the reference's flag 1).
        targets: (P, D) targets of each pair's speaker.
        labels: (P,) int64 speaker labels.

    ``collater`` gives ``{"input1": (P, D), "input2": (P, D), "same": (P,) bool,
    "target": (P, D), "label": (P,)}``; the task batches one speaker at a time (the reference's
    domain-adaptation setting) using ``groups`` (label -> pair indices).
    """

    def __init__(
        self,
        inputs1: np.ndarray,
        inputs2: np.ndarray,
        same: np.ndarray,
        targets: np.ndarray,
        labels: np.ndarray,
    ):
        self.inputs1 = torch.from_numpy(np.ascontiguousarray(inputs1, dtype=np.float32))
        self.inputs2 = torch.from_numpy(np.ascontiguousarray(inputs2, dtype=np.float32))
        self.same = torch.from_numpy(np.asarray(same, dtype=bool))
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.groups: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels.tolist()):
            self.groups.setdefault(label, []).append(i)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input1": self.inputs1[index],
            "input2": self.inputs2[index],
            "same": self.same[index],
            "target": self.targets[index],
            "label": self.labels[index],
        }

    def collater(self, items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Stack the pairs of a batch (see the class docstring)."""
        if not items:
            return {}
        return {key: torch.stack([it[key] for it in items]) for key in items[0]}


def build_dataset(
    lst: EnhancementList,
    table: EmbeddingTable,
    targets: TargetTable,
    label_of_speaker: dict[str, int],
) -> EnhancementDataset | PairDistributionDataset:
    """Load every vector a train list names and build its dataset.

    Args:
        lst: a ``normal``, ``triplet`` or ``distribution`` list.
        table: the utterance vectors (every file is read here, so errors come before training).
        targets: the target vectors.
        label_of_speaker: speaker id -> label.

    Raises:
        ValueError: a ``test`` list.
        DataError: see ``EmbeddingTable`` and ``TargetTable``; for a distribution list also a
            speaker that lacks same-session or cross-session pairs (the MMD needs both), or
            session-level targets. A triplet list's negative is the other speaker's
            speaker-level target (``<speaker>.npy``; at session level build targets with
            ``combine_embeddings.py --level both``).
    """
    if lst.format == "test":
        raise ValueError("a test list has no speakers or targets; it is for validation")
    if lst.format == "distribution" and targets.level == "session":
        # a cross-session pair (flag 0) has two sessions, hence two targets, but the
        # domain-adaptation loss pulls both outputs toward one: speaker level only
        raise DataError(
            f"{lst.path}: a distribution list pairs files of different sessions; it needs "
            "speaker-level targets (task.target_level=speaker), not session-level ones"
        )
    wheres = [lst.where(e) for e in lst.entries]
    tgt = np.stack([targets.get(e.speaker, e.files[0], w) for e, w in zip(lst.entries, wheres)])
    labels = np.array([label_of_speaker[e.speaker] for e in lst.entries], dtype=np.int64)
    if lst.format in ("normal", "triplet"):
        inputs = table.stack([e.files[0] for e in lst.entries], wheres)
        negatives = None
        if lst.format == "triplet":
            for e, w in zip(lst.entries, wheres):
                if e.other_speaker == e.speaker:
                    raise DataError(f"{w}: other_speaker_id equals speaker_id {e.speaker!r}")
            negatives = np.stack(
                [targets.get(e.other_speaker, None, w) for e, w in zip(lst.entries, wheres)]
            )
        return EnhancementDataset(inputs, tgt, labels, negatives)
    by_speaker: dict[str, list[ListEntry]] = {}
    for e in lst.entries:
        by_speaker.setdefault(e.speaker, []).append(e)
    for speaker, entries in by_speaker.items():
        flags = {e.flag for e in entries}
        if flags != {0, 1}:
            kind = "same-session (flag 1)" if 1 not in flags else "cross-session (flag 0)"
            lines = ", ".join(str(e.lineno) for e in entries[:5])
            raise DataError(
                f"{lst.path}: speaker {speaker!r} (lines {lines}{', ...' if len(entries) > 5 else ''}"
                f") has no {kind} pairs; the domain-adaptation loss needs both for every speaker"
            )
    inputs1 = table.stack([e.files[0] for e in lst.entries], wheres)
    inputs2 = table.stack([e.files[1] for e in lst.entries], wheres)
    same = np.array([e.flag == 1 for e in lst.entries])
    return PairDistributionDataset(inputs1, inputs2, same, tgt, labels)

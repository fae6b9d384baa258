"""Enrolment clips with teacher vectors, for distilling a speaker vector into the VoiceVector
enrolment nets (``voicevector_embedding_v`` / ``_av`` / ``_iv``; Rahimi, Afouras and Zisserman,
"VoiceVector", ICASSP 2024; upstream ``src/models/avEmbeddingModule.py`` and
``src/data/components/LRSDataset.py``).

One item per utterance (``index % num_utterances`` in eval mode): an enrolment clip of the
utterance (:mod:`speechkit.data.enrolment_clips`: a ``segment``-second crop, 4 s by default, at
an offset that is a multiple of 640 samples; ``lip`` (S / 640, lip_dim); ``audio`` (S,) for
``av``, the crop mixed with an interferer of another speaker at an integer SIR uniform in
``[sir_low, sir_high]`` dB; ``face`` (3, face_dim) for ``iv``) and the ``teacher`` vector: the
utterance's precomputed speaker vector from ``embedding_dir`` (``speechkit-dump-embeddings``
layout, ``<relative path>.npy`` holding (num_crops, D) or (D,)).

Teacher: the mean over the file's crops, L2-normalised (``speechkit.data.embedding_table
.utterance_vector``), i.e. exactly the enrolment vector the ``target_speaker_separation`` task
feeds ``voicevector_ae``, so a distilled net's output lives in the space the separation net was
trained on. Deviation: the reference regresses onto SpeechBrain's raw (un-normalised) ECAPA
vector of the clean utterance, which is also what its separation net was trained on.

Randomness and validation follow :class:`~speechkit.data.separation_dataset.SeparationDataset`
(training: ``[seed, epoch, index]``; eval mode: fixed clips per index whatever the epoch); the
list needs at least 2 speakers (the ``av`` interferers, and a distillation target that varies).

Errors (``DataError`` naming the file and the list line): a missing audio, lip-feature or
teacher ``.npy``, lip frames that differ from ``samples / 640`` by more than ``lip_tolerance``,
a teacher or lip file of the wrong dimension, a bad face embedding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from speechkit.data.enrolment_clips import ENROL_SEGMENT, EnrolmentClips
from speechkit.data.face_embeddings import FACE_DIM
from speechkit.data.lip_features import DEFAULT_TOLERANCE
from speechkit.data.separation_dataset import SeparationDataset

__all__ = ["EnrolmentDataset", "collate_enrolment"]


class EnrolmentDataset(SeparationDataset):
    """Enrolment clips and teacher vectors (see the module docstring).

    Args:
        list_path: ``speaker_id relative/path.wav`` list (or the source named by ``entries``).
        root: folder the list paths are relative to.
        embedding_dir: the teacher vectors (``<relative path>.npy``).
        lip_dir: the lip features (``<relative path>.npy``, (frames, lip_dim) at 25 fps).
        inputs: ``v``, ``av`` or ``iv``.
        segment: clip length in seconds (a multiple of 0.04 s).
        face_dir: face-embedding folder (``iv``).
        face_dim: size of one face embedding.
        eval_mode, num_items, emb_dim, seed, sir_low, sir_high, resample, lip_dim,
            lip_tolerance, entries: as :class:`SeparationDataset`.

    Item: ``id`` int, ``lip`` (F, lip_dim) float32, ``audio`` (S,) float32 (``av``), ``face``
    (3, face_dim) float32 (``iv``), ``teacher`` (D,) float32 unit vector, ``meta``
    (``utterance``, ``offset``; ``av`` also ``interferer``, ``interferer_offset``, ``sir_db``).

    Raises:
        DataError: see the module docstring. ValueError: no ``embedding_dir`` or ``lip_dir``,
            a bad ``segment`` or ``inputs``, ``iv`` without ``face_dir``.
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        root: str | os.PathLike,
        embedding_dir: str | os.PathLike,
        lip_dir: str | os.PathLike,
        inputs: str = "v",
        segment: float = ENROL_SEGMENT,
        face_dir: str | os.PathLike | None = None,
        face_dim: int = FACE_DIM,
        eval_mode: bool = False,
        num_items: int = 0,
        emb_dim: int | None = None,
        seed: int = 0,
        sir_low: int = -5,
        sir_high: int = 5,
        resample: bool = False,
        lip_dim: int | None = None,
        lip_tolerance: float = DEFAULT_TOLERANCE,
        entries: Sequence[tuple[str, str, str, int]] | None = None,
    ):
        if embedding_dir is None or lip_dir is None:
            raise ValueError("an enrolment dataset needs embedding_dir (teachers) and lip_dir")
        super().__init__(
            list_path,
            root,
            embedding_dir,
            segment=segment,
            num_enrol=1,
            num_positive=1,
            eval_mode=eval_mode,
            num_items=num_items,
            emb_dim=emb_dim,
            seed=seed,
            sir_low=sir_low,
            sir_high=sir_high,
            resample=resample,
            lip_dir=lip_dir,
            lip_dim=lip_dim,
            lip_tolerance=lip_tolerance,
            entries=entries,
        )
        self.reader = EnrolmentClips(self, inputs, segment, face_dir, face_dim)
        self.inputs = self.reader.inputs

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_items:
            raise IndexError(f"item {index} out of range [0, {self.num_items})")
        utt = index % len(self.paths)
        clip = self.reader.clip(utt, self.rng(index))
        item: dict[str, Any] = {
            "id": index,
            "lip": torch.from_numpy(clip["lip"]),
            "teacher": torch.from_numpy(self.vectors[utt]),
            "meta": {"utterance": utt, **clip["meta"]},
        }
        for key in ("audio", "face"):
            if key in clip:
                item[key] = torch.from_numpy(clip[key])
        return item

    def collater(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """See ``collate_enrolment``."""
        return collate_enrolment(items)


def collate_enrolment(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack enrolment items into a distillation batch.

    Returns:
        ``{"id": (B,) int64, "lip": (B, F, lip_dim), "audio": (B, F * 640) (``av``), "face":
        (B, 3, face_dim) (``iv``), "teacher": (B, D), "nsentences": B, "ntokens": B * F}``;
        ``{}`` for no items.

    Raises:
        ValueError: items of different shapes, or that disagree on having ``audio`` / ``face``.
    """
    if not items:
        return {}
    batch: dict[str, Any] = {"id": torch.tensor([int(it["id"]) for it in items], dtype=torch.long)}
    for key in ("lip", "audio", "face", "teacher"):
        if len({key in it for it in items}) != 1:
            raise ValueError(f"cannot batch items with and without '{key}'")
        if key not in items[0]:
            continue
        shapes = {tuple(it[key].shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"cannot batch '{key}' of shapes {sorted(shapes)}")
        batch[key] = torch.stack([it[key] for it in items])
    batch["nsentences"] = len(items)
    batch["ntokens"] = int(batch["lip"].shape[0] * batch["lip"].shape[1])
    return batch

"""Enrolment clips for the VoiceVector enrolment nets and their composites (``voicevector_avem``,
``voicevector_vem``, ``voicevector_ivem``; Rahimi, Afouras and Zisserman, "VoiceVector", ICASSP
2024; upstream ``src/data/components/LRSDataset.py``, ``get_audio_feature_pairs`` and
``get_face_embeddings``).

An enrolment clip of an utterance is a ``segment``-second crop (4 s in the reference: 100 lip
frames, 64 000 samples) at an offset that is a multiple of 640 samples, so the lip frames stay on
the audio's 25 fps grid (:func:`speechkit.data.separation_dataset.crop_offset`; the reference's
rule, offset 0 for a file shorter than the crop + 4000 samples). What it holds depends on the
enrolment net's inputs (:class:`EnrolmentInputs`):

* ``v`` (``voicevector_embedding_v`` / ``voicevector_vem``): ``lip`` (F, lip_dim), F = S / 640;
* ``av`` (``voicevector_embedding_av`` / ``voicevector_avem``): ``lip`` and ``audio`` (S,): the
  crop plus a crop of a uniformly drawn utterance of another speaker, scaled to an
  interferer-to-target ratio that is a uniform integer in ``[sir_low, sir_high]`` dB (the
  reference's noisy enrolment clip; :meth:`SeparationDataset.noisy_crop`);
* ``iv`` (``voicevector_embedding_iv`` / ``voicevector_ivem``): ``lip`` and ``face`` (3, 128),
  the utterance's face embeddings (:mod:`speechkit.data.face_embeddings`; zeros without faces).

The audio is read only for ``av``; ``v`` / ``iv`` draw the offset from the audio length checked
against the lip features when the dataset was built. Deviation: the reference also passes the
noisy enrolment audio through its mixture augmentation (gain, shift, background noise); speechkit
applies none to enrolment clips.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechkit.data.face_embeddings import (
    FACE_DIM,
    FACES_PER_CLIP,
    face_folder,
    read_face_embeddings,
)
from speechkit.data.lip_features import SAMPLES_PER_FRAME
from speechkit.errors import DataError
from speechkit.registry import ChoiceEnum

__all__ = [
    "ENROL_SEGMENT",
    "EnrolmentClips",
    "EnrolmentInputs",
    "EnrolmentSource",
    "MODEL_INPUTS",
]

ENROL_SEGMENT = 4.0
"""Enrolment clip length in seconds (the reference's 4 s, 100 lip frames)."""

EnrolmentInputs = ChoiceEnum("EnrolmentInputs", [(v, v) for v in ("v", "av", "iv")])
EnrolmentInputs.__doc__ = """Inputs of an enrolment net: ``v`` (lip features), ``av`` (lip
features and the noisy clip audio) or ``iv`` (lip features and 3 face embeddings)."""

EnrolmentSource = ChoiceEnum("EnrolmentSource", [(v, v) for v in ("vectors", "clips")])
EnrolmentSource.__doc__ = """Where a separation item's enrolment comes from: ``vectors``
(precomputed speaker vectors, ``enrol``) or ``clips`` (enrolment clips for a composite model's
frozen enrolment net, ``enrol_lip`` / ``enrol_audio`` / ``enrol_face``)."""

MODEL_INPUTS = {
    "voicevector_embedding_v": "v",
    "voicevector_embedding_av": "av",
    "voicevector_embedding_iv": "iv",
    "voicevector_vem": "v",
    "voicevector_avem": "av",
    "voicevector_ivem": "iv",
}
"""The enrolment inputs each built-in enrolment net / composite model takes."""


class EnrolmentClips:
    """Reads the enrolment clips of a :class:`~speechkit.data.separation_dataset.SeparationDataset`'s
    utterances (see the module docstring).

    Args:
        dataset: a dataset built with ``lip_dir`` (it provides ``read_crop``, ``lip_crop``,
            ``crop_start``, ``noisy_crop``, ``rel_paths`` and ``where``).
        inputs: ``v``, ``av`` or ``iv``.
        segment: clip length in seconds, a multiple of 0.04 s.
        face_dir: the face-embedding folder (``iv``; ``<face_dir>/<relative id>/*.npy``).
        face_dim: size of one face embedding.

    Raises:
        ValueError: an unknown ``inputs``, a ``segment`` that is not a positive multiple of
            0.04 s, a dataset without lip features, or ``iv`` without ``face_dir``.
        DataError: a ``face_dir`` that is not a folder (a clip's missing folder is "no face").
    """

    def __init__(
        self,
        dataset: Any,
        inputs: str,
        segment: float = ENROL_SEGMENT,
        face_dir: str | os.PathLike | None = None,
        face_dim: int = FACE_DIM,
    ):
        self.inputs = str(inputs.value if isinstance(inputs, EnrolmentInputs) else inputs)
        if self.inputs not in EnrolmentInputs.choices():
            raise ValueError(f"enrolment inputs must be one of v, av, iv, got {inputs!r}")
        self.num_samples = int(round(segment * 16000))
        if self.num_samples <= 0 or self.num_samples % SAMPLES_PER_FRAME:
            raise ValueError(
                f"enrolment clips of {segment} s: need a positive multiple of 0.04 s (one 25 fps "
                f"lip frame, {SAMPLES_PER_FRAME} samples)"
            )
        if not getattr(dataset, "lip_dim", 0):
            raise ValueError("enrolment clips need lip features (a dataset built with lip_dir)")
        if self.inputs == "iv" and face_dir is None:
            raise ValueError("enrolment clips with face inputs (iv) need face_dir")
        if face_dir is not None and not os.path.isdir(face_dir):
            raise DataError(f"face_dir {os.fspath(face_dir)} not found (face-embedding folder)")
        self.dataset = dataset
        self.face_dir = None if face_dir is None else os.fspath(face_dir)
        self.face_dim = int(face_dim)

    @property
    def num_frames(self) -> int:
        """Lip frames per clip (``segment * 25``)."""
        return self.num_samples // SAMPLES_PER_FRAME

    def faces(self, utt: int) -> np.ndarray:
        """``(3, face_dim)`` float32 face embeddings of utterance ``utt`` (zeros: no face)."""
        folder = os.path.join(self.face_dir, face_folder(self.dataset.rel_paths[utt]))
        return read_face_embeddings(folder, self.dataset.where(utt), self.face_dim, FACES_PER_CLIP)

    def clip(self, utt: int, rng: np.random.Generator) -> dict[str, Any]:
        """One clip of utterance ``utt``: ``lip`` (F, lip_dim) float32, ``audio`` (S,) float32
        (``av``), ``face`` (3, face_dim) float32 (``iv``) and ``meta`` (``offset``; ``av`` also
        ``interferer``, ``interferer_offset``, ``sir_db``)."""
        out: dict[str, Any] = {}
        if self.inputs == "av":
            out["audio"], meta = self.dataset.noisy_crop(utt, rng, self.num_samples)
        else:
            meta = {"offset": self.dataset.crop_start(utt, rng, self.num_samples)}
        out["lip"] = self.dataset.lip_crop(utt, meta["offset"], self.num_samples)
        if self.inputs == "iv":
            out["face"] = self.faces(utt)
        out["meta"] = meta
        return out

    def stack(self, utts: Sequence[int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Clips of ``utts`` in order, as a separation item's ``enrol_lip`` (K, F, lip_dim),
        ``enrol_audio`` (K, S) (``av``) and ``enrol_face`` (K, 3, face_dim) (``iv``)."""
        clips = [self.clip(int(u), rng) for u in utts]
        out = {"enrol_lip": torch.from_numpy(np.stack([c["lip"] for c in clips]))}
        if self.inputs == "av":
            out["enrol_audio"] = torch.from_numpy(np.stack([c["audio"] for c in clips]))
        if self.inputs == "iv":
            out["enrol_face"] = torch.from_numpy(np.stack([c["face"] for c in clips]))
        return out

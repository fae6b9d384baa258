"""Enrolment vectors from enrolment clips for the VoiceVector composites at inference
(``voicevector_vem``, ``voicevector_avem``, ``voicevector_ivem``): each clip goes through the
composite's frozen enrolment net and gives one vector, which then enrols the separation net like
a ``voicevector_ae`` enrolment vector (:class:`speechkit.inference.separation.Separator`).

Model: Rahimi, Afouras and Zisserman, "VoiceVector: multimodal enrolment vectors for speaker
separation", ICASSP 2024; upstream ``src/models/components/voiceFormerVEM.py`` /
``voiceFormerAVEM2.py`` / ``voiceFormerIVEM.py`` and the enrolment clips of
``src/data/components/LRSDataset.py`` (``get_audio_feature_pairs``, ``get_face_embeddings``).

A clip is:

* ``lip``: a lip-feature ``.npy`` (F, lip_dim) at 25 fps (:mod:`speechkit.data.lip_features`),
  all variants;
* ``audio`` (``avem``): the clip's audio file, read at 16 kHz (another rate is resampled with
  soxr and a multi-channel file averaged, each with a WARNING naming the file, as
  :func:`speechkit.data.audio.read_audio` does); the lip features are fitted to its
  ``ceil(T / 640)`` frames by :func:`speechkit.data.lip_features.align_lip_features` (trimmed or
  last frame repeated; more than ``tolerance`` frames apart is an error);
* ``face`` (``ivem``): a face-embedding folder of ``*.npy`` files read by
  :func:`speechkit.data.face_embeddings.read_face_embeddings` (the first 3 single-face files by
  name, cycled when fewer; none gives zeros, the reference's "no face" input, with a WARNING).

Clip length: the enrolment nets are trained on ``enrol_segment``-second clips only (4 s = 100
lip frames in the reference and by default), so a clip is embedded in windows of exactly that
length, the length and the positions the net has seen: ``ceil(F / W)`` windows of ``W`` frames
whose starts are evenly spaced from frame 0 to ``F - W`` (:func:`window_offsets`; neighbours
overlap when F is not a multiple of W), and the clip's vector is the plain mean of the window
vectors (not re-normalised: for a clip of exactly one window it is the net's own output, the
vector the separation net was trained on). Embedding a long clip in one pass would put lip /
audio positions beyond the trained 4 s through the transformer and change the length the ECAPA
pooling sees; averaging windows still uses all of the enrolment. A clip shorter than one window
is repeated from its start up to the window, exactly as the training data fits a short
utterance (``np.pad(mode="wrap")`` for audio and :func:`~speechkit.data.lip_features.
crop_lip_features` for lip frames). Every window of an ``ivem`` clip gets the clip's faces.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit.data.audio import read_audio
from speechkit.data.face_embeddings import FACES_PER_CLIP, read_face_embeddings
from speechkit.data.lip_features import (
    DEFAULT_TOLERANCE,
    LIP_FPS,
    SAMPLES_PER_FRAME,
    align_lip_features,
    crop_lip_features,
    read_lip_features,
)
from speechkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SAMPLE_RATE = SAMPLES_PER_FRAME * LIP_FPS  # 16 kHz: the enrolment nets' audio rate

__all__ = [
    "EnrolmentClip",
    "check_clip_counts",
    "embed_clip",
    "embed_clips",
    "read_enrolment_clip",
    "window_offsets",
]

Source = str | os.PathLike | np.ndarray
"""A file / folder path, or the array it would hold."""

_KINDS = {"v": "lip features", "av": "lip features + audio", "iv": "lip features + faces"}


@dataclass
class EnrolmentClip:
    """One enrolment clip, ready for :func:`embed_clip`.

    Attributes:
        name: what messages call it (the lip file, or ``<array>``).
        lip: (F, lip_dim) float32 lip features; for ``av`` fitted to ``ceil(T / 640)`` frames.
        num_samples: the clip's length in 16 kHz samples: T of the audio (``av``), else F * 640.
        audio: (T,) float32 at 16 kHz (``av``), else None.
        face: (K, face_dim) float32 (``iv``), else None.
    """

    name: str
    lip: np.ndarray
    num_samples: int
    audio: np.ndarray | None = None
    face: np.ndarray | None = None


def check_clip_counts(
    model: str,
    inputs: str,
    lips: int,
    audios: int,
    faces: int,
    names: tuple[str, str, str] = ("lips", "audios", "faces"),
    where: str = "",
) -> None:
    """Refuse enrolment clips that do not fit a composite: audio for a model without audio
    input, faces likewise, or per-clip audio / faces whose count differs from the lip files'.

    Args:
        model: the composite's name (``voicevector_vem`` ...), quoted in messages.
        inputs: its enrolment inputs, ``v`` / ``av`` / ``iv``
            (:data:`speechkit.data.enrolment_clips.MODEL_INPUTS`).
        lips, audios, faces: how many of each were given.
        names: what the caller calls them (e.g. the command-line options).
        where: a prefix for messages (e.g. the checkpoint).

    Raises:
        ConfigError: one line naming what was given and what the model expects.
    """
    lip_n, audio_n, face_n = names
    head = f"{where}: " if where else ""
    takes = f"{model} takes enrolment clips of {_KINDS[inputs]}"
    if audios and inputs != "av":
        raise ConfigError(
            f"{head}{audio_n} given, but {takes}; enrolment audio is for voicevector_avem"
        )
    if faces and inputs != "iv":
        raise ConfigError(
            f"{head}{face_n} given, but {takes}; face embeddings are for voicevector_ivem"
        )
    for count, name, kind in ((audios, audio_n, "av"), (faces, face_n, "iv")):
        if inputs == kind and count != lips:
            raise ConfigError(
                f"{head}{takes}: one {name} per {lip_n} entry, in the same order; got {lips} "
                f"{lip_n} and {count} {name}"
            )


def _name(source: Source) -> str:
    return "<array>" if isinstance(source, np.ndarray) else os.fspath(source)


def _read_lip(source: Source, lip_dim: int) -> np.ndarray:
    if not isinstance(source, np.ndarray):
        return read_lip_features(source, dim=lip_dim)
    lip = np.asarray(source, dtype=np.float32)
    if lip.ndim != 2 or lip.shape[0] == 0 or lip.shape[1] != lip_dim:
        raise DataError(f"lip features must be (frames >= 1, {lip_dim}), got {lip.shape}")
    if not np.isfinite(lip).all():
        raise DataError("lip features hold NaN or inf values")
    return lip


def _read_face(source: Source, face_dim: int) -> np.ndarray:
    if isinstance(source, np.ndarray):
        face = np.asarray(source, dtype=np.float32)
        if face.ndim != 2 or face.shape[0] == 0 or face.shape[1] != face_dim:
            raise DataError(f"face embeddings must be (K >= 1, {face_dim}), got {face.shape}")
        if not np.isfinite(face).all():
            raise DataError("face embeddings hold NaN or inf values")
        return face
    folder = os.fspath(source)
    if not os.path.isdir(folder):
        raise DataError(
            f"{folder}: not a folder; expected a face-embedding folder of *.npy files "
            f"({face_dim}-d each)"
        )
    face = read_face_embeddings(folder, "", face_dim, FACES_PER_CLIP)
    if not face.any():
        logger.warning(
            "%s: no single-face .npy file; the clip's faces are zeros (the 'no face' input)",
            folder,
        )
    return face


def read_enrolment_clip(
    lip: Source,
    audio: Source | None = None,
    face: Source | None = None,
    *,
    inputs: str,
    lip_dim: int,
    face_dim: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> EnrolmentClip:
    """Read one enrolment clip (see the module docstring).

    Args:
        lip: ``.npy`` path or (F, lip_dim) array at 25 fps.
        audio: ``av`` only: audio path (any rate, resampled to 16 kHz) or (T,) array at 16 kHz.
        face: ``iv`` only: face-embedding folder or (K, face_dim) array.
        inputs: ``v``, ``av`` or ``iv``.
        lip_dim, face_dim: the enrolment net's input sizes.
        tolerance: largest accepted ``|F - T / 640|`` in frames (``av``).

    Raises:
        ConfigError: audio / face missing for, or given to, a variant that does not take it.
        DataError: a missing or unreadable file, wrong sizes, NaN / inf values, lip features
            more than ``tolerance`` frames away from the audio (the file is named).
    """
    name = _name(lip)
    for given, kind, what in ((audio, "av", "audio"), (face, "iv", "face embeddings")):
        if (given is None) == (inputs == kind):
            need = "needs" if given is None else "takes no"
            raise ConfigError(f"{name}: an enrolment clip of {_KINDS[inputs]} {need} {what}")
    features = _read_lip(lip, lip_dim)
    if inputs == "av":
        if isinstance(audio, np.ndarray):
            wav = np.asarray(audio, dtype=np.float32)
            if wav.ndim != 1 or wav.size == 0 or not np.isfinite(wav).all():
                raise DataError(
                    f"enrolment audio must be a finite (T >= 1,) array, got {wav.shape}"
                )
        else:
            wav = read_audio(audio, SAMPLE_RATE)
        features = align_lip_features(features, len(wav), name, tolerance)
        return EnrolmentClip(name, features, len(wav), audio=wav)
    faces = None if face is None else _read_face(face, face_dim)
    return EnrolmentClip(name, features, features.shape[0] * SAMPLES_PER_FRAME, face=faces)


def window_offsets(num_samples: int, window: int) -> list[int]:
    """Starts (16 kHz samples, multiples of 640) of the windows embedding a clip: ``ceil(F / W)``
    windows of ``W = window / 640`` frames, evenly spaced from frame 0 to ``F - W``, with
    ``F = ceil(num_samples / 640)``; ``[0]`` when ``F <= W``.

    Raises:
        ValueError: a non-positive length, or a window that is not a positive multiple of 640.
    """
    if num_samples <= 0 or window <= 0 or window % SAMPLES_PER_FRAME:
        raise ValueError(
            f"need a clip of > 0 samples and a window that is a positive multiple of "
            f"{SAMPLES_PER_FRAME}; got {num_samples} and {window}"
        )
    frames, size = -(-num_samples // SAMPLES_PER_FRAME), window // SAMPLES_PER_FRAME
    if frames <= size:
        return [0]
    count = -(-frames // size)
    return [SAMPLES_PER_FRAME * round(i * (frames - size) / (count - 1)) for i in range(count)]


def clip_windows(clip: EnrolmentClip, window: int) -> dict[str, torch.Tensor]:
    """The windows of a clip as enrolment-net inputs: ``lip`` (n, W, lip_dim), ``audio``
    (n, window) (``av``), ``face`` (n, K, face_dim) (``iv``), float32."""
    offsets = window_offsets(clip.num_samples, window)
    lips = [crop_lip_features(clip.lip, o, window, clip.num_samples) for o in offsets]
    out = {"lip": torch.from_numpy(np.stack(lips))}
    if clip.audio is not None:
        wavs = []
        for o in offsets:
            part = clip.audio[o : o + window]
            if len(part) < window:  # the training data's wrap padding of a short crop
                part = np.pad(part, (0, window - len(part)), mode="wrap")
            wavs.append(part)
        out["audio"] = torch.from_numpy(np.stack(wavs).astype(np.float32))
    if clip.face is not None:
        out["face"] = torch.from_numpy(np.repeat(clip.face[None], len(offsets), axis=0))
    return out


@torch.no_grad()
def embed_clip(
    net: nn.Module,
    clip: EnrolmentClip,
    window: int,
    device: str | torch.device = "cpu",
    batch: int = 8,
) -> torch.Tensor:
    """The clip's enrolment vector (out_dim,) float32 on the CPU: the mean of ``net``'s outputs
    over :func:`clip_windows` (see the module docstring), ``net`` in eval mode.

    Args:
        net: a ``voicevector_embedding_*`` net (``forward(lip, audio=None, face=None)``).
        clip: from :func:`read_enrolment_clip`.
        window: window length in 16 kHz samples (a multiple of 640).
        device: where ``net`` runs.
        batch: windows per forward pass.

    Raises:
        ValueError: the net's own shape / length errors.
    """
    was_training = net.training
    net.eval()
    parts = clip_windows(clip, window)
    count = parts["lip"].shape[0]
    vectors = []
    try:
        for i in range(0, count, batch):
            kw: dict[str, Any] = {k: v[i : i + batch].to(device) for k, v in parts.items()}
            vectors.append(net(**kw).float().cpu())
    finally:
        net.train(was_training)
    return torch.cat(vectors).mean(0)


def embed_clips(
    net: nn.Module,
    clips: Sequence[EnrolmentClip],
    window: int,
    device: str | torch.device = "cpu",
) -> list[torch.Tensor]:
    """:func:`embed_clip` for each clip, in order."""
    return [embed_clip(net, c, window, device) for c in clips]

"""Per-clip lip features (``.npy``, ``(F, D)`` float, 25 fps) aligned to 16 kHz audio.

The audio-visual VoiceVector variant (``voicevector_av``; Rahimi, Afouras and Zisserman,
ICASSP 2024, the reference's ``vtp_features/<id>.npy`` folders) reads one ``(F, D)`` array per
utterance: VGG's VTP lip-reading features (D = 512) in the reference, or the lip stream of a
speechkit SyncNet (``speechkit-dump-lip-features``). Frame ``j`` covers audio samples
``[640 j, 640 (j + 1))`` at 16 kHz (16000 / 25 = 640 samples per frame), so a file of ``L``
samples goes with ``ceil(L / 640)`` frames.

Tolerance: the reference derives audio length as ``frames * 640`` and states no tolerance. Real
clips disagree slightly because the audio track (AAC priming, muxing) and the video stream end at
different times: the 12 talking-face clips of ``shared/data/video`` differ by up to 1.33 frames.
:func:`align_lip_features` therefore accepts ``|F - L / 640| <= tolerance`` frames (default
:data:`DEFAULT_TOLERANCE` = 2) and trims or repeats the last frame to ``ceil(L / 640)``; a larger
mismatch (another clip's features, another frame rate) is a ``DataError`` naming the file and
both lengths.

Layout: the features of ``relative/path.wav`` live at ``<lip_dir>/relative/path.npy``
(:func:`lip_feature_path`, the same naming as the speaker-embedding folders).
"""

from __future__ import annotations

import os

import numpy as np

from speechkit.data.embedding_table import embedding_path
from speechkit.errors import DataError

__all__ = [
    "DEFAULT_TOLERANCE",
    "LIP_FPS",
    "SAMPLES_PER_FRAME",
    "align_lip_features",
    "check_alignment",
    "crop_lip_features",
    "lip_feature_path",
    "lip_frames",
    "lip_shape",
    "read_lip_features",
]

LIP_FPS = 25
SAMPLES_PER_FRAME = 640  # 16000 Hz / 25 fps
DEFAULT_TOLERANCE = 2.0
"""Largest accepted ``|frames - samples / 640|``, in frames (see the module docstring)."""


def lip_feature_path(relative_audio_path: str) -> str:
    """``spk/utt.wav -> spk/utt.npy`` (an audio or video suffix replaced by ``.npy``)."""
    root, ext = os.path.splitext(relative_audio_path)
    if ext.lower() in (".mp4", ".avi", ".mov", ".mkv", ".webm"):
        return root + ".npy"
    return embedding_path(relative_audio_path)


def lip_frames(num_samples: int) -> int:
    """Lip frames that cover ``num_samples`` audio samples at 16 kHz: ``ceil(n / 640)``."""
    return -(-int(num_samples) // SAMPLES_PER_FRAME)


def lip_shape(path: str | os.PathLike, where: str = "", dim: int | None = None) -> tuple[int, int]:
    """``(F, D)`` of a lip-feature ``.npy`` from its header (the data is not read).

    Raises:
        DataError: missing or unreadable file, not 2-D, not a float array, no frames, or
            ``D != dim`` (``where``, e.g. ``list:line``, is named in the message).
    """
    path = os.fspath(path)
    at = f" (listed at {where})" if where else ""
    if not os.path.isfile(path):
        raise DataError(f"lip-feature file not found: {path}{at}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}{at}: not a readable .npy array ({e})") from None
    if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            f"{path}{at}: expected lip features (frames, dim) of floats, got shape "
            f"{array.shape} dtype {array.dtype}"
        )
    if dim is not None and array.shape[1] != dim:
        raise DataError(f"{path}{at}: lip features are {array.shape[1]}-d, expected {dim}-d")
    return int(array.shape[0]), int(array.shape[1])


def read_lip_features(
    path: str | os.PathLike, where: str = "", dim: int | None = None
) -> np.ndarray:
    """Read a ``(F, D)`` lip-feature ``.npy`` as float32.

    Raises:
        DataError: as :func:`lip_shape`, or non-finite values.
    """
    lip_shape(path, where, dim)
    array = np.load(os.fspath(path), allow_pickle=False).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        at = f" (listed at {where})" if where else ""
        raise DataError(f"{os.fspath(path)}{at}: lip features hold NaN or inf values")
    return array


def check_alignment(
    frames: int, num_samples: int, path: str | os.PathLike, tolerance: float = DEFAULT_TOLERANCE
) -> None:
    """Refuse lip features whose length does not match the audio.

    Raises:
        DataError: ``|frames - num_samples / 640| > tolerance``; names the file, the frames,
            the samples and the ``ceil(num_samples / 640)`` frames expected.
    """
    if abs(frames - num_samples / SAMPLES_PER_FRAME) > tolerance:
        raise DataError(
            f"{os.fspath(path)}: {frames} lip frames but the audio has {num_samples} samples "
            f"= {num_samples / SAMPLES_PER_FRAME:.2f} frames of {SAMPLES_PER_FRAME} samples "
            f"(expected {lip_frames(num_samples)} frames, tolerance {tolerance:g})"
        )


def align_lip_features(
    features: np.ndarray,
    num_samples: int,
    path: str | os.PathLike = "<array>",
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """Fit ``(F, D)`` features to ``ceil(num_samples / 640)`` frames.

    Trims extra frames, or repeats the last frame when there are fewer.

    Raises:
        DataError: the lengths differ by more than ``tolerance`` frames (:func:`check_alignment`).
    """
    check_alignment(features.shape[0], num_samples, path, tolerance)
    want = lip_frames(num_samples)
    if features.shape[0] < want:
        pad = np.repeat(features[-1:], want - features.shape[0], axis=0)
        features = np.concatenate([features, pad])
    return np.ascontiguousarray(features[:want])


def crop_lip_features(
    aligned: np.ndarray, offset: int, num_samples: int, audio_len: int
) -> np.ndarray:
    """The lip frames of an audio crop, on the crop's 640-sample grid.

    The audio crop is ``wav[offset:]`` cut to ``num_samples``, repeated from ``offset`` when
    shorter (``np.pad(mode="wrap")``, :mod:`speechkit.data.separation_dataset`). Crop frame
    ``j`` starts at crop sample ``640 j``, which is file sample
    ``offset + (640 j mod (audio_len - offset))``; it takes the lip frame holding that sample.

    Args:
        aligned: ``(ceil(audio_len / 640), D)`` from :func:`align_lip_features`.
        offset: crop start in samples (a multiple of 640).
        num_samples: crop length, a multiple of 640.
        audio_len: samples of the whole file.

    Returns:
        ``(num_samples / 640, D)`` float32.

    Raises:
        ValueError: ``num_samples`` or ``offset`` not a multiple of 640, or an offset outside
            the file.
    """
    if num_samples % SAMPLES_PER_FRAME or offset % SAMPLES_PER_FRAME:
        raise ValueError(
            f"crop length {num_samples} and offset {offset} must be multiples of "
            f"{SAMPLES_PER_FRAME} samples (one 25 fps lip frame)"
        )
    if not 0 <= offset < audio_len:
        raise ValueError(f"crop offset {offset} outside a file of {audio_len} samples")
    starts = np.arange(0, num_samples, SAMPLES_PER_FRAME) % (audio_len - offset) + offset
    index = np.minimum(starts // SAMPLES_PER_FRAME, aligned.shape[0] - 1)
    return np.ascontiguousarray(aligned[index], dtype=np.float32)

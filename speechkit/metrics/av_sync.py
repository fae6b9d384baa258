"""Audio-visual offset and sync confidence (SyncNet's "Sync-C" / "Sync-D" measures).

References:
    * Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops.
    * joonson/syncnet_python ``SyncNetInstance.py`` (``SyncNetInstance.evaluate``) and
      ``SyncNetModel.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import median_filter

__all__ = ["AVOffset", "av_offset"]

_PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance's eps, added to the difference


@dataclass
class AVOffset:
    """Result of :func:`av_offset`.

    Attributes:
        offset: audio-visual offset in video frames (25 fps: 40 ms each); positive = audio leads
            (the audio feature of time ``t - offset`` matches the video feature of time t).
        confidence: ``median(mean_dist) - min(mean_dist)`` over the shifts ("Sync-C").
        min_dist: ``min(mean_dist)``, the mean distance at the best shift ("Sync-D").
        framewise_confidence: (T,) ``median(mean_dist) - dist_t[best shift]``, median-filtered
            with kernel 9 and zero padding at the ends (``scipy.signal.medfilt``'s result, without its
            warning for clips shorter than the kernel).
        mean_dist: (2 * vshift + 1,) mean distance per shift; index j is shift ``j - vshift``.
    """

    offset: int
    confidence: float
    min_dist: float
    framewise_confidence: np.ndarray
    mean_dist: np.ndarray


def _as_float64(feats, name: str) -> np.ndarray:
    if torch.is_tensor(feats):
        feats = feats.detach().cpu().double().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"av_offset: {name} must be (T, D), got shape {arr.shape}")
    return arr


def av_offset(video_feats, audio_feats, vshift: int = 15) -> AVOffset:
    """Offset and confidence between per-frame video and audio features.

    For every video frame i the Euclidean distances ``||v_i - a_(i + k)||`` for shifts
    ``k = -vshift .. +vshift`` are taken, with the audio features zero-padded by ``vshift`` on
    both ends (an out-of-range audio frame is a zero vector), giving a (T, 2 vshift + 1) table.
    ``mean_dist`` is its mean over frames; ``offset = vshift - argmin(mean_dist)`` (so the best
    shift is ``k = -offset``), ``confidence = median - min`` of ``mean_dist``.

    Sign convention: positive offset = audio leads video, i.e. ``v_i`` matches ``a_(i - offset)``
    (audio events occur ``offset`` frames earlier than the lip movement), as syncnet_python's
    demo reports.

    Args:
        video_feats: (T, D) video features (tensor or array), one per video frame.
        audio_feats: (T, D) audio features at the same frame rate.
        vshift: largest shift tried, in frames (syncnet_python's default 15).

    Returns:
        :class:`AVOffset`.

    Raises:
        ValueError: inputs not 2-D, differing shapes, T = 0, or ``vshift < 0``.
    """
    video = _as_float64(video_feats, "video_feats")
    audio = _as_float64(audio_feats, "audio_feats")
    if video.shape != audio.shape or video.shape[0] == 0:
        raise ValueError(
            f"av_offset: video and audio features must both be (T, D) with T > 0, got "
            f"{video.shape} and {audio.shape}"
        )
    if vshift < 0:
        raise ValueError(f"av_offset: vshift must be >= 0, got {vshift}")
    num_frames = video.shape[0]
    width = 2 * vshift + 1
    padded = np.pad(audio, ((vshift, vshift), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=0)  # (T, D, width)
    windows = windows[:num_frames].transpose(0, 2, 1)  # (T, width, D)
    dists = np.linalg.norm(video[:, None, :] - windows + _PAIRWISE_EPS, axis=2)  # (T, width)
    mean_dist = dists.mean(axis=0)
    best = int(np.argmin(mean_dist))
    median = float(np.median(mean_dist))
    framewise = median - dists[:, best]
    return AVOffset(
        offset=vshift - best,
        confidence=median - float(mean_dist[best]),
        min_dist=float(mean_dist[best]),
        framewise_confidence=median_filter(framewise, size=9, mode="constant", cval=0.0),
        mean_dist=mean_dist,
    )

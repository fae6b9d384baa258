"""Fixed-length crops of waveforms: wrap padding, random training crops, evaluation crops.

Follows voxceleb_trainer's ``loadWAV`` (clovaai/voxceleb_trainer, ``DatasetLoader.py``):

* a crop of ``max_frames`` frames is ``max_frames * 160 + 240`` samples (10 ms hop and 25 ms
  window at 16 kHz); 200 frames give 32,240 samples, about 2.015 s;
* a waveform of at most that many samples is first wrap-padded (``np.pad`` mode ``"wrap"``,
  i.e. repeated from its start) by ``crop - length + 1`` samples;
* training: one start drawn uniformly from ``[0, length - crop)``;
* evaluation: ``num_eval`` starts ``np.linspace(0, length - crop, num_eval)`` truncated to
  integers.

These helpers depend on numpy only, so datasets (``speaker_dataset``) and augmentation
(``augment``) share them without importing each other.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EXTRA_SAMPLES",
    "HOP_SAMPLES",
    "crop_waveform",
    "eval_crop_starts",
    "frames_to_samples",
    "random_crop",
    "random_crop_start",
    "wrap_pad",
]

HOP_SAMPLES = 160
"""Samples per 10 ms frame at 16 kHz."""
EXTRA_SAMPLES = 240
"""Extra samples of a crop: one 25 ms window is 400 samples = 160 + 240."""


def frames_to_samples(num_frames: int) -> int:
    """Crop length in samples for ``num_frames`` 10 ms frames: ``num_frames * 160 + 240``."""
    return num_frames * HOP_SAMPLES + EXTRA_SAMPLES


def wrap_pad(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Wrap-pad a waveform that is not longer than a crop, as voxceleb_trainer does.

    Args:
        wav: (L,) samples.
        num_samples: the crop length.

    Returns:
        ``wav`` itself when ``L > num_samples``; otherwise ``wav`` repeated from its start to
        ``num_samples + 1`` samples (the reference pads by ``num_samples - L + 1``).
    """
    if len(wav) > num_samples:
        return wav
    return np.pad(wav, (0, num_samples - len(wav) + 1), mode="wrap")


def random_crop_start(length: int, num_samples: int, rng: np.random.Generator) -> int:
    """Draw a training crop start uniformly from ``[0, length - num_samples)``.

    Args:
        length: waveform length in samples AFTER ``wrap_pad`` (so ``length > num_samples``).
        num_samples: crop length.
        rng: the generator to draw from.
    """
    return int(rng.integers(0, max(length - num_samples, 1)))


def crop_waveform(wav: np.ndarray, num_samples: int, start: int) -> np.ndarray:
    """Cut ``num_samples`` samples from ``start``, wrap-padding a short waveform first.

    Args:
        wav: (L,) samples.
        num_samples: crop length in samples.
        start: first sample of the crop, within the padded waveform.

    Returns:
        (num_samples,) view or copy of the samples.

    Raises:
        ValueError: the crop does not fit in the (padded) waveform.
    """
    wav = wrap_pad(wav, num_samples)
    if start < 0 or start + num_samples > len(wav):
        raise ValueError(
            f"crop [{start}, {start + num_samples}) does not fit a waveform of {len(wav)} samples"
        )
    return wav[start : start + num_samples]


def random_crop(wav: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(L,) -> (num_samples,): ``crop_waveform`` at a ``random_crop_start``."""
    padded = wrap_pad(wav, num_samples)
    start = random_crop_start(len(padded), num_samples, rng)
    return padded[start : start + num_samples]


def eval_crop_starts(length: int, num_samples: int, num_eval: int) -> np.ndarray:
    """Evenly spaced crop starts: ``int(np.linspace(0, length - num_samples, num_eval))``.

    Args:
        length: waveform length in samples after ``wrap_pad``.
        num_samples: crop length.
        num_eval: number of crops.

    Returns:
        (num_eval,) int64 starts, first 0 and last ``length - num_samples``.
    """
    return np.linspace(0, length - num_samples, num=num_eval).astype(np.int64)

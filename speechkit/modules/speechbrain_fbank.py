"""SpeechBrain's log-mel filterbank front-end with sentence-level mean normalisation.

Reproduces, in plain torch (no torchaudio, no speechbrain), the feature pipeline of
SpeechBrain's ``spkrec-ecapa-voxceleb`` speaker encoder: ``speechbrain.lobes.features.Fbank``
(``speechbrain/processing/features.py``: ``STFT``, ``spectral_magnitude``, ``Filterbank``)
followed by ``InputNormalization(norm_type="sentence", std_norm=False)``:

* STFT: periodic hamming window of 25 ms, hop 10 ms, ``n_fft`` 400 at 16 kHz, ``center=True``
  with **zero** padding of ``n_fft // 2`` samples (SpeechBrain's ``pad_mode="constant"``);
* power spectrum ``|X|^2``;
* filterbank: ``n_mels + 2`` points equally spaced on the HTK mel scale
  ``2595 log10(1 + f / 700)`` between ``f_min`` and ``f_max``; filter ``m`` is a triangle
  centred at point ``m + 1`` that is **symmetric in Hz** with half-width the distance to the
  point below it (SpeechBrain's ``_triangular_filters``; unlike the usual HTK triangles, whose
  right side reaches the next point), evaluated on ``linspace(0, sample_rate // 2, n_fft//2+1)``
  and not area-normalised; everything built in float32 as SpeechBrain builds it;
* ``10 log10(max(fbank, 1e-10))`` dB (reference 1.0), then floored at the utterance's maximum
  over time and frequency minus ``top_db`` (80 dB);
* sentence mean normalisation: the mean over time of each mel bin is subtracted.

Computed in float32 with autocast disabled, so features are the same under bf16/fp16 training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from speechkit.errors import ConfigError

__all__ = ["speechbrain_mel_filterbank", "SpeechBrainFbank"]


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def speechbrain_mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float
) -> torch.Tensor:
    """SpeechBrain's triangular mel filterbank (``Filterbank``, ``filter_shape="triangular"``).

    Args:
        n_mels: number of filters.
        n_fft: FFT size; the filters cover its ``n_fft // 2 + 1`` one-sided bins.
        sample_rate: Hz.
        f_min, f_max: lowest and highest mel point (Hz).

    Returns:
        (n_fft // 2 + 1, n_mels) float32 weights in [0, 1].

    Raises:
        ConfigError: unless ``0 <= f_min < f_max``.
    """
    if not 0.0 <= f_min < f_max:
        raise ConfigError(f"SpeechBrainFbank: need 0 <= f_min < f_max, got {f_min}, {f_max}")
    mel = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)  # float32
    hz = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    centre = hz[1:-1][:, None]  # (n_mels, 1)
    half_width = (hz[1:] - hz[:-1])[:-1][:, None]
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)[None, :]
    slope = (freqs - centre) / half_width
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).transpose(0, 1)


class SpeechBrainFbank(nn.Module):
    """SpeechBrain ``Fbank`` + sentence mean normalisation (see the module docstring).

    Args:
        n_mels: mel filters (80 in ``spkrec-ecapa-voxceleb``).
        sample_rate: Hz.
        n_fft: FFT size (samples).
        win_length_ms, hop_length_ms: window and hop in milliseconds (rounded to samples).
        f_min, f_max: filterbank range in Hz; ``f_max`` default ``sample_rate // 2``.
        top_db: dynamic range kept below each utterance's maximum (dB).
        amin: power floor before the log.
        mean_norm: subtract each mel bin's mean over time (``InputNormalization(norm_type=
            "sentence", std_norm=False)``); False returns the dB features as they are.

    Shapes:
        (B, L) float waveform -> (B, n_mels, T) with ``T = 1 + L // hop`` (hop 160 at 16 kHz).

    Raises:
        ConfigError: inconsistent sizes (window longer than ``n_fft``, bad frequency range).
        ValueError: input not (B, L), or empty.
    """

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length_ms: float = 25.0,
        hop_length_ms: float = 10.0,
        f_min: float = 0.0,
        f_max: float | None = None,
        top_db: float = 80.0,
        amin: float = 1e-10,
        mean_norm: bool = True,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = int(round(sample_rate / 1000.0 * win_length_ms))
        self.hop_length = int(round(sample_rate / 1000.0 * hop_length_ms))
        if not 0 < self.win_length <= n_fft or self.hop_length <= 0:
            raise ConfigError(
                f"SpeechBrainFbank: need 0 < window ({self.win_length} samples) <= n_fft "
                f"({n_fft}) and a positive hop ({self.hop_length} samples)"
            )
        self.n_mels = n_mels
        self.top_db = top_db
        self.amin = amin
        self.mean_norm = mean_norm
        f_max = float(sample_rate // 2) if f_max is None else float(f_max)
        fb = speechbrain_mel_filterbank(n_mels, n_fft, sample_rate, float(f_min), f_max)
        self.register_buffer("window", torch.hamming_window(self.win_length), persistent=False)
        self.register_buffer("fb", fb, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, n_mels, T) normalised log-mel features (float32)."""
        if waveform.dim() != 2:
            raise ValueError(
                f"SpeechBrainFbank: expected a (B, L) waveform batch, got {tuple(waveform.shape)}"
            )
        if waveform.shape[-1] == 0:
            raise ValueError("SpeechBrainFbank: empty waveform; expected at least 1 sample")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spec = torch.stft(
                waveform.float(),
                self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window,
                center=True,
                pad_mode="constant",
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            power = torch.view_as_real(spec).pow(2).sum(-1).transpose(1, 2)  # (B, T, F)
            db = 10.0 * torch.log10(torch.clamp(power @ self.fb, min=self.amin))  # (B, T, M)
            floor = db.amax(dim=(-2, -1), keepdim=True) - self.top_db
            feats = torch.maximum(db, floor)
            if self.mean_norm:
                feats = feats - feats.sum(dim=1, keepdim=True) / feats.shape[1]
            return feats.transpose(1, 2)

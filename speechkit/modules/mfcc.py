"""Kaldi-compatible MFCC and delta features (HuBERT iteration-1 k-means features).

What fairseq's ``examples/hubert/simple_kmeans/dump_mfcc_feature.py`` computes with torchaudio
(``torchaudio.compliance.kaldi.mfcc(sample_frequency=16000, use_energy=False)`` followed by
``torchaudio.functional.compute_deltas`` twice), rebuilt without torchaudio:

* frames as Kaldi ``compute-fbank-feats`` (:class:`~speechkit.modules.frontend.KaldiFbank`):
  25 ms windows every 10 ms, ``snip_edges`` (``T = 1 + (L - 400) // 160`` at 16 kHz), no dither,
  DC removal, pre-emphasis 0.97, povey window, 512-point FFT, 23 Kaldi mel bins (20 Hz to
  Nyquist), ``log(max(energy, float32 eps))`` on the float waveform as read (no int16 scaling);
* an orthonormal DCT-II of the 23 log-mel energies, first 13 coefficients (Kaldi ``num_ceps``);
* Kaldi's sinusoidal cepstral lifter ``1 + (Q / 2) sin(pi n / Q)`` with ``Q = 22``;
* deltas and delta-deltas with a 5-frame regression window and edge replication.

Reference: Kaldi ``compute-mfcc-feats`` (Povey et al., "The Kaldi speech recognition toolkit",
ASRU 2011); HuBERT's first-iteration targets (Hsu et al., TASLP 2021).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.errors import ConfigError
from speechkit.modules.frontend import KaldiFbank

__all__ = ["KaldiMFCC", "compute_deltas", "mfcc_delta_features", "dct_matrix", "lifter_weights"]


def dct_matrix(n_mels: int, n_ceps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II basis as a (n_mels, n_ceps) matrix: ``log_mel (.., n_mels) @ D``.

    ``D[m, k] = s_k cos(pi k (m + 0.5) / n_mels)`` with ``s_0 = sqrt(1 / n_mels)`` and
    ``s_k = sqrt(2 / n_mels)`` otherwise (``scipy.fft.dct(norm="ortho")``, Kaldi's
    ``ComputeDctMatrix``).

    Raises:
        ConfigError: ``n_ceps`` not in ``1 .. n_mels``.
    """
    if not 1 <= n_ceps <= n_mels:
        raise ConfigError(f"MFCC: need 1 <= num_ceps <= num_mel_bins, got {n_ceps}, {n_mels}")
    m = torch.arange(n_mels, dtype=torch.float64)[:, None]
    k = torch.arange(n_ceps, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * k * (m + 0.5) / n_mels) * math.sqrt(2.0 / n_mels)
    basis[:, 0] = math.sqrt(1.0 / n_mels)
    return basis.to(dtype)


def lifter_weights(n_ceps: int, q: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kaldi's lifter weights (n_ceps,): ``1 + (q / 2) sin(pi n / q)``; all ones for ``q == 0``."""
    n = torch.arange(n_ceps, dtype=torch.float64)
    if q == 0.0:
        return torch.ones(n_ceps, dtype=dtype)
    return (1.0 + 0.5 * q * torch.sin(math.pi * n / q)).to(dtype)


class KaldiMFCC(nn.Module):
    """Kaldi MFCC without energy: log Kaldi fbank -> orthonormal DCT-II -> cepstral lifter.

    Numerically what ``torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000,
    use_energy=False)`` returns for a float waveform (its defaults: 23 mel bins, 13 cepstra,
    lifter 22, 25 / 10 ms povey frames, pre-emphasis 0.97, DC removal, no dither).

    Args:
        sample_rate: Hz.
        n_mels: mel bins (Kaldi ``num_mel_bins``).
        n_ceps: cepstra kept (Kaldi ``num_ceps``); coefficient 0 is the DCT's, not the energy.
        cepstral_lifter: lifter parameter Q (0 disables liftering).
        low_freq, high_freq: mel range in Hz (``high_freq <= 0``: relative to Nyquist).
        input_scale: waveform multiplier before framing (1: the float waveform as fairseq's dump
            script passes it; 32768 for Kaldi's int16 scale).

    Shapes:
        (L,) or (B, L) waveform -> (B, T, n_ceps) float32, ``T = 1 + (L - 400) // 160`` at
        16 kHz; ``T = 0`` (an empty result) when ``L < 400``.

    Raises:
        ConfigError: inconsistent sizes or frequency range. ValueError: input rank not 1 or 2.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 23,
        n_ceps: int = 13,
        cepstral_lifter: float = 22.0,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        input_scale: float = 1.0,
    ):
        super().__init__()
        self.fbank = KaldiFbank(
            sample_rate=sample_rate,
            n_mels=n_mels,
            low_freq=low_freq,
            high_freq=high_freq,
            preemphasis=0.97,
            window_type="povey",
            dither=0.0,
            remove_dc_offset=True,
            round_to_power_of_two=True,
            cmn=False,
            input_scale=input_scale,
        )
        self.n_ceps = n_ceps
        basis = dct_matrix(n_mels, n_ceps) * lifter_weights(n_ceps, cepstral_lifter)
        self.register_buffer("dct_lifter", basis, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames for ``num_samples`` samples (``snip_edges``; 0 when shorter than one window)."""
        return self.fbank.num_frames(num_samples)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(L,) or (B, L) waveform -> (B, T, n_ceps) MFCCs."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"KaldiMFCC: expected (L,) or (B, L), got {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.fbank.win_length:
            return waveform.new_zeros(waveform.shape[0], 0, self.n_ceps, dtype=torch.float32)
        log_mel = self.fbank(waveform)  # (B, T, n_mels), float32, autocast off
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            return torch.matmul(log_mel, self.dct_lifter)


def compute_deltas(x: torch.Tensor, win_length: int = 5, dim: int = -1) -> torch.Tensor:
    """Regression deltas along ``dim`` (time), as ``torchaudio.functional.compute_deltas``.

    ``d_t = sum_{n=1..N} n (c_{t+n} - c_{t-n}) / (2 sum_{n=1..N} n^2)`` with
    ``N = (win_length - 1) // 2``; frames beyond the edges repeat the first / last frame.

    Args:
        x: any shape (.., T, ..) with time on axis ``dim`` (torchaudio: (.., C, T), ``dim=-1``).
        win_length: regression window in frames (>= 3; 5 in HTK/Kaldi and fairseq).
        dim: the time axis.

    Returns:
        Tensor of ``x``'s shape and dtype (empty stays empty).

    Raises:
        ConfigError: ``win_length < 3``.
    """
    if win_length < 3:
        raise ConfigError(f"compute_deltas: win_length must be >= 3, got {win_length}")
    n = (win_length - 1) // 2
    if x.shape[dim] == 0:
        return x.clone()
    moved = x.movedim(dim, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    padded = F.pad(flat, (n, n), mode="replicate")
    kernel = torch.arange(-n, n + 1, dtype=x.dtype, device=x.device).view(1, 1, -1)
    denom = n * (n + 1) * (2 * n + 1) / 3.0  # 2 * sum_{k=1..n} k^2
    out = F.conv1d(padded, kernel) / denom
    return out.reshape(shape).movedim(-1, dim)


_MFCC_CACHE: dict[int, KaldiMFCC] = {}


def mfcc_delta_features(wav: np.ndarray | torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """HuBERT iteration-1 features: 13 MFCC + deltas + delta-deltas, (T, 39) float32 at 100 Hz.

    Args:
        wav: (L,) float waveform in [-1, 1] at ``sample_rate`` Hz.
        sample_rate: Hz (16000 in HuBERT).

    Returns:
        (T, 39) with ``T = 1 + (L - 400) // 160`` at 16 kHz (0 rows when ``L < 400``); columns
        are [MFCC, delta, delta-delta] as in fairseq's ``dump_mfcc_feature.py``.
    """
    if sample_rate not in _MFCC_CACHE:
        _MFCC_CACHE[sample_rate] = KaldiMFCC(sample_rate=sample_rate).eval()
    x = wav if torch.is_tensor(wav) else torch.from_numpy(np.ascontiguousarray(wav))
    x = x.detach().float().cpu()
    with torch.no_grad():
        mfcc = _MFCC_CACHE[sample_rate](x.reshape(-1))[0]  # (T, 13)
        deltas = compute_deltas(mfcc, dim=0)
        ddeltas = compute_deltas(deltas, dim=0)
    return torch.cat([mfcc, deltas, ddeltas], dim=1).contiguous()

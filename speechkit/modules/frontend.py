"""Speech front-ends: mel spectrogram, pre-emphasis, log-mel with per-utterance norm, Kaldi fbank.

Everything here is plain torch (no torchaudio) and runs in float32 with autocast disabled, so a
model trained under bf16/fp16 autocast sees the same features as one trained in fp32. Filterbanks
and windows are non-persistent buffers: they follow ``.to(device)`` but never appear in a
``state_dict`` (except :class:`PreEmphasis` built with ``persistent=True``, which RawNet3's
checkpoints need).

References:
    * HTK mel scale and triangular filters as ``torchaudio.functional.melscale_fbanks``
      (``mel_scale="htk"``, ``norm=None``) and ``librosa.filters.mel(htk=True, norm=None)``.
    * The voxceleb_trainer front-end (Chung et al., "In defence of metric learning for speaker
      recognition", Interspeech 2020): mel power spectrogram, ``+1e-6``, log, InstanceNorm1d.
    * Kaldi ``compute-fbank-feats`` / ``torchaudio.compliance.kaldi.fbank`` as used by wespeaker
      (Wang et al., "Wespeaker", ICASSP 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.errors import ConfigError

__all__ = [
    "mel_filterbank",
    "kaldi_mel_banks",
    "MelSpectrogram",
    "PreEmphasis",
    "LogMelFrontend",
    "KaldiFbank",
]

_WINDOWS = ("hann", "hamming")


def _hz_to_mel_htk(freq_hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + freq_hz / 700.0)


def _mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular HTK-mel filterbank without area normalisation.

    The ``n_mels + 2`` band edges are equally spaced on the HTK mel scale
    ``mel = 2595 log10(1 + f / 700)`` between ``f_min`` and ``f_max``; filter ``m`` rises linearly
    from edge ``m`` to edge ``m + 1`` and falls to zero at edge ``m + 2`` (peak 1). FFT bin ``k``
    sits at ``k * (sample_rate / 2) / (n_freqs - 1)`` Hz. Computed in float64, returned in
    ``dtype``. Same values as ``torchaudio.functional.melscale_fbanks(..., norm=None,
    mel_scale="htk")`` and the transpose of ``librosa.filters.mel(htk=True, norm=None)``.

    Args:
        n_freqs: number of one-sided FFT bins (``n_fft // 2 + 1``).
        f_min: lowest band edge (Hz).
        f_max: highest band edge (Hz), at most ``sample_rate / 2``.
        n_mels: number of mel filters.
        sample_rate: sampling rate (Hz).
        dtype: dtype of the result.

    Returns:
        (n_freqs, n_mels) weights; ``spectrum (.., n_freqs) @ fb`` gives mel energies.

    Raises:
        ConfigError: if ``n_freqs < 2``, ``n_mels < 1`` or not ``0 <= f_min < f_max <= sr / 2``.
    """
    if n_freqs < 2 or n_mels < 1:
        raise ConfigError(
            f"mel_filterbank: need n_freqs >= 2 and n_mels >= 1, got {n_freqs}, {n_mels}"
        )
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ConfigError(
            f"mel_filterbank: expected 0 <= f_min < f_max <= sample_rate/2 = {sample_rate / 2} Hz, "
            f"got f_min={f_min}, f_max={f_max}"
        )
    f64 = torch.float64
    bin_hz = torch.linspace(0.0, sample_rate // 2, n_freqs, dtype=f64)
    mel_edges = torch.linspace(
        _hz_to_mel_htk(torch.tensor(f_min, dtype=f64)).item(),
        _hz_to_mel_htk(torch.tensor(f_max, dtype=f64)).item(),
        n_mels + 2,
        dtype=f64,
    )
    edges_hz = _mel_to_hz_htk(mel_edges)
    lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    freqs = bin_hz[:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(dtype)


def _window(name: str, length: int) -> torch.Tensor:
    """Periodic window as ``torch.{hann,hamming}_window(length)`` (their default)."""
    if name == "hann":
        return torch.hann_window(length)
    if name == "hamming":
        return torch.hamming_window(length)
    raise ConfigError(f"unknown window '{name}'; expected one of {', '.join(_WINDOWS)}")


def _check_waveform(x: torch.Tensor, who: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{who}: expected a (B, L) waveform batch, got shape {tuple(x.shape)}")


class MelSpectrogram(nn.Module):
    """Mel power spectrogram, numerically as ``torchaudio.transforms.MelSpectrogram``.

    STFT with a periodic hann/hamming window of ``win_length`` samples zero-padded (centred) to
    ``n_fft``, ``center=True`` reflect padding of ``n_fft // 2`` samples on each side, power 2
    (``|X|^2``), then an HTK-mel filterbank without normalisation (:func:`mel_filterbank`).

    Args:
        sample_rate: sampling rate (Hz).
        n_fft: FFT size (samples).
        win_length: window length (samples); default ``n_fft``.
        hop_length: hop (samples); default ``win_length // 2``.
        f_min: lowest mel band edge (Hz).
        f_max: highest mel band edge (Hz); default ``sample_rate / 2``.
        n_mels: number of mel bands.
        window: ``"hann"`` or ``"hamming"``.

    Shapes:
        input (B, L) float waveform -> output (B, n_mels, T) with ``T = 1 + L // hop_length``.

    Raises:
        ConfigError: on an unknown window or inconsistent sizes. ValueError: input not 2-D.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int | None = None,
        hop_length: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_mels: int = 40,
        window: str = "hann",
    ):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        if not 0 < self.win_length <= n_fft or self.hop_length <= 0:
            raise ConfigError(
                f"MelSpectrogram: need 0 < win_length <= n_fft and hop_length > 0, got "
                f"n_fft={n_fft}, win_length={self.win_length}, hop_length={self.hop_length}"
            )
        self.n_mels = n_mels
        f_max = float(sample_rate // 2) if f_max is None else f_max
        self.register_buffer("window", _window(window, self.win_length), persistent=False)
        fb = mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate)
        self.register_buffer("fb", fb, persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, n_mels, 1 + L // hop_length) mel power spectrogram."""
        _check_waveform(waveform, type(self).__name__)
        spec = torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window.to(waveform.dtype),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.abs().pow(2.0)  # (B, n_freqs, T)
        return torch.matmul(power.transpose(-1, -2), self.fb.to(power.dtype)).transpose(-1, -2)


class PreEmphasis(nn.Module):
    """First-order pre-emphasis ``y[t] = x[t] - coef * x[t - 1]``.

    The missing ``x[-1]`` is taken by reflection (``x[1]``), so the output has the input's length,
    as in voxceleb_trainer's ``PreEmphasis`` (a conv1d with the flipped kernel ``[-coef, 1]``,
    kept in the buffer ``flipped_filter`` of shape (1, 1, 2)).

    Args:
        coef: pre-emphasis coefficient.
        persistent: keep ``flipped_filter`` in the ``state_dict`` (RawNet3's checkpoints have it
            as ``preprocess.0.flipped_filter``); ``False`` for front-ends of our own.

    Shapes:
        (B, L) -> (B, L), or (B, 1, L) -> (B, 1, L). ``L >= 2``.

    Raises:
        ValueError: on another input rank.
    """

    def __init__(self, coef: float = 0.97, persistent: bool = True):
        super().__init__()
        self.coef = coef
        self.register_buffer(
            "flipped_filter", torch.tensor([[[-coef, 1.0]]]), persistent=persistent
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter along the last axis; keeps the input shape."""
        if x.dim() == 3 and x.shape[1] == 1:
            signal = x
        elif x.dim() == 2:
            signal = x.unsqueeze(1)
        else:
            raise ValueError(f"PreEmphasis: expected (B, L) or (B, 1, L), got {tuple(x.shape)}")
        padded = F.pad(signal, (1, 0), mode="reflect")
        return F.conv1d(padded, self.flipped_filter.to(x.dtype)).reshape(x.shape)


_NORMS = ("instance", "mean", "none")


class LogMelFrontend(nn.Module):
    """voxceleb_trainer's front-end: [pre-emphasis] -> mel -> ``+1e-6`` -> [log] -> norm.

    Computed in float32 with autocast disabled on the input's device type, whatever the
    surrounding precision. ``norm="instance"`` is InstanceNorm1d(n_mels) without affine or running
    stats: per utterance and per mel bin, subtract the mean over time and divide by
    ``sqrt(biased variance + 1e-5)`` (voxceleb_trainer ResNetSE34L/V2, VGGVox40).
    ``norm="mean"`` only subtracts the mean over time (ECAPA-TDNN recipes); ``"none"`` skips it.

    Args:
        sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, window: as
            :class:`MelSpectrogram` (defaults: 16 kHz, 512, 400 (25 ms), 160 (10 ms), 0 Hz,
            Nyquist, 40, hamming).
        pre_emphasis: pre-emphasis coefficient, or ``None`` for none (ResNetSE34V2 and RawNet3
            use 0.97; ResNetSE34L and VGGVox40 none).
        log_input: take the natural log of ``mel + 1e-6``.
        norm: ``"instance"``, ``"mean"`` or ``"none"``.

    Shapes:
        input (B, L) float waveform -> output (B, n_mels, T) float32, ``T = 1 + L // hop_length``.

    Raises:
        ConfigError: on an unknown ``norm`` or window. ValueError: input not 2-D.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int | None = 400,
        hop_length: int | None = 160,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_mels: int = 40,
        window: str = "hamming",
        pre_emphasis: float | None = None,
        log_input: bool = True,
        norm: str = "instance",
    ):
        super().__init__()
        if norm not in _NORMS:
            raise ConfigError(f"LogMelFrontend: norm must be one of {_NORMS}, got '{norm}'")
        self.pre_emphasis = (
            PreEmphasis(pre_emphasis, persistent=False) if pre_emphasis is not None else None
        )
        self.mel = MelSpectrogram(
            sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, window
        )
        self.n_mels = n_mels
        self.hop_length = self.mel.hop_length
        self.log_input = log_input
        self.norm = norm

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, n_mels, 1 + L // hop_length) normalised (log-)mel features."""
        _check_waveform(waveform, type(self).__name__)
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float()
            if self.pre_emphasis is not None:
                x = self.pre_emphasis(x)
            x = self.mel(x) + 1e-6
            if self.log_input:
                x = x.log()
            if self.norm == "instance":
                x = F.instance_norm(x, eps=1e-5)
            elif self.norm == "mean":
                x = x - x.mean(dim=-1, keepdim=True)
        return x


def _kaldi_mel(freq_hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq_hz / 700.0)


def kaldi_mel_banks(
    n_mels: int,
    n_fft: int,
    sample_rate: float,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Kaldi's triangular mel filterbank (``MelBanks`` without VTLN).

    Kaldi mel scale ``1127 ln(1 + f / 700)``; ``n_mels + 2`` edges equally spaced in mel between
    ``low_freq`` and ``high_freq``; triangles are linear *in mel*. FFT bins ``0 .. n_fft/2 - 1``
    sit at ``k * sample_rate / n_fft`` Hz; the Nyquist bin gets weight 0 (as in Kaldi).

    Args:
        n_mels: number of mel bins.
        n_fft: (padded) FFT size, even.
        sample_rate: Hz.
        low_freq: lowest edge (Hz).
        high_freq: highest edge (Hz); ``<= 0`` means Nyquist + high_freq.

    Returns:
        (n_fft // 2 + 1, n_mels) weights.

    Raises:
        ConfigError: if not ``0 <= low_freq < high_freq <= Nyquist``.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0.0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ConfigError(
            f"Kaldi fbank: expected 0 <= low_freq < high_freq <= Nyquist = {nyquist} Hz, "
            f"got low_freq={low_freq}, high_freq={high_freq} (-> {high})"
        )
    f64 = torch.float64
    mel_lo = _kaldi_mel(torch.tensor(low_freq, dtype=f64))
    mel_hi = _kaldi_mel(torch.tensor(high, dtype=f64))
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    m = torch.arange(n_mels, dtype=f64)
    left, centre, right = mel_lo + m * delta, mel_lo + (m + 1) * delta, mel_lo + (m + 2) * delta
    bin_mel = _kaldi_mel(torch.arange(n_fft // 2, dtype=f64) * (sample_rate / n_fft))[:, None]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    banks = torch.cat([banks, torch.zeros(1, n_mels, dtype=f64)], dim=0)  # Nyquist bin
    return banks.to(dtype)


def _kaldi_window(name: str, length: int) -> torch.Tensor:
    """Kaldi's symmetric windows (denominator ``length - 1``), float64."""
    n = torch.arange(length, dtype=torch.float64)
    phase = 2.0 * math.pi * n / (length - 1)
    if name == "povey":
        return (0.5 - 0.5 * torch.cos(phase)).pow(0.85)
    if name == "hamming":
        return 0.54 - 0.46 * torch.cos(phase)
    if name == "hanning":
        return 0.5 - 0.5 * torch.cos(phase)
    if name == "rectangular":
        return torch.ones(length, dtype=torch.float64)
    raise ConfigError(
        f"KaldiFbank: unknown window_type '{name}'; expected povey, hamming, hanning or rectangular"
    )


class KaldiFbank(nn.Module):
    """Kaldi-compatible log-mel filterbank (``compute-fbank-feats``; wespeaker's features).

    Per frame (``snip_edges=True``: frames start at ``t * shift`` and only whole frames are kept):
    optional dither (Gaussian, std ``dither``, training mode only), remove the DC offset (frame
    mean), pre-emphasis ``x[j] -= coef * x[j-1]`` (``x[-1] := x[0]``), window, zero-pad to the
    next power of two, power spectrum ``|FFT|^2``, Kaldi mel banks (:func:`kaldi_mel_banks`),
    ``log(max(e, float32 eps))``; optional CMN subtracts the mean over frames.

    Kaldi and wespeaker feed int16-valued samples, so the float waveform is multiplied by
    ``input_scale`` (default 32768, as wespeaker's ``waveform * (1 << 15)``) first; with CMN this
    only matters for frames at the log floor.

    Args:
        sample_rate: Hz.
        n_mels: number of mel bins (``num_mel_bins``, default 80).
        frame_length_ms, frame_shift_ms: 25 and 10 ms.
        low_freq, high_freq: mel range (Hz); ``high_freq <= 0`` is relative to Nyquist.
        preemphasis: coefficient (0 disables).
        window_type: ``"povey"`` (Kaldi default), ``"hamming"`` (wespeaker), ``"hanning"``,
            ``"rectangular"``.
        dither: dither std in input-scaled units; applied only when ``self.training``.
        remove_dc_offset: subtract each frame's mean.
        round_to_power_of_two: pad frames to a power-of-two FFT size.
        cmn: subtract the per-utterance mean over frames.
        input_scale: waveform multiplier (32768 for int16 scale, 1 for raw floats).

    Shapes:
        input (L,) or (B, L) -> (B, T, n_mels) float32 with ``T = 1 + (L - win) // shift``
        (``win = 400``, ``shift = 160`` at 16 kHz).

    Raises:
        ConfigError: bad window or frequency range. ValueError: input rank not 1 or 2, or shorter
        than one frame.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        preemphasis: float = 0.97,
        window_type: str = "povey",
        dither: float = 0.0,
        remove_dc_offset: bool = True,
        round_to_power_of_two: bool = True,
        cmn: bool = False,
        input_scale: float = 32768.0,
    ):
        super().__init__()
        self.win_length = int(sample_rate * frame_length_ms * 0.001)
        self.hop_length = int(sample_rate * frame_shift_ms * 0.001)
        if self.win_length < 2 or self.hop_length < 1:
            raise ConfigError(
                f"KaldiFbank: frame length {frame_length_ms} ms / shift {frame_shift_ms} ms too "
                f"short at {sample_rate} Hz"
            )
        self.n_fft = (
            1 << (self.win_length - 1).bit_length() if round_to_power_of_two else self.win_length
        )
        self.n_mels = n_mels
        self.preemphasis = preemphasis
        self.dither = dither
        self.remove_dc_offset = remove_dc_offset
        self.cmn = cmn
        self.input_scale = input_scale
        window = _kaldi_window(window_type, self.win_length).float()
        self.register_buffer("window", window, persistent=False)
        banks = kaldi_mel_banks(n_mels, self.n_fft, sample_rate, low_freq, high_freq)
        self.register_buffer("mel_banks", banks, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames for ``num_samples`` samples with ``snip_edges=True`` (0 if shorter than one)."""
        if num_samples < self.win_length:
            return 0
        return 1 + (num_samples - self.win_length) // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(L,) or (B, L) waveform -> (B, T, n_mels) log mel filterbank energies."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(f"KaldiFbank: expected (L,) or (B, L), got {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.win_length:
            raise ValueError(
                f"KaldiFbank: input has {waveform.shape[-1]} samples, fewer than one frame "
                f"({self.win_length})"
            )
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float() * self.input_scale
            frames = x.unfold(-1, self.win_length, self.hop_length)  # (B, T, win)
            if self.training and self.dither != 0.0:
                frames = frames + self.dither * torch.randn_like(frames)
            if self.remove_dc_offset:
                frames = frames - frames.mean(dim=-1, keepdim=True)
            if self.preemphasis != 0.0:
                previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
                frames = frames - self.preemphasis * previous
            frames = frames * self.window
            spec = torch.fft.rfft(frames, n=self.n_fft)  # zero-pads on the right
            power = spec.real.square() + spec.imag.square()
            energies = torch.matmul(power, self.mel_banks)
            feats = energies.clamp_min(torch.finfo(torch.float32).eps).log()
            if self.cmn:
                feats = feats - feats.mean(dim=1, keepdim=True)
        return feats

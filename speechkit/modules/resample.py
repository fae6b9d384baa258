"""Differentiable rational-ratio resampling with a windowed-sinc polyphase filter (torch only).

The separation model of VoiceVector (Rahimi, Afouras and Zisserman, ICASSP 2024), like Demucs,
runs its waveform U-Net at 51.2 kHz: it upsamples the 16 kHz mixture by 16/5 and brings the
estimate back down by 5/16. This module does both, inside the autograd graph, without torchaudio.

Method: band-limited interpolation. For a ratio ``new/orig`` (reduced by their gcd), output
sample ``j`` sits at input time ``tau_j = j * orig / new`` (in input samples) and is

    y[j] = sum_n x[n] * h(tau_j - n),   h(t) = 2 f_c * sinc(2 f_c t) * w(t),

with ``f_c = rolloff * min(1, new / orig) / 2`` cycles per input sample (just below the lower of
the two Nyquist frequencies), ``sinc(u) = sin(pi u) / (pi u)``, and a window ``w`` that is zero
beyond ``lowpass_filter_width`` zero crossings of the sinc on each side (Hann: ``cos^2``;
Kaiser: ``I0(beta sqrt(1 - (t/W)^2)) / I0(beta)``). The filter has unit gain at DC. Because
output phases repeat every ``new`` samples, the filter is stored as ``new`` polyphase kernels
applied by one strided ``conv1d`` (stride ``orig``); the output channels are then interleaved.
The signal is taken as zero outside ``[0, T)``, so the first and last ``lowpass_filter_width``
(or so) samples see a truncated filter.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Resample", "resampled_length"]


def resampled_length(length: int, orig_freq: int, new_freq: int) -> int:
    """Output length of :class:`Resample`: ``ceil(length * new_freq / orig_freq)`` samples."""
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    return -(-int(length) * new // orig)


class Resample(nn.Module):
    """Resample the last axis from ``orig_freq`` to ``new_freq`` Hz (windowed-sinc, polyphase).

    Args:
        orig_freq: input sample rate in Hz (a positive integer).
        new_freq: output sample rate in Hz (a positive integer).
        lowpass_filter_width: zero crossings of the sinc kept on each side (sharper and longer
            filter when larger). Default 6.
        rolloff: cut-off as a fraction of the lower Nyquist frequency (< 1 leaves room for the
            transition band and limits aliasing). Default 0.99.
        window: ``"hann"`` (default) or ``"kaiser"``.
        beta: Kaiser window shape parameter (``window="kaiser"`` only). Default 14.77.

    Shapes:
        forward: (..., T) float -> (..., ceil(T * new_freq / orig_freq)) of the input's dtype.
        ``T = 0`` gives an empty output. The filter runs in float32 (autocast is disabled
        inside), so the result is the same under autocast; half inputs come back as half.

    The filter is a ``(new, 1, K)`` buffer, ``K = 2 * ceil(W) + orig`` with
    ``W = lowpass_filter_width / (2 f_c)`` input samples; it follows ``.to(device)`` but is not
    saved in the state dict (``persistent=False``). ``orig_freq == new_freq`` is the identity.

    Raises:
        ValueError: non-positive rates, ``lowpass_filter_width < 1``, ``rolloff`` outside
            (0, 1], an unknown ``window``, or (forward) a non-floating or 0-d input.
    """

    def __init__(
        self,
        orig_freq: int,
        new_freq: int,
        lowpass_filter_width: int = 6,
        rolloff: float = 0.99,
        window: str = "hann",
        beta: float = 14.769656459379492,
    ):
        super().__init__()
        if int(orig_freq) != orig_freq or int(new_freq) != new_freq:
            raise ValueError(
                f"Resample: rates must be integers in Hz, got {orig_freq} -> {new_freq}"
            )
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"Resample: rates must be positive, got {orig_freq} -> {new_freq}")
        if lowpass_filter_width < 1:
            raise ValueError(
                f"Resample: lowpass_filter_width must be >= 1, got {lowpass_filter_width}"
            )
        if not 0.0 < rolloff <= 1.0:
            raise ValueError(f"Resample: rolloff must be in (0, 1], got {rolloff}")
        if window not in ("hann", "kaiser"):
            raise ValueError(f"Resample: window must be 'hann' or 'kaiser', got '{window}'")
        self.orig_freq = int(orig_freq)
        self.new_freq = int(new_freq)
        g = math.gcd(self.orig_freq, self.new_freq)
        self.orig = self.orig_freq // g
        self.new = self.new_freq // g
        self.lowpass_filter_width = int(lowpass_filter_width)
        self.rolloff = float(rolloff)
        self.window = window
        self.beta = float(beta)
        kernel, self.width = self._make_kernel()
        self.register_buffer("kernel", kernel, persistent=False)

    def _make_kernel(self) -> tuple[torch.Tensor, int]:
        """(new, 1, 2 * width + orig) float32 polyphase kernels, and ``width`` (input samples)."""
        two_fc = self.rolloff * min(1.0, self.new / self.orig)  # 2 f_c, cycles per input sample
        half = self.lowpass_filter_width / two_fc  # window half-length W, input samples
        width = math.ceil(half)
        # tap m of phase i multiplies x[q * orig + m - width] for output j = q * new + i
        k = torch.arange(-width, width + self.orig, dtype=torch.float64)
        phase = torch.arange(self.new, dtype=torch.float64)[:, None] * self.orig / self.new
        t = phase - k[None, :]  # (new, K): tau_j - n
        inside = t.abs() <= half
        u = (t / half).clamp(-1.0, 1.0)
        if self.window == "hann":
            w = torch.cos(0.5 * math.pi * u) ** 2
        else:
            beta = torch.tensor(self.beta, dtype=torch.float64)
            w = torch.special.i0(beta * torch.sqrt(1.0 - u * u)) / torch.special.i0(beta)
        h = two_fc * torch.sinc(two_fc * t) * w * inside
        return h.to(torch.float32).unsqueeze(1), width

    def output_length(self, length: int) -> int:
        """``ceil(length * new_freq / orig_freq)``: the output length for ``length`` samples."""
        return resampled_length(length, self.orig, self.new)

    def extra_repr(self) -> str:
        return (
            f"orig_freq={self.orig_freq}, new_freq={self.new_freq}, "
            f"lowpass_filter_width={self.lowpass_filter_width}, rolloff={self.rolloff}, "
            f"window={self.window!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T) -> (..., ceil(T * new_freq / orig_freq)) resampled signal."""
        if x.dim() == 0 or not torch.is_floating_point(x):
            raise ValueError(
                f"Resample: expected a floating (..., T) tensor, got {x.dtype} {tuple(x.shape)}"
            )
        if self.orig == self.new:
            return x
        lead, length = x.shape[:-1], x.shape[-1]
        out_len = self.output_length(length)
        if length == 0:
            return x.new_zeros(*lead, 0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = x.reshape(-1, 1, length).float()
            frames = -(-out_len // self.new)  # conv output positions q
            k = self.kernel.shape[-1]
            right = max(0, (frames - 1) * self.orig + k - self.width - length)
            y = F.pad(y, (self.width, right))
            y = F.conv1d(y, self.kernel.float(), stride=self.orig)  # (N, new, >= frames)
            y = y[..., :frames].transpose(1, 2).reshape(y.shape[0], -1)[:, :out_len]
        return y.reshape(*lead, out_len).to(x.dtype)

"""Batched speed perturbation, reverberation and noise mixing on the training device.

The device side of ``task.augmentation.on_device=true``: :class:`DeviceAugmenter` renders the
draws a data worker made (:mod:`speechkit.data.augment_draws`) on a whole batch of crops,
on whatever device the batch is on, and gives what the worker path
(:class:`speechkit.data.augment.Augmenter`, after voxceleb_trainer's ``AugmentWAV`` in
clovaai/voxceleb_trainer ``DatasetLoader.py``) gives for the same draws, within float tolerance:

* speed (first): the worker path resamples with soxr ("HQ") from ``s * rate`` to ``rate``.
  For a rational ``s = down / up`` that is a linear, periodically time-varying FIR filter
  (Crochiere & Rabiner, "Multirate Digital Signal Processing", 1983, polyphase form): output
  ``n`` is ``sum_i x[i] h(n * down - i * up)``. :func:`probe_speed_kernel` measures ``h`` by
  running soxr itself on unit impulses (once per factor, on the CPU) and keeps the taps above
  1e-7 of the peak (the rest is soxr's float32 round-off); it also measures soxr's first
  outputs, which its start-up computes differently. :func:`resample` applies both with one
  strided ``conv1d`` and a small matmul: equal to soxr within ~1e-6, edges included. The
  resampled signal is then cropped at the worker's drawn start (speed < 1) or wrap-padded
  (speed > 1) back to L, as ``Augmenter.speed``.
* reverb: the RIR normalised to unit energy (float64 energy, float32 taps), full linear
  convolution by real FFTs of a length >= L + Lr - 1 (no circular wrap), first L samples.
* noise / music / babble: ``level = 10 log10(mean(x^2) + eps)`` in float64; source ``k`` is
  scaled by ``sqrt(10 ** ((level(clean) - level(noise_k) - snr_k) / 10))``; the scaled
  sources are summed in the worker's order and added, in float32.

Everything is deterministic (no atomics: rows are written, never scatter-added) and runs
outside autocast, in float32/float64, under ``torch.no_grad``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import soxr
import torch
import torch.nn.functional as F

from speechkit.data.augment import LEVEL_EPS
from speechkit.data.augment_draws import speed_length
from speechkit.data.noise_bank import NoiseBank
from speechkit.errors import ConfigError

__all__ = [
    "DeviceAugmenter",
    "SpeedKernel",
    "add_noise",
    "probe_speed_kernel",
    "resample",
    "reverberate",
    "speed_perturb",
    "speed_ratio",
]

_MAX_DENOMINATOR = 1000
"""A speed factor must be ``down / up`` with ``up <= 1000`` (0.9 = 9 / 10, 1.1 = 11 / 10)."""
_PROBE_SAMPLES = 4096
_TAP_FLOOR = 1e-7
"""Taps below this fraction of the peak are soxr's float32 round-off and are dropped."""


@dataclass(frozen=True)
class SpeedKernel:
    """soxr's resampler for one speed factor ``down / up``, measured by
    :func:`probe_speed_kernel`.

    Attributes:
        factor: the speed factor; input rate ``rate * factor``, output rate ``rate``.
        down, up: ``factor = down / up`` in lowest terms.
        half: filter half-width in input samples.
        taps: (up, 2 * half + down) float32; output ``q * up + j`` is
            ``sum_k x[q * down + k - half] * taps[j, k]``.
        start: (S, I) float32; soxr's first S outputs are ``start @ x[:I]``.
    """

    factor: float
    down: int
    up: int
    half: int
    taps: torch.Tensor
    start: torch.Tensor

    def to(self, device: torch.device) -> SpeedKernel:
        return SpeedKernel(
            self.factor, self.down, self.up, self.half, self.taps.to(device), self.start.to(device)
        )


def _soxr(x: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    # exactly Augmenter.speed's call (speechkit.data.audio.resample_waveform)
    return soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ").astype(np.float64)


def speed_ratio(factor: float) -> tuple[int, int]:
    """``(down, up)`` in lowest terms with ``factor = down / up``.

    Raises:
        ConfigError: ``factor`` is not positive, or not such a ratio with ``up <= 1000``.
    """
    ratio = Fraction(factor).limit_denominator(_MAX_DENOMINATOR) if factor > 0 else Fraction(0)
    if factor <= 0 or abs(float(ratio) - factor) > 1e-9 * factor:
        raise ConfigError(
            f"speed factor {factor}: on-device speed perturbation needs a positive ratio "
            f"down/up with up <= {_MAX_DENOMINATOR} (e.g. 0.9, 1.1)"
        )
    return ratio.numerator, ratio.denominator


def probe_speed_kernel(factor: float, sample_rate: int = 16000) -> SpeedKernel:
    """Measure soxr's one-shot resampler from ``sample_rate * factor`` to ``sample_rate`` Hz.

    Runs soxr on ``down`` impulses in the middle of a 4096-sample signal (the steady-state
    taps ``h(n * down - i * up)``) and on impulses at the first ``I`` positions (its first
    ``S`` outputs, where the steady-state taps would reach before the signal). About 0.1 s.

    Raises:
        ConfigError: ``factor`` is not positive, or not a ratio ``down / up`` with
            ``up <= 1000``.
    """
    down, up = speed_ratio(factor)
    mid = _PROBE_SAMPLES // 2 // down * down
    response: dict[int, float] = {}  # offset n * down - i * up (in 1/up input samples) -> tap
    for i in range(down):
        impulse = np.zeros(_PROBE_SAMPLES, np.float32)
        impulse[mid + i] = 1.0
        for n, value in enumerate(_soxr(impulse, factor, sample_rate)):
            response[n * down - (mid + i) * up] = value
    offsets = np.array(sorted(response))
    values = np.array([response[o] for o in offsets])
    kept = offsets[np.abs(values) > _TAP_FLOOR * np.abs(values).max()]
    half = int(math.ceil(max(-kept[0], kept[-1]) / up))
    width = 2 * half + down
    taps = np.array(
        [[response.get(j * down - (k - half) * up, 0.0) for k in range(width)] for j in range(up)]
    )
    taps[np.abs(taps) <= _TAP_FLOOR * np.abs(values).max()] = 0.0
    first = half * up // down + 2  # outputs whose taps reach before sample 0
    inputs = first * down // up + half + 1
    start = np.zeros((first, inputs))
    for i in range(inputs):
        impulse = np.zeros(_PROBE_SAMPLES, np.float32)
        impulse[i] = 1.0
        start[:, i] = _soxr(impulse, factor, sample_rate)[:first]
    return SpeedKernel(
        float(factor),
        down,
        up,
        half,
        torch.tensor(taps, dtype=torch.float32),
        torch.tensor(start, dtype=torch.float32),
    )


def resample(x: torch.Tensor, kernel: SpeedKernel, sample_rate: int = 16000) -> torch.Tensor:
    """(N, L) -> (N, L'): what soxr gives for each row (``speed_length`` samples).

    Args:
        x: float32 waveforms at ``sample_rate * kernel.factor`` Hz (as read), on any device.
        kernel: from :func:`probe_speed_kernel` (moved to ``x``'s device).
    """
    n, length = x.shape
    out_len = speed_length(length, kernel.factor, sample_rate)
    blocks = -(-out_len // kernel.up)
    right = max(0, (blocks - 1) * kernel.down + kernel.taps.shape[1] - length - kernel.half)
    padded = F.pad(x[:, None], (kernel.half, right))
    y = F.conv1d(padded, kernel.taps[:, None], stride=kernel.down)  # (N, up, blocks)
    y = y.transpose(1, 2).reshape(n, -1)[:, :out_len]
    first, inputs = kernel.start.shape
    head = F.pad(x, (0, max(0, inputs - length)))[:, :inputs] @ kernel.start.T
    return torch.cat([head[:, : min(first, out_len)], y[:, first:]], dim=1)


def speed_perturb(
    x: torch.Tensor,
    factors: torch.Tensor,
    starts: torch.Tensor,
    kernel_of: Any,
    sample_rate: int = 16000,
) -> torch.Tensor:
    """(N, L) -> (N, L): ``Augmenter.speed`` for the drawn factors and crop starts.

    Args:
        x: float32 crops.
        factors: (N,) speed factors (1.0: unchanged).
        starts: (N,) crop start in the resampled signal (used where it is longer than L).
        kernel_of: ``kernel_of(factor) -> SpeedKernel`` on ``x``'s device.

    Raises:
        ValueError: a start is missing (-1) or out of range where a crop is needed.
    """
    out = x.clone()
    length = x.shape[1]
    for factor in sorted(set(factors.tolist()) - {1.0}):
        rows = torch.nonzero(factors == factor).squeeze(1)
        changed = resample(x[rows], kernel_of(factor), sample_rate)
        new_len = changed.shape[1]
        if new_len > length:
            first = starts[rows]
            if bool(((first < 0) | (first > new_len - length)).any()):
                raise ValueError(
                    f"speed {factor}: crop starts {first.tolist()} outside [0, {new_len - length}]"
                )
            index = first[:, None] + torch.arange(length, device=x.device)
        else:  # wrap-pad (crop.wrap_pad) and keep L samples
            index = (torch.arange(length, device=x.device) % new_len).expand(len(rows), -1)
        out[rows] = changed.gather(1, index)
    return out


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (a fast FFT length)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def reverberate(x: torch.Tensor, rir: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """``Augmenter.reverb`` on rows ``owner`` of ``x``.

    Args:
        x: (N, L) float32 crops.
        rir: (R, Lr) float32 RIRs as decoded (zero-padded at the end), each non-silent.
        owner: (R,) row of ``x`` each RIR is applied to (distinct).

    Returns:
        (N, L) float32: rows ``owner`` convolved with their unit-energy RIR, truncated to L;
        the other rows as they were.
    """
    if owner.numel() == 0:
        return x
    length = x.shape[1]
    energy = torch.sqrt(torch.sum(rir.double() ** 2, dim=1, keepdim=True))
    unit = (rir.double() / energy).float()
    size = _fft_size(length + rir.shape[1] - 1)
    spectrum = torch.fft.rfft(x[owner], n=size) * torch.fft.rfft(unit, n=size)
    out = x.clone()
    out[owner] = torch.fft.irfft(spectrum, n=size)[:, :length]
    return out


def _level_db(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(M, L) -> (M,) float64 ``10 log10(mean(x^2) + eps)`` (``augment.level_db``; the
    squares are summed in float64)."""
    power = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64) ** 2 / x.shape[1]
    return 10.0 * torch.log10(power + eps)


def add_noise(
    x: torch.Tensor,
    noise: torch.Tensor,
    owner: torch.Tensor,
    slot: torch.Tensor,
    snr: torch.Tensor,
    level_eps: float = LEVEL_EPS,
) -> torch.Tensor:
    """``Augmenter.add_noise`` for every noise segment of a batch.

    Levels and gains in float64, as the worker path; the scaled segments are summed per row
    in the worker's order and added in float32 (the worker sums in float64 and rounds the
    result: the two differ by float32 rounding, ~1e-7 of the signal).

    Args:
        x: (N, L) float32 clean crops.
        noise: (S, L) float32 segments.
        owner: (S,) row of ``x`` each segment is added to.
        slot: (S,) position of the segment among its row's segments (summation order).
        snr: (S,) SNR in dB of each segment.
        level_eps: the ``eps`` of the level definition.

    Returns:
        (N, L) float32.
    """
    if owner.numel() == 0:
        return x
    rows, local = torch.unique(owner, return_inverse=True)  # the U rows with noise
    clean_db = _level_db(x[rows], level_eps)
    gain = torch.sqrt(10.0 ** ((clean_db[local] - _level_db(noise, level_eps) - snr) / 10.0))
    scaled = noise * gain.to(noise.dtype)[:, None]
    total = torch.zeros(len(rows), x.shape[1], dtype=x.dtype, device=x.device)
    for k in range(int(slot.max()) + 1):  # rows are distinct within a slot: no scatter-add
        mine = torch.nonzero(slot == k).squeeze(1)
        total[local[mine]] += scaled[mine]
    out = x.clone()
    out[rows] = x[rows] + total
    return out


class DeviceAugmenter:
    """Render a batch's augmentation draws where the batch is.

    Args:
        sample_rate: audio rate in Hz (the speed perturbation's output rate).
        level_eps: the level definition's ``eps`` (``AugmentConfig.level_eps``).
        noise_bank: the noise sources and RIRs on the device, for draws that name segments
            by ``noise_file`` / ``noise_start`` and RIRs by ``rir_file`` (moved to the batch's
            device on first use).

    soxr kernels are measured on first use of each speed factor (CPU, ~0.1 s) and cached per
    device.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        level_eps: float = LEVEL_EPS,
        noise_bank: NoiseBank | None = None,
    ):
        self.sample_rate = sample_rate
        self.level_eps = level_eps
        self.noise_bank = noise_bank
        self._kernels: dict[tuple[float, str], SpeedKernel] = {}

    def kernel(self, factor: float, device: torch.device) -> SpeedKernel:
        """The soxr kernel of ``factor`` on ``device`` (measured once)."""
        key = (float(factor), str(device))
        if key not in self._kernels:
            cpu = self._kernels.get((float(factor), "cpu"))
            if cpu is None:
                cpu = probe_speed_kernel(float(factor), self.sample_rate)
                self._kernels[float(factor), "cpu"] = cpu
            self._kernels[key] = cpu.to(device)
        return self._kernels[key]

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """(..., L) clean crops -> (..., L) augmented, for the draws of the flattened rows.

        Args:
            audio: float32 crops; rows in ``audio.reshape(-1, L)`` order.
            draws: :func:`speechkit.data.augment_draws.collate_draws` output, on ``audio``'s
                device.

        Raises:
            ValueError: the draws are for another number of rows.
        """
        shape, length = audio.shape, audio.shape[-1]
        x = audio.reshape(-1, length).float()
        if draws["speed"].shape[0] != x.shape[0]:
            raise ValueError(
                f"augmentation draws for {draws['speed'].shape[0]} utterances, batch has "
                f"{x.shape[0]} ({tuple(shape)})"
            )
        device = x.device
        with torch.autocast(device_type=device.type, enabled=False):
            x = speed_perturb(
                x,
                draws["speed"],
                draws["speed_start"],
                lambda factor: self.kernel(factor, device),
                self.sample_rate,
            )
            x = reverberate(x, self._rirs(draws, device), draws["rir_owner"])
            x = add_noise(
                x,
                self._noise(draws, length, device),
                draws["noise_owner"],
                draws["noise_slot"],
                draws["noise_snr"],
                self.level_eps,
            )
        return x.reshape(shape)

    def _bank(self, device: torch.device) -> NoiseBank:
        if self.noise_bank is None:
            raise ValueError("the draws name noise-bank files, but no noise bank was given")
        if self.noise_bank.device != device:
            self.noise_bank.to(device)
        return self.noise_bank

    def _noise(self, draws: dict[str, torch.Tensor], length: int, device: torch.device):
        """(S, L) noise segments: as sent, or cut from the noise bank."""
        refs = draws.get("noise_file")
        if refs is None or refs.numel() == 0:
            return draws["noise"]
        return self._bank(device).segments(refs, draws["noise_start"], length)

    def _rirs(self, draws: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """(R, Lr_max) RIRs: as sent, or the whole files from the noise bank."""
        refs = draws.get("rir_file")
        if refs is None or refs.numel() == 0:
            return draws["rir"]
        return self._bank(device).whole(refs)

    def augment_sample(self, sample: dict[str, Any]) -> dict[str, Any]:
        """A batch with ``audio`` augmented by its ``augment`` draws (the key removed)."""
        sample = dict(sample)
        draws = sample.pop("augment")
        sample["audio"] = self(sample["audio"], draws)
        return sample

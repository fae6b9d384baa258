"""RawNet3: a raw-waveform speaker embedding network with a parametrised sinc filterbank.

References:
    * Jung et al., "Pushing the limits of raw waveform speaker recognition", Interspeech 2022
      (RawNet3; voxceleb_trainer ``models/RawNet3.py`` and ``configs/RawNet3_AAM.yaml``).
    * Ravanelli and Bengio, "Speaker recognition from raw waveform with SincNet", SLT 2018, and
      Pariente et al., "Filterbank design for end-to-end speech separation", ICASSP 2020
      (the analytic cos + sin parametrised sinc filterbank of asteroid's ``ParamSincFB``).
    * Jung et al., "Improved RawNet with feature map scaling", Interspeech 2020 (AFMS).

Names mirror the reference so its checkpoint (``{"model": state_dict}``) loads as is:
``preprocess.0.flipped_filter``, ``preprocess.1.{weight,bias}``,
``conv1.filterbank.{low_hz_,band_hz_,window_,n_}``, ``bn1`` (unused by the reference's forward;
kept, frozen), ``layer{1,2,3}.{conv1,bn1,convs.i,bns.i,conv3,bn3,afms.alpha,afms.fc,residual.0}``,
``layer4``, ``attention.{0,2,3}``, ``bn5``, ``fc6``, ``bn6`` (used only with ``out_bn``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.modules.frontend import PreEmphasis
from speechkit.modules.pooling import AttentiveStatsPool
from speechkit.registry import ChoiceEnum, register_model

__all__ = ["ParamSincFilterbank", "SincEncoder", "AFMS", "Bottle2neck", "RawNet3Config", "RawNet3"]


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class ParamSincFilterbank(nn.Module):
    """Learnable band-pass filterbank: ``n_filters / 2`` cosine (even) + as many sine (odd) filters.

    Each band ``k`` has learnable ``low_hz_[k]`` and ``band_hz_[k]``; the actual edges are
    ``f_lo = min_low_hz + |low_hz_|`` and ``f_hi = clamp(f_lo + min_band_hz + |band_hz_|,
    min_low_hz, sr / 2)``. The even filter is the windowed ideal band-pass
    ``[sin(2 pi f_hi t) - sin(2 pi f_lo t)] / (pi t)``, the odd one its quadrature
    ``[cos(2 pi f_lo t) - cos(2 pi f_hi t)] / (pi t)``; both are divided by ``2 (f_hi - f_lo)``.
    Only the left half of the time axis (``n_``, negative times in radians per Hz) and of the
    hamming window (``window_``) is stored; the right half follows by symmetry. Initial bands
    are equally spaced on the HTK mel scale from 30 Hz to ``sr / 2 - (min_low_hz + min_band_hz)``.

    Args:
        n_filters: total filters (even; 256 in RawNet3).
        kernel_size: odd filter length in samples (251); an even value is rounded up.
        sample_rate: Hz.
        min_low_hz, min_band_hz: lower bounds of the low edge and of the bandwidth (Hz).

    Shapes:
        ``filters()`` -> (n_filters, 1, kernel_size).

    Raises:
        ConfigError: if ``n_filters`` is odd.
    """

    def __init__(
        self,
        n_filters: int = 256,
        kernel_size: int = 251,
        sample_rate: float = 16000.0,
        min_low_hz: float = 50.0,
        min_band_hz: float = 50.0,
    ):
        super().__init__()
        if n_filters % 2 != 0:
            raise ConfigError(f"ParamSincFilterbank: n_filters must be even, got {n_filters}")
        self.n_filters = n_filters
        self.kernel_size = kernel_size + 1 if kernel_size % 2 == 0 else kernel_size
        self.sample_rate = sample_rate
        self.min_low_hz = min_low_hz
        self.min_band_hz = min_band_hz
        n_bands = n_filters // 2
        high = sample_rate / 2 - (min_low_hz + min_band_hz)
        mel = torch.linspace(
            _hz_to_mel(torch.tensor(30.0)).item(),
            _hz_to_mel(torch.tensor(high)).item(),
            n_bands + 1,
            dtype=torch.float64,
        )
        edges = _mel_to_hz(mel)
        self.low_hz_ = nn.Parameter(edges[:-1].float().view(-1, 1))
        self.band_hz_ = nn.Parameter(edges.diff().float().view(-1, 1))
        half = self.kernel_size // 2
        # left half of the symmetric hamming window of kernel_size samples
        n = torch.arange(half, dtype=torch.float64)
        window = 0.54 - 0.46 * torch.cos(2.0 * math.pi * n / (self.kernel_size - 1))
        self.register_buffer("window_", window.float())
        times = torch.arange(-half, 0, dtype=torch.float32).view(1, -1) / sample_rate
        self.register_buffer("n_", 2.0 * math.pi * times)

    def band_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained (low, high) band edges in Hz, each (n_filters / 2, 1)."""
        low = self.min_low_hz + self.low_hz_.abs()
        high = torch.clamp(
            low + self.min_band_hz + self.band_hz_.abs(), self.min_low_hz, self.sample_rate / 2
        )
        return low, high

    def filters(self) -> torch.Tensor:
        """(n_filters, 1, kernel_size) impulse responses: cosine filters first, then sine."""
        low, high = self.band_edges()
        band = high - low  # (K, 1)
        phase_low, phase_high = low * self.n_, high * self.n_  # (K, half)
        half_t = self.n_ / 2
        even_left = (torch.sin(phase_high) - torch.sin(phase_low)) / half_t * self.window_
        odd_left = (torch.cos(phase_low) - torch.cos(phase_high)) / half_t * self.window_
        even = torch.cat([even_left, 2 * band, even_left.flip(1)], dim=1)
        odd = torch.cat([odd_left, torch.zeros_like(band), -odd_left.flip(1)], dim=1)
        bank = torch.cat([even, odd], dim=0) / (2 * band.repeat(2, 1))
        return bank.unsqueeze(1)


class SincEncoder(nn.Module):
    """Strided convolution of the waveform with a :class:`ParamSincFilterbank` (no padding).

    Shapes:
        (B, 1, L) -> (B, n_filters, (L - kernel_size) // stride + 1).
    """

    def __init__(self, filterbank: ParamSincFilterbank, stride: int):
        super().__init__()
        self.filterbank = filterbank
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filterbank.filters(), stride=self.stride)


class AFMS(nn.Module):
    """Alpha feature-map scaling: ``(x + alpha) * sigmoid(fc(mean_t x))``.

    Shapes:
        (B, C, T) -> (B, C, T); ``alpha`` is (C, 1), initialised to 1.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc(x.mean(dim=-1)))
        return (x + self.alpha) * gate.unsqueeze(-1)


class Bottle2neck(nn.Module):
    """RawNet3's Res2Net bottleneck with AFMS.

    ``conv1`` 1x1 -> ReLU -> BN; split into ``scale`` groups of ``width = planes // scale``
    channels; group ``i < scale - 1`` gets ``convs[i]`` (dilated, 'same' padding) of (group i +
    previous output) -> ReLU -> ``bns[i]``; the last group passes through; concat -> ``conv3``
    1x1 -> ReLU -> BN; + ``residual`` (1x1 conv without bias when channels change); optional
    max-pool; AFMS.

    Shapes:
        (B, inplanes, T) -> (B, planes, T // pool) (T without pooling).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        kernel_size: int = 3,
        dilation: int = 1,
        scale: int = 8,
        pool: int | None = None,
    ):
        super().__init__()
        width = planes // scale
        self.width = width
        self.conv1 = nn.Conv1d(inplanes, width * scale, kernel_size=1)
        self.bn1 = nn.BatchNorm1d(width * scale)
        padding = (kernel_size // 2) * dilation
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size, dilation=dilation, padding=padding)
            for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(scale - 1))
        self.conv3 = nn.Conv1d(width * scale, planes, kernel_size=1)
        self.bn3 = nn.BatchNorm1d(planes)
        self.relu = nn.ReLU()
        self.mp = nn.MaxPool1d(pool) if pool else None
        self.afms = AFMS(planes)
        if inplanes != planes:
            self.residual = nn.Sequential(nn.Conv1d(inplanes, planes, kernel_size=1, bias=False))
        else:
            self.residual = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.residual(x)
        groups = torch.split(self.bn1(self.relu(self.conv1(x))), self.width, dim=1)
        outputs = []
        carry = None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = groups[i] if carry is None else carry + groups[i]
            carry = bn(self.relu(conv(inp)))
            outputs.append(carry)
        outputs.append(groups[-1])
        out = self.bn3(self.relu(self.conv3(torch.cat(outputs, dim=1)))) + shortcut
        if self.mp is not None:
            out = self.mp(out)
        return self.afms(out)


class RawNet3Pooling(ChoiceEnum):
    """Attentive statistics pooling of RawNet3: channel-wise attention (ECA) or one weight per
    frame (ASP)."""

    ECA = "ECA"
    ASP = "ASP"


class SincNorm(ChoiceEnum):
    """Normalisation over time of the log sinc-filterbank output: subtract the mean, or also
    divide by the standard deviation, or none."""

    mean = "mean"
    mean_std = "mean_std"
    none = "none"


@dataclass
class RawNet3Config(SpeechkitDataclass):
    """Config of ``rawnet3`` (defaults = voxceleb_trainer ``configs/RawNet3_AAM.yaml``).

    Fixed: pre-emphasis 0.97, waveform InstanceNorm1d(1, eps 1e-4, affine), 251-tap sinc filters
    (C / 4 of them), Res2Net scale 8, the "summed" wiring, 1536-channel aggregation.
    """

    channels: int = 1024  # C
    embed_dim: int = 256  # the reference's nOut
    sinc_stride: int = 10
    encoder_type: RawNet3Pooling = "ECA"
    context: bool = True  # global context [x, mean, std] in the attention
    log_sinc: bool = True
    norm_sinc: SincNorm = "mean"
    out_bn: bool = False
    input_scale: float = 1.0


@register_model("rawnet3", dataclass=RawNet3Config)
class RawNet3(nn.Module):
    """RawNet3 (about 16 M parameters with C = 1024, 256-d output).

    Front-end (fp32, autocast off): pre-emphasis -> InstanceNorm1d over the waveform -> sinc
    filterbank (stride ``sinc_stride``) -> ``|.|`` -> ``log(. + 1e-6)`` -> mean subtraction over
    time. Body: ``x1 = layer1(x)`` (pool 5), ``x2 = layer2(x1)`` (pool 3),
    ``x3 = layer3(mp3(x1) + x2)``, ``layer4`` 1x1 conv on [mp3(x1), x2, x3] -> ReLU (1536 ch).
    Pooling: attentive statistics with global context, variance clamped to [1e-4, 1e4]; ``bn5``;
    ``fc6``; ``bn6`` when ``out_bn``.

    Shapes:
        forward: (B, L) float32 waveform at 16 kHz -> (B, embed_dim); needs
        ``L >= 251 + 150 * sinc_stride`` samples (about 0.1 s).

    Raises:
        ConfigError: bad ``encoder_type``, ``norm_sinc`` or ``channels`` (multiple of 32).
    """

    def __init__(self, cfg: RawNet3Config):
        super().__init__()
        RawNet3Pooling.check(cfg.encoder_type, "rawnet3: encoder_type")
        SincNorm.check(cfg.norm_sinc, "rawnet3: norm_sinc")
        if cfg.channels % 32 != 0:
            raise ConfigError(f"rawnet3: channels must be a multiple of 32, got {cfg.channels}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.input_scale = cfg.input_scale
        c = cfg.channels
        self.preprocess = nn.Sequential(
            PreEmphasis(0.97, persistent=True), nn.InstanceNorm1d(1, eps=1e-4, affine=True)
        )
        self.conv1 = SincEncoder(ParamSincFilterbank(c // 4, 251), stride=cfg.sinc_stride)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm1d(c // 4).requires_grad_(False)  # in the reference, unused
        self.layer1 = Bottle2neck(c // 4, c, kernel_size=3, dilation=2, scale=8, pool=5)
        self.layer2 = Bottle2neck(c, c, kernel_size=3, dilation=3, scale=8, pool=3)
        self.layer3 = Bottle2neck(c, c, kernel_size=3, dilation=4, scale=8)
        self.layer4 = nn.Conv1d(3 * c, 1536, kernel_size=1)
        self.attention = AttentiveStatsPool(
            1536,
            128,
            global_context=cfg.context,
            activation="relu_bn",
            channel_wise=cfg.encoder_type == "ECA",
            with_std=True,
            min_var=1e-4,
            max_var=1e4,
        )
        self.bn5 = nn.BatchNorm1d(3072)
        self.fc6 = nn.Linear(3072, cfg.embed_dim)
        self.bn6 = nn.BatchNorm1d(cfg.embed_dim).requires_grad_(cfg.out_bn)
        self.mp3 = nn.MaxPool1d(3)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, C / 4, (L - 251) // sinc_stride + 1) log sinc features, fp32."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = self.preprocess((waveform.float() * self.input_scale).unsqueeze(1))
            x = self.conv1(x).abs()
            if self.cfg.log_sinc:
                x = torch.log(x + 1e-6)
            if self.cfg.norm_sinc == "mean":
                x = x - x.mean(dim=-1, keepdim=True)
            elif self.cfg.norm_sinc == "mean_std":
                std = x.std(dim=-1, keepdim=True).clamp(min=1e-3)
                x = (x - x.mean(dim=-1, keepdim=True)) / std
        return x

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, embed_dim) embedding."""
        if waveform.dim() != 2:
            raise ValueError(f"rawnet3: expected a (B, L) waveform, got {tuple(waveform.shape)}")
        x = self.features(waveform)
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x1_pooled = self.mp3(x1)
        x3 = self.layer3(x1_pooled + x2)
        x = self.relu(self.layer4(torch.cat([x1_pooled, x2, x3], dim=1)))
        x = self.fc6(self.bn5(self.attention(x)))
        return self.bn6(x) if self.cfg.out_bn else x

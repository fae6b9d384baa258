"""ECAPA-TDNN speaker embedding network.

Reference: Desplanques, Thienpondt and Demuynck, "ECAPA-TDNN: Emphasized Channel Attention,
Propagation and Aggregation in TDNN Based Speaker Verification", Interspeech 2020. Sizes follow
the paper and wespeaker's ``ECAPA_TDNN_GLOB_c512`` / ``_c1024`` (6.19 M / 14.65 M parameters
with a 192-d embedding): 1536-channel multi-layer feature aggregation, attention bottleneck 128
with global context, SE bottleneck 128, Res2Net scale 8.

Layout: ``frontend`` (no state) -> ``layer1`` Conv1d(k5)+ReLU+BN -> ``layer2..4`` SE-Res2Blocks
(k3, dilation 2, 3, 4) -> ``mfa`` Conv1d(3C, 1536, 1)+ReLU on the concatenated block outputs ->
``pooling`` attentive statistics (3072) -> ``bn`` -> ``fc`` (embed_dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.modules.frontend import KaldiFbank, LogMelFrontend
from speechkit.modules.pooling import AttentiveStatsPool
from speechkit.registry import ChoiceEnum, register_model

__all__ = [
    "Conv1dReluBn",
    "Res2Conv1dReluBn",
    "SEBlock1d",
    "SERes2Block",
    "ECAPATDNNConfig",
    "ECAPATDNN",
]


class Conv1dReluBn(nn.Module):
    """Conv1d (with bias, 'same' padding) -> ReLU -> BatchNorm1d. (B, C_in, T) -> (B, C_out, T)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ):
        super().__init__()
        padding = (kernel_size // 2) * dilation
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation
        )
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net multi-scale conv: ``scale`` groups, the first ``scale - 1`` convolved in cascade.

    Group ``i`` gets ``convs[i]`` of (group i + previous group's output) -> ReLU -> ``bns[i]``;
    the last group passes through unchanged. (B, C, T) -> (B, C, T); C divisible by ``scale``.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = 8):
        super().__init__()
        self.width = channels // scale
        padding = (kernel_size // 2) * dilation
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, kernel_size, padding=padding, dilation=dilation)
            for _ in range(scale - 1)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.width, dim=1)
        outputs = []
        carry = None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            inp = groups[i] if carry is None else carry + groups[i]
            carry = bn(torch.relu(conv(inp)))
            outputs.append(carry)
        outputs.append(groups[-1])
        return torch.cat(outputs, dim=1)


class SEBlock1d(nn.Module):
    """Squeeze-excitation over time: ``x * sigmoid(linear2(relu(linear1(mean_t x))))``.

    (B, C, T) -> (B, C, T); bottleneck ``bottleneck`` channels.
    """

    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(x.mean(dim=-1)))))
        return x * gate.unsqueeze(-1)


class SERes2Block(nn.Module):
    """SE-Res2Block: 1x1 Conv-ReLU-BN, Res2 dilated conv, 1x1 Conv-ReLU-BN, SE, + input.

    (B, C, T) -> (B, C, T).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        dilation: int,
        scale: int = 8,
        se_bottleneck: int = 128,
    ):
        super().__init__()
        self.conv1 = Conv1dReluBn(channels, channels, kernel_size=1)
        self.res2 = Res2Conv1dReluBn(channels, kernel_size, dilation, scale)
        self.conv2 = Conv1dReluBn(channels, channels, kernel_size=1)
        self.se = SEBlock1d(channels, se_bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.conv2(self.res2(self.conv1(x))))


class EcapaFrontend(ChoiceEnum):
    """Feature front-end of ECAPA-TDNN: log-mel spectrogram or Kaldi fbank."""

    logmel = "logmel"
    fbank = "fbank"


class FbankWindow(ChoiceEnum):
    """Analysis window of the Kaldi fbank front-end (``KaldiFbank.window_type``)."""

    hamming = "hamming"
    povey = "povey"
    hanning = "hanning"
    rectangular = "rectangular"


@dataclass
class ECAPATDNNConfig(SpeechkitDataclass):
    """Config of ``ecapa_tdnn``.

    ``frontend="logmel"``: pre-emphasis 0.97, 512-point FFT of 25 ms hamming frames every 10 ms,
    HTK mel ``f_min``-``f_max``, ``log(mel + 1e-6)``, mean subtraction over time.
    ``frontend="fbank"``: Kaldi fbank (25/10 ms, 20 Hz-Nyquist, int16 input scale,
    ``fbank_window``: hamming as wespeaker's recipe, or Kaldi's default povey) with CMN
    (``f_min``/``f_max`` unused).
    """

    channels: int = 1024  # C: 512 or 1024 in the paper
    embed_dim: int = 192
    n_mels: int = 80
    frontend: EcapaFrontend = "logmel"
    fbank_window: FbankWindow = "hamming"  # frontend="fbank" only
    f_min: float = 20.0
    f_max: float = 7600.0
    mfa_channels: int = 1536
    attention_channels: int = 128
    se_channels: int = 128
    scale: int = 8
    # the paper feeds each SE-Res2Block the sum of the stem's and all earlier blocks' outputs;
    # False chains the blocks plainly (wespeaker)
    sum_block_inputs: bool = True


@register_model("ecapa_tdnn", dataclass=ECAPATDNNConfig)
class ECAPATDNN(nn.Module):
    """ECAPA-TDNN (Desplanques et al., 2020). About 6.2 M (C=512) / 14.7 M (C=1024) parameters.

    Shapes:
        forward: (B, L) float32 waveform at 16 kHz -> (B, embed_dim) un-normalised embedding.

    Raises:
        ConfigError: unknown ``frontend`` or ``channels`` not divisible by ``scale``.
    """

    def __init__(self, cfg: ECAPATDNNConfig):
        super().__init__()
        EcapaFrontend.check(cfg.frontend, "ecapa_tdnn: frontend")
        if cfg.channels % cfg.scale != 0:
            raise ConfigError(
                f"ecapa_tdnn: channels ({cfg.channels}) must be divisible by scale ({cfg.scale})"
            )
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        if cfg.frontend == "logmel":
            self.frontend = LogMelFrontend(
                n_fft=512,
                win_length=400,
                hop_length=160,
                f_min=cfg.f_min,
                f_max=cfg.f_max,
                n_mels=cfg.n_mels,
                window="hamming",
                pre_emphasis=0.97,
                log_input=True,
                norm="mean",
            )
        else:
            self.frontend = KaldiFbank(n_mels=cfg.n_mels, window_type=cfg.fbank_window, cmn=True)
        c = cfg.channels
        self.layer1 = Conv1dReluBn(cfg.n_mels, c, kernel_size=5)
        self.layer2 = SERes2Block(c, 3, dilation=2, scale=cfg.scale, se_bottleneck=cfg.se_channels)
        self.layer3 = SERes2Block(c, 3, dilation=3, scale=cfg.scale, se_bottleneck=cfg.se_channels)
        self.layer4 = SERes2Block(c, 3, dilation=4, scale=cfg.scale, se_bottleneck=cfg.se_channels)
        self.mfa = nn.Conv1d(3 * c, cfg.mfa_channels, kernel_size=1)
        self.pooling = AttentiveStatsPool(
            cfg.mfa_channels,
            cfg.attention_channels,
            global_context=True,
            activation="tanh",
            min_var=1e-5,
        )
        self.bn = nn.BatchNorm1d(self.pooling.output_dim())
        self.fc = nn.Linear(self.pooling.output_dim(), cfg.embed_dim)

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, n_mels, T) normalised log-mel features (fp32)."""
        feats = self.frontend(waveform)
        return feats.transpose(1, 2) if self.cfg.frontend == "fbank" else feats

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, embed_dim) embedding."""
        if waveform.dim() != 2:
            raise ValueError(f"ecapa_tdnn: expected a (B, L) waveform, got {tuple(waveform.shape)}")
        x = self.layer1(self.features(waveform))
        x1 = self.layer2(x)
        if self.cfg.sum_block_inputs:
            x2 = self.layer3(x + x1)
            x3 = self.layer4(x + x1 + x2)
        else:
            x2 = self.layer3(x1)
            x3 = self.layer4(x2)
        x = torch.relu(self.mfa(torch.cat([x1, x2, x3], dim=1)))
        return self.fc(self.bn(self.pooling(x)))

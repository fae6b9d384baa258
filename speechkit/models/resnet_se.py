"""voxceleb_trainer's squeeze-and-excitation ResNets: ResNetSE34L ("Fast ResNet-34") and
ResNetSE34V2 ("H/ASP").

References:
    * Chung et al., "In defence of metric learning for speaker recognition", Interspeech 2020
      (Fast ResNet-34, 1.4 M parameters).
    * Heo et al., "Clova baseline system for the VoxCeleb Speaker Recognition Challenge 2020",
      arXiv:2009.14153 (H/ASP; pretrained ``baseline_v2_*``: 64 mels, ASP, 512-d).
    * Hu et al., "Squeeze-and-excitation networks", CVPR 2018.

Module names mirror voxceleb_trainer's ``MainModel`` so a reference checkpoint loads after
stripping ``__S__.`` and dropping its ``torchfb.*`` buffers: ``conv1``, ``bn1``,
``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,se.fc.0,se.fc.2,downsample.0,downsample.1}``, then
``sap_linear`` + ``attention`` + ``fc`` (ResNetSE34L) or ``attention.{0,2,3}`` + ``fc`` (V2). Our
front-end lives under ``frontend`` with non-persistent buffers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.modules.frontend import LogMelFrontend
from speechkit.modules.pooling import AttentiveStatsPool, self_attention_weights, weighted_mean_std
from speechkit.registry import ChoiceEnum, register_model

__all__ = [
    "SELayer",
    "SEBasicBlock",
    "ResNetSE34LConfig",
    "ResNetSE34V2Config",
    "ResNetSE34L",
    "ResNetSE34V2",
]

_BLOCKS = (3, 4, 6, 3)


class SELayer(nn.Module):
    """Squeeze-and-excitation over channels of a (B, C, F, T) map.

    Global average pool -> ``fc`` = [Linear(C, C/r), ReLU, Linear(C/r, C), Sigmoid] -> scale.

    Args:
        channels: C.
        reduction: r (8 in voxceleb_trainer).
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, C, F, T)."""
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class SEBasicBlock(nn.Module):
    """Residual block with SE, in voxceleb_trainer's order (ReLU *before* the first BN).

    ``conv3x3(stride) -> ReLU -> bn1 -> conv3x3 -> bn2 -> SE -> + shortcut -> ReLU``; convs have
    no bias; the shortcut is ``downsample`` = [1x1 conv(stride), BN] when the shape changes.

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: int or (freq, time) stride of the first conv.
        reduction: SE reduction.

    Shapes:
        (B, in_channels, F, T) -> (B, channels, F / stride_f, T / stride_t) (rounded up).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int | tuple[int, int] = 1,
        reduction: int = 8,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(channels, reduction)
        self.downsample = None
        if stride not in (1, (1, 1)) or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _make_layer(
    in_channels: int, channels: int, num_blocks: int, stride: int | tuple[int, int]
) -> nn.Sequential:
    blocks = [SEBasicBlock(in_channels, channels, stride)]
    blocks += [SEBasicBlock(channels, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs; BN weight 1, bias 0 (voxceleb_trainer's init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetPooling(ChoiceEnum):
    """Temporal pooling of the ResNet models: self-attentive (SAP) or attentive statistics
    (ASP, mean and standard deviation)."""

    SAP = "SAP"
    ASP = "ASP"


class FeatureNorm(ChoiceEnum):
    """Per-utterance normalisation of the log-mel features (see ``LogMelFrontend``)."""

    instance = "instance"
    mean = "mean"
    none = "none"


def _check_encoder(encoder_type: str, model: str) -> None:
    ResNetPooling.check(encoder_type, f"{model}: encoder_type")


def _check_input(waveform: torch.Tensor, model: str) -> None:
    if waveform.dim() != 2:
        raise ValueError(f"{model}: expected a (B, L) waveform, got shape {tuple(waveform.shape)}")


@dataclass
class ResNetSE34LConfig(SpeechkitDataclass):
    """Config of ``resnet_se34l``.

    Front-end fixed per voxceleb_trainer: 16 kHz, n_fft 512, 25 ms hamming window, 10 ms hop,
    no pre-emphasis, HTK mel 0-8000 Hz, ``log(mel + 1e-6)``, per-utterance instance norm.
    """

    n_mels: int = 40
    log_input: bool = True
    encoder_type: ResNetPooling = "SAP"
    embed_dim: int = 512  # the reference's nOut
    input_scale: float = 1.0  # 32768 for checkpoints trained on int16-scale audio
    feature_norm: FeatureNorm = "instance"
    """Per-utterance normalisation of the log-mels: ``instance`` (the reference: mean and
    spread per mel bin over the utterance removed), ``mean`` (mean only) or ``none``."""


@register_model("resnet_se34l", dataclass=ResNetSE34LConfig)
class ResNetSE34L(nn.Module):
    """Fast ResNet-34: channels 16/32/64/128, blocks 3/4/6/3, SAP or ASP over time.

    Stem conv 7x7 stride (2, 1) -> BN -> ReLU; layer strides 1, 2, 2, 1; mean over frequency;
    SAP (128-d) or ASP (256-d); ``fc`` to ``embed_dim``. About 1.44 M parameters (SAP, 512-d).

    Shapes:
        forward: (B, L) float32 waveform at 16 kHz -> (B, embed_dim) un-normalised embedding.

    Raises:
        ConfigError: unknown ``encoder_type``.
    """

    def __init__(self, cfg: ResNetSE34LConfig):
        super().__init__()
        _check_encoder(cfg.encoder_type, "resnet_se34l")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.input_scale = cfg.input_scale
        self.frontend = LogMelFrontend(
            n_fft=512,
            win_length=400,
            hop_length=160,
            n_mels=cfg.n_mels,
            window="hamming",
            log_input=cfg.log_input,
            norm=FeatureNorm.check(cfg.feature_norm, "resnet_se34l: feature_norm"),
        )
        self.conv1 = nn.Conv2d(1, 16, kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_layer(16, 16, _BLOCKS[0], 1)
        self.layer2 = _make_layer(16, 32, _BLOCKS[1], (2, 2))
        self.layer3 = _make_layer(32, 64, _BLOCKS[2], (2, 2))
        self.layer4 = _make_layer(64, 128, _BLOCKS[3], (1, 1))
        self.sap_linear = nn.Linear(128, 128)
        self.attention = nn.Parameter(torch.empty(128, 1))
        nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(256 if cfg.encoder_type == "ASP" else 128, cfg.embed_dim)
        _init_weights(self)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, embed_dim) embedding."""
        _check_input(waveform, "resnet_se34l")
        x = self.frontend(waveform * self.input_scale).unsqueeze(1)  # (B, 1, n_mels, T)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        frames = x.mean(dim=2).transpose(1, 2)  # (B, T', 128)
        w = self_attention_weights(frames, self.sap_linear, self.attention)
        if self.cfg.encoder_type == "SAP":
            pooled = torch.sum(frames.float() * w, dim=1)
        else:
            pooled = torch.cat(weighted_mean_std(frames, w, dim=1, min_var=1e-5), dim=1)
        return self.fc(pooled)


@dataclass
class ResNetSE34V2Config(SpeechkitDataclass):
    """Config of ``resnet_se34v2``.

    Front-end fixed per voxceleb_trainer: pre-emphasis 0.97, then as ResNetSE34L's.
    ``n_mels`` must be a multiple of 8.
    """

    n_mels: int = 64
    log_input: bool = True
    encoder_type: ResNetPooling = "ASP"
    embed_dim: int = 512  # the reference's nOut
    input_scale: float = 1.0  # 32768 for checkpoints trained on int16-scale audio
    feature_norm: FeatureNorm = "instance"
    """Per-utterance normalisation of the log-mels: ``instance`` (the reference: mean and
    spread per mel bin over the utterance removed), ``mean`` (mean only) or ``none``."""


@register_model("resnet_se34v2", dataclass=ResNetSE34V2Config)
class ResNetSE34V2(nn.Module):
    """H/ASP ResNet-34: channels 32/64/128/256, blocks 3/4/6/3, channel-wise attentive pooling.

    Stem conv 3x3 (with bias) -> ReLU -> BN; layer strides 1, 2, 2, 2 (frequency / 8, time / 8
    rounded up); the map is flattened to (B, 256 * n_mels / 8, T'); ``attention`` =
    [Conv1d(., 128), ReLU, BN, Conv1d(128, .)] with a softmax over time per channel; SAP gives
    the weighted mean, ASP also the weighted std; ``fc`` to ``embed_dim``. About 8.03 M
    parameters (64 mels, ASP, 512-d).

    Shapes:
        forward: (B, L) float32 waveform at 16 kHz -> (B, embed_dim) un-normalised embedding.

    Raises:
        ConfigError: unknown ``encoder_type`` or ``n_mels`` not a multiple of 8.
    """

    def __init__(self, cfg: ResNetSE34V2Config):
        super().__init__()
        _check_encoder(cfg.encoder_type, "resnet_se34v2")
        if cfg.n_mels % 8 != 0:
            raise ConfigError(f"resnet_se34v2: n_mels must be a multiple of 8, got {cfg.n_mels}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.input_scale = cfg.input_scale
        self.frontend = LogMelFrontend(
            n_fft=512,
            win_length=400,
            hop_length=160,
            n_mels=cfg.n_mels,
            window="hamming",
            pre_emphasis=0.97,
            log_input=cfg.log_input,
            norm=FeatureNorm.check(cfg.feature_norm, "resnet_se34v2: feature_norm"),
        )
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(32)
        self.layer1 = _make_layer(32, 32, _BLOCKS[0], 1)
        self.layer2 = _make_layer(32, 64, _BLOCKS[1], (2, 2))
        self.layer3 = _make_layer(64, 128, _BLOCKS[2], (2, 2))
        self.layer4 = _make_layer(128, 256, _BLOCKS[3], (2, 2))
        channels = 256 * (cfg.n_mels // 8)
        self.attention = AttentiveStatsPool(
            channels,
            128,
            global_context=False,
            activation="relu_bn",
            with_std=cfg.encoder_type == "ASP",
            min_var=1e-5,
        )
        self.fc = nn.Linear(self.attention.output_dim(), cfg.embed_dim)
        _init_weights(self)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, embed_dim) embedding."""
        _check_input(waveform, "resnet_se34v2")
        x = self.frontend(waveform * self.input_scale).unsqueeze(1)  # (B, 1, n_mels, T)
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, 256 * n_mels / 8, T')
        return self.fc(self.attention(x))

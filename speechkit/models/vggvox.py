"""VGGVox40 (VGG-M on 40 log-mel bands), as voxceleb_trainer's ``VGGVox`` model.

References:
    * Nagrani et al., "VoxCeleb: a large-scale speaker identification dataset", Interspeech 2017
      (VGG-M speaker network).
    * Chung et al., "In defence of metric learning for speaker recognition", Interspeech 2020
      (the 40-mel VGG-M-40 variant with MAX / TAP / SAP aggregation).

``netcnn`` is one ``nn.Sequential`` whose indices match the reference (convs at 0/4/8/11/14/18,
BNs at 1/5/9/12/15/19), then ``sap_linear`` + ``attention`` (SAP only) and ``fc``: a reference
checkpoint loads after stripping ``__S__.`` and dropping ``torchfb.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.modules.frontend import LogMelFrontend
from speechkit.modules.pooling import (
    TemporalAveragePooling,
    TemporalMaxPooling,
    self_attention_weights,
)
from speechkit.registry import ChoiceEnum, register_model

__all__ = ["VGGVox40Config", "VGGVox40"]

N_MELS = 40


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class VGGVoxPooling(ChoiceEnum):
    """Temporal pooling of VGGVox: max (MAX), mean (TAP) or self-attentive (SAP)."""

    MAX = "MAX"
    TAP = "TAP"
    SAP = "SAP"


@dataclass
class VGGVox40Config(SpeechkitDataclass):
    """Config of ``vggvox40``.

    Front-end fixed per voxceleb_trainer: 40 HTK mels 0-8000 Hz, n_fft 512, 25 ms *hann* window,
    10 ms hop, no pre-emphasis, ``log(mel + 1e-6)``, per-utterance instance norm.
    """

    log_input: bool = True
    encoder_type: VGGVoxPooling = "SAP"
    embed_dim: int = 512  # the reference's nOut
    input_scale: float = 1.0  # 32768 for checkpoints trained on int16-scale audio


@register_model("vggvox40", dataclass=VGGVox40Config)
class VGGVox40(nn.Module):
    """VGG-M-40: five conv blocks collapse 40 mel bands to 1, then MAX/TAP/SAP over time.

    ``netcnn``: conv 96 5x7 /(1,2) - maxpool 1x3 /(1,2) - conv 256 5x5 /2 - maxpool 3x3 /2 -
    conv 384 - conv 256 - conv 256 (3x3) - maxpool 3x3 /2 - conv 512 4x1 (every conv followed
    by BN and ReLU, with bias). Output (B, 512, 1, T'), T' about T / 40; ``fc`` Linear(512,
    embed_dim). Needs at least about 1 s of audio.

    Shapes:
        forward: (B, L) float32 waveform at 16 kHz -> (B, embed_dim) un-normalised embedding.

    Raises:
        ConfigError: unknown ``encoder_type``.
    """

    def __init__(self, cfg: VGGVox40Config):
        super().__init__()
        VGGVoxPooling.check(cfg.encoder_type, "vggvox40: encoder_type")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.input_scale = cfg.input_scale
        self.frontend = LogMelFrontend(
            n_fft=512,
            win_length=400,
            hop_length=160,
            f_max=8000.0,
            n_mels=N_MELS,
            window="hann",
            log_input=cfg.log_input,
            norm="instance",
        )
        self.netcnn = nn.Sequential(
            *_conv_bn_relu(1, 96, (5, 7), stride=(1, 2), padding=(2, 2)),  # 0-2
            nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2)),  # 3
            *_conv_bn_relu(96, 256, (5, 5), stride=(2, 2), padding=(1, 1)),  # 4-6
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 7
            *_conv_bn_relu(256, 384, (3, 3)),  # 8-10
            *_conv_bn_relu(384, 256, (3, 3)),  # 11-13
            *_conv_bn_relu(256, 256, (3, 3)),  # 14-16
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 17
            *_conv_bn_relu(256, 512, (4, 1), padding=(0, 0)),  # 18-20
        )
        if cfg.encoder_type == "MAX":
            self.encoder = TemporalMaxPooling()
        elif cfg.encoder_type == "TAP":
            self.encoder = TemporalAveragePooling()
        else:
            self.sap_linear = nn.Linear(512, 512)
            self.attention = nn.Parameter(torch.empty(512, 1))
            nn.init.xavier_normal_(self.attention)
        self.fc = nn.Linear(512, cfg.embed_dim)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, embed_dim) embedding."""
        if waveform.dim() != 2:
            raise ValueError(f"vggvox40: expected a (B, L) waveform, got {tuple(waveform.shape)}")
        x = self.frontend(waveform * self.input_scale).unsqueeze(1)  # (B, 1, 40, T)
        x = self.netcnn(x).squeeze(2)  # (B, 512, T')
        if self.cfg.encoder_type in ("MAX", "TAP"):
            pooled = self.encoder(x)
        else:
            frames = x.transpose(1, 2)  # (B, T', 512)
            w = self_attention_weights(frames, self.sap_linear, self.attention)
            pooled = torch.sum(frames.float() * w, dim=1)
        return self.fc(pooled)

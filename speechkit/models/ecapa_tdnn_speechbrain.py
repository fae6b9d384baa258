"""ECAPA-TDNN in SpeechBrain's layout, so SpeechBrain checkpoints give the same embeddings.

Reference: Desplanques, Thienpondt and Demuynck, "ECAPA-TDNN", Interspeech 2020, as implemented
by SpeechBrain ``speechbrain/lobes/models/ECAPA_TDNN.py`` (``ECAPA_TDNN``, the embedding model of
``spkrec-ecapa-voxceleb``). It differs from speechkit's :mod:`speechkit.models.ecapa_tdnn`
(wespeaker layout) in ways that change every embedding, hence a separate model:

* every convolution with a kernel > 1 pads **by reflection** ("same" length);
* blocks are chained plainly (block ``i`` sees block ``i - 1``'s output) and a block whose input
  and output widths differ has a 1x1 ``shortcut`` conv;
* Res2Net passes the **first** channel group through and convolves groups 1..scale-1, group
  ``i >= 2`` after adding group ``i - 1``'s output;
* multi-layer aggregation (``mfa``) is Conv -> ReLU -> BatchNorm, its width is the last entry of
  ``channels`` (3072 for ``spkrec-ecapa-voxceleb``);
* attentive statistics pooling: attention ``Conv -> ReLU -> BN -> tanh -> Conv`` over
  ``[x, mean, std]`` (global context) with the **biased** std; all variances clamped at 1e-12;
* front-end: SpeechBrain's Fbank and sentence mean normalisation
  (:class:`speechkit.modules.speechbrain_fbank.SpeechBrainFbank`).

Layout (state-dict names): ``stem`` (SpeechBrain ``blocks.0``), ``blocks.{i}`` (``blocks.{i+1}``,
SE-Res2Net), ``mfa``, ``pooling`` (``asp``), ``bn`` (``asp_bn``), ``fc`` (a Linear; SpeechBrain's
1x1 Conv1d). Convert SpeechBrain weights with :mod:`speechkit.interop.speechbrain_ecapa`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.models.ecapa_tdnn import SEBlock1d
from speechkit.modules.speechbrain_fbank import SpeechBrainFbank
from speechkit.registry import register_model

__all__ = [
    "ReflectTDNNBlock",
    "SpeechBrainRes2NetBlock",
    "SpeechBrainSERes2NetBlock",
    "SpeechBrainAttentiveStatsPool",
    "SpeechBrainECAPAHead",
    "ECAPATDNNSpeechBrainConfig",
    "ECAPATDNNSpeechBrain",
]

_EPS = 1e-12  # SpeechBrain's variance floor in attentive statistics pooling


class ReflectTDNNBlock(nn.Module):
    """Conv1d (odd kernel, reflection 'same' padding, bias) -> ReLU -> BatchNorm1d.

    (B, C_in, T) -> (B, C_out, T); T must exceed the padding ``dilation * (kernel - 1) / 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            dilation=dilation,
            padding=pad,
            padding_mode="reflect" if pad else "zeros",
        )
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class SpeechBrainRes2NetBlock(nn.Module):
    """Res2Net with the first of ``scale`` channel groups passed through.

    ``y_0 = x_0``, ``y_1 = tdnns[0](x_1)``, ``y_i = tdnns[i-1](x_i + y_{i-1})``; output
    ``cat(y)``. (B, C, T) -> (B, C, T), C divisible by ``scale``.
    """

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.tdnns = nn.ModuleList(
            ReflectTDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        out = [groups[0]]
        y = None
        for tdnn, group in zip(self.tdnns, groups[1:]):
            y = tdnn(group if y is None else group + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SpeechBrainSERes2NetBlock(nn.Module):
    """1x1 TDNN -> Res2Net -> 1x1 TDNN -> squeeze-excitation, plus the (projected) input.

    (B, C_in, T) -> (B, C_out, T); ``shortcut`` (1x1 conv) exists only when C_in != C_out.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        se_channels: int,
        kernel_size: int,
        dilation: int,
    ):
        super().__init__()
        self.tdnn1 = ReflectTDNNBlock(in_channels, out_channels, 1)
        self.res2net = SpeechBrainRes2NetBlock(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = ReflectTDNNBlock(out_channels, out_channels, 1)
        self.se = SEBlock1d(out_channels, se_channels)
        self.shortcut = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.se(self.tdnn2(self.res2net(self.tdnn1(x)))) + residual


class SpeechBrainAttentiveStatsPool(nn.Module):
    """Channel-wise attentive statistics pooling as SpeechBrain's ``AttentiveStatisticsPooling``.

    Scores ``proj(tanh(tdnn(h)))`` with ``h = [x, mean_t x, std_t x]`` (``global_context``, the
    unweighted biased statistics repeated over T) or ``h = x``; softmax over T per channel;
    output ``[sum_t w x, sqrt(clamp(sum_t w (x - mu)^2, 1e-12))]``.

    Shapes:
        (B, C, T) -> (B, 2C).
    """

    def __init__(self, channels: int, attention_channels: int, global_context: bool = True):
        super().__init__()
        self.global_context = global_context
        self.tdnn = ReflectTDNNBlock(channels * (3 if global_context else 1), attention_channels, 1)
        self.proj = nn.Conv1d(attention_channels, channels, 1)

    @staticmethod
    def _stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (w * x).sum(dim=2)
        var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
        return mean, var.clamp(min=_EPS).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"attentive pooling: expected (B, C, T), got {tuple(x.shape)}")
        num_frames = x.shape[-1]
        h = x
        if self.global_context:
            uniform = torch.full_like(x[:, :1], 1.0 / num_frames)
            mean, std = self._stats(x, uniform)
            h = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        weights = F.softmax(self.proj(torch.tanh(self.tdnn(h))), dim=2)
        mean, std = self._stats(x, weights)
        return torch.cat([mean, std], dim=1)


class SpeechBrainECAPAHead(nn.Module):
    """The ECAPA-TDNN network of SpeechBrain on frame features: (B, input_size, T) -> (B, D).

    Args:
        input_size: feature channels (80 mel bands; 384 for VoiceVector's enrolment heads).
        channels: output widths of the stem, each SE-Res2Net block and the aggregation
            (``len >= 3``; ``len - 2`` blocks).
        kernel_sizes, dilations: per entry of ``channels`` (odd kernels).
        attention_channels: attention bottleneck of the pooling.
        res2net_scale: Res2Net groups (divides every block width).
        se_channels: squeeze-excitation bottleneck.
        global_context: attention sees the utterance mean and std.
        embed_dim: output size (SpeechBrain's ``lin_neurons``).

    Raises:
        ConfigError: inconsistent list lengths, an even kernel, or a block width not divisible by
            ``res2net_scale``.
    """

    def __init__(
        self,
        input_size: int,
        channels: list[int],
        kernel_sizes: list[int],
        dilations: list[int],
        attention_channels: int = 128,
        res2net_scale: int = 8,
        se_channels: int = 128,
        global_context: bool = True,
        embed_dim: int = 192,
    ):
        super().__init__()
        channels, kernel_sizes, dilations = list(channels), list(kernel_sizes), list(dilations)
        if len(channels) < 3 or not len(channels) == len(kernel_sizes) == len(dilations):
            raise ConfigError(
                "ecapa_tdnn_speechbrain: channels, kernel_sizes and dilations need the same "
                f"length >= 3, got {channels}, {kernel_sizes}, {dilations}"
            )
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ConfigError(f"ecapa_tdnn_speechbrain: kernel sizes must be odd: {kernel_sizes}")
        bad = [c for c in channels[1:-1] if c % res2net_scale]
        if bad:
            raise ConfigError(
                f"ecapa_tdnn_speechbrain: block widths {bad} not divisible by res2net_scale "
                f"{res2net_scale}"
            )
        self.embed_dim = embed_dim
        self.stem = ReflectTDNNBlock(input_size, channels[0], kernel_sizes[0], dilations[0])
        self.blocks = nn.ModuleList(
            SpeechBrainSERes2NetBlock(
                channels[i - 1],
                channels[i],
                res2net_scale,
                se_channels,
                kernel_sizes[i],
                dilations[i],
            )
            for i in range(1, len(channels) - 1)
        )
        n_blocks = len(channels) - 2
        self.mfa = ReflectTDNNBlock(
            channels[-2] * n_blocks, channels[-1], kernel_sizes[-1], dilations[-1]
        )
        self.pooling = SpeechBrainAttentiveStatsPool(
            channels[-1], attention_channels, global_context
        )
        self.bn = nn.BatchNorm1d(2 * channels[-1])
        self.fc = nn.Linear(2 * channels[-1], embed_dim)

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, input_size, T) features -> (B, embed_dim) embedding."""
        if feats.dim() != 3:
            raise ValueError(
                f"ecapa_tdnn_speechbrain: expected (B, C, T) features, got {tuple(feats.shape)}"
            )
        x = self.stem(feats)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=1))
        return self.fc(self.bn(self.pooling(x)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, input_size, T) features -> (B, embed_dim) embedding."""
        return self.embed_features(feats)


@dataclass
class ECAPATDNNSpeechBrainConfig(SpeechkitDataclass):
    """Config of ``ecapa_tdnn_speechbrain``; defaults are ``spkrec-ecapa-voxceleb``'s.

    Front-end (:class:`SpeechBrainFbank`): ``n_mels`` bands between ``f_min`` and ``f_max`` Hz
    (``f_max`` 0: Nyquist), 25/10 ms frames, 400-point FFT at 16 kHz, ``top_db`` floor, and
    sentence mean normalisation when ``mean_norm``.
    """

    n_mels: int = 80
    embed_dim: int = 192  # SpeechBrain lin_neurons
    channels: list[int] = field(default_factory=lambda: [1024, 1024, 1024, 1024, 3072])
    kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    attention_channels: int = 128
    res2net_scale: int = 8
    se_channels: int = 128
    global_context: bool = True
    f_min: float = 0.0
    f_max: float = 0.0
    top_db: float = 80.0
    mean_norm: bool = True


@register_model("ecapa_tdnn_speechbrain", dataclass=ECAPATDNNSpeechBrainConfig)
class ECAPATDNNSpeechBrain(SpeechBrainECAPAHead):
    """SpeechBrain's speaker encoder pipeline: Fbank -> sentence mean norm -> ECAPA-TDNN.

    About 20.8 M parameters at the default size (``spkrec-ecapa-voxceleb``).

    Shapes:
        forward: (B, L) float32 waveform at 16 kHz -> (B, embed_dim) un-normalised embedding,
        SpeechBrain's ``EncoderClassifier.encode_batch(wavs)`` (one utterance per row, no
        padding; ``normalize=False``). ``L >= 640`` samples (5 frames, the widest padding).

    Raises:
        ConfigError: see :class:`SpeechBrainECAPAHead`.
    """

    def __init__(self, cfg: ECAPATDNNSpeechBrainConfig):
        super().__init__(
            cfg.n_mels,
            cfg.channels,
            cfg.kernel_sizes,
            cfg.dilations,
            cfg.attention_channels,
            cfg.res2net_scale,
            cfg.se_channels,
            cfg.global_context,
            cfg.embed_dim,
        )
        self.cfg = cfg
        self.frontend = SpeechBrainFbank(
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max or None,
            top_db=cfg.top_db,
            mean_norm=cfg.mean_norm,
        )

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, n_mels, T) normalised log-mel features (fp32)."""
        return self.frontend(waveform)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> (B, embed_dim) embedding."""
        if waveform.dim() != 2:
            raise ValueError(
                f"ecapa_tdnn_speechbrain: expected a (B, L) waveform, got {tuple(waveform.shape)}"
            )
        return self.embed_features(self.features(waveform))

"""VoiceVector "AE" separation network: a waveform U-Net with a transformer bottleneck, conditioned
on positive / negative speaker enrolment vectors prepended as tokens.

Reference: Rahimi, Afouras and Zisserman, "VoiceVector: multimodal enrolment vectors for speaker
separation", ICASSP 2024 (``voicevectorae``). Layout and sizes follow
``research/voicevector_separation.md`` section 1.3 (our own notes on the authors' repository):

``mixture`` (B, T) at 16 kHz -> ``upsample`` to 51.2 kHz -> ``input_norm`` (1x1 conv 1->1,
GroupNorm(1), ReLU) -> zero-pad to a multiple of ``stride ** depth`` samples -> ``encoder``
(``depth`` levels: Conv1d(k8, s4, p2) -> ReLU -> 1x1 conv to 2C -> GLU; C = 48, 96, 192, 384, 768)
-> 50 tokens/s of ``d_model`` = 768 + sinusoidal PE -> [enrolment tokens; audio tokens] ->
``transformer`` (3 post-norm layers, 8 heads, FFN 532, dropout 0.2) -> drop the enrolment
positions -> ``head`` Linear 768->768 -> ``decoder`` (mirror: + skip, 1x1 conv to 2C, GLU,
ConvTranspose1d(k8, s4, p2), ReLU except last) -> ``downsample`` to 16 kHz -> crop to T.

Enrolment tokens: each 192-d vector -> 1x1 conv 192->384 -> GroupNorm -> 1x1 conv 384->768 ->
ReLU, plus a learned type vector (``nn.Embedding(2, 768)``: 0 negative, 1 positive). They carry
no positional encoding, so the output does not depend on their order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.modules.resample import Resample
from speechkit.registry import register_model

__all__ = [
    "SinusoidalPositionalEncoding",
    "EnrolmentAdapter",
    "VoiceVectorConfig",
    "VoiceVectorAE",
    "rescale_conv_weights",
]


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al., 2017) added to (B, L, D) tokens, L <= max_len.

    ``pe[p, 2i] = sin(p / 10000^(2i/D))``, ``pe[p, 2i+1] = cos(...)``; a non-persistent buffer.

    Raises:
        ValueError: ``L > max_len`` (the caller turns this into a limit in seconds).
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        if dim % 2:
            raise ConfigError(f"sinusoidal positional encoding needs an even dim, got {dim}")
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(1e4) / dim))
        pe = torch.zeros(max_len, dim, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        self.max_len = max_len
        self.register_buffer("pe", pe.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.max_len:
            raise ValueError(f"{x.shape[1]} positions exceed max_len {self.max_len}")
        return x + self.pe[: x.shape[1]].to(x.dtype)


class EnrolmentAdapter(nn.Module):
    """Enrolment vectors -> tokens: 1x1 conv emb->hidden, GroupNorm, 1x1 conv hidden->d, ReLU.

    Each vector is normalised on its own (GroupNorm over its channels), so a token never depends
    on the other vectors of the item or on padding. (B, N, emb_dim) -> (B, N, d_model).
    """

    def __init__(self, emb_dim: int, hidden: int, d_model: int, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(emb_dim, hidden, 1)
        self.norm = nn.GroupNorm(groups, hidden)
        self.conv2 = nn.Conv1d(hidden, d_model, 1)

    def forward(self, enrol: torch.Tensor) -> torch.Tensor:
        b, n, e = enrol.shape
        x = enrol.reshape(b * n, e, 1)  # one "sample" per vector
        x = torch.relu(self.conv2(self.norm(self.conv1(x))))
        return x.reshape(b, n, -1)


def rescale_conv_weights(module: nn.Module, reference: float = 0.1) -> None:
    """Demucs-style init rescaling of every Conv1d / ConvTranspose1d in ``module`` (in place).

    With ``s = weight.std()``, weight and bias are divided by ``sqrt(s / reference)``, so the new
    weight std is ``sqrt(s * reference)``: layers with a large default-init std shrink and small
    ones grow toward ``reference``. Weights with fewer than 2 elements (no std) are left alone.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and m.weight.numel() > 1:
                scale = (m.weight.std() / reference).sqrt()
                m.weight.div_(scale)
                if m.bias is not None:
                    m.bias.div_(scale)


@dataclass
class VoiceVectorConfig(SpeechkitDataclass):
    """Config of ``voicevector_ae`` (defaults: the paper's AE separation network, ~19.9 M)."""

    hidden: int = 48  # channels of the first encoder level
    depth: int = 5  # encoder / decoder levels
    growth: int = 2  # channel multiplier per level
    kernel_size: int = 8
    stride: int = 4
    # transformer width; 0 = derived (hidden * growth ** (depth - 1)), else must equal it
    d_model: int = 0
    transformer_layers: int = 3
    heads: int = 8
    ffn_dim: int = 532
    dropout: float = 0.2
    emb_dim: int = 192  # enrolment vector size (ECAPA-TDNN embedding)
    enrol_hidden: int = 384  # adapter's middle width
    enrol_norm_groups: int = 1
    max_len: int = 1500  # audio tokens (stride ** depth samples at internal_rate each)
    sample_rate: int = 16000  # Hz, of the mixture and the estimate
    internal_rate: int = 51200  # Hz, of the U-Net
    rescale: float = 0.1  # Demucs init rescaling reference; 0 = off
    head_init: float = 0.1  # output Linear weights ~ U(-head_init, head_init), bias 0


@register_model("voicevector_ae", dataclass=VoiceVectorConfig)
class VoiceVectorAE(nn.Module):
    """VoiceVector AE separation network (Rahimi, Afouras, Zisserman, ICASSP 2024).

    See the module docstring and ``research/voicevector_separation.md`` section 1.3. 19.93 M
    parameters with the defaults: 9.42 M U-Net convolutions, 10.14 M transformer and head,
    0.37 M enrolment adapter and type embedding.

    Shapes:
        forward(mixture (B, T) float32 at ``sample_rate`` Hz, enrol (B, N, emb_dim) float32,
        enrol_type (B, N) long in {0 = negative, 1 = positive}, enrol_mask (B, N) bool, True = a
        real vector, or None = all real) -> (B, T) float32 estimate of the target at
        ``sample_rate`` Hz (float32 under autocast too). ``N`` may be 0; padded vectors (mask False) have no effect.

    The upsampled signal is zero-padded to a multiple of ``stride ** depth`` samples (20 ms) so
    every input sample reaches the output; the estimate is cropped back to T samples.

    Raises:
        ConfigError: inconsistent sizes (``d_model`` vs. the encoder's last width, kernel /
            stride that do not give an exact x``stride`` mirror, odd ``d_model``).
        ValueError: wrong input ranks / shapes, ``enrol_type`` outside {0, 1}, or a mixture
            longer than ``max_len`` tokens allow (the message gives the limit in seconds).
    """

    def __init__(self, cfg: VoiceVectorConfig):
        super().__init__()
        widths = [cfg.hidden * cfg.growth**i for i in range(cfg.depth)]
        d_model = widths[-1]
        if cfg.d_model not in (0, d_model):
            raise ConfigError(
                f"voicevector_ae: d_model ({cfg.d_model}) must equal the last encoder width "
                f"hidden * growth ** (depth - 1) = {d_model} (or be 0 to derive it)"
            )
        padding = (cfg.kernel_size - cfg.stride) // 2
        if cfg.kernel_size - 2 * padding != cfg.stride:
            raise ConfigError(
                f"voicevector_ae: kernel_size - stride ({cfg.kernel_size} - {cfg.stride}) must be "
                "even so each level maps L -> L / stride -> L exactly"
            )
        if d_model % cfg.heads:
            raise ConfigError(f"voicevector_ae: d_model {d_model} not divisible by {cfg.heads}")
        self.cfg = cfg
        self.d_model = d_model
        self.total_stride = cfg.stride**cfg.depth
        self.upsample = Resample(cfg.sample_rate, cfg.internal_rate)
        self.downsample = Resample(cfg.internal_rate, cfg.sample_rate)
        self.input_conv = nn.Conv1d(1, 1, 1)
        self.input_norm = nn.GroupNorm(1, 1)

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()  # decoder[i] mirrors encoder[i]; run in reverse
        c_in = 1
        for i, c in enumerate(widths):
            self.encoder.append(
                nn.Sequential(
                    nn.Conv1d(c_in, c, cfg.kernel_size, cfg.stride, padding),
                    nn.ReLU(),
                    nn.Conv1d(c, 2 * c, 1),
                    nn.GLU(dim=1),
                )
            )
            dec = [
                nn.Conv1d(c, 2 * c, 1),
                nn.GLU(dim=1),
                nn.ConvTranspose1d(c, c_in, cfg.kernel_size, cfg.stride, padding),
            ]
            if i > 0:
                dec.append(nn.ReLU())
            self.decoder.append(nn.Sequential(*dec))
            c_in = c

        self.pos_enc = SinusoidalPositionalEncoding(d_model, cfg.max_len)
        layer = nn.TransformerEncoderLayer(
            d_model,
            cfg.heads,
            cfg.ffn_dim,
            cfg.dropout,
            batch_first=True,
            norm_first=False,
        )
        self.transformer = nn.TransformerEncoder(
            layer, cfg.transformer_layers, enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, d_model)
        self.enrol_adapter = EnrolmentAdapter(
            cfg.emb_dim, cfg.enrol_hidden, d_model, cfg.enrol_norm_groups
        )
        self.enrol_type_embed = nn.Embedding(2, d_model)

        if cfg.rescale > 0:
            rescale_conv_weights(self, cfg.rescale)
        nn.init.uniform_(self.head.weight, -cfg.head_init, cfg.head_init)
        nn.init.zeros_(self.head.bias)

    def max_seconds(self) -> float:
        """Longest mixture accepted, in seconds: ``max_len * stride ** depth / internal_rate``."""
        return self.cfg.max_len * self.total_stride / self.cfg.internal_rate

    def _check_inputs(
        self,
        mixture: torch.Tensor,
        enrol: torch.Tensor,
        enrol_type: torch.Tensor,
        enrol_mask: torch.Tensor | None,
    ) -> None:
        if mixture.dim() != 2:
            raise ValueError(
                f"voicevector_ae: expected a (B, T) mixture, got {tuple(mixture.shape)}"
            )
        b = mixture.shape[0]
        if enrol.dim() != 3 or enrol.shape[0] != b or enrol.shape[2] != self.cfg.emb_dim:
            raise ValueError(
                f"voicevector_ae: expected enrol of shape ({b}, N, {self.cfg.emb_dim}), "
                f"got {tuple(enrol.shape)}"
            )
        if tuple(enrol_type.shape) != tuple(enrol.shape[:2]):
            raise ValueError(
                f"voicevector_ae: enrol_type must be {tuple(enrol.shape[:2])}, "
                f"got {tuple(enrol_type.shape)}"
            )
        if enrol_mask is not None and tuple(enrol_mask.shape) != tuple(enrol.shape[:2]):
            raise ValueError(
                f"voicevector_ae: enrol_mask must be {tuple(enrol.shape[:2])}, "
                f"got {tuple(enrol_mask.shape)}"
            )
        if enrol_type.numel() and bool(((enrol_type < 0) | (enrol_type > 1)).any()):
            raise ValueError("voicevector_ae: enrol_type must be 0 (negative) or 1 (positive)")

    def forward(
        self,
        mixture: torch.Tensor,
        enrol: torch.Tensor,
        enrol_type: torch.Tensor,
        enrol_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) mixture + (B, N, emb_dim) enrolment vectors -> (B, T) target estimate."""
        self._check_inputs(mixture, enrol, enrol_type, enrol_mask)
        length = mixture.shape[-1]
        x = self.upsample(mixture.unsqueeze(1))  # (B, 1, L) at internal_rate
        up_len = x.shape[-1]
        tokens = -(-up_len // self.total_stride)
        if tokens > self.cfg.max_len:
            raise ValueError(
                f"voicevector_ae: the mixture is {length / self.cfg.sample_rate:.2f} s long; "
                f"the positional encoding (max_len {self.cfg.max_len} tokens) allows at most "
                f"{self.max_seconds():.2f} s. Split longer audio into chunks."
            )
        x = torch.relu(self.input_norm(self.input_conv(x)))
        x = F.pad(x, (0, tokens * self.total_stride - up_len))

        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)

        h = self.pos_enc(x.transpose(1, 2))  # (B, tokens, D)
        n = enrol.shape[1]
        key_padding = None
        if n:
            e = self.enrol_adapter(enrol.to(h.dtype)) + self.enrol_type_embed(enrol_type)
            h = torch.cat([e.to(h.dtype), h], dim=1)
            if enrol_mask is not None:
                audio = torch.ones(h.shape[0], tokens, dtype=torch.bool, device=h.device)
                key_padding = ~torch.cat([enrol_mask.to(torch.bool), audio], dim=1)
        h = self.transformer(h, src_key_padding_mask=key_padding)[:, n:]
        x = self.head(h).transpose(1, 2)  # (B, D, tokens)

        for level, skip in zip(reversed(self.decoder), reversed(skips)):
            x = level(x + skip[..., : x.shape[-1]])

        y = self.downsample(x[..., :up_len].float()).squeeze(1)  # float32 even under autocast
        if y.shape[-1] < length:
            y = F.pad(y, (0, length - y.shape[-1]))
        return y[..., :length]

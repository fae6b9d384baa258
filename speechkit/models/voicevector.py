"""VoiceVector separation networks: a waveform U-Net with a transformer bottleneck, conditioned
on positive / negative speaker enrolment vectors prepended as tokens (``voicevector_ae``) or on the
target's lip features appended as video tokens (``voicevector_av``). Both share one U-Net and
transformer implementation, :class:`VoiceVectorUNet`.

Reference: Rahimi, Afouras and Zisserman, "VoiceVector: multimodal enrolment vectors for speaker
separation", ICASSP 2024 (``voicevectorae``). Layout and sizes follow the
authors' repository (akamrahimi/VoiceVector, ``src/models/components/voiceFormer*.py``):

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

``voicevector_av`` (the reference's ``voicevectorav``, upstream
``src/models/components/voiceFormerAV.py``, class ``VoiceFormerAV``) differs as follows: no
enrolment vector; the mixture is divided by its standard deviation (+ 1e-3) instead of the
1x1 conv / GroupNorm / ReLU input stage, and the estimate multiplied back by it; the bottleneck
tokens go through ``bottleneck_norm`` (GroupNorm(1, d_model) over each item's channels and
tokens; the encoder skips are taken before it) before their positional encoding; the
transformer is pre-norm; the target's lip features (25 fps, ``lip_dim`` = 512) go through a 1x1
conv to ``d_model`` + GroupNorm + dropout 0.1 and are appended after the audio tokens; their
output positions are dropped. Positions follow upstream's ``PositionalEncoding2``: audio token i
gets ``pe[i]``; the video table is the sinusoid table upsampled x2 along time (nearest), so lip
frame j gets ``pe[j // 2]`` (frames 2k and 2k + 1 share position k). The factor 2 is a constant
upstream, not derived from the frame rates, and stays 2 for smaller U-Nets.
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
    "VideoAdapter",
    "VoiceVectorNetConfig",
    "VoiceVectorConfig",
    "VoiceVectorAVConfig",
    "VoiceVectorUNet",
    "VoiceVectorAE",
    "VoiceVectorAV",
    "rescale_conv_weights",
    "transformer_encoder",
]


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al., 2017) added to (B, L, D) tokens, L <= max_len.

    ``pe[p, 2i] = sin(p / 10000^(2i/D))``, ``pe[p, 2i+1] = cos(...)``; a non-persistent buffer.
    ``forward(x, upsample=k)`` adds the table upsampled ``k`` x along time (nearest), as
    upstream's ``PositionalEncoding2(resample=k)``: token j gets ``pe[j // k]``, and up to
    ``k * max_len`` tokens are accepted.

    Raises:
        ValueError: ``L > upsample * max_len`` (the caller turns this into a limit in seconds).
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

    def forward(self, x: torch.Tensor, upsample: int = 1) -> torch.Tensor:
        n = x.shape[1]
        if n > upsample * self.max_len:
            raise ValueError(f"{n} positions exceed {upsample} x max_len {self.max_len}")
        if upsample == 1:
            return x + self.pe[:n].to(x.dtype)
        positions = torch.arange(n, device=x.device) // upsample
        return x + self.pe[positions].to(x.dtype)


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


def transformer_encoder(
    d_model: int, heads: int, ffn_dim: int, dropout: float, layers: int, norm_first: bool
) -> nn.TransformerEncoder:
    """The VoiceVector bottleneck: ``layers`` x ``nn.TransformerEncoderLayer`` (ReLU FFN,
    batch-first (B, L, d_model) tokens), post-norm (AE) or pre-norm (``norm_first``: AV and
    the enrolment nets)."""
    layer = nn.TransformerEncoderLayer(
        d_model, heads, ffn_dim, dropout, batch_first=True, norm_first=norm_first
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class VideoAdapter(nn.Module):
    """Lip features -> video tokens: 1x1 conv lip_dim->d_model, GroupNorm, dropout.

    (B, F, lip_dim) -> (B, F, d_model). GroupNorm normalises each item over its channels and all
    its F frames (the reference's ``voicevectorav`` video stem, section 1.3).
    """

    def __init__(self, lip_dim: int, d_model: int, groups: int = 1, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Conv1d(lip_dim, d_model, 1)
        self.norm = nn.GroupNorm(groups, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, lip: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(lip.transpose(1, 2)))
        return self.dropout(x).transpose(1, 2)


@dataclass
class VoiceVectorNetConfig(SpeechkitDataclass):
    """Fields shared by every VoiceVector separation network (U-Net and transformer sizes)."""

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
    max_len: int = 1500  # audio tokens (stride ** depth samples at internal_rate each)
    sample_rate: int = 16000  # Hz, of the mixture and the estimate
    internal_rate: int = 51200  # Hz, of the U-Net
    rescale: float = 0.1  # Demucs init rescaling reference; 0 = off
    head_init: float = 0.1  # output Linear weights ~ U(-head_init, head_init), bias 0


@dataclass
class VoiceVectorConfig(VoiceVectorNetConfig):
    """Config of ``voicevector_ae`` (defaults: the paper's AE separation network, ~19.9 M)."""

    emb_dim: int = 192  # enrolment vector size (ECAPA-TDNN embedding)
    enrol_hidden: int = 384  # adapter's middle width
    enrol_norm_groups: int = 1


@dataclass
class VoiceVectorAVConfig(VoiceVectorNetConfig):
    """Config of ``voicevector_av`` (the reference's ``voicevectorav``; ~19.9 M with defaults)."""

    lip_dim: int = 512  # lip feature size per 25 fps frame (VTP features: 512)
    video_norm_groups: int = 1
    video_dropout: float = 0.1
    video_fps: int = 25  # lip frame rate; sample_rate / video_fps samples per frame (640)


class VoiceVectorUNet(nn.Module):
    """Shared VoiceVector separation body: resampling, the waveform U-Net, the sinusoidal PE,
    the transformer bottleneck and the output head (section 1.3 of the module docstring).

    Subclasses add their conditioning tokens (:class:`VoiceVectorAE`, :class:`VoiceVectorAV`)
    and call :meth:`_init_weights` last. ``name`` prefixes error messages. A subclass with
    ``has_decoder = False`` (the AV enrolment net of
    :mod:`speechkit.models.voicevector_enrolment`) keeps the encoder, transformer and head only:
    no ``decoder``, no ``downsample``, and :meth:`decode` is unavailable.

    Raises:
        ConfigError: inconsistent sizes (``d_model`` vs. the encoder's last width, kernel /
            stride that do not give an exact x``stride`` mirror, ``d_model`` not divisible by
            ``heads``, odd ``d_model``).
    """

    name = "voicevector"
    learned_input_norm = True  # 1x1 conv + GroupNorm + ReLU (AE); else divide by std (AV)
    norm_first = False  # post-norm transformer (AE); pre-norm (AV)
    bottleneck_groupnorm = False  # GroupNorm(1, d_model) on the bottleneck before the PE (AV)
    has_decoder = True  # False: encoder + transformer + head only (no decoder / downsample)

    def __init__(self, cfg: VoiceVectorNetConfig):
        super().__init__()
        widths = [cfg.hidden * cfg.growth**i for i in range(cfg.depth)]
        d_model = widths[-1]
        if cfg.d_model not in (0, d_model):
            raise ConfigError(
                f"{self.name}: d_model ({cfg.d_model}) must equal the last encoder width "
                f"hidden * growth ** (depth - 1) = {d_model} (or be 0 to derive it)"
            )
        padding = (cfg.kernel_size - cfg.stride) // 2
        if cfg.kernel_size - 2 * padding != cfg.stride:
            raise ConfigError(
                f"{self.name}: kernel_size - stride ({cfg.kernel_size} - {cfg.stride}) must be "
                "even so each level maps L -> L / stride -> L exactly"
            )
        if d_model % cfg.heads:
            raise ConfigError(f"{self.name}: d_model {d_model} not divisible by {cfg.heads}")
        self.cfg = cfg
        self.d_model = d_model
        self.total_stride = cfg.stride**cfg.depth
        self.upsample = Resample(cfg.sample_rate, cfg.internal_rate)
        if self.has_decoder:
            self.downsample = Resample(cfg.internal_rate, cfg.sample_rate)
        if self.learned_input_norm:
            self.input_conv = nn.Conv1d(1, 1, 1)
            self.input_norm = nn.GroupNorm(1, 1)

        self.encoder = nn.ModuleList()
        if self.has_decoder:
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
            if self.has_decoder:
                dec = [
                    nn.Conv1d(c, 2 * c, 1),
                    nn.GLU(dim=1),
                    nn.ConvTranspose1d(c, c_in, cfg.kernel_size, cfg.stride, padding),
                ]
                if i > 0:
                    dec.append(nn.ReLU())
                self.decoder.append(nn.Sequential(*dec))
            c_in = c

        if self.bottleneck_groupnorm:
            self.bottleneck_norm = nn.GroupNorm(1, d_model)
        self.pos_enc = SinusoidalPositionalEncoding(d_model, cfg.max_len)
        self.transformer = transformer_encoder(
            d_model, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.transformer_layers, self.norm_first
        )
        self.head = nn.Linear(d_model, d_model)

    def _init_weights(self) -> None:
        """Demucs rescaling of every conv (``rescale``), then the head's uniform init."""
        if self.cfg.rescale > 0:
            rescale_conv_weights(self, self.cfg.rescale)
        nn.init.uniform_(self.head.weight, -self.cfg.head_init, self.cfg.head_init)
        nn.init.zeros_(self.head.bias)

    def max_seconds(self) -> float:
        """Longest mixture accepted, in seconds: ``max_len * stride ** depth / internal_rate``."""
        return self.cfg.max_len * self.total_stride / self.cfg.internal_rate

    def _check_mixture(self, mixture: torch.Tensor) -> None:
        if mixture.dim() != 2:
            raise ValueError(f"{self.name}: expected a (B, T) mixture, got {tuple(mixture.shape)}")

    def encode(self, mixture: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """(B, T) mixture -> (audio tokens (B, L, d_model) with PE, encoder skips, ``up_len``
        = samples at ``internal_rate``). With ``bottleneck_groupnorm`` (AV) the last level's
        output is normalised by ``bottleneck_norm`` before the PE; its skip is not.

        Raises:
            ValueError: a mixture longer than ``max_len`` tokens allow (limit in seconds).
        """
        length = mixture.shape[-1]
        x = self.upsample(mixture.unsqueeze(1))  # (B, 1, L) at internal_rate
        up_len = x.shape[-1]
        tokens = -(-up_len // self.total_stride)
        if tokens > self.cfg.max_len:
            raise ValueError(
                f"{self.name}: the mixture is {length / self.cfg.sample_rate:.2f} s long; "
                f"the positional encoding (max_len {self.cfg.max_len} tokens) allows at most "
                f"{self.max_seconds():.2f} s. Split longer audio into chunks."
            )
        if self.learned_input_norm:
            x = torch.relu(self.input_norm(self.input_conv(x)))
        x = F.pad(x, (0, tokens * self.total_stride - up_len))
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        if self.bottleneck_groupnorm:
            x = self.bottleneck_norm(x)
        return self.pos_enc(x.transpose(1, 2)), skips, up_len

    def decode(
        self, h: torch.Tensor, skips: list[torch.Tensor], up_len: int, length: int
    ) -> torch.Tensor:
        """Transformer output at the audio positions (B, L, d_model) -> (B, length) float32."""
        x = self.head(h).transpose(1, 2)  # (B, D, tokens)
        for level, skip in zip(reversed(self.decoder), reversed(skips)):
            x = level(x + skip[..., : x.shape[-1]])
        y = self.downsample(x[..., :up_len].float()).squeeze(1)  # float32 even under autocast
        if y.shape[-1] < length:
            y = F.pad(y, (0, length - y.shape[-1]))
        return y[..., :length]


@register_model("voicevector_ae", dataclass=VoiceVectorConfig)
class VoiceVectorAE(VoiceVectorUNet):
    """VoiceVector AE separation network (Rahimi, Afouras, Zisserman, ICASSP 2024).

    See the module docstring (upstream ``voiceFormer.py``). 19.93 M
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

    name = "voicevector_ae"

    def __init__(self, cfg: VoiceVectorConfig):
        super().__init__(cfg)
        self.enrol_adapter = EnrolmentAdapter(
            cfg.emb_dim, cfg.enrol_hidden, self.d_model, cfg.enrol_norm_groups
        )
        self.enrol_type_embed = nn.Embedding(2, self.d_model)
        self._init_weights()

    def _check_inputs(
        self,
        mixture: torch.Tensor,
        enrol: torch.Tensor,
        enrol_type: torch.Tensor,
        enrol_mask: torch.Tensor | None,
    ) -> None:
        self._check_mixture(mixture)
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
        h, skips, up_len = self.encode(mixture)
        tokens = h.shape[1]
        n = enrol.shape[1]
        key_padding = None
        if n:
            e = self.enrol_adapter(enrol.to(h.dtype)) + self.enrol_type_embed(enrol_type)
            h = torch.cat([e.to(h.dtype), h], dim=1)
            if enrol_mask is not None:
                audio = torch.ones(h.shape[0], tokens, dtype=torch.bool, device=h.device)
                key_padding = ~torch.cat([enrol_mask.to(torch.bool), audio], dim=1)
        h = self.transformer(h, src_key_padding_mask=key_padding)[:, n:]
        return self.decode(h, skips, up_len, mixture.shape[-1])


@register_model("voicevector_av", dataclass=VoiceVectorAVConfig)
class VoiceVectorAV(VoiceVectorUNet):
    """VoiceVector AV separation network (the reference's ``voicevectorav``): the target's
    synchronised lip features, not an enrolment vector, tell it whom to extract.

    Same U-Net and transformer as :class:`VoiceVectorAE` (shared code), with the differences of
    the module docstring (upstream ``voiceFormerAV.py``): std input normalisation, a
    GroupNorm(1, d_model) on the bottleneck (``bottleneck_norm``, upstream ``norm_layers.0.0``),
    pre-norm transformer, video tokens appended after the audio tokens, lip frame j at
    position ``pe[j // 2]`` (upstream's x2 nearest-upsampled video PE), audio token i at
    ``pe[i]``. The reference trains it with Adam at 6.4e-5
    (``configs/experiment/tss_voicevector_av.yaml``).

    Shapes:
        forward(mixture (B, T) float32 at ``sample_rate`` Hz, lip (B, F, lip_dim) float32 at
        ``video_fps`` with ``F = ceil(T / (sample_rate / video_fps))`` (640 samples per frame))
        -> (B, T) float32 estimate of the target.

    Raises:
        ConfigError: as :class:`VoiceVectorUNet`, or ``sample_rate`` not a multiple of
            ``video_fps``.
        ValueError: wrong input ranks / shapes, ``F`` that does not match ``T``, or a mixture
            longer than :meth:`max_seconds` (``max_len`` audio tokens, and
            ``video_pe_upsample * max_len`` lip frames).
    """

    name = "voicevector_av"
    learned_input_norm = False
    norm_first = True
    bottleneck_groupnorm = True
    std_floor = 1e-3  # the reference's: mixture / (std + 1e-3)
    video_pe_upsample = 2  # upstream PositionalEncoding2(resample=2): frame j -> pe[j // 2]

    def __init__(self, cfg: VoiceVectorAVConfig):
        super().__init__(cfg)
        if cfg.video_fps <= 0 or cfg.sample_rate % cfg.video_fps:
            raise ConfigError(
                f"voicevector_av: sample_rate {cfg.sample_rate} must be a multiple of "
                f"video_fps {cfg.video_fps}"
            )
        self.samples_per_frame = cfg.sample_rate // cfg.video_fps
        self.video_adapter = VideoAdapter(
            cfg.lip_dim, self.d_model, cfg.video_norm_groups, cfg.video_dropout
        )
        self._init_weights()

    def max_seconds(self) -> float:
        """Longest mixture accepted, in seconds: the audio limit of :class:`VoiceVectorUNet`
        (30 s with the defaults) or ``video_pe_upsample * max_len`` lip frames, whichever is
        shorter (the video one binds only for U-Nets with under 1/2 token per frame)."""
        video = self.video_pe_upsample * self.cfg.max_len * self.samples_per_frame
        return min(super().max_seconds(), video / self.cfg.sample_rate)

    def num_frames(self, num_samples: int) -> int:
        """Lip frames that go with ``num_samples`` mixture samples: ``ceil(T / 640)``."""
        return -(-num_samples // self.samples_per_frame)

    def _check_lip(self, lip: torch.Tensor, batch: int) -> None:
        if lip.dim() != 3 or lip.shape[0] != batch or lip.shape[2] != self.cfg.lip_dim:
            raise ValueError(
                f"{self.name}: expected lip features of shape ({batch}, F, {self.cfg.lip_dim}), "
                f"got {tuple(lip.shape)}"
            )

    def encode_av(
        self, audio: torch.Tensor, lip: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], int, torch.Tensor]:
        """(B, T) audio and its (B, F, lip_dim) lip frames (checked by the caller) -> (transformer
        output at the audio positions (B, L, d_model), encoder skips, ``up_len``, the audio's
        std + ``std_floor`` (B, 1)). Audio token i has position ``pe[i]``, lip frame j
        ``pe[j // 2]`` (upstream's x2 nearest-upsampled video table); the lip positions are
        dropped after the transformer."""
        std = audio.std(dim=-1, keepdim=True) + self.std_floor
        h, skips, up_len = self.encode(audio / std)
        tokens = h.shape[1]
        v = self.pos_enc(self.video_adapter(lip.to(h.dtype)), self.video_pe_upsample)
        h = self.transformer(torch.cat([h, v], dim=1))[:, :tokens]
        return h, skips, up_len, std

    def forward(self, mixture: torch.Tensor, lip: torch.Tensor) -> torch.Tensor:
        """(B, T) mixture + (B, F, lip_dim) target lip features -> (B, T) target estimate."""
        self._check_mixture(mixture)
        b, length = mixture.shape
        frames = self.num_frames(length)
        self._check_lip(lip, b)
        if lip.shape[1] != frames:
            raise ValueError(
                f"voicevector_av: a {length}-sample mixture needs {frames} lip frames "
                f"({self.samples_per_frame} samples each), got {lip.shape[1]}"
            )
        if frames > self.video_pe_upsample * self.pos_enc.max_len:
            raise ValueError(
                f"voicevector_av: the mixture is {length / self.cfg.sample_rate:.2f} s long "
                f"({frames} lip frames); the video positional encoding allows at most "
                f"{self.max_seconds():.2f} s. Split longer audio into chunks."
            )
        h, skips, up_len, std = self.encode_av(mixture, lip)
        return self.decode(h, skips, up_len, length) * std.float()

"""VoiceVector enrolment embedding nets: an enrolment clip (lip video, noisy audio + lip video,
or lip video + face embeddings) -> one 192-d speaker vector in the space of SpeechBrain's ECAPA
embeddings, which the separation net (``voicevector_ae``) takes as an enrolment token.

Reference: Rahimi, Afouras and Zisserman, "VoiceVector: multimodal enrolment vectors for speaker
separation", ICASSP 2024; upstream ``akamrahimi/VoiceVector``, ``src/models/components/``
``EmbeddingV2.py`` (V, used by ``voiceFormerVEM.py``), ``EmbeddingAV2.py`` (AV, used by
``voiceFormerAVEM2.py``) and ``EmbeddingIV2.py`` (IV, used by ``voiceFormerIVEM.py``). They are
trained by distillation (L1 to the SpeechBrain ECAPA vector of the clip's clean utterance) and
then used frozen (:mod:`speechkit.models.voicevector_composite`).

Shared layout (defaults are the reference's):

* lip features (B, F, ``lip_dim`` = 512) at 25 fps -> :class:`VideoAdapter` (1x1 conv to
  ``d_model`` = 768, GroupNorm(1) over the item's channels and frames, dropout 0.1) ->
  sinusoidal positions;
* a pre-norm ``nn.TransformerEncoder`` (3 layers, 8 heads, FFN 532, dropout 0.2) -> ``head``
  Linear d_model -> d_model (uniform +-0.1 init, zero bias);
* :class:`SpeakerHead`: 1x1 conv d_model -> ``proj_dim`` = 384, dropout 0.1, ReLU, then the
  ECAPA-TDNN of SpeechBrain's layout (:class:`SpeechBrainECAPAHead`: channels 1024 x 4 + 3072,
  kernels 5/3/3/3/1, dilations 1/2/3/4/1, Res2Net scale 8, SE 128, attentive statistics pooling
  with 128 channels and global context) pooling over the positions -> ``out_dim`` = 192.
* every Conv1d is rescaled at init as Demucs does (weight std -> sqrt(std * 0.1)).

Per net:

* ``voicevector_embedding_v`` (``EmbeddingV2``): lip frame j at position ``pe[j // 2]`` (the
  upstream video table is the sinusoid upsampled x2 along time, nearest, as in
  ``voicevector_av``: frames 2k and 2k + 1 share position k); the ECAPA head pools over the F
  lip positions.
* ``voicevector_embedding_av`` (``EmbeddingAV2``): the enrolment audio (a noisy mixture crop,
  F * 640 samples at 16 kHz) is divided by its std (+ 1e-3) and goes through the same waveform
  encoder as ``voicevector_av`` (16 -> 51.2 kHz, 5 levels, GroupNorm(1, 768) on the bottleneck)
  to 50 tokens/s, position ``pe[i]``; the lip tokens (``pe[j // 2]``) are appended, the
  transformer runs, only the 2F audio positions are kept and pooled. It shares
  :class:`VoiceVectorUNet`'s code (no decoder is built).
* ``voicevector_embedding_iv`` (``EmbeddingIV2``): K face embeddings (B, K, ``face_dim`` = 128;
  3 per clip in the reference, zeros when no face was found) -> :class:`VideoAdapter`
  (128 -> 768, GroupNorm over the K tokens, dropout) + one learned "face" type vector, no
  position; lip frame j at ``pe[j]`` (plain table here); tokens [faces; lips] -> transformer ->
  the ECAPA head pools over all K + F positions.

Differences from upstream: speechkit adds no dropout after the positional encoding (upstream
0.2; as in speechkit's ``voicevector_ae`` / ``voicevector_av``), its ECAPA squeeze-excitation
and output layers are ``nn.Linear`` (same weights, not rescaled at init), and it resamples with
its own windowed-sinc filter (AV), so outputs of converted weights are close, not identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.models.ecapa_tdnn_speechbrain import SpeechBrainECAPAHead
from speechkit.models.voicevector import (
    SinusoidalPositionalEncoding,
    VideoAdapter,
    VoiceVectorAV,
    VoiceVectorAVConfig,
    rescale_conv_weights,
    transformer_encoder,
)
from speechkit.registry import register_model

__all__ = [
    "SpeakerHeadConfig",
    "VoiceVectorEmbeddingConfig",
    "VoiceVectorEmbeddingAVConfig",
    "SpeakerHead",
    "VoiceVectorEmbeddingV",
    "VoiceVectorEmbeddingAV",
    "VoiceVectorEmbeddingIV",
]


@dataclass
class SpeakerHeadConfig(SpeechkitDataclass):
    """Inputs and pooling head shared by the three enrolment nets (defaults: the reference's)."""

    lip_dim: int = 512  # lip feature size per 25 fps frame (VTP features)
    face_dim: int = 128  # face embedding size (voicevector_embedding_iv only)
    out_dim: int = 192  # output vector size (SpeechBrain ECAPA's lin_neurons)
    proj_dim: int = 384  # 1x1 conv d_model -> proj_dim before the ECAPA head
    proj_dropout: float = 0.1
    ecapa_channels: list[int] = field(default_factory=lambda: [1024, 1024, 1024, 1024, 3072])
    ecapa_kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    ecapa_dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    ecapa_attention_channels: int = 128
    ecapa_res2net_scale: int = 8
    ecapa_se_channels: int = 128
    ecapa_global_context: bool = True


@dataclass
class VoiceVectorEmbeddingConfig(SpeakerHeadConfig):
    """Config of ``voicevector_embedding_v`` / ``voicevector_embedding_iv`` (33.16 M / 33.26 M
    parameters with the defaults, 22.32 M of them in the ECAPA head)."""

    d_model: int = 768
    transformer_layers: int = 3
    heads: int = 8
    ffn_dim: int = 532
    dropout: float = 0.2  # transformer dropout
    max_len: int = 1500  # rows of the sinusoid table (V: up to 2 max_len lip frames)
    video_norm_groups: int = 1
    video_dropout: float = 0.1  # after the lip (and face) 1x1 conv + GroupNorm
    rescale: float = 0.1  # Demucs init rescaling reference; 0 = off
    head_init: float = 0.1  # head Linear weights ~ U(-head_init, head_init), bias 0


@dataclass
class VoiceVectorEmbeddingAVConfig(VoiceVectorAVConfig, SpeakerHeadConfig):
    """Config of ``voicevector_embedding_av``: the ``voicevector_av`` encoder / transformer
    fields plus the speaker head (37.87 M parameters with the defaults). ``d_model`` must equal
    the last encoder width ``hidden * growth ** (depth - 1)`` (0: derived)."""

    d_model: int = 768


def _nonempty_float(name: str, what: str, x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        kind = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name}: {what} must be a float tensor, got {kind}")


class SpeakerHead(nn.Module):
    """Tokens -> speaker vector: 1x1 conv d_model -> proj_dim, dropout, ReLU, then
    :class:`SpeechBrainECAPAHead` (input ``proj_dim``) pooling over the positions.

    Shapes:
        forward(tokens (B, L, d_model)) -> (B, out_dim) float32, L >= :attr:`min_positions`
        (the ECAPA convolutions pad by reflection, which needs more positions than the widest
        padding).

    Raises:
        ConfigError: ECAPA sizes that do not fit (see :class:`SpeechBrainECAPAHead`).
        ValueError: fewer than :attr:`min_positions` positions (message from the caller's
            ``name`` and ``what``).
    """

    def __init__(self, d_model: int, cfg: SpeakerHeadConfig):
        super().__init__()
        self.proj = nn.Conv1d(d_model, cfg.proj_dim, 1)
        self.dropout = nn.Dropout(cfg.proj_dropout)
        self.ecapa = SpeechBrainECAPAHead(
            cfg.proj_dim,
            cfg.ecapa_channels,
            cfg.ecapa_kernel_sizes,
            cfg.ecapa_dilations,
            cfg.ecapa_attention_channels,
            cfg.ecapa_res2net_scale,
            cfg.ecapa_se_channels,
            cfg.ecapa_global_context,
            cfg.out_dim,
        )
        pads = [d * (k - 1) // 2 for k, d in zip(cfg.ecapa_kernel_sizes, cfg.ecapa_dilations)]
        self.min_positions = max(pads) + 1

    def forward(
        self, tokens: torch.Tensor, name: str = "", what: str = "positions"
    ) -> torch.Tensor:
        if tokens.shape[1] < self.min_positions:
            raise ValueError(
                f"{name}: {tokens.shape[1]} {what}; the ECAPA head needs at least "
                f"{self.min_positions} (reflection padding of its dilated convolutions)"
            )
        x = torch.relu(self.dropout(self.proj(tokens.transpose(1, 2))))
        return self.ecapa(x).float()


def _check_lip(name: str, lip: torch.Tensor, lip_dim: int) -> tuple[int, int]:
    _nonempty_float(name, "lip", lip)
    if lip.dim() != 3 or lip.shape[2] != lip_dim or lip.shape[1] < 1:
        raise ValueError(
            f"{name}: expected lip features of shape (B, F >= 1, {lip_dim}) at 25 fps, "
            f"got {tuple(lip.shape)}"
        )
    return lip.shape[0], lip.shape[1]


@register_model("voicevector_embedding_v", dataclass=VoiceVectorEmbeddingConfig)
class VoiceVectorEmbeddingV(nn.Module):
    """VoiceVector video-only enrolment net (upstream ``EmbeddingV2.py``, class ``EmbeddingV``):
    silent lip video -> speaker vector. See the module docstring for the layout.

    Shapes:
        forward(lip (B, F, lip_dim) float at 25 fps, audio=None, face=None) -> (B, out_dim)
        float32, not L2-normalised. ``audio`` and ``face`` are accepted and ignored. F must be
        at least ``speaker_head.min_positions`` (5 with the defaults) and at most
        ``2 * max_len`` (3000 frames = 120 s).

    Raises:
        ConfigError: ``d_model`` odd or not divisible by ``heads``, or bad ECAPA sizes.
        ValueError: ``lip`` not a float (B, F, lip_dim) tensor, or F out of range.
    """

    name = "voicevector_embedding_v"
    video_pe_upsample = 2  # upstream PositionalEncoding2(resample=2): frame j -> pe[j // 2]

    def __init__(self, cfg: VoiceVectorEmbeddingConfig):
        super().__init__()
        if cfg.d_model % cfg.heads or cfg.d_model % 2:
            raise ConfigError(
                f"{self.name}: d_model {cfg.d_model} must be even and divisible by heads "
                f"{cfg.heads}"
            )
        self.cfg = cfg
        self.video_adapter = VideoAdapter(
            cfg.lip_dim, cfg.d_model, cfg.video_norm_groups, cfg.video_dropout
        )
        self.pos_enc = SinusoidalPositionalEncoding(cfg.d_model, cfg.max_len)
        self.transformer = transformer_encoder(
            cfg.d_model, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.transformer_layers, True
        )
        self.head = nn.Linear(cfg.d_model, cfg.d_model)
        self.speaker_head = SpeakerHead(cfg.d_model, cfg)
        self._extra_modules(cfg)
        if cfg.rescale > 0:
            rescale_conv_weights(self, cfg.rescale)
        nn.init.uniform_(self.head.weight, -cfg.head_init, cfg.head_init)
        nn.init.zeros_(self.head.bias)

    def _extra_modules(self, cfg: VoiceVectorEmbeddingConfig) -> None:
        """Hook for subclasses' own modules (built before the init rescaling)."""

    def max_frames(self) -> int:
        """Most lip frames accepted: ``video_pe_upsample * max_len``."""
        return self.video_pe_upsample * self.cfg.max_len

    def lip_tokens(self, lip: torch.Tensor) -> torch.Tensor:
        """(B, F, lip_dim) checked lip features -> (B, F, d_model) tokens with positions.

        Raises:
            ValueError: more than :meth:`max_frames` frames.
        """
        if lip.shape[1] > self.max_frames():
            raise ValueError(
                f"{self.name}: {lip.shape[1]} lip frames; the positional encoding allows at "
                f"most {self.max_frames()} ({self.max_frames() / 25:.1f} s at 25 fps)"
            )
        v = self.video_adapter(lip.to(self.head.weight.dtype))
        return self.pos_enc(v, self.video_pe_upsample)

    def forward(
        self,
        lip: torch.Tensor,
        audio: torch.Tensor | None = None,
        face: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, F, lip_dim) lip features -> (B, out_dim) speaker vector."""
        _check_lip(self.name, lip, self.cfg.lip_dim)
        h = self.transformer(self.lip_tokens(lip))
        return self.speaker_head(self.head(h), self.name, "lip frames")


@register_model("voicevector_embedding_iv", dataclass=VoiceVectorEmbeddingConfig)
class VoiceVectorEmbeddingIV(VoiceVectorEmbeddingV):
    """VoiceVector image + video enrolment net (upstream ``EmbeddingIV2.py``, class
    ``EmbeddingIV``): face embeddings and silent lip video -> speaker vector.

    The K face embeddings become tokens through their own :class:`VideoAdapter`
    (``face_adapter``, GroupNorm over the K tokens) plus a learned type vector
    (``face_type_embed``, upstream ``face_positional_embedding``), without a position; the lip
    frames get the plain sinusoid (frame j at ``pe[j]``). The ECAPA head pools over all
    ``K + F`` positions.

    Shapes:
        forward(lip (B, F, lip_dim) float at 25 fps, audio=None, face (B, K, face_dim) float,
        K >= 1 (3 in the reference; zeros when no face was detected)) -> (B, out_dim) float32.
        ``audio`` is accepted and ignored. ``1 <= F <= max_len`` and ``K + F`` at least
        ``speaker_head.min_positions``.

    Raises:
        ConfigError: see :class:`VoiceVectorEmbeddingV`.
        ValueError: missing ``face``, wrong shapes or dtypes, F out of range.
    """

    name = "voicevector_embedding_iv"
    video_pe_upsample = 1  # upstream EmbeddingIV2 uses the plain table

    def _extra_modules(self, cfg: VoiceVectorEmbeddingConfig) -> None:
        self.face_adapter = VideoAdapter(
            cfg.face_dim, cfg.d_model, cfg.video_norm_groups, cfg.video_dropout
        )
        self.face_type_embed = nn.Embedding(1, cfg.d_model)

    def forward(
        self,
        lip: torch.Tensor,
        audio: torch.Tensor | None = None,
        face: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, F, lip_dim) lip features + (B, K, face_dim) face embeddings -> (B, out_dim)."""
        b, _ = _check_lip(self.name, lip, self.cfg.lip_dim)
        if face is None:
            raise ValueError(f"{self.name}: needs face embeddings (B, K, {self.cfg.face_dim})")
        _nonempty_float(self.name, "face", face)
        if face.dim() != 3 or face.shape[0] != b or face.shape[2] != self.cfg.face_dim:
            raise ValueError(
                f"{self.name}: expected face embeddings of shape ({b}, K >= 1, "
                f"{self.cfg.face_dim}), got {tuple(face.shape)}"
            )
        if face.shape[1] < 1:
            raise ValueError(f"{self.name}: needs at least one face embedding per clip (K >= 1)")
        f = self.face_adapter(face.to(self.head.weight.dtype)) + self.face_type_embed.weight[0]
        h = self.transformer(torch.cat([f.to(self.head.weight.dtype), self.lip_tokens(lip)], 1))
        return self.speaker_head(self.head(h), self.name, "face + lip positions")


@register_model("voicevector_embedding_av", dataclass=VoiceVectorEmbeddingAVConfig)
class VoiceVectorEmbeddingAV(VoiceVectorAV):
    """VoiceVector audio-visual enrolment net (upstream ``EmbeddingAV2.py``, class
    ``EmbeddingAV2``): a noisy enrolment clip and its lip video -> speaker vector.

    The audio and lip path is :class:`VoiceVectorAV`'s (same code: std normalisation, waveform
    encoder at 51.2 kHz, bottleneck GroupNorm, audio token i at ``pe[i]``, lip frame j at
    ``pe[j // 2]``, pre-norm transformer, audio positions kept, ``head``) without its decoder;
    the :class:`SpeakerHead` pools the audio positions (2F with the default U-Net). Upstream
    builds (and never uses) a decoder in this net; speechkit does not.

    Shapes:
        forward(lip (B, F, lip_dim) float at 25 fps, audio (B, F * 640) float waveform at
        ``sample_rate`` (16 kHz; ``sample_rate / video_fps`` samples per frame), face=None) ->
        (B, out_dim) float32. ``face`` is accepted and ignored. At most :meth:`max_seconds`
        (30 s with the defaults).

    Raises:
        ConfigError: inconsistent U-Net sizes (``d_model`` vs ``hidden * growth ** (depth -
            1)``), ``sample_rate`` not a multiple of ``video_fps``, bad ECAPA sizes.
        ValueError: missing audio, wrong shapes or dtypes, an audio length that is not
            F x 640 samples, or a clip that is too long or too short.
    """

    name = "voicevector_embedding_av"
    has_decoder = False

    def __init__(self, cfg: VoiceVectorEmbeddingAVConfig):
        super().__init__(cfg)  # encoder, transformer, head; rescaled and initialised
        self.speaker_head = SpeakerHead(self.d_model, cfg)
        if cfg.rescale > 0:
            rescale_conv_weights(self.speaker_head, cfg.rescale)

    def forward(  # type: ignore[override]
        self,
        lip: torch.Tensor,
        audio: torch.Tensor | None = None,
        face: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, F, lip_dim) lip features + (B, F * 640) audio -> (B, out_dim) speaker vector."""
        b, frames = _check_lip(self.name, lip, self.cfg.lip_dim)
        spf = self.samples_per_frame
        if audio is None:
            raise ValueError(f"{self.name}: needs the enrolment audio ({b}, {frames * spf})")
        _nonempty_float(self.name, "audio", audio)
        if audio.dim() != 2 or tuple(audio.shape) != (b, frames * spf):
            raise ValueError(
                f"{self.name}: {frames} lip frames need audio of shape ({b}, {frames * spf}) "
                f"({spf} samples per frame at {self.cfg.sample_rate} Hz), got "
                f"{tuple(audio.shape)}"
            )
        limit = self.max_seconds()
        if frames * spf > round(limit * self.cfg.sample_rate):
            raise ValueError(
                f"{self.name}: the enrolment clip is {frames * spf / self.cfg.sample_rate:.2f} s "
                f"long; the positional encoding allows at most {limit:.2f} s"
            )
        h, _, _, _ = self.encode_av(audio, lip)
        return self.speaker_head(self.head(h), self.name, "audio tokens")

"""HuBERT: masked prediction of k-means units (Hsu et al. 2021, "HuBERT: Self-Supervised Speech
Representation Learning by Masked Prediction of Hidden Units", IEEE/ACM TASLP).

Follows fairseq's ``fairseq/models/hubert/hubert.py`` (v0.12.2) with the same state-dict names
(``feature_extractor.*``, ``layer_norm``, ``post_extract_proj``, ``mask_emb``, ``encoder.*``,
``final_proj``, ``label_embs_concat``), so fairseq HuBERT / ContentVec-legacy weights load
without renaming. Differences from fairseq, all of them speed or reproducibility:

* Masks are drawn in torch on the model's device from an explicit ``torch.Generator``
  (``compute_mask_indices``), not with numpy on the host; no host sync.
* Logits are one normalised matmul ``(N, D) x (D, C)`` per label set, not cosine similarity
  against an expanded (C + 1, N, D) tensor. Output layout is fairseq's: column 0 is the
  positive, column ``1 + c`` label ``c``, the duplicate of the positive is ``-inf``, target 0.
* The unused ``dropout_features`` copy of the features is not computed.

Labels are fairseq ``Dictionary`` indices: cluster ``k`` is index ``k + 4`` (4 specials), so
``num_classes`` holds dictionary sizes (504 for 500 clusters) and the specials' rows of
``label_embs_concat`` are negatives in the softmax, as in fairseq.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.modules.conv_feature_extractor import HUBERT_CONV_LAYERS, ConvFeatureExtractor
from speechkit.modules.transformer_encoder import TransformerEncoder
from speechkit.registry import ChoiceEnum, register_model


class ExtractorMode(ChoiceEnum):
    """Normalisation of the conv feature extractor (fairseq ``EXTRACTOR_MODE_CHOICES``)."""

    default = "default"
    layer_norm = "layer_norm"


class ActivationFn(ChoiceEnum):
    """Transformer FFN activations speechkit implements (of fairseq's ``activation_fn``
    choices; ``modules.transformer_encoder.get_activation_fn``)."""

    gelu = "gelu"
    gelu_accurate = "gelu_accurate"
    relu = "relu"
    tanh = "tanh"
    linear = "linear"


class MaskSelection(ChoiceEnum):
    """Span-length distribution of fairseq's ``compute_mask_indices``
    (``MASKING_DISTRIBUTION_CHOICES``); speechkit implements ``static`` and accepts the others
    only with a zero masking probability (fairseq checkpoints)."""

    static = "static"
    uniform = "uniform"
    normal = "normal"
    poisson = "poisson"


@dataclass
class HubertConfig(SpeechkitDataclass):
    """HuBERT model config; field names and meanings are fairseq's ``HubertConfig``.

    Defaults are HuBERT Base (fairseq ``hubert_base_librispeech.yaml``); ``hubert_large_config()``
    gives Large. Fields fairseq has but speechkit does not support with non-default values
    (``target_glu``, non-"static" mask selection, ``no_mask_overlap``) raise ``ConfigError``.
    """

    label_rate: float = 50.0
    """Label frame rate in Hz (100 for MFCC labels of iteration 1, 50 for iteration 2)."""
    sample_rate: int = 16000
    """Waveform sample rate in Hz (fairseq reads it from the task)."""
    extractor_mode: ExtractorMode = "default"
    """``default`` (GroupNorm in conv block 0, Base) or ``layer_norm`` (every block, Large)."""
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: ActivationFn = "gelu"
    dropout: float = 0.1
    """Dropout in the Transformer layers and after the positional embedding."""
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.1
    """Dropout on the projected features, before masking."""
    dropout_features: float = 0.1
    """Accepted for fairseq compatibility; fairseq applies it to a copy it never uses."""
    final_dim: int = 256
    """Dimension of the prediction head (0: encoder_embed_dim)."""
    untie_final_proj: bool = True
    """One ``final_proj`` chunk of ``final_dim`` per label set instead of a shared one."""
    layer_norm_first: bool = False
    """Pre-LN Transformer (Large) instead of post-LN (Base)."""
    conv_feature_layers: str = HUBERT_CONV_LAYERS
    """(channels, kernel, stride) per conv block, fairseq's string syntax."""
    conv_bias: bool = False
    logit_temp: float = 0.1
    """Temperature of the cosine-similarity logits."""
    target_glu: bool = False
    """fairseq option (GLU on label embeddings); only False is supported."""
    feature_grad_mult: float = 0.1
    """Gradient scale for the conv feature extractor (0: no gradient, frozen)."""
    mask_length: int = 10
    """Frames per masked span."""
    mask_prob: float = 0.8
    """Span starts per utterance = int(mask_prob * T / mask_length + U[0, 1))."""
    mask_selection: MaskSelection = "static"
    mask_other: float = 0.0
    no_mask_overlap: bool = False
    mask_min_space: int = 1
    mask_min_masks: int = 2
    """Minimum number of spans per utterance (fairseq hard-codes 2)."""
    require_same_masks: bool = True
    """Subsample every row to the smallest masked count in the batch (fairseq's default)."""
    mask_channel_length: int = 10
    mask_channel_prob: float = 0.0
    mask_channel_selection: MaskSelection = "static"
    mask_channel_other: float = 0.0
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1
    conv_pos: int = 128
    """Kernel size of the convolutional positional embedding."""
    conv_pos_groups: int = 16
    skip_masked: bool = False
    """Do not compute logits for masked frames."""
    skip_nomask: bool = False
    """Do not compute logits for unmasked frames."""
    checkpoint_activations: bool = False
    """Recompute Transformer layers in backward (less memory, more time)."""
    num_classes: list[int] = field(default_factory=lambda: [504])
    """Size of each label dictionary, fairseq's 4 specials included (504 for 500 clusters);
    empty: no ``label_embs_concat`` (fine-tuning / feature extraction only)."""


@dataclass
class HubertLargeConfig(HubertConfig):
    """HuBERT Large defaults (fairseq ``hubert_large_librivox.yaml``): 24 pre-LN layers of 1024,
    layer-norm conv extractor, no dropout, feature_grad_mult 1.0, final_dim 768. Expects
    per-utterance normalised waveforms (fairseq ``task.normalize=true``)."""

    extractor_mode: ExtractorMode = "layer_norm"
    encoder_layers: int = 24
    encoder_embed_dim: int = 1024
    encoder_ffn_embed_dim: int = 4096
    encoder_attention_heads: int = 16
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    dropout_features: float = 0.0
    final_dim: int = 768
    layer_norm_first: bool = True
    feature_grad_mult: float = 1.0


def hubert_base_config(**overrides) -> HubertConfig:
    """HuBERT Base config (95M parameters), with ``overrides`` applied."""
    return HubertConfig(**overrides)


def hubert_large_config(**overrides) -> HubertConfig:
    """HuBERT Large config (317M parameters), with ``overrides`` applied."""
    large = HubertLargeConfig()
    values = {f.name: getattr(large, f.name) for f in fields(HubertConfig) if f.name != "_name"}
    values.update(overrides)
    return HubertConfig(**values)


class GradMultiply(torch.autograd.Function):
    """Identity in forward, gradient multiplied by ``scale`` in backward (fairseq GradMultiply)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    require_same_masks: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random span mask (B, T) bool, drawn on ``device`` with ``generator`` (no host sync).

    Same distribution as fairseq's ``compute_mask_indices`` with ``mask_type="static"`` and
    ``no_overlap=False`` (Baevski et al. 2020 / Hsu et al. 2021): for a row with ``n`` valid
    (right-aligned non-padding) frames, ``k = max(min_masks, int(mask_prob * n / mask_length +
    U[0, 1)))`` span starts are drawn without replacement from ``[0, n - mask_length)`` (from
    ``k + 1`` positions when that range is too short), every start masks ``mask_length``
    frames, overlapping spans merge, frames ``>= n`` are never masked. With
    ``require_same_masks`` every row is then subsampled uniformly to the smallest masked count
    in the batch. Differences from fairseq: torch instead of numpy random numbers (fairseq's
    masks cannot be reproduced bit for bit), and the rounding draw ``U[0, 1)`` is per row also
    when there is no padding (fairseq shares one draw across the batch in that case).

    Args:
        shape: (B, T). padding_mask: (B, T) bool, True = padding, or None.
        mask_prob, mask_length, min_masks, require_same_masks: as above.
        generator: a ``torch.Generator`` on ``device`` (None: torch's default generator).
        device: where to compute (default: ``padding_mask.device`` or the CPU).

    Returns:
        (B, T) bool tensor, True = masked.
    """
    B, T = shape
    if padding_mask is not None:
        device = padding_mask.device
        sizes = T - padding_mask.long().sum(1)
    else:
        sizes = torch.full((B,), T, dtype=torch.long, device=device)
    pos = torch.arange(T, device=device)
    u = torch.rand(B, generator=generator, device=device)
    num = torch.floor(mask_prob * sizes.float() / mask_length + u).long().clamp(min=min_masks)
    n_starts = sizes - mask_length
    n_starts = torch.where(n_starts <= num, num + 1, n_starts).clamp(max=T).minimum(sizes)
    num = torch.minimum(num, n_starts.clamp(min=0))
    keys = torch.rand(B, T, generator=generator, device=device)
    keys = keys.masked_fill(pos >= n_starts[:, None], 2.0)
    starts = keys.argsort(1).argsort(1) < num[:, None]  # k random distinct starts per row
    covered = starts.long().cumsum(1)
    covered = covered - F.pad(covered, (mask_length, 0))[:, :T]  # starts in (t - L, t]
    mask = (covered > 0) & (pos < sizes[:, None])
    if require_same_masks and B > 1:
        keep = mask.sum(1).min()
        keys = torch.rand(B, T, generator=generator, device=device).masked_fill(~mask, 2.0)
        mask = keys.argsort(1).argsort(1) < keep
    return mask


@dataclass
class EncoderOutput:
    """What ``HubertModel.predict`` (the last step of ``forward``) works on: the encoder output
    and the facts of the batch, over R = ``views`` x B rows of T frames."""

    x: torch.Tensor
    """(R, T, C) output of the encoder."""
    padding_mask: torch.Tensor | None
    """(R, T) bool, True at padded frames, or None."""
    mask_indices: torch.Tensor | None
    """(R, T) bool, True at masked frames, or None (no masking)."""
    layer_results: list[torch.Tensor]
    """(R, T, C) outputs of the encoder's layers that ran (fairseq's list)."""
    target_list: list[torch.Tensor] | None
    """One (R, T) tensor of label indices per label set, frame-aligned, or None."""
    views: int = 1
    """Views of each utterance stacked in the rows (``stack_views``)."""
    generator: torch.Generator | None = None
    """For any random draw of a prediction head (ContentVec's negatives)."""


class HubertModel(nn.Module):
    """HuBERT encoder and masked-prediction head (fairseq layout and names).

    ``forward`` is a template of overridable steps, each a method (ContentVec, for one, overrides
    ``stack_views``, ``encode`` and ``predict``)::

        stack_views -> embed_frames -> apply_mask -> encode -> predict

    The steps work on R = ``views`` x B rows: ``stack_views`` may stack several views of a batch
    of B utterances (HuBERT: one), ``apply_mask`` then draws one mask for the B utterances and
    tiles it over the views.

    Args:
        cfg: ``HubertConfig`` (Base defaults; see ``hubert_large_config``).

    Raises:
        ConfigError: unsupported option values (see ``HubertConfig``).
    """

    encoder_class: type[TransformerEncoder] = TransformerEncoder
    """The Transformer stack ``__init__`` builds (a subclass may name a ``TransformerEncoder``
    subclass taking the same arguments)."""

    def __init__(self, cfg: HubertConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.target_glu:
            raise ConfigError("model.target_glu=true is not supported by speechkit's hubert")
        for sel, overlap, prob, name in (
            (cfg.mask_selection, cfg.no_mask_overlap, cfg.mask_prob, "mask"),
            (
                cfg.mask_channel_selection,
                cfg.no_mask_channel_overlap,
                cfg.mask_channel_prob,
                "mask_channel",
            ),
        ):
            if prob > 0 and (sel != "static" or overlap):
                raise ConfigError(
                    f"model.{name}_selection={sel!r} / no_{name}_overlap={overlap}: only "
                    "'static' spans that may overlap are supported (fairseq HuBERT's setting)"
                )
        self.feature_extractor = ConvFeatureExtractor(
            cfg.conv_feature_layers, cfg.extractor_mode, cfg.conv_bias
        )
        self.embed = self.feature_extractor.out_dim
        self.feat2tar_ratio = cfg.label_rate * self.feature_extractor.total_stride / cfg.sample_rate
        dim = cfg.encoder_embed_dim
        self.post_extract_proj = nn.Linear(self.embed, dim) if self.embed != dim else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.encoder = self.encoder_class(
            embed_dim=dim,
            ffn_dim=cfg.encoder_ffn_embed_dim,
            num_layers=cfg.encoder_layers,
            num_heads=cfg.encoder_attention_heads,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            layerdrop=cfg.encoder_layerdrop,
            layer_norm_first=cfg.layer_norm_first,
            conv_pos=cfg.conv_pos,
            conv_pos_groups=cfg.conv_pos_groups,
            activation_fn=cfg.activation_fn,
            checkpoint_activations=cfg.checkpoint_activations,
        )
        self.layer_norm = nn.LayerNorm(self.embed)
        final_dim = cfg.final_dim if cfg.final_dim > 0 else dim
        self.num_classes = list(cfg.num_classes)
        n_sets = max(len(self.num_classes), 1)
        self.final_proj = nn.Linear(dim, final_dim * n_sets if cfg.untie_final_proj else final_dim)
        self.label_embs_concat = None
        if self.num_classes:
            self.label_embs_concat = nn.Parameter(
                torch.empty(sum(self.num_classes), final_dim).uniform_()
            )

    # ------------------------------------------------------------------------------------------
    # pieces of the forward pass
    def forward_features(self, source: torch.Tensor) -> torch.Tensor:
        """source: (B, S) samples -> conv features (B, C, T), gradient scaled by
        ``feature_grad_mult`` (no gradient at all when it is 0)."""
        mult = self.cfg.feature_grad_mult
        if mult > 0:
            features = self.feature_extractor(source)
            if mult != 1.0 and features.requires_grad:
                features = GradMultiply.apply(features, mult)
            return features
        with torch.no_grad():
            return self.feature_extractor(source)

    def forward_targets(
        self, features: torch.Tensor, target_list: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Align labels (B, T_label) at ``label_rate`` with features (B, C, T) at 50 Hz.

        Frame t takes label ``floor(t * label_rate * stride / sample_rate)``; features are
        trimmed when the labels are shorter (fairseq ``forward_targets``).
        """
        feat_tsz = features.size(2)
        targ_tsz = min(t.size(1) for t in target_list)
        if self.feat2tar_ratio * feat_tsz > targ_tsz:
            feat_tsz = int(targ_tsz / self.feat2tar_ratio)
            features = features[..., :feat_tsz]
        inds = (torch.arange(feat_tsz, device=features.device).float() * self.feat2tar_ratio).long()
        return features, [t[:, inds] for t in target_list]

    @staticmethod
    def forward_padding_mask(features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Sample-level mask (B, S) -> frame-level (B, T) for features (B, T, C): drop the last
        ``S mod T`` samples, split into T chunks, a frame is padding when its whole chunk is."""
        T = features.size(1)
        extra = padding_mask.size(1) % T
        if extra > 0:
            padding_mask = padding_mask[:, :-extra]
        return padding_mask.view(padding_mask.size(0), T, -1).all(-1)

    def apply_mask(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None,
        generator: torch.Generator | None = None,
        mask_indices: torch.Tensor | None = None,
        views: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Replace masked frames of x (R, T, C) by ``mask_emb`` and zero masked channel spans.

        The R = ``views`` x B rows are views of B utterances: the time mask is drawn for the
        first B rows (their ``padding_mask``) and tiled, so every view hides the same frames;
        the channel mask is drawn per row. ``mask_indices`` (B, T) bool overrides the random
        time mask. Returns (x, mask (R, T) bool or None).
        """
        R, T, C = x.shape
        B = R // views
        cfg = self.cfg
        if mask_indices is None and cfg.mask_prob > 0:
            mask_indices = compute_mask_indices(
                (B, T),
                None if padding_mask is None else padding_mask[:B],
                cfg.mask_prob,
                cfg.mask_length,
                cfg.mask_min_masks,
                cfg.require_same_masks,
                generator=generator,
                device=x.device,
            )
        if mask_indices is not None:
            if views > 1:
                mask_indices = mask_indices.repeat(views, 1)
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if cfg.mask_channel_prob > 0:
            channels = compute_mask_indices(
                (R, C),
                None,
                cfg.mask_channel_prob,
                cfg.mask_channel_length,
                0,
                True,
                generator=generator,
                device=x.device,
            )
            x = x.masked_fill(channels.unsqueeze(1), 0.0)
        return x, mask_indices

    def compute_logits(
        self, proj: torch.Tensor, target: torch.Tensor, label_embs: torch.Tensor
    ) -> torch.Tensor:
        """Cosine-similarity logits in fairseq's layout, in float32.

        Args:
            proj: (N, D) projected frames. target: (N,) label indices into ``label_embs``.
            label_embs: (K, D) embeddings of one label set.

        Returns:
            (N, 1 + K): column 0 ``cos(proj, E[target]) / logit_temp``, column ``1 + k``
            ``cos(proj, E[k]) / logit_temp`` with ``-inf`` at ``k = target``; the target is 0.
        """
        with torch.autocast(device_type=proj.device.type, enabled=False):
            x = F.normalize(proj.float(), dim=-1, eps=1e-8)
            e = F.normalize(label_embs.float(), dim=-1, eps=1e-8)
            sim = (x @ e.t()) / self.cfg.logit_temp
        idx = target.long().unsqueeze(1)
        positive = sim.gather(1, idx)
        return torch.cat([positive, sim.scatter(1, idx, float("-inf"))], dim=1)

    def _logits_for(
        self, x: torch.Tensor, frames: torch.Tensor, target_list: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        proj = self.final_proj(x[frames])
        n = len(target_list)
        projs = proj.chunk(n, dim=-1) if self.cfg.untie_final_proj else [proj] * n
        embs = self.label_embs_concat.split(self.num_classes, 0)
        targets = [t[frames] for t in target_list]
        logits = [self.compute_logits(p, t, e) for p, t, e in zip(projs, targets, embs)]
        return logits, targets

    # ------------------------------------------------------------------------------------------
    # the steps of the forward pass
    def stack_views(
        self, source: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor | None]:
        """Step 1: the model inputs as R stacked rows. HuBERT has one view and no conditioning
        input: returns ``(source (B, S), padding_mask, views=1, cond=None)``. Subclasses take
        their extra ``forward`` keywords here (ContentVec: ``source_2``, ``spk_emb``)."""
        return source, padding_mask, 1, None

    def embed_frames(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None,
        target_list: list[torch.Tensor] | None,
        views: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None, torch.Tensor]:
        """Step 2: waveforms (R, S) -> projected frame features (R, T, C) before masking.

        Conv features (gradient scaled), labels aligned (and repeated over the views), the
        squared-feature penalty, LayerNorm, frame padding mask, ``post_extract_proj``,
        ``dropout_input``. Returns ``(features, padding_mask (R, T) or None, target_list,
        features_pen)``.
        """
        features = self.forward_features(source)
        if target_list is not None:
            features, target_list = self.forward_targets(features, target_list)
            if views > 1:
                target_list = [t.repeat(views, 1) for t in target_list]
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        return self.dropout_input(features), padding_mask, target_list, features_pen

    def encode(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None,
        output_layer: int | None = None,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Step 4: the Transformer on the (masked) frames x (R, T, C).

        Args:
            padding_mask: (R, T) bool. output_layer: 1-based last layer (None: all).
            cond: (R, D) conditioning input of the encoder's layers (ContentVec's speaker
                embedding; None for HuBERT).

        Returns:
            ``(x, hidden_states, layer_results)``: the output (R, T, C), the input of layer 1
            followed by the output of every layer that ran, and the outputs of the encoder's
            own ``num_layers`` layers among them (fairseq's list; layers a subclass appends to
            the stack, ContentVec's conditional ones, are in ``hidden_states`` only).
        """
        enc = self.encoder
        tgt_layer = None if output_layer is None else output_layer - 1
        h0 = enc.embed_positions(x, padding_mask)
        x, results = enc.forward_layers(h0, padding_mask, tgt_layer, cond)
        last = len(enc.layers) - 1 if tgt_layer is None else tgt_layer
        appended = max(0, last + 1 - enc.num_layers)  # always run, so the last entries
        return x, [h0, *results], results[: len(results) - appended]

    @staticmethod
    def frame_sets(
        x: torch.Tensor, padding_mask: torch.Tensor | None, mask_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked, unmasked) non-padded frames of x (R, T, C), each (R, T) bool (both are all
        valid frames when nothing is masked)."""
        valid = (
            torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            if padding_mask is None
            else ~padding_mask
        )
        if mask_indices is None:
            return valid, valid
        return valid & mask_indices, valid & ~mask_indices

    def predict(self, enc: EncoderOutput) -> dict:
        """Step 5: masked-prediction logits of the encoder output ``enc.x`` (R, T, C).

        Returns:
            ``logit_m_list`` / ``logit_u_list`` (one (N, 1 + K_i) float32 tensor per label set,
            masked / unmasked non-padded frames, target 0; None entries when skipped) and
            ``target_m_list`` / ``target_u_list`` (the labels of those frames).

        Raises:
            ValueError: no ``target_list`` or no label embeddings.
        """
        x, target_list = enc.x, enc.target_list
        if target_list is None or self.label_embs_concat is None:
            raise ValueError(
                f"{type(self).__name__} logits need target_list and label embeddings (num_classes)"
            )
        masked, unmasked = self.frame_sets(x, enc.padding_mask, enc.mask_indices)
        none = [None] * len(target_list)
        logit_m, target_m = (
            (none, none) if self.cfg.skip_masked else self._logits_for(x, masked, target_list)
        )
        logit_u, target_u = (
            (none, none) if self.cfg.skip_nomask else self._logits_for(x, unmasked, target_list)
        )
        return {
            "logit_m_list": logit_m,
            "logit_u_list": logit_u,
            "target_m_list": target_m,
            "target_u_list": target_u,
        }

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: int | None = None,
        target_list: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        mask_indices: torch.Tensor | None = None,
        **inputs: torch.Tensor | None,
    ) -> dict:
        """Run the model: ``stack_views -> embed_frames -> apply_mask -> encode -> predict``.

        Args:
            source: (B, S) float waveform at ``sample_rate`` Hz.
            padding_mask: (B, S) bool, True at padded samples, or None.
            mask: apply span masking (training).
            features_only: stop after the encoder (no logits).
            output_layer: 1-based index of the last Transformer layer to run (None: all).
            target_list: one (B, T_label) long tensor of dictionary indices per label set.
            generator: ``torch.Generator`` on the model's device for the masks.
            mask_indices: (B, T) bool time mask to use instead of a random one.
            inputs: a subclass's extra inputs, read by its ``stack_views`` (HuBERT: none;
                ContentVec: ``source_2``, ``spk_emb``).

        Returns:
            dict over the R rows of ``stack_views`` (R = B for HuBERT) with ``padding_mask``
            (R, T) bool or None, ``features_pen`` (mean squared conv feature), ``mask_indices``
            (R, T) bool or None, ``num_views`` (R / B; 1 for HuBERT) and

            * ``features_only``: ``x`` (R, T, C), ``features`` (R, T, C) projected features
              before masking, ``hidden_states`` (input of layer 1, then the output of every
              layer that ran) and ``layer_results`` (outputs only, fairseq's list);
            * otherwise: what ``predict`` returns (HuBERT: ``logit_m_list`` /
              ``logit_u_list`` / ``target_m_list`` / ``target_u_list``).

        Raises:
            ValueError: logits requested without ``target_list`` or label embeddings.
        """
        source, padding_mask, views, cond = self.stack_views(
            source=source, padding_mask=padding_mask, **inputs
        )
        # a mask without padding is dropped so attention can take its unmasked (flash) path
        had_mask = padding_mask is not None
        if had_mask and not padding_mask.any():
            padding_mask = None
        features, padding_mask, target_list, features_pen = self.embed_frames(
            source, padding_mask, target_list, views
        )
        x, mask_indices = (
            self.apply_mask(features, padding_mask, generator, mask_indices, views)
            if mask
            else (features, None)
        )
        x, hidden_states, layer_results = self.encode(x, padding_mask, output_layer, cond)
        if had_mask and padding_mask is None:
            padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        out = {
            "padding_mask": padding_mask,
            "features_pen": features_pen,
            "mask_indices": mask_indices,
            "num_views": views,
        }
        if features_only:
            out.update(
                x=x, features=features, hidden_states=hidden_states, layer_results=layer_results
            )
        else:
            enc = EncoderOutput(
                x, padding_mask, mask_indices, layer_results, target_list, views, generator
            )
            out.update(self.predict(enc))
        return out

    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        mask: bool = False,
        output_layer: int | None = None,
        **inputs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states of layer ``output_layer`` (1-based; None: final output), as fairseq's
        ``extract_features`` used by ``dump_hubert_feature.py``.

        source: (B, S) samples; padding_mask: (B, S) bool; ``inputs``: a subclass's extra
        ``forward`` inputs (ContentVec: ``spk_emb`` (B, D), needed by its conditional layers).
        Returns (x (B, T, C), padding_mask (B, T) or None). For pre-LN models the final norm is
        applied only when ``output_layer`` is None (fairseq).
        """
        res = self.forward(
            source,
            padding_mask,
            mask=mask,
            features_only=True,
            output_layer=output_layer,
            **inputs,
        )
        return res["x"], res["padding_mask"]

    # fairseq-compatible accessors for criterions --------------------------------------------
    @staticmethod
    def get_logits(net_output: dict, is_masked: bool = True) -> list[torch.Tensor]:
        """The logits list (``logit_m_list`` or ``logit_u_list``), skipped entries dropped."""
        key = "logit_m_list" if is_masked else "logit_u_list"
        return [x.float() for x in net_output[key] if x is not None]

    def get_targets(self, net_output: dict, is_masked: bool = True) -> list[torch.Tensor]:
        """Targets for ``get_logits``: all zeros (the positive is column 0)."""
        return [
            x.new_zeros(x.size(0), dtype=torch.long) for x in self.get_logits(net_output, is_masked)
        ]

    @staticmethod
    def get_extra_losses(net_output: dict) -> tuple[list[torch.Tensor], list[str]]:
        """fairseq's extra losses: ``([features_pen], ["features_pen"])``."""
        return [net_output["features_pen"]], ["features_pen"]

    def remove_pretraining_modules(self) -> None:
        """Drop ``final_proj`` and ``label_embs_concat`` (for fine-tuning), as fairseq."""
        self.final_proj = None
        self.label_embs_concat = None


register_model("hubert", dataclass=HubertConfig)(HubertModel)


@register_model("hubert_large", dataclass=HubertLargeConfig)
class HubertLargeModel(HubertModel):
    """``HubertModel`` registered with Large defaults (``model=hubert_large``); same code."""

"""ContentVec: HuBERT with speaker-conditioned prediction layers and a two-view contrastive loss
(Qian et al. 2022, "ContentVec: An Improved Self-Supervised Speech Representation by
Disentangling Speakers", ICML).

Follows the reference (auspicious3000/contentvec, ``models/hubert/contentvec.py`` and
``models/wav2vec/wav2vec2_1.py``; research/hubert_contentvec.md section 2.1) with its full
checkpoint layout, so speechkit and reference state dicts share their names:

* ``encoder.layers.0 .. encoder_layers - 1``: ordinary HuBERT layers (LayerDrop applies, their
  outputs form ``layer_results``);
* ``encoder.layers.encoder_layers ..``: ``encoder_layers_1`` speaker-conditioned layers (always
  run) whose ``self_attn_layer_norm`` and ``final_layer_norm`` are ``ConditionalLayerNorm``
  (``*.weight_ln.weight`` / ``*.bias_ln.weight``, each (C, spk_dim));
* ``encoder.cond_layer_norm``: a ``ConditionalLayerNorm`` used as the final norm of pre-LN models
  (the reference creates it and never uses it for Base);
* ``layer_proj``: Linear(C, final_dim) projecting the contrastive layer.

Training forward (``source`` and ``source_2``, two perturbed views of the same crops): the views
are stacked into 2B rows, ``spk_emb`` and the labels are repeated, ONE span mask is drawn for B
rows and tiled so both views hide the same frames. The masked-prediction logits are HuBERT's over
the 2B rows. The contrastive logits take layer ``ctr_layers[i]`` of ``layer_results`` (negative
indices clamped to the layers that ran, as the reference), keep the unmasked frames and project
them with ``layer_proj``. Each frame of view v is an anchor; its positive is the same frame of
the other view, its ``num_negatives`` negatives are frames drawn uniformly (with replacement)
from the OTHER unmasked frames of the same utterance and view. Logits are cosine similarities
divided by ``logit_temp_ctr``; a negative exactly equal to the positive gets ``-inf``.

Conditional layer norm. The reference calls ``F.layer_norm(x, x.shape[1:], w, b)`` on a (T, B, C)
tensor, so its statistics are taken JOINTLY over (B, C) at each time step, and the result of one
utterance depends on the rest of the batch (with B = 1 both agree). speechkit's default
(``cond_layer_norm_joint=False``) normalises every frame of every row over C, like any
LayerNorm, with the row's speaker-dependent affine parameters; ``cond_layer_norm_joint=True``
reproduces the reference's statistics for bit-compatible fine-tuning of its checkpoints.

Other differences from the reference: masks and negatives come from the explicit
``torch.Generator`` (reproducible runs), the frame padding mask is HuBERT's (the reference
replaces it by a length formula and assumes no padding), unmasked frames exclude padded ones
(identical without padding), and utterances with fewer than 2 unmasked frames give no anchors
(the reference asserts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from speechkit.errors import ConfigError
from speechkit.models.hubert import HubertConfig, HubertModel, compute_mask_indices
from speechkit.modules.transformer_encoder import TransformerEncoderLayer, init_bert_params
from speechkit.registry import register_model

__all__ = [
    "ConditionalEncoderLayer",
    "ConditionalLayerNorm",
    "ContentVecConfig",
    "ContentVecModel",
    "contrastive_logits",
    "gather_frames",
    "sample_negative_indices",
]


@dataclass
class ContentVecConfig(HubertConfig):
    """ContentVec model config: ``HubertConfig`` plus the reference's ContentVec fields.

    Defaults are the reference's training scripts (``run_pretrain_single.sh``): 3 conditional
    layers, contrastive loss on layer ``-6`` with temperature 0.1 and 100 negatives.
    """

    encoder_layers_1: int = 3
    """Speaker-conditioned layers after the ``encoder_layers`` ordinary ones."""
    spk_dim: int = 256
    """Speaker-embedding size D (the task sets it from ``spk2info``)."""
    ctr_layers: list[int] = field(default_factory=lambda: [-6])
    """Indices into the ordinary layers' outputs for the contrastive loss (empty: none)."""
    logit_temp_ctr: float = 0.1
    """Temperature of the contrastive cosine logits."""
    num_negatives: int = 100
    """Negatives per anchor, from the same utterance and view."""
    cond_layer_norm_joint: bool = False
    """False: per-frame LayerNorm over C (default). True: the reference's statistics over
    (B, C) per time step (batch-dependent; for exact reproduction of its checkpoints)."""
    cond_layer_norm_init: str = "bert"
    """``bert``: the reference (``weight_ln`` / ``bias_ln`` drawn from N(0, 0.02), so the
    conditional gains start near 0). ``mean_speaker``: gain 1 and bias 0 at the mean training
    speaker embedding (the ``contentvec`` task calls ``init_conditional_norms``), i.e. the
    conditional layers start as ordinary LayerNorms; small models learn much faster from it."""


class ConditionalLayerNorm(nn.Module):
    """LayerNorm whose gain and bias are linear functions of a speaker embedding.

    ``weight = weight_ln(spk_emb)``, ``bias = bias_ln(spk_emb)`` (Linear(D, C) without bias,
    fairseq key names ``weight_ln.weight`` / ``bias_ln.weight``), then per row b and frame t:

    * ``joint=False``: ``y[b, t] = (x[b, t] - mean_c) / sqrt(var_c + eps) * weight[b] + bias[b]``
      with mean and (biased) variance over the C channels of that frame;
    * ``joint=True`` (ContentVec reference): the mean and variance are taken over all (b, c) of
      time step t, i.e. the statistics mix the rows of the batch.

    Args:
        dim: C. spk_dim: D. eps: added to the variance. joint: see above.
    """

    def __init__(self, dim: int, spk_dim: int = 256, eps: float = 1e-5, joint: bool = False):
        super().__init__()
        self.dim, self.spk_dim, self.eps, self.joint = dim, spk_dim, eps, joint
        self.weight_ln = nn.Linear(spk_dim, dim, bias=False)
        self.bias_ln = nn.Linear(spk_dim, dim, bias=False)
        nn.init.ones_(self.weight_ln.weight)  # the reference's nominal init (see ContentVecModel)
        nn.init.zeros_(self.bias_ln.weight)

    def forward(self, x: torch.Tensor, spk_emb: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C); spk_emb: (B, D) -> (B, T, C)."""
        weight = self.weight_ln(spk_emb).unsqueeze(1)  # (B, 1, C)
        bias = self.bias_ln(spk_emb).unsqueeze(1)
        if not self.joint:
            return F.layer_norm(x, (self.dim,), None, None, self.eps) * weight + bias
        # statistics over (B, C) per time step: LayerNorm of the (T, B * C) view
        B, T, C = x.shape
        flat = x.transpose(0, 1).reshape(T, B * C)
        y = F.layer_norm(flat, (B * C,), None, None, self.eps).view(T, B, C).transpose(0, 1)
        return y * weight + bias

    def extra_repr(self) -> str:
        return f"{self.dim}, spk_dim={self.spk_dim}, eps={self.eps}, joint={self.joint}"


class ConditionalEncoderLayer(TransformerEncoderLayer):
    """A HuBERT Transformer layer whose two LayerNorms are ``ConditionalLayerNorm``.

    Same names and order as ``TransformerEncoderLayer`` (post-LN or pre-LN); ``forward`` takes
    the speaker embedding. Args: as ``TransformerEncoderLayer`` plus ``spk_dim`` and ``joint``.
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_first: bool = False,
        activation_fn: str = "gelu",
        spk_dim: int = 256,
        joint: bool = False,
    ):
        super().__init__(
            embed_dim,
            ffn_dim,
            num_heads,
            dropout,
            attention_dropout,
            activation_dropout,
            layer_norm_first,
            activation_fn,
        )
        self.self_attn_layer_norm = ConditionalLayerNorm(embed_dim, spk_dim, joint=joint)
        self.final_layer_norm = ConditionalLayerNorm(embed_dim, spk_dim, joint=joint)

    def forward(
        self,
        x: torch.Tensor,
        spk_emb: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C); spk_emb: (B, D); padding_mask: (B, T) bool, True = padding."""
        ln1, ln2 = self.self_attn_layer_norm, self.final_layer_norm
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(ln1(x, spk_emb), padding_mask))
            return x + self._ffn(ln2(x, spk_emb))
        x = ln1(x + self.dropout1(self.self_attn(x, padding_mask)), spk_emb)
        return ln2(x + self._ffn(x), spk_emb)


# ----------------------------------------------------------------------------------------------
# contrastive loss pieces (pure functions, tested against a float64 loop)
def gather_frames(
    y: torch.Tensor, keep: torch.Tensor, max_frames: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align the kept frames of each row, in time order.

    Args:
        y: (R, T, C). keep: (R, T) bool. max_frames: output length (default: the largest count).

    Returns:
        ``(frames (R, U, C), counts (R,))``: ``frames[r, :counts[r]]`` are row r's kept frames;
        the rest are copies of arbitrary frames (ignore them).
    """
    counts = keep.sum(1)
    U = int(counts.max()) if max_frames is None else max_frames
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :U]
    return y.gather(1, order.unsqueeze(-1).expand(-1, -1, y.size(-1))), counts


def sample_negative_indices(
    counts: torch.Tensor,
    num_frames: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Negative frame indices: for anchor t of row r, ``num_negatives`` draws, uniform with
    replacement over ``{0 .. counts[r] - 1} \\ {t}`` (wav2vec 2.0 / ContentVec
    ``sample_negatives``: draw from ``counts - 1`` values, shift those ``>= t`` by one).

    Args:
        counts: (R,) valid frames per row (rows with < 2 frames get meaningless indices).
        num_frames: U, the anchors per row. generator: torch.Generator on ``counts.device``.

    Returns:
        (R, U, num_negatives) int64.
    """
    R = counts.numel()
    u = torch.rand(R, num_frames, num_negatives, generator=generator, device=counts.device)
    high = (counts - 1).clamp(min=1).view(R, 1, 1)
    idx = (u * high).long().minimum(high - 1)
    t = torch.arange(num_frames, device=counts.device).view(1, -1, 1)
    return idx + (idx >= t).long()


def contrastive_logits(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    counts: torch.Tensor,
    neg_idx: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """ContentVec's contrastive logits, float32, target column 0.

    Args:
        anchor: (R, U, D) projected frames of each row (the first ``counts[r]`` are valid).
        positive: (R, U, D) the positives, frame-aligned with ``anchor`` (the other view).
        counts: (R,) valid frames per row; rows with fewer than 2 give no anchors.
        neg_idx: (R, U, N) indices into the row's own ``anchor`` frames (the negatives).
        temperature: ``logit_temp_ctr``.

    Returns:
        (sum of counts over rows with >= 2 frames, 1 + N): column 0
        ``cos(anchor[r, t], positive[r, t]) / temperature``, column ``1 + k``
        ``cos(anchor[r, t], anchor[r, neg_idx[r, t, k]]) / temperature``, ``-inf`` where that
        negative equals the positive exactly (all D values); rows in (r, t) order.
    """
    R, U, _ = anchor.shape
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a = F.normalize(anchor.float(), dim=-1, eps=1e-8)
        p = F.normalize(positive.float(), dim=-1, eps=1e-8)
        pos = (a * p).sum(-1, keepdim=True)  # (R, U, 1)
        neg = torch.bmm(a, a.transpose(1, 2)).gather(2, neg_idx)  # (R, U, N)
        with torch.no_grad():  # exact equality: L0 "distance" (count of differing values) is 0
            same = torch.cdist(positive.detach().float(), anchor.detach().float(), p=0) == 0
            neg_is_pos = same.gather(2, neg_idx)
        logits = torch.cat([pos, neg.masked_fill(neg_is_pos, float("-inf"))], -1) / temperature
    t = torch.arange(U, device=anchor.device)
    valid = (t < counts[:, None]) & (counts[:, None] >= 2)
    return logits[valid]


# ----------------------------------------------------------------------------------------------
@register_model("contentvec", dataclass=ContentVecConfig)
class ContentVecModel(HubertModel):
    """ContentVec: HuBERT + speaker-conditioned layers + two-view contrastive logits.

    Initialisation follows the reference: every Linear inside the encoder, the conditional
    norms' ``weight_ln`` / ``bias_ln`` included, is re-drawn from N(0, 0.02) (fairseq
    ``init_bert_params``), so the conditional gains start small; ``layer_proj`` keeps PyTorch's
    default init.

    Args:
        cfg: ``ContentVecConfig``.

    Raises:
        ConfigError: HuBERT's config errors, ``encoder_layers_1 < 0``, ``spk_dim < 1``, or
            ``num_negatives < 1`` with contrastive layers.
    """

    def __init__(self, cfg: ContentVecConfig):
        super().__init__(cfg)
        if cfg.encoder_layers_1 < 0 or cfg.spk_dim < 1:
            raise ConfigError(
                f"model.encoder_layers_1={cfg.encoder_layers_1} must be >= 0 and "
                f"model.spk_dim={cfg.spk_dim} >= 1"
            )
        if cfg.cond_layer_norm_init not in ("bert", "mean_speaker"):
            raise ConfigError(
                f"model.cond_layer_norm_init={cfg.cond_layer_norm_init!r}: expected 'bert' or "
                "'mean_speaker'"
            )
        if cfg.ctr_layers and cfg.num_negatives < 1:
            raise ConfigError("model.num_negatives must be >= 1 when model.ctr_layers is set")
        dim = cfg.encoder_embed_dim
        self.num_plain_layers = cfg.encoder_layers
        for _ in range(cfg.encoder_layers_1):
            layer = ConditionalEncoderLayer(
                dim,
                cfg.encoder_ffn_embed_dim,
                cfg.encoder_attention_heads,
                cfg.dropout,
                cfg.attention_dropout,
                cfg.activation_dropout,
                cfg.layer_norm_first,
                cfg.activation_fn,
                cfg.spk_dim,
                cfg.cond_layer_norm_joint,
            )
            layer.apply(init_bert_params)
            self.encoder.layers.append(layer)
        if cfg.encoder_layers_1 > 0:
            cond = ConditionalLayerNorm(dim, cfg.spk_dim, joint=cfg.cond_layer_norm_joint)
            self.encoder.cond_layer_norm = cond.apply(init_bert_params)
        final_dim = cfg.final_dim if cfg.final_dim > 0 else dim
        self.layer_proj = nn.Linear(dim, final_dim)
        self.num_updates = 0

    def set_num_updates(self, num_updates: int) -> None:
        """Called by the trainer before every update."""
        self.num_updates = num_updates

    def conditional_norms(self) -> list[ConditionalLayerNorm]:
        return [m for m in self.modules() if isinstance(m, ConditionalLayerNorm)]

    @torch.no_grad()
    def init_conditional_norms(self, mean_spk_emb: torch.Tensor) -> None:
        """``cond_layer_norm_init="mean_speaker"``: set every ``weight_ln`` to
        ``1 mean^T / |mean|^2`` and ``bias_ln`` to 0, so that a speaker embedding e gets the
        gain ``(mean . e) / |mean|^2`` (1 at the mean) and bias 0.

        Args:
            mean_spk_emb: (spk_dim,) mean embedding of the training speakers.

        Raises:
            ValueError: wrong size or a zero mean.
        """
        mean = mean_spk_emb.detach().float().flatten()
        if mean.numel() != self.cfg.spk_dim or float(mean.norm()) == 0.0:
            raise ValueError(
                f"mean speaker embedding of size {mean.numel()} (norm {float(mean.norm()):.3g}); "
                f"expected a non-zero ({self.cfg.spk_dim},) vector"
            )
        for norm in self.conditional_norms():
            w = norm.weight_ln.weight
            w.copy_((mean / mean.pow(2).sum()).to(w).expand_as(w))
            norm.bias_ln.weight.zero_()

    # ------------------------------------------------------------------------------------------
    def forward_layers(
        self,
        x: torch.Tensor,
        spk_emb: torch.Tensor | None,
        padding_mask: torch.Tensor | None = None,
        tgt_layer: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the ordinary then the conditional layers on ``encoder.embed_positions``' output.

        Args:
            x: (B, T, C). spk_emb: (B, D) or None (only ordinary layers may then run).
            padding_mask: (B, T) bool, True = padding.
            tgt_layer: 0-based index of the last layer to run (None: all).

        Returns:
            ``(x, layer_results, hidden)``: x (B, T, C); ``layer_results`` the outputs of the
            ordinary layers that ran (LayerDrop skips add none; the reference's list);
            ``hidden`` the outputs of every layer that ran.

        Raises:
            ValueError: a conditional layer would run without ``spk_emb``, or ``tgt_layer`` is
                out of range.
        """
        enc = self.encoder
        n_plain, n_all = self.num_plain_layers, len(enc.layers)
        if tgt_layer is not None and not 0 <= tgt_layer < n_all:
            raise ValueError(f"output layer {tgt_layer + 1} is outside 1..{n_all} (1-based)")
        last = n_all - 1 if tgt_layer is None else tgt_layer
        if last >= n_plain and spk_emb is None:
            raise ValueError(
                f"layers {n_plain + 1}..{n_all} are speaker-conditioned: pass spk_emb (B, "
                f"{self.cfg.spk_dim}) or ask for a layer <= {n_plain}"
            )
        keep = None
        if self.training and enc.layerdrop > 0:
            keep = (torch.rand(n_plain) >= enc.layerdrop).tolist()
        recompute = enc.checkpoint_activations and self.training and torch.is_grad_enabled()
        layer_results, hidden = [], []
        for i in range(last + 1):
            layer = enc.layers[i]
            args = (x, padding_mask) if i < n_plain else (x, spk_emb, padding_mask)
            if i < n_plain and keep is not None and not keep[i]:
                continue
            x = checkpoint(layer, *args, use_reentrant=False) if recompute else layer(*args)
            hidden.append(x)
            if i < n_plain:
                layer_results.append(x)
        if enc.layer_norm_first and tgt_layer is None:
            x = enc.cond_layer_norm(x, spk_emb) if n_all > n_plain else enc.layer_norm(x)
        return x, layer_results, hidden

    def contrastive_logits_for(
        self,
        layer_results: list[torch.Tensor],
        keep: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Contrastive logits of every ``ctr_layers`` entry for stacked views.

        Args:
            layer_results: outputs (2B, T, C) of the ordinary layers; rows ``[:B]`` view 1,
                ``[B:]`` view 2.
            keep: (B, T) bool, the unmasked, non-padded frames (shared by both views).
            generator: for the negatives.

        Returns:
            One (A, 1 + num_negatives) float32 tensor per contrastive layer (target 0), A the
            anchors of both views.
        """
        out = []
        B = keep.size(0)
        counts = keep.sum(1)
        U = int(counts.max())
        if U < 2 or not layer_results:
            return out
        n = len(layer_results)
        for index in self.cfg.ctr_layers:
            y = layer_results[max(index, -n) if index < 0 else min(index, n - 1)]
            frames, _ = gather_frames(y, keep.repeat(2, 1), U)
            z = self.layer_proj(frames)  # (2B, U, final_dim)
            positive = torch.cat([z[B:], z[:B]])  # the other view, same frame
            counts2 = counts.repeat(2)
            neg_idx = sample_negative_indices(counts2, U, self.cfg.num_negatives, generator)
            out.append(contrastive_logits(z, positive, counts2, neg_idx, self.cfg.logit_temp_ctr))
        return out

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
        source_2: torch.Tensor | None = None,
        spk_emb: torch.Tensor | None = None,
    ) -> dict:
        """Run ContentVec on one view, or on two views stacked as 2B rows (training).

        The positional order is ``HubertModel.forward``'s; the views come as keywords
        (``model(**sample["net_input"], target_list=...)``).

        Args:
            source: (B, S) view 1 waveform.
            padding_mask: (B, S) bool, True at padded samples (shared by both views).
            mask: apply span masking; one mask for B rows, tiled over the views.
            features_only, output_layer, generator: as ``HubertModel.forward``.
            target_list: one (B, T_label) tensor of dictionary indices per label set.
            mask_indices: (B, T) bool time mask to use instead of a random one.
            source_2: (B, S) view 2 (same crops as ``source``), or None.
            spk_emb: (B, D) speaker embeddings (repeated for view 2); needed by the
                conditional layers.

        Returns:
            ``HubertModel.forward``'s dict over the R = B (one view) or 2B rows (two views),
            plus ``logit_ctr_list``: one (A, 1 + num_negatives) float32 tensor per
            contrastive layer (empty with one view, without ``ctr_layers`` or features_only)
            and ``num_views``.

        Raises:
            ValueError: shapes that do not match, a conditional layer without ``spk_emb``,
                logits without targets.
        """
        B = source.size(0)
        views = 1 if source_2 is None else 2
        if source_2 is not None:
            if source_2.shape != source.shape:
                raise ValueError(f"source_2 {tuple(source_2.shape)} != source {source.shape}")
            source = torch.cat([source, source_2])
            padding_mask = None if padding_mask is None else padding_mask.repeat(2, 1)
            spk_emb = None if spk_emb is None else spk_emb.repeat(2, 1)
        had_mask = padding_mask is not None
        if had_mask and not padding_mask.any():
            padding_mask = None
        features = self.forward_features(source)
        if target_list is not None:
            features, target_list = self.forward_targets(features, target_list)
            target_list = [t.repeat(views, 1) for t in target_list]
        features_pen = features.float().pow(2).mean()
        features = self.layer_norm(features.transpose(1, 2))
        if padding_mask is not None:
            padding_mask = self.forward_padding_mask(features, padding_mask)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        x = features
        T = features.size(1)
        if mask:
            if mask_indices is None and self.cfg.mask_prob > 0:
                mask_indices = compute_mask_indices(
                    (B, T),
                    None if padding_mask is None else padding_mask[:B],
                    self.cfg.mask_prob,
                    self.cfg.mask_length,
                    self.cfg.mask_min_masks,
                    self.cfg.require_same_masks,
                    generator=generator,
                    device=features.device,
                )
            if mask_indices is not None:
                mask_indices = mask_indices.repeat(views, 1)
            x, mask_indices = self.apply_mask(features, padding_mask, generator, mask_indices)
        else:
            mask_indices = None
        h0 = self.encoder.embed_positions(x, padding_mask)
        tgt_layer = None if output_layer is None else output_layer - 1
        x, layer_results, hidden = self.forward_layers(h0, spk_emb, padding_mask, tgt_layer)
        if had_mask and padding_mask is None:
            padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        out = {
            "padding_mask": padding_mask,
            "features_pen": features_pen,
            "mask_indices": mask_indices,
            "num_views": views,
            "logit_ctr_list": [],
        }
        if features_only:
            out.update(
                x=x, features=features, hidden_states=[h0, *hidden], layer_results=layer_results
            )
            return out
        if target_list is None or self.label_embs_concat is None:
            raise ValueError("ContentVec logits need target_list and label embeddings")
        valid = (
            torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            if padding_mask is None
            else ~padding_mask
        )
        masked = valid if mask_indices is None else valid & mask_indices
        unmasked = valid if mask_indices is None else valid & ~mask_indices
        none = [None] * len(target_list)
        logit_m, target_m = (
            (none, none) if self.cfg.skip_masked else self._logits_for(x, masked, target_list)
        )
        logit_u, target_u = (
            (none, none) if self.cfg.skip_nomask else self._logits_for(x, unmasked, target_list)
        )
        if views == 2 and self.cfg.ctr_layers:
            out["logit_ctr_list"] = self.contrastive_logits_for(
                layer_results, unmasked[:B], generator
            )
        out.update(
            logit_m_list=logit_m,
            logit_u_list=logit_u,
            target_m_list=target_m,
            target_u_list=target_u,
        )
        return out

    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        mask: bool = False,
        output_layer: int | None = None,
        spk_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states of layer ``output_layer`` (1-based; None: the last, conditional one).

        source: (B, S); padding_mask: (B, S) bool; spk_emb: (B, D), required for layers above
        ``encoder_layers``. Returns (x (B, T, C), padding_mask (B, T) or None).

        Raises:
            ValueError: a conditional layer without ``spk_emb``.
        """
        res = self.forward(
            source,
            spk_emb=spk_emb,
            padding_mask=padding_mask,
            mask=mask,
            features_only=True,
            output_layer=output_layer,
        )
        return res["x"], res["padding_mask"]

    @staticmethod
    def get_logits_ctr(net_output: dict) -> torch.Tensor | None:
        """All contrastive logits (A, 1 + N) concatenated over layers, or None."""
        logits = net_output.get("logit_ctr_list") or []
        return torch.cat([x.float() for x in logits]) if logits else None

    def remove_pretraining_modules(self) -> None:
        """Drop ``final_proj``, ``label_embs_concat`` and ``layer_proj``."""
        super().remove_pretraining_modules()
        self.layer_proj = None

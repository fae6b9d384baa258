"""ContentVec: HuBERT with speaker-conditioned prediction layers and a two-view contrastive loss
(Qian et al. 2022, "ContentVec: An Improved Self-Supervised Speech Representation by
Disentangling Speakers", ICML).

Follows the reference (auspicious3000/contentvec, ``contentvec/models/hubert/contentvec.py`` and
``contentvec/models/wav2vec/wav2vec2_1.py``) with its full checkpoint layout, so speechkit and
reference state dicts share their names:

* ``encoder.layers.0 .. encoder_layers - 1``: ordinary HuBERT layers (LayerDrop applies, their
  outputs form ``layer_results``);
* ``encoder.layers.encoder_layers ..``: ``encoder_layers_1`` speaker-conditioned layers (always
  run) whose ``self_attn_layer_norm`` and ``final_layer_norm`` are ``ConditionalLayerNorm``
  (``*.weight_ln.weight`` / ``*.bias_ln.weight``, each (C, spk_dim));
* ``encoder.cond_layer_norm``: a ``ConditionalLayerNorm`` used as the final norm of pre-LN models
  (the reference creates it and never uses it for Base);
* ``layer_proj``: Linear(C, final_dim) projecting the contrastive layer.

Code layout: ``ContentVecModel`` runs ``HubertModel.forward``'s steps and overrides two of them,
``stack_views`` (two views, speaker embedding) and ``predict`` (adds the contrastive logits); all
encoder layers belong to a ``ConditionalTransformerEncoder`` (``model.encoder``), whose
``forward`` runs the ordinary and the conditional layers given the speaker embedding.

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

from speechkit.errors import ConfigError
from speechkit.models.hubert import EncoderOutput, HubertConfig, HubertModel
from speechkit.modules.transformer_encoder import (
    TransformerEncoder,
    TransformerEncoderLayer,
    init_bert_params,
)
from speechkit.registry import ChoiceEnum, register_model

__all__ = [
    "ConditionalEncoderLayer",
    "ConditionalLayerNorm",
    "ConditionalTransformerEncoder",
    "ContentVecConfig",
    "ContentVecModel",
    "contrastive_logits",
    "gather_frames",
    "sample_negative_indices",
]


class CondLayerNormInit(ChoiceEnum):
    """Initialisation of the speaker-conditional LayerNorms (see ``cond_layer_norm_init``)."""

    bert = "bert"
    mean_speaker = "mean_speaker"


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
    cond_layer_norm_init: CondLayerNormInit = "bert"
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

    Same names and order as ``TransformerEncoderLayer`` (post-LN or pre-LN), whose ``forward``
    it runs: the norms get the layer's ``cond`` input, the speaker embedding (B, spk_dim).

    Args:
        args, kwargs: as ``TransformerEncoderLayer``. spk_dim: D. joint: see
            ``ConditionalLayerNorm``.
    """

    def __init__(self, *args, spk_dim: int = 256, joint: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        dim = self.fc1.in_features
        self.self_attn_layer_norm = ConditionalLayerNorm(dim, spk_dim, joint=joint)
        self.final_layer_norm = ConditionalLayerNorm(dim, spk_dim, joint=joint)

    def apply_norm(
        self, norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """``norm(x, cond)``: x (B, T, C), cond the speaker embedding (B, D)."""
        return norm(x, cond)


class ConditionalTransformerEncoder(TransformerEncoder):
    """``TransformerEncoder`` followed by ContentVec's speaker-conditioned layers, all in one
    ``layers`` list under the reference's state-dict names.

    * ``layers.0 .. num_layers - 1``: the ordinary layers (LayerDrop applies);
    * ``layers.num_layers ..``: ``ConditionalEncoderLayer`` s (always run), added by
      ``append_conditional_layers``;
    * ``cond_layer_norm``: a ``ConditionalLayerNorm``, the final norm of pre-LN stacks with
      conditional layers (the reference creates it for post-LN stacks too and never uses it).

    ``forward`` / ``forward_layers`` take the speaker embedding as ``cond`` (B, spk_dim); it may
    be None when no conditional layer runs. Args: as ``TransformerEncoder``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cond_layer_norm: ConditionalLayerNorm | None = None

    @property
    def num_conditional_layers(self) -> int:
        return len(self.layers) - self.num_layers

    def append_conditional_layers(self, count: int, spk_dim: int, joint: bool = False) -> None:
        """Add ``count`` conditional layers of this stack's shape and, if ``count > 0``,
        ``cond_layer_norm``; every Linear of theirs drawn from N(0, 0.02) (fairseq
        ``init_bert_params``, as the reference).

        They are appended after construction so that a seeded ContentVec model draws the
        weights it shares with HuBERT exactly as a HuBERT model of the same seed does.
        """
        for _ in range(count):
            layer = ConditionalEncoderLayer(*self.layer_args, spk_dim=spk_dim, joint=joint)
            self.layers.append(layer.apply(init_bert_params))
        if count > 0:
            cond = ConditionalLayerNorm(self.embed_dim, spk_dim, joint=joint)
            self.cond_layer_norm = cond.apply(init_bert_params)

    def final_norm(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``cond_layer_norm(x, cond)`` after conditional layers, else ``layer_norm(x)``."""
        if self.cond_layer_norm is None:
            return super().final_norm(x, cond)
        return self.cond_layer_norm(x, cond)

    def check_inputs(self, tgt_layer: int | None, cond: torch.Tensor | None) -> None:
        """``TransformerEncoder.check_inputs``, and a conditional layer needs ``cond``.

        Raises:
            ConfigError: ``tgt_layer`` outside the stack. ValueError: a conditional layer
                would run without ``cond`` (the speaker embedding).
        """
        super().check_inputs(tgt_layer, cond)
        n_all = len(self.layers)
        last = n_all - 1 if tgt_layer is None else tgt_layer
        if cond is None and last >= self.num_layers:
            raise ValueError(
                f"layers {self.num_layers + 1}..{n_all} are speaker-conditioned: pass spk_emb "
                f"(B, {self.cond_layer_norm.spk_dim}) or ask for a layer <= {self.num_layers}"
            )


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

    ``HubertModel.forward``'s template with three steps overridden: ``stack_views`` (inputs
    ``source_2`` (B, S), the second view, and ``spk_emb`` (B, D), the speaker embeddings; the
    views come as keywords: ``model(**sample["net_input"], target_list=...)``), the encoder
    (``encoder_class``: a ``ConditionalTransformerEncoder``) and ``predict`` (adds
    ``logit_ctr_list``). The
    output covers R = B (one view) or 2B rows; ``num_views`` says which.

    Args:
        cfg: ``ContentVecConfig``.

    Raises:
        ConfigError: HuBERT's config errors, ``encoder_layers_1 < 0``, ``spk_dim < 1``, or
            ``num_negatives < 1`` with contrastive layers.
    """

    encoder_class = ConditionalTransformerEncoder

    def __init__(self, cfg: ContentVecConfig):
        super().__init__(cfg)
        if cfg.encoder_layers_1 < 0 or cfg.spk_dim < 1:
            raise ConfigError(
                f"model.encoder_layers_1={cfg.encoder_layers_1} must be >= 0 and "
                f"model.spk_dim={cfg.spk_dim} >= 1"
            )
        CondLayerNormInit.check(cfg.cond_layer_norm_init, "model.cond_layer_norm_init")
        if cfg.ctr_layers and cfg.num_negatives < 1:
            raise ConfigError("model.num_negatives must be >= 1 when model.ctr_layers is set")
        self.encoder.append_conditional_layers(
            cfg.encoder_layers_1, cfg.spk_dim, cfg.cond_layer_norm_joint
        )
        dim = cfg.encoder_embed_dim
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
    # the steps of HubertModel.forward that differ
    def stack_views(
        self,
        source: torch.Tensor,
        source_2: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        spk_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, int, torch.Tensor | None]:
        """Stack view 1 ``source`` (B, S) and view 2 ``source_2`` (B, S, same crops) into 2B
        rows, repeating ``padding_mask`` (B, S) and the speaker embeddings ``spk_emb``
        (B, D), which become the encoder's ``cond``. With one view: (source, padding_mask,
        1, spk_emb).

        Raises:
            ValueError: ``source_2`` of another shape than ``source``.
        """
        if source_2 is None:
            return source, padding_mask, 1, spk_emb
        if source_2.shape != source.shape:
            raise ValueError(f"source_2 {tuple(source_2.shape)} != source {source.shape}")
        return (
            torch.cat([source, source_2]),
            None if padding_mask is None else padding_mask.repeat(2, 1),
            2,
            None if spk_emb is None else spk_emb.repeat(2, 1),
        )

    def predict(self, enc: EncoderOutput) -> dict:
        """HuBERT's logits over the R rows plus ``logit_ctr_list``: with two views and
        ``ctr_layers``, one (A, 1 + num_negatives) float32 tensor per contrastive layer
        (``contrastive_logits_for`` on the unmasked frames), else empty."""
        out = super().predict(enc)
        out["logit_ctr_list"] = []
        if enc.views == 2 and self.cfg.ctr_layers:
            unmasked = self.frame_sets(enc.x, enc.padding_mask, enc.mask_indices)[1]
            keep = unmasked[: enc.x.size(0) // 2]
            out["logit_ctr_list"] = self.contrastive_logits_for(
                enc.layer_results, keep, enc.generator
            )
        return out

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

    @staticmethod
    def get_logits_ctr(net_output: dict) -> torch.Tensor | None:
        """All contrastive logits (A, 1 + N) concatenated over layers, or None."""
        logits = net_output.get("logit_ctr_list") or []
        return torch.cat([x.float() for x in logits]) if logits else None

    def remove_pretraining_modules(self) -> None:
        """Drop ``final_proj``, ``label_embs_concat`` and ``layer_proj``."""
        super().remove_pretraining_modules()
        self.layer_proj = None

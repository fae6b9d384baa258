"""wav2vec 2.0 / HuBERT Transformer encoder with a convolutional positional embedding.

Follows fairseq's ``TransformerEncoder`` and ``TransformerSentenceEncoderLayer``
(``fairseq/models/wav2vec/wav2vec2.py``; Baevski et al. 2020, Hsu et al. 2021) and keeps their
parameter names, so ``encoder.*`` keys of fairseq HuBERT checkpoints load unchanged:

* ``pos_conv.0.weight_g`` (1, 1, K), ``pos_conv.0.weight_v`` (C, C / groups, K),
  ``pos_conv.0.bias`` (C): a grouped Conv1d with weight normalisation over every axis except the
  kernel axis (``dim=2``), followed by "same" trimming (drops the last frame for even K) and GELU;
* ``layers.{i}.self_attn.{k,v,q,out}_proj``, ``self_attn_layer_norm``, ``fc1``, ``fc2``,
  ``final_layer_norm``; ``layer_norm`` after the positional embedding (post-LN, Base) or after
  the last layer (pre-LN, Large).

Attention uses ``torch.nn.functional.scaled_dot_product_attention``. fairseq pads T to a multiple
of ``required_seq_len_multiple`` (2) and masks the pad frame; that changes no output value and
is not done here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from speechkit.errors import ConfigError

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def get_activation_fn(name: str):
    """fairseq ``activation_fn`` name -> function. ``gelu`` is the exact (erf) GELU.

    Raises:
        ConfigError: unknown name.
    """
    if name not in _ACTIVATIONS:
        raise ConfigError(f"activation_fn {name!r} is not one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``g * v / ||v||`` with the norm over axes (0, 1) per kernel tap.

    This is ``torch.nn.utils.weight_norm(conv, dim=2)`` with plain ``weight_g`` (1, 1, K) and
    ``weight_v`` (C_out, C_in / groups, K) parameters, so the state-dict keys are fairseq's.

    Args:
        in_channels, out_channels, kernel_size, groups: as for ``nn.Conv1d``.
        padding: samples of zero padding on both sides.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int, groups: int
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"conv_pos_groups={groups} must divide the embedding dim {in_channels}"
            )
        self.padding = padding
        self.groups = groups
        self.bias = nn.Parameter(torch.zeros(out_channels))
        v = torch.empty(out_channels, in_channels // groups, kernel_size)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))

    @torch.no_grad()
    def reset_from_weight(self, weight: torch.Tensor) -> None:
        """Set v = weight and g = ||weight|| so that the effective weight equals ``weight``."""
        self.weight_v.copy_(weight)
        self.weight_g.copy_(weight.norm(dim=(0, 1), keepdim=True))

    def weight(self) -> torch.Tensor:
        """Effective weight (C_out, C_in / groups, K)."""
        # v * g / ||v|| with the norm over every dim but 2: PyTorch's fused weight-norm kernel
        # (what nn.utils.weight_norm calls), ~6x faster than a norm over dims (0, 1) on CPU
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T) -> (B, C, T + 2 * padding - K + 1)."""
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the trailing frame produced by an even kernel with padding K // 2. x: (B, C, T)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class MultiheadSelfAttention(nn.Module):
    """Self-attention with fairseq's separate ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``.

    Scores are ``q k^T / sqrt(head_dim)`` (Vaswani et al. 2017).

    Args:
        embed_dim: C. num_heads: H (C must be divisible by H). dropout: on attention weights.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(
                f"encoder_embed_dim={embed_dim} is not divisible by the {num_heads} heads"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C); padding_mask: (B, T) bool, True at padded frames -> (B, T, C)."""
        B, T, C = x.shape
        shape = (B, T, self.num_heads, C // self.num_heads)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        attn_mask = None
        if padding_mask is not None:
            attn_mask = ~padding_mask[:, None, None, :]  # True = may attend
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class TransformerEncoderLayer(nn.Module):
    """One encoder block, post-LN (``layer_norm_first=False``) or pre-LN (True).

    post-LN: ``x = LN1(x + drop(attn(x)))``, ``x = LN2(x + drop(fc2(drop(act(fc1(x))))))``.
    pre-LN: ``x = x + drop(attn(LN1(x)))``, ``x = x + drop(fc2(drop(act(fc1(LN2(x))))))``.
    LN1 is ``self_attn_layer_norm``, LN2 ``final_layer_norm`` (fairseq names).
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
    ):
        super().__init__()
        self.self_attn = MultiheadSelfAttention(embed_dim, num_heads, attention_dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(activation_dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = get_activation_fn(activation_fn)
        self.layer_norm_first = layer_norm_first
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def apply_norm(
        self, norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Apply one of the layer's two norms to x (B, T, C). Plain LayerNorms ignore ``cond``;
        a subclass with conditional norms (ContentVec) passes it on."""
        return norm(x)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C); padding_mask: (B, T) bool, True = padding; cond: (B, D) conditioning
        input of the norms (unused here) -> (B, T, C)."""
        ln1, ln2 = self.self_attn_layer_norm, self.final_layer_norm
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.apply_norm(ln1, x, cond), padding_mask))
            return x + self._ffn(self.apply_norm(ln2, x, cond))
        x = self.apply_norm(ln1, x + self.dropout1(self.self_attn(x, padding_mask)), cond)
        return self.apply_norm(ln2, x + self._ffn(x), cond)


def init_bert_params(module: nn.Module) -> None:
    """BERT init as fairseq's ``init_bert_params``: every Linear N(0, 0.02), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TransformerEncoder(nn.Module):
    """Positional conv embedding + a stack of Transformer layers, fairseq names and order.

    Args:
        embed_dim, ffn_dim, num_layers, num_heads: 768 / 3072 / 12 / 12 for Base,
            1024 / 4096 / 24 / 16 for Large.
        dropout, attention_dropout, activation_dropout: dropout probabilities.
        layerdrop: probability of skipping a whole layer in training (Fan et al. 2019).
        layer_norm_first: pre-LN layers (Large) instead of post-LN (Base).
        conv_pos, conv_pos_groups: kernel (128) and groups (16) of the positional convolution.
        activation_fn: FFN activation (``gelu``).
        checkpoint_activations: recompute each layer in backward (saves memory in training).

    ``num_layers`` is the count of layers built here; LayerDrop applies to them. A subclass may
    append further layers of the same shape (``layer_args``) that always run (ContentVec's
    speaker-conditioned layers, ``speechkit.models.contentvec.ConditionalTransformerEncoder``).
    """

    def __init__(
        self,
        embed_dim: int = 768,
        ffn_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layerdrop: float = 0.0,
        layer_norm_first: bool = False,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        activation_fn: str = "gelu",
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_layers = num_layers
        self.layerdrop = layerdrop
        self.layer_norm_first = layer_norm_first
        self.checkpoint_activations = checkpoint_activations
        self.dropout = nn.Dropout(dropout)
        conv = WeightNormConv1d(embed_dim, embed_dim, conv_pos, conv_pos // 2, conv_pos_groups)
        std = math.sqrt(4.0 / (conv_pos * embed_dim))
        conv.reset_from_weight(torch.randn_like(conv.weight_v) * std)
        self.pos_conv = nn.Sequential(conv, SamePad(conv_pos), nn.GELU())
        self.layer_args = (
            embed_dim,
            ffn_dim,
            num_heads,
            dropout,
            attention_dropout,
            activation_dropout,
            layer_norm_first,
            activation_fn,
        )
        """Positional arguments of ``TransformerEncoderLayer`` for one layer of this stack."""
        with torch.device("meta"):  # skip PyTorch's default init; every weight is set below
            layers = nn.ModuleList(
                TransformerEncoderLayer(*self.layer_args) for _ in range(num_layers)
            )
        self.layers = layers.to_empty(device=self.pos_conv[0].bias.device)
        for module in self.layers.modules():
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.apply(init_bert_params)

    def embed_positions(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Zero padded frames, add the conv positional embedding, post-LN ``layer_norm``, dropout.

        x: (B, T, C); padding_mask: (B, T) bool, True = padding. Returns the input of layer 1.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x)

    def final_norm(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The pre-LN stack's last norm, ``layer_norm`` (x: (B, T, C); ``cond`` unused here)."""
        return self.layer_norm(x)

    def check_inputs(self, tgt_layer: int | None, cond: torch.Tensor | None) -> None:
        """Raise ``ConfigError`` unless ``tgt_layer`` is None or a layer index (0-based);
        ``cond`` is not needed here (a conditional subclass checks it)."""
        if tgt_layer is not None and not 0 <= tgt_layer < len(self.layers):
            raise ConfigError(
                f"output layer {tgt_layer + 1} is outside 1..{len(self.layers)} (1-based)"
            )

    def forward_layers(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        tgt_layer: int | None = None,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the layers on the output of ``embed_positions``.

        Args:
            x: (B, T, C). padding_mask: (B, T) bool, True = padding.
            tgt_layer: 0-based index of the last layer to run (fairseq ``output_layer - 1``);
                None runs all layers and, for pre-LN, applies ``final_norm``
                (as fairseq, the final norm is *not* applied when ``tgt_layer`` is given).
            cond: (B, D) conditioning input handed to every layer and to ``final_norm``
                (ContentVec's speaker embedding; plain layers ignore it).

        Returns:
            ``(x, layer_results)``: x (B, T, C) and the output (B, T, C) of every layer that
            ran; in training, layers skipped by LayerDrop add no entry (fairseq semantics).

        Raises:
            ConfigError: ``tgt_layer`` outside the stack (and what ``check_inputs`` of a
                subclass raises).
        """
        self.check_inputs(tgt_layer, cond)
        keep = None  # LayerDrop over the first num_layers layers; appended ones always run
        if self.training and self.layerdrop > 0:
            keep = (torch.rand(self.num_layers) >= self.layerdrop).tolist()
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        layer_results = []
        for i, layer in enumerate(self.layers):
            if keep is None or i >= len(keep) or keep[i]:
                if recompute:
                    x = checkpoint(layer, x, padding_mask, cond, use_reentrant=False)
                else:
                    x = layer(x, padding_mask, cond)
                layer_results.append(x)
            if i == tgt_layer:
                break
        if self.layer_norm_first and tgt_layer is None:
            x = self.final_norm(x, cond)
        return x, layer_results

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        tgt_layer: int | None = None,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, T, C) -> ``(x, layer_results)``; see ``forward_layers``."""
        return self.forward_layers(
            self.embed_positions(x, padding_mask), padding_mask, tgt_layer, cond
        )

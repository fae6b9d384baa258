"""wav2vec 2.0 / HuBERT convolutional feature encoder (waveform -> 50 Hz frames).

Follows fairseq's ``ConvFeatureExtractionModel`` (Baevski et al. 2020, "wav2vec 2.0"; Hsu et al.
2021, "HuBERT"), with the same parameter names so fairseq state dicts load unchanged:

* block ``i`` is ``conv_layers.{i}``, an ``nn.Sequential`` of Conv1d (index 0), Dropout (1), the
  norm if the block has one (2) and GELU (last);
* ``mode="default"`` (HuBERT Base): one GroupNorm with one group per channel in block 0 only
  (``conv_layers.0.2.weight/.bias``), i.e. every channel normalised over time;
* ``mode="layer_norm"`` (HuBERT Large): a LayerNorm over channels in every block, wrapped as
  (transpose, LayerNorm, transpose) so its keys are ``conv_layers.{i}.2.1.weight/.bias``.

Both norms are computed in float32 (fairseq's ``Fp32GroupNorm`` / ``Fp32LayerNorm``).
"""

from __future__ import annotations

import ast

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.errors import ConfigError

HUBERT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
"""fairseq's ``conv_feature_layers`` default: (channels, kernel, stride) per block; total stride
320 samples (20 ms at 16 kHz), receptive field 400 samples (25 ms)."""


def parse_conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` string without ``eval``.

    Accepts list literals of ``(channels, kernel, stride)`` tuples joined by ``+`` and repeated by
    ``* n``, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.

    Raises:
        ConfigError: the string is not of that form (it is never executed).
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"conv_feature_layers {spec!r}: {why}; expected e.g. '{HUBERT_CONV_LAYERS}'"
        )

    def walk(node: ast.AST) -> list:
        if isinstance(node, ast.List):
            return [walk_tuple(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            if isinstance(node.right, ast.Constant) and type(node.right.value) is int:
                return walk(node.left) * node.right.value
            if isinstance(node.left, ast.Constant) and type(node.left.value) is int:
                return walk(node.right) * node.left.value
        raise bad(f"unsupported expression {ast.dump(node)[:60]}")

    def walk_tuple(node: ast.AST) -> tuple[int, int, int]:
        if not isinstance(node, ast.Tuple | ast.List) or len(node.elts) != 3:
            raise bad("each block must be a (channels, kernel, stride) triple")
        vals = []
        for e in node.elts:
            if not (isinstance(e, ast.Constant) and type(e.value) is int and e.value > 0):
                raise bad("channels, kernel and stride must be positive integers")
            vals.append(e.value)
        return tuple(vals)

    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as e:
        raise bad(f"syntax error ({e.msg})") from None
    layers = walk(tree.body)
    if not layers:
        raise bad("no blocks")
    return layers


class TransposeLast(nn.Module):
    """Swap the last two axes: (B, C, T) <-> (B, T, C). No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (fairseq ``Fp32GroupNorm``). x: (B, C, T)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        )
        return y.type_as(x)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis computed in float32 (fairseq ``Fp32LayerNorm``). x: (..., C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return y.type_as(x)


class ConvFeatureExtractor(nn.Module):
    """Raw waveform (B, S) -> conv features (B, C, T), T = frames after all strides.

    Args:
        conv_layers: fairseq ``conv_feature_layers`` string or a list of (channels, kernel,
            stride) triples. Default HuBERT/wav2vec 2.0: 7 blocks, total stride 320.
        mode: ``"default"`` (GroupNorm in block 0, HuBERT Base) or ``"layer_norm"`` (LayerNorm
            in every block, HuBERT Large).
        conv_bias: give the convolutions a bias (fairseq ``conv_bias``, False for HuBERT).
        dropout: dropout after each convolution (0.0 in fairseq's HuBERT).

    Raises:
        ConfigError: unknown ``mode`` or malformed ``conv_layers``.
    """

    def __init__(
        self,
        conv_layers: str | list[tuple[int, int, int]] = HUBERT_CONV_LAYERS,
        mode: str = "default",
        conv_bias: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if mode not in ("default", "layer_norm"):
            raise ConfigError(f"extractor_mode must be 'default' or 'layer_norm', got {mode!r}")
        spec = (
            parse_conv_feature_layers(conv_layers) if isinstance(conv_layers, str) else conv_layers
        )
        self.spec = [tuple(int(v) for v in block) for block in spec]
        self.mode = mode
        blocks = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(self.spec):
            conv = nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            parts: list[nn.Module] = [conv, nn.Dropout(dropout)]
            if mode == "layer_norm":
                ln = Fp32LayerNorm(dim, elementwise_affine=True)
                parts.append(nn.Sequential(TransposeLast(), ln, TransposeLast()))
            elif i == 0:
                parts.append(Fp32GroupNorm(dim, dim, affine=True))
            parts.append(nn.GELU())
            blocks.append(nn.Sequential(*parts))
            in_dim = dim
        self.conv_layers = nn.ModuleList(blocks)

    @property
    def out_dim(self) -> int:
        """Channels C of the output."""
        return self.spec[-1][0]

    @property
    def total_stride(self) -> int:
        """Samples per output frame (320 for HuBERT: 20 ms at 16 kHz)."""
        stride = 1
        for _, _, s in self.spec:
            stride *= s
        return stride

    def output_lengths(self, lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced from ``lengths`` samples: ``floor((L - k) / s) + 1`` per block.

        For HuBERT this equals ``floor((L - 400) / 320) + 1`` (190800 samples -> 596 frames).
        """
        for _, kernel, stride in self.spec:
            lengths = (lengths - kernel) // stride + 1
        return lengths

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """source: (B, S) waveform samples -> (B, C, T) features."""
        x = source.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x

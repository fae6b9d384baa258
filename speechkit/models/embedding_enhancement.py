"""Speaker-embedding enhancement networks: (B, D) single-utterance embedding -> (B, D).

The three MLPs of Dorika0203/proj_2022NC ``models/m_Models.py``, renamed for what they are, plus
a residual variant:

=============================  ==============  ===============================================
speechkit name                 reference       layers (D = embed_dim, reference D = 512)
=============================  ==============  ===============================================
``enhancement_mlp5_dropout``   MyLinearNet     D-1024-2048-2048-1024-D, dropout 0.2 after the
                                               activations of layers 2, 3 and 4
``enhancement_mlp5``           MyLinearNetv2   the same widths, no dropout
``enhancement_mlp3_dropout``   MyLinearNetv3   D-1024-1024-D, dropout 0.2 after layer 2
``enhancement_residual``       (speechkit)     ``x + MLP(x)`` with the MLP's last layer zero-
                                               initialised: the identity before training
=============================  ==============  ===============================================

As in the reference the activation (``relu`` or ``elu``) follows every layer, the last one
included (``final_activation=True``); note that a final ReLU makes every output non-negative,
so such a net cannot reach targets with negative components. Linear layers are named
``l1 .. lN`` like the reference's ``__S__.l{k}`` keys, so its checkpoints map by dropping the
``__S__.`` prefix.

Deviation: dropout is element-wise ``nn.Dropout`` on the (B, D) activations. The reference calls
``nn.Dropout1d`` on that 2-D input, which PyTorch reads as one unbatched (C=B, L=D) signal, so
it zeroes whole rows: each training example's activation vector is dropped entirely with
probability 0.2 (and the rest scaled by 1.25). That throws away a fifth of every batch at each
such layer rather than regularising features, so speechkit drops elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import ChoiceEnum, register_model

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}


class Activation(ChoiceEnum):
    """The reference's ``--activation`` choices."""

    relu = "relu"
    elu = "elu"


@dataclass
class EnhancementMLPConfig(SpeechkitDataclass):
    """Config of the enhancement MLPs (defaults: MyLinearNet, ``enhancement_mlp5_dropout``)."""

    embed_dim: int = 512
    """D, the speaker embedding size (input and output)."""
    hidden_dims: list[int] = field(default_factory=lambda: [1024, 2048, 2048, 1024])
    """Widths of the hidden layers (the reference's)."""
    activation: Activation = "relu"
    """``relu`` or ``elu`` (the reference's ``--activation`` choices)."""
    final_activation: bool = True
    """Apply the activation after the output layer too (the reference does)."""
    dropout: float = 0.2
    dropout_after: list[int] = field(default_factory=lambda: [2, 3, 4])
    """1-based layers whose activation output is followed by dropout."""


@dataclass
class EnhancementMLP5Config(EnhancementMLPConfig):
    """MyLinearNetv2: MyLinearNet's widths without dropout."""

    dropout_after: list[int] = field(default_factory=list)


@dataclass
class EnhancementMLP3DropoutConfig(EnhancementMLPConfig):
    """MyLinearNetv3: D-1024-1024-D, dropout after layer 2."""

    hidden_dims: list[int] = field(default_factory=lambda: [1024, 1024])
    dropout_after: list[int] = field(default_factory=lambda: [2])


@dataclass
class EnhancementResidualConfig(SpeechkitDataclass):
    """Config of ``enhancement_residual``: ``y = x + W_n(act(... act(W_1 x)))``."""

    embed_dim: int = 512
    hidden_dims: list[int] = field(default_factory=lambda: [1024])
    activation: Activation = "relu"
    dropout: float = 0.0
    """Dropout after each hidden activation."""


def _activation(name: str, model: str) -> type[nn.Module]:
    return ACTIVATIONS[Activation.check(name, f"{model}: activation")]


def _check_input(x: torch.Tensor, embed_dim: int, model: str) -> None:
    if x.dim() < 1 or x.shape[-1] != embed_dim:
        raise ValueError(
            f"{model}: expected embeddings (..., {embed_dim}), got shape {tuple(x.shape)}"
        )


class EnhancementMLP(nn.Module):
    """Plain MLP ``D -> hidden_dims -> D`` with an activation after every layer.

    Args:
        cfg: ``EnhancementMLPConfig`` (or a subclass).

    Shapes:
        forward: (B, D) or (..., D) float -> the same shape.

    Raises:
        ConfigError: a bad activation, dropout or ``dropout_after`` index.
        ValueError (forward): the last input dimension is not ``embed_dim``.
    """

    def __init__(self, cfg: EnhancementMLPConfig):
        super().__init__()
        name = getattr(type(self), "__speechkit_name__", type(self).__name__)
        act = _activation(cfg.activation, name)
        if cfg.embed_dim <= 0 or any(h <= 0 for h in cfg.hidden_dims):
            raise ConfigError(f"{name}: embed_dim and hidden_dims must be positive")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"{name}: dropout must be in [0, 1), got {cfg.dropout}")
        dims = [cfg.embed_dim, *cfg.hidden_dims, cfg.embed_dim]
        num_layers = len(dims) - 1
        bad = [k for k in cfg.dropout_after if not 1 <= k <= num_layers]
        if bad:
            raise ConfigError(f"{name}: dropout_after {bad} outside layers 1..{num_layers}")
        self.embed_dim = cfg.embed_dim
        self.num_layers = num_layers
        self.final_activation = cfg.final_activation
        for k in range(1, num_layers + 1):
            self.add_module(f"l{k}", nn.Linear(dims[k - 1], dims[k]))
        self.act = act()
        self.dropout_after = frozenset(cfg.dropout_after)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) embeddings -> (..., D) enhanced embeddings."""
        _check_input(x, self.embed_dim, type(self).__name__)
        for k in range(1, self.num_layers + 1):
            x = getattr(self, f"l{k}")(x)
            if k < self.num_layers or self.final_activation:
                x = self.act(x)
            if k in self.dropout_after:
                x = self.dropout(x)
        return x


@register_model("enhancement_mlp5_dropout", dataclass=EnhancementMLPConfig)
class EnhancementMLP5Dropout(EnhancementMLP):
    """MyLinearNet: D-1024-2048-2048-1024-D, dropout 0.2 after layers 2-4 (see module doc)."""


@register_model("enhancement_mlp5", dataclass=EnhancementMLP5Config)
class EnhancementMLP5(EnhancementMLP):
    """MyLinearNetv2: D-1024-2048-2048-1024-D, no dropout (see module doc)."""


@register_model("enhancement_mlp3_dropout", dataclass=EnhancementMLP3DropoutConfig)
class EnhancementMLP3Dropout(EnhancementMLP):
    """MyLinearNetv3: D-1024-1024-D, dropout 0.2 after layer 2 (see module doc)."""


@register_model("enhancement_residual", dataclass=EnhancementResidualConfig)
class EnhancementResidual(nn.Module):
    """Residual enhancement ``y = x + f(x)``; ``f``'s output layer starts at zero, so the
    untrained net is exactly the identity (the "does it beat doing nothing" baseline).

    ``f`` = Linear -> activation [-> dropout] for each hidden width, then Linear to D (no
    activation, so the correction can take any sign).

    Shapes:
        forward: (..., D) -> (..., D).

    Raises:
        ConfigError: a bad activation, width or dropout.
        ValueError (forward): the last input dimension is not ``embed_dim``.
    """

    def __init__(self, cfg: EnhancementResidualConfig):
        super().__init__()
        act = _activation(cfg.activation, "enhancement_residual")
        if cfg.embed_dim <= 0 or any(h <= 0 for h in cfg.hidden_dims):
            raise ConfigError("enhancement_residual: embed_dim and hidden_dims must be positive")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"enhancement_residual: dropout must be in [0, 1), got {cfg.dropout}")
        self.embed_dim = cfg.embed_dim
        dims = [cfg.embed_dim, *cfg.hidden_dims]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), act()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
        self.out = nn.Linear(dims[-1], cfg.embed_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) embeddings -> (..., D) ``x + f(x)``."""
        _check_input(x, self.embed_dim, "enhancement_residual")
        return x + self.out(self.body(x))

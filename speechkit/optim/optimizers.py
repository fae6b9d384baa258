"""Registered optimizers: ``adam``, ``adamw``, ``sgd`` (torch.optim with speechkit configs).

An optimizer entry is built as ``cls(cfg, params, lr)`` and is a ``torch.optim.Optimizer``.
The learning rate lives in ``optimization.lr`` (one place for optimizer and scheduler, as in
fairseq).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from speechkit.dataclass import SpeechkitDataclass
from speechkit.registry import register_optimizer


@dataclass
class AdamConfig(SpeechkitDataclass):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused: bool = False
    """Use the fused CUDA kernel (GPU only)."""


@dataclass
class AdamWConfig(AdamConfig):
    weight_decay: float = 0.01


@dataclass
class SGDConfig(SpeechkitDataclass):
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


def _fused(cfg: AdamConfig, params: list) -> bool:
    return bool(cfg.fused) and all(p.is_cuda for p in params)


@register_optimizer("adam", dataclass=AdamConfig)
class Adam(torch.optim.Adam):
    """Adam (Kingma & Ba, 2015) with L2 weight decay, as voxceleb_trainer's default."""

    def __init__(self, cfg: AdamConfig, params: Iterable, lr: float):
        params = list(params)
        super().__init__(
            params,
            lr=lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            fused=_fused(cfg, params) or None,
        )


@register_optimizer("adamw", dataclass=AdamWConfig)
class AdamW(torch.optim.AdamW):
    """AdamW (Loshchilov & Hutter, 2019): decoupled weight decay (HuBERT/ContentVec)."""

    def __init__(self, cfg: AdamWConfig, params: Iterable, lr: float):
        params = list(params)
        super().__init__(
            params,
            lr=lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            fused=_fused(cfg, params) or None,
        )


@register_optimizer("sgd", dataclass=SGDConfig)
class SGD(torch.optim.SGD):
    """SGD with momentum."""

    def __init__(self, cfg: SGDConfig, params: Iterable, lr: float):
        super().__init__(
            params,
            lr=lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )

"""The trainer's view of a composed config: the fixed sections as checked dataclasses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from speechkit.errors import ConfigError

SECTIONS = ("common", "dataset", "optimization", "checkpoint", "distributed")
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``common.precision`` -> autocast dtype (None: no autocast)."""


def read_sections(cfg: Any) -> tuple[DictConfig, dict, SimpleNamespace]:
    """Split a composed ``TrainConfig`` for the trainer.

    Args:
        cfg: a DictConfig or a ``speechkit.config.TrainConfig`` instance.

    Returns:
        ``(cfg as a DictConfig, cfg as a plain resolved container (saved in checkpoints),
        the fixed sections as dataclass instances: plain attribute access in the loop)``.

    Raises:
        ConfigError: neither ``optimization.max_update`` nor ``max_epoch`` is set,
            ``update_freq < 1``, or an unknown ``common.precision``.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    sections = SimpleNamespace(**{n: OmegaConf.to_object(cfg[n]) for n in SECTIONS})
    opt, precision = sections.optimization, sections.common.precision
    if opt.max_update <= 0 and opt.max_epoch <= 0:
        raise ConfigError("set optimization.max_update or optimization.max_epoch (both are 0)")
    if opt.update_freq < 1:
        raise ConfigError(f"optimization.update_freq must be >= 1, got {opt.update_freq}")
    if precision not in AMP_DTYPES:
        raise ConfigError(f"common.precision must be fp32, bf16 or fp16, got {precision!r}")
    # enum_to_str: choice fields (speechkit.registry.ChoiceEnum) are saved as plain strings, which
    # torch.load(weights_only=True) reads back
    return cfg, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), sections

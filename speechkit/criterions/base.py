"""Criterion base class (fairseq's contract).

A criterion takes ``(model, sample)`` and returns ``(loss, sample_size, logging_output)``:

* ``loss``: a scalar tensor. The trainer divides gradients by the ``sample_size`` summed over
  accumulation steps and ranks, so return a *sum* over ``sample_size`` items (or a mean with
  ``sample_size = 1`` for losses that do not decompose over items, e.g. prototypical losses).
* ``sample_size``: int, the normaliser of ``loss``.
* ``logging_output``: a flat dict of Python numbers that are summed over micro-batches, ranks and
  log intervals; ``reduce_metrics`` turns the sums into the reported values. Every rank must log
  the same keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass


class Criterion(nn.Module):
    """Base class; subclasses implement ``forward(model, sample)``.

    Args:
        cfg: the criterion's registered config dataclass.
        task: the task that built it (gives e.g. the number of classes); may be ``None`` in
            unit tests.
    """

    test_normalize: bool = False
    """Whether embeddings are L2-normalised before trial scoring (voxceleb_trainer's per-loss
    ``test_normalize``); speaker and enhancement losses that train on normalised vectors set
    it. Validation reads it from every criterion, so this is the one default."""

    def __init__(self, cfg: SpeechkitDataclass, task: Any = None):
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.num_updates = 0

    def forward(self, model: nn.Module, sample: dict) -> tuple[torch.Tensor, int, dict]:
        raise NotImplementedError

    def set_num_updates(self, num_updates: int) -> None:
        """Called by the trainer before every update (for schedules such as AAM margin ramps)."""
        # a plain int attribute: skip nn.Module.__setattr__'s parameter/buffer/module checks,
        # which cost more than the rest of this per-update call
        self.__dict__["num_updates"] = num_updates

    @staticmethod
    def reduce_metrics(sums: dict[str, float]) -> dict[str, float]:
        """Turn summed logging outputs into reported metrics.

        The default reports ``loss = loss / sample_size``, ``accuracy = 100 * correct / total``
        when ``correct`` and ``total`` are logged, and passes other counters through.
        """
        out: dict[str, float] = {}
        sample_size = max(sums.get("sample_size", 0.0), 1e-12)
        for key, value in sums.items():
            if key == "loss" or key.endswith("_loss"):
                out[key] = value / sample_size
            elif key in ("correct", "total"):
                continue
            else:
                out[key] = value
        if sums.get("total", 0) > 0:
            out["accuracy"] = 100.0 * sums.get("correct", 0.0) / sums["total"]
        return out

"""An out-of-tree speechkit extension, loaded with ``common.user_dir=tests/user_dir_example``.

It registers a toy regression task, a model and a criterion without touching speechkit's code.
The trainer tests use it (exact resume, 2-process equivalence, signals) because its numbers are
easy to reason about: the loss is a sum of squared errors with ``sample_size`` = items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from speechkit.criterions.base import Criterion
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import DataError
from speechkit.registry import register_criterion, register_model, register_task
from speechkit.tasks.base import Task


@dataclass
class ToyRegressionConfig(SpeechkitDataclass):
    num_items: int = 256
    dim: int = 8
    data_seed: int = 0
    step_delay: float = 0.0
    """Seconds to sleep in every train step (lets tests interrupt a run mid-epoch)."""
    nan_after: int = -1
    """From this update on, the loss is NaN (tests the non-finite guard); -1: never."""
    nan_input_at: int = -1
    """At this update one input value is NaN, as from a corrupt audio file: the forward pass
    itself sees it (BatchNorm statistics included); -1: never."""
    crash_at_update: int = -1
    """Raise a RuntimeError in the train step of this update (tests crash handling); -1: never."""
    crash_rank: int = 0
    """The rank that crashes at ``crash_at_update``."""
    valid_step_delay: float = 0.0
    """Seconds to sleep in every validation step (lets tests interrupt a validation)."""
    startup_delay: float = 0.0
    """Seconds to sleep while the task is built (lets tests signal a job during start-up)."""
    data: str | None = None
    """Optional path of a .pt file holding {'x': (N, dim), 'y': (N,)}; must exist when set."""


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def collater(self, items):
        xs, ys = zip(*items)
        return {"x": torch.stack(xs), "y": torch.stack(ys)}


@register_task("toy_regression", dataclass=ToyRegressionConfig)
class ToyRegressionTask(Task):
    def __init__(self, cfg: ToyRegressionConfig, seed: int = 1):
        super().__init__(cfg, seed)
        if cfg.startup_delay:
            time.sleep(cfg.startup_delay)
        if cfg.data is not None:
            from pathlib import Path

            if not Path(cfg.data).is_file():
                raise DataError(f"task.data={cfg.data}: file not found")

    def train_step(self, sample, model_and_criterion, update_num):
        if self.cfg.step_delay:
            time.sleep(self.cfg.step_delay)
        if update_num == self.cfg.nan_input_at:
            x = sample["x"].clone()
            x[0, 0] = float("nan")
            sample = dict(sample, x=x)
        if update_num == self.cfg.crash_at_update:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if rank == self.cfg.crash_rank:
                raise RuntimeError(f"injected crash at update {update_num} on rank {rank}")
        loss, n, log = model_and_criterion(sample)
        if 0 <= self.cfg.nan_after <= update_num:
            loss = loss * float("nan")
            log = dict(log, loss=float("nan"))
        return loss, n, log

    def valid_step(self, sample, model, criterion):
        if self.cfg.valid_step_delay:
            time.sleep(self.cfg.valid_step_delay)
        return super().valid_step(sample, model, criterion)

    def has_split(self, split: str) -> bool:
        return split in ("train", "valid")

    def load_dataset(self, split: str) -> ToyDataset:
        g = torch.Generator().manual_seed(self.cfg.data_seed + (split == "valid"))
        x = torch.randn(self.cfg.num_items, self.cfg.dim, generator=g)
        w = torch.linspace(-1, 1, self.cfg.dim)
        y = x @ w + 0.1 * torch.randn(self.cfg.num_items, generator=g)
        return ToyDataset(x, y)

    def batches(self, split, epoch, batch_size=None, max_tokens=None):
        n = len(self.dataset(split))
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).tolist() if split == "train" else list(range(n))
        bs = batch_size or 16
        return [order[i : i + bs] for i in range(0, n - bs + 1, bs)]


@dataclass
class ToyMLPConfig(SpeechkitDataclass):
    dim: int = 8
    hidden: int = 32
    dropout: float = 0.1
    batchnorm: bool = False
    """A BatchNorm1d after the first layer (running statistics are buffers)."""


@register_model("toy_mlp", dataclass=ToyMLPConfig)
class ToyMLP(nn.Module):
    def __init__(self, cfg: ToyMLPConfig):
        super().__init__()
        norm = [nn.BatchNorm1d(cfg.hidden)] if cfg.batchnorm else []
        self.net = nn.Sequential(
            nn.Linear(cfg.dim, cfg.hidden),
            *norm,
            nn.Tanh(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class SquaredErrorConfig(SpeechkitDataclass):
    pass


@register_criterion("squared_error", dataclass=SquaredErrorConfig)
class SquaredError(Criterion):
    def forward(self, model, sample):
        pred = model(sample["x"])
        loss = ((pred - sample["y"]) ** 2).sum()
        n = sample["y"].numel()
        return loss, n, {"loss": loss.item(), "sample_size": n, "nsentences": n}

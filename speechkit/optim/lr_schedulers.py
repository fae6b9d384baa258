"""Registered learning-rate schedulers.

A scheduler is built as ``cls(cfg, optimizer, base_lr, max_update)`` and sets the learning
rate of every parameter group. The trainer calls ``step_update(num_updates)`` before every
update and ``step_epoch(epoch, val_metric)`` after every epoch (``val_metric`` is the best-metric
value of that epoch's validation, or ``None``). The rate is a pure function of the counters
(except reduce-on-plateau, whose state is in ``state_dict``), so resuming is exact.

Names: ``fixed``, ``step``, ``polynomial_decay`` (fairseq's, with warm-up), ``cosine``,
``reduce_lr_on_plateau``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import register_lr_scheduler


class LRScheduler:
    """Base: holds the optimizer and the peak ``base_lr``; subclasses implement ``lr_at``."""

    maximize: bool = False
    """Whether a larger validation metric is better (``checkpoint.maximize_best_checkpoint_metric``,
    set by the trainer); read by the schedulers that watch the metric (reduce-on-plateau)."""

    def __init__(
        self,
        cfg: SpeechkitDataclass,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        max_update: int,
    ):
        self.cfg = cfg
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.max_update = max_update
        self.epoch = 0
        self.num_updates = 0
        self.set_lr(self.lr_at(0, 0))

    def lr_at(self, num_updates: int, epoch: int) -> float:
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def get_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step_update(self, num_updates: int) -> float:
        self.num_updates = num_updates
        self.set_lr(self.lr_at(num_updates, self.epoch))
        return self.get_lr()

    def step_epoch(self, epoch: int, val_metric: float | None = None) -> float:
        """Called after ``epoch`` (1-based) finished."""
        self.epoch = epoch
        self.set_lr(self.lr_at(self.num_updates, epoch))
        return self.get_lr()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.num_updates = state["num_updates"]
        self.set_lr(self.lr_at(self.num_updates, self.epoch))


def _warmup(num_updates: int, warmup_updates: int, base_lr: float, init_lr: float) -> float | None:
    if warmup_updates > 0 and num_updates < warmup_updates:
        return init_lr + (base_lr - init_lr) * num_updates / warmup_updates
    return None


@dataclass
class FixedConfig(SpeechkitDataclass):
    warmup_updates: int = 0
    warmup_init_lr: float = 0.0


@register_lr_scheduler("fixed", dataclass=FixedConfig)
class FixedSchedule(LRScheduler):
    """Constant rate after an optional linear warm-up."""

    def lr_at(self, num_updates: int, epoch: int) -> float:
        w = _warmup(num_updates, self.cfg.warmup_updates, self.base_lr, self.cfg.warmup_init_lr)
        return self.base_lr if w is None else w


@dataclass
class StepConfig(SpeechkitDataclass):
    gamma: float = 0.95
    """Multiply the rate by gamma every step (voxceleb_trainer's lr_decay)."""
    step_size_epochs: int = 10
    """Decay every N epochs (voxceleb_trainer's test_interval); 0: use updates."""
    step_size_updates: int = 0
    """Decay every N updates instead (when step_size_epochs is 0)."""
    warmup_updates: int = 0
    warmup_init_lr: float = 0.0


@register_lr_scheduler("step", dataclass=StepConfig)
class StepSchedule(LRScheduler):
    """Step decay: ``lr = base_lr * gamma ** floor(epoch / step_size_epochs)`` (or by updates)."""

    def __init__(self, cfg: StepConfig, optimizer, base_lr, max_update):
        if cfg.step_size_epochs <= 0 and cfg.step_size_updates <= 0:
            raise ConfigError(
                "lr_scheduler=step needs step_size_epochs > 0 or step_size_updates > 0"
            )
        super().__init__(cfg, optimizer, base_lr, max_update)

    def lr_at(self, num_updates: int, epoch: int) -> float:
        w = _warmup(num_updates, self.cfg.warmup_updates, self.base_lr, self.cfg.warmup_init_lr)
        if w is not None:
            return w
        if self.cfg.step_size_epochs > 0:
            steps = epoch // self.cfg.step_size_epochs
        else:
            steps = num_updates // self.cfg.step_size_updates
        return self.base_lr * self.cfg.gamma**steps


@dataclass
class PolynomialDecayConfig(SpeechkitDataclass):
    warmup_updates: int = 0
    end_learning_rate: float = 0.0
    power: float = 1.0
    total_num_update: int = 0
    """Updates over which the rate decays to end_learning_rate; 0: optimization.max_update."""


@register_lr_scheduler("polynomial_decay", dataclass=PolynomialDecayConfig)
class PolynomialDecaySchedule(LRScheduler):
    """Linear warm-up from 0, then ``(lr - end) * (1 - t)^power + end`` (fairseq's HuBERT one)."""

    def __init__(self, cfg: PolynomialDecayConfig, optimizer, base_lr, max_update):
        self.total = cfg.total_num_update or max_update
        if self.total <= 0:
            raise ConfigError(
                "lr_scheduler=polynomial_decay needs optimization.max_update or "
                "lr_scheduler.total_num_update > 0"
            )
        super().__init__(cfg, optimizer, base_lr, max_update)

    def lr_at(self, num_updates: int, epoch: int) -> float:
        w = _warmup(num_updates, self.cfg.warmup_updates, self.base_lr, 0.0)
        if w is not None:
            return w
        end = self.cfg.end_learning_rate
        if num_updates >= self.total:
            return end
        span = max(self.total - self.cfg.warmup_updates, 1)
        frac = 1.0 - (num_updates - self.cfg.warmup_updates) / span
        return (self.base_lr - end) * frac**self.cfg.power + end


@dataclass
class CosineConfig(SpeechkitDataclass):
    warmup_updates: int = 0
    warmup_init_lr: float = 0.0
    min_lr: float = 0.0
    total_num_update: int = 0
    """Length of the cosine; 0: optimization.max_update."""


@register_lr_scheduler("cosine", dataclass=CosineConfig)
class CosineSchedule(LRScheduler):
    """Linear warm-up, then half a cosine from ``base_lr`` to ``min_lr`` (Loshchilov & Hutter)."""

    def __init__(self, cfg: CosineConfig, optimizer, base_lr, max_update):
        self.total = cfg.total_num_update or max_update
        if self.total <= 0:
            raise ConfigError(
                "lr_scheduler=cosine needs optimization.max_update or total_num_update > 0"
            )
        super().__init__(cfg, optimizer, base_lr, max_update)

    def lr_at(self, num_updates: int, epoch: int) -> float:
        w = _warmup(num_updates, self.cfg.warmup_updates, self.base_lr, self.cfg.warmup_init_lr)
        if w is not None:
            return w
        span = max(self.total - self.cfg.warmup_updates, 1)
        t = min(max(num_updates - self.cfg.warmup_updates, 0) / span, 1.0)
        return self.cfg.min_lr + 0.5 * (self.base_lr - self.cfg.min_lr) * (
            1 + math.cos(math.pi * t)
        )


@dataclass
class ReduceLROnPlateauConfig(SpeechkitDataclass):
    factor: float = 0.5
    patience: int = 2
    """Epochs without improvement of the best-checkpoint metric before the rate is cut."""
    threshold: float = 1e-4
    min_lr: float = 0.0
    warmup_updates: int = 0
    warmup_init_lr: float = 0.0


@register_lr_scheduler("reduce_lr_on_plateau", dataclass=ReduceLROnPlateauConfig)
class ReduceLROnPlateauSchedule(LRScheduler):
    """Cut the rate by ``factor`` after ``patience`` validations without improvement.

    The direction follows ``checkpoint.maximize_best_checkpoint_metric`` (set as ``maximize``
    by the trainer).
    """

    def __init__(self, cfg: ReduceLROnPlateauConfig, optimizer, base_lr, max_update):
        self.current = base_lr
        self.best: float | None = None
        self.bad_epochs = 0
        self.maximize = False
        super().__init__(cfg, optimizer, base_lr, max_update)

    def lr_at(self, num_updates: int, epoch: int) -> float:
        w = _warmup(num_updates, self.cfg.warmup_updates, self.base_lr, self.cfg.warmup_init_lr)
        return self.current if w is None else w

    def step_epoch(self, epoch: int, val_metric: float | None = None) -> float:
        if val_metric is not None:
            sign = 1.0 if self.maximize else -1.0
            improved = self.best is None or sign * (val_metric - self.best) > self.cfg.threshold
            if improved:
                self.best, self.bad_epochs = val_metric, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs > self.cfg.patience:
                    self.current = max(self.current * self.cfg.factor, self.cfg.min_lr)
                    self.bad_epochs = 0
        return super().step_epoch(epoch, val_metric)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(current=self.current, best=self.best, bad_epochs=self.bad_epochs)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.current, self.best, self.bad_epochs = (
            state["current"],
            state["best"],
            state["bad_epochs"],
        )
        super().load_state_dict(state)

"""Top-level training config: fixed sections plus the task/model/criterion/optimizer/scheduler slots.

The sections follow fairseq's names (``common``, ``dataset``, ``optimization``, ``checkpoint``,
``distributed``). Every nested default uses ``default_factory`` (fairseq's mutable defaults are
what breaks it on Python 3.11). ``configs/train.yaml`` is the primary config; it extends the
``speechkit_train`` schema stored here, so a misspelt key fails at composition time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from speechkit.registry import ChoiceEnum


def _choices(name: str, values: tuple[str, ...], doc: str) -> type[ChoiceEnum]:
    """A choice field's enum (functional form: ``none`` and dashed values are valid names)."""
    enum_type = ChoiceEnum(name, [(v, v) for v in values])
    enum_type.__doc__ = doc
    return enum_type


Precision = _choices("Precision", ("fp32", "bf16", "fp16"), "``common.precision``.")
LogFormat = _choices("LogFormat", ("tqdm", "simple", "none"), "``common.log_format``.")
CompileMode = _choices(
    "CompileMode",
    ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "``common.compile_mode`` (``torch.compile``'s ``mode``).",
)
Backend = _choices("Backend", ("auto", "nccl", "gloo"), "``distributed.backend``.")


@dataclass
class CommonConfig:
    seed: int = 1
    """Seed of every random number generator (python, numpy, torch); data order uses seed+epoch."""
    cpu: bool = False
    """Train on the CPU even when a GPU is available."""
    precision: Precision = "fp32"
    """``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler)."""
    fp16_init_scale: float = 2.0**15
    log_interval: int = 10
    """Log (console, TensorBoard) every N updates."""
    log_format: LogFormat = "tqdm"
    """``tqdm`` (progress bar on rank 0), ``simple`` (one line per log interval) or ``none``."""
    tensorboard_logdir: str | None = ""
    """TensorBoard event folder; empty: ``<save_dir>/tensorboard``; null: no TensorBoard."""
    user_dir: str | None = None
    """A Python module or package path imported before composition (your own registrations)."""
    max_nonfinite_steps: int = 5
    """Stop after this many consecutive updates with a NaN/inf loss or gradient (each is skipped)."""
    deterministic: bool = False
    """``torch.use_deterministic_algorithms(True)`` (slower on GPU; bit-exact resume on GPU)."""
    num_threads: int | None = None
    """Intra-op CPU threads (``torch.set_num_threads``), applied by the Trainer; null: leave
    torch's setting (``OMP_NUM_THREADS`` or the core count). CPU results depend on it."""
    compile: bool = False
    """Run the training forward/backward through ``torch.compile`` (``speechkit.trainer.compile``:
    the DDP-wrapped model + criterion; checkpoints hold the plain modules' weights, validation
    is eager). The first updates pay the compile time; the CPU needs a C++ compiler."""
    compile_mode: CompileMode = "default"
    """``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs), ``max-autotune``
    or ``max-autotune-no-cudagraphs``."""


@dataclass
class DatasetConfig:
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    batch_size: int | None = None
    """Items per batch (per rank); tasks that batch by length use ``max_tokens`` instead."""
    max_tokens: int | None = None
    """Maximum number of audio samples in a padded batch (per rank), for length-bucketed tasks."""
    validate_interval: int = 1
    """Validate every N epochs (0: never at epoch ends)."""
    validate_interval_updates: int = 0
    """Validate every N updates as well (0: off)."""
    disable_validation: bool = False
    validate_before_training: bool = False
    """Validate once before the first update of a fresh run (the untrained model's metrics)."""
    prefetch_factor: int = 2


@dataclass
class OptimizationConfig:
    max_update: int = 0
    """Stop after this many updates (0: no limit)."""
    max_epoch: int = 0
    """Stop after this many epochs (0: no limit)."""
    lr: float = 1e-3
    """Peak learning rate handed to the optimizer and the LR scheduler."""
    update_freq: int = 1
    """Gradient accumulation: micro-batches per update (DDP ``no_sync`` on all but the last)."""
    clip_norm: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping)."""


@dataclass
class CheckpointConfig:
    save_dir: str = "checkpoints"
    """Run directory: checkpoints, config.yaml, train.log, TensorBoard events. Identical on all
    ranks (no timestamps), so a requeued job finds its ``checkpoint_last.pt``."""
    restore_file: str = "checkpoint_last.pt"
    """Resume from this file (relative to save_dir) when it exists."""
    finetune_from_model: str | None = None
    """Initialise the model from this checkpoint when save_dir holds no checkpoint_last
    (implies a fresh optimizer, scheduler, data position and counters)."""
    reset_optimizer: bool = False
    reset_lr_scheduler: bool = False
    reset_dataloader: bool = False
    reset_meters: bool = False
    save_interval: int = 1
    """Save every N epochs (0: not at epoch ends)."""
    save_interval_updates: int = 0
    """Save every N updates as well (0: off)."""
    keep_last_checkpoints: int = 2
    """Keep the N newest numbered checkpoints (``checkpoint_<epoch>_<update>.pt``); -1: all."""
    no_save: bool = False
    best_checkpoint_metric: str = "loss"
    maximize_best_checkpoint_metric: bool = False


@dataclass
class DistributedConfig:
    world_size: int | None = None
    """Expected number of processes; null: whatever the launcher (torchrun / srun) started.
    A mismatch with the launcher is an error."""
    backend: Backend = "auto"
    """``auto`` (nccl on GPU, gloo on CPU), ``nccl`` or ``gloo``."""
    find_unused_parameters: bool = False
    gradient_as_bucket_view: bool = True
    bucket_cap_mb: int = 25
    timeout_minutes: int = 30


@dataclass
class TrainConfig:
    common: CommonConfig = field(default_factory=CommonConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    task: Any = MISSING
    model: Any = MISSING
    criterion: Any = MISSING
    optimizer: Any = MISSING
    lr_scheduler: Any = MISSING
    paths: dict[str, Any] = field(default_factory=dict)
    """Data and output roots (``configs/paths/default.yaml``), read by presets as
    ``${paths.data_root}``; resolved before a task, model or criterion config is built."""


def register_train_schema() -> None:
    """Store the ``speechkit_train`` schema that ``configs/train.yaml`` extends."""
    ConfigStore.instance().store(name="speechkit_train", node=TrainConfig, provider="speechkit")

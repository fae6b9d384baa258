"""The training loop. It knows no task: data, model and criterion come from the task.

One update, top to bottom (``_train_update``):

1. set the LR for this update and tell the criterion/model the update number;
2. for each of ``update_freq`` micro-batches: autocast forward through
   ``task.train_step`` and backward (DDP ``no_sync`` on all but the last);
3. one all-reduce of the summed logging outputs (and of the stop / non-finite flags);
4. gradients divided by the global ``sample_size``; unscale (fp16), clip, step;
5. a NaN/inf loss or gradient skips the update with a warning; ``common.max_nonfinite_steps``
   such updates in a row stop the run.

Everything needed for an exact resume is checkpointed (see ``state_dict``). The batch order of
an epoch is a deterministic function of (seed, epoch), so resuming in the middle of an epoch
skips the batches already consumed and continues with the same data.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

import speechkit
from speechkit import distributed as dist_utils
from speechkit import preemption
from speechkit.distributed import DistributedEnv
from speechkit.errors import CheckpointError, ConfigError
from speechkit.preemption import EXIT_PREEMPTED, Preempted  # noqa: F401 (re-exported)
from speechkit.registry import LR_SCHEDULER_REGISTRY, OPTIMIZER_REGISTRY
from speechkit.trainer.checkpoint import (
    LAST,
    CheckpointWriter,
    check_weights_match,
    load_checkpoint_file,
    load_resume_checkpoint,
)
from speechkit.trainer.metrics import IntervalMeter, sum_logging_outputs
from speechkit.trainer.rng import (
    configure_determinism,
    get_rng_state,
    seed_everything,
    set_rng_state,
)

logger = logging.getLogger("speechkit.trainer")


class ModelWithCriterion(nn.Module):
    """``forward(sample) = criterion(model, sample)``; the unit DDP wraps, so that criterion
    parameters (AAM-softmax weights, learnable scales) are synchronised like model ones."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, sample: Any) -> Any:
        return self.criterion(self.model, sample)


def move_to_device(sample: Any, device: torch.device) -> Any:
    if torch.is_tensor(sample):
        return sample.to(device, non_blocking=True)
    if isinstance(sample, dict):
        return {k: move_to_device(v, device) for k, v in sample.items()}
    if isinstance(sample, list | tuple):
        return type(sample)(move_to_device(v, device) for v in sample)
    return sample


def _ignore_signals_in_worker(_: int) -> None:
    # slurm signals every process of the step; a data worker must not die from SIGUSR1/SIGTERM
    # before the main process has saved its checkpoint.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _plain_sections(cfg: Any) -> SimpleNamespace:
    """The fixed config sections as dataclass instances (the registry slots stay as given)."""
    names = ("common", "dataset", "optimization", "checkpoint", "distributed")
    if isinstance(cfg, DictConfig):
        sections = {n: OmegaConf.to_object(cfg[n]) for n in names}
    else:
        sections = {n: getattr(cfg, n) for n in names}
    return SimpleNamespace(**sections, optimizer=cfg.optimizer, lr_scheduler=cfg.lr_scheduler)


class Trainer:
    """Runs training for one task.

    Args:
        cfg: the composed ``TrainConfig`` (a DictConfig or the dataclass).
        task: a ``speechkit.tasks.base.Task``.
        model: the ``nn.Module`` built by the task.
        criterion: the criterion built by the task.
        env: the process's place in the job (``speechkit.distributed.detect_env``).
        device: where to train (``speechkit.distributed.init_distributed`` picks it).

    Raises:
        ConfigError: neither ``optimization.max_update`` nor ``max_epoch`` is set, an unknown
            precision, or a best-checkpoint metric the validation does not report.
    """

    def __init__(
        self,
        cfg: Any,
        task: Any,
        model: nn.Module,
        criterion: nn.Module,
        env: DistributedEnv | None = None,
        device: torch.device | None = None,
    ):
        self.full_cfg = cfg
        # plain dataclass sections: attribute access on a DictConfig costs ~10us, too much for
        # the per-update path
        self.cfg = cfg = _plain_sections(cfg)
        configure_determinism(cfg.common.deterministic, cfg.common.num_threads)
        self.task = task
        self.env = env or DistributedEnv()
        self.device = device or torch.device("cpu")
        opt = cfg.optimization
        if opt.max_update <= 0 and opt.max_epoch <= 0:
            raise ConfigError("set optimization.max_update or optimization.max_epoch (both are 0)")
        if opt.update_freq < 1:
            raise ConfigError(f"optimization.update_freq must be >= 1, got {opt.update_freq}")
        precision = cfg.common.precision
        if precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"common.precision must be fp32, bf16 or fp16, got {precision!r}")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

        self.model = model.to(self.device)
        self.criterion = criterion.to(self.device)
        self.module = ModelWithCriterion(self.model, self.criterion)
        dcfg = cfg.distributed
        self.wrapped = dist_utils.wrap_ddp(
            self.module,
            self.device,
            find_unused_parameters=dcfg.find_unused_parameters,
            gradient_as_bucket_view=dcfg.gradient_as_bucket_view,
            bucket_cap_mb=dcfg.bucket_cap_mb,
        )
        self.is_ddp = self.wrapped is not self.module
        # looked up once: hasattr on an nn.Module goes through __getattr__ and an exception
        self._model_set_num_updates = getattr(self.model, "set_num_updates", None)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZER_REGISTRY.build(cfg.optimizer, self.params, opt.lr)
        self.lr_scheduler = LR_SCHEDULER_REGISTRY.build(
            cfg.lr_scheduler, self.optimizer, opt.lr, opt.max_update
        )
        if hasattr(self.lr_scheduler, "maximize"):
            self.lr_scheduler.maximize = cfg.checkpoint.maximize_best_checkpoint_metric
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=precision == "fp16", init_scale=cfg.common.fp16_init_scale
        )

        self.epoch = 1
        self.num_updates = 0
        self.iterations_in_epoch = 0
        self.best_metric: float | None = None
        self.nonfinite_streak = 0
        self._stop_signal: int | None = None  # a signal seen by this rank or, via the flag, another
        self._stop_agreed = False  # set by _train_update from the all-reduced flag
        # (buffers, copies) for restoring buffers after a skipped update, made at the first one
        self._buffer_backup: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.save_dir = Path(cfg.checkpoint.save_dir)
        self.writer = CheckpointWriter(self.save_dir, cfg.checkpoint.keep_last_checkpoints)
        self.meter = IntervalMeter()
        self.tb = None
        self._saved_at: tuple[int, int, int] | None = None
        self._scale_one = self.env.world_size  # grads are divided by sample_size / world_size

    # ------------------------------------------------------------------------------------------
    # state
    def state_dict(self) -> dict:
        """Everything an exact resume needs (called on every rank: RNG states are gathered)."""
        rng_states = dist_utils.all_gather_object(get_rng_state())
        cfg = self.full_cfg
        cfg_container = (
            OmegaConf.to_container(cfg, resolve=True)
            if isinstance(cfg, DictConfig)
            else OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        )
        return {
            "speechkit_version": str(speechkit.__version__),
            "torch_version": str(torch.__version__),
            "cfg": cfg_container,
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": {
                "epoch": self.epoch,
                "num_updates": self.num_updates,
                "iterations_in_epoch": self.iterations_in_epoch,
                "best_metric": self.best_metric,
                "nonfinite_streak": self.nonfinite_streak,
                "world_size": self.env.world_size,
            },
            "rng": rng_states,
        }

    def load_state_dict(
        self,
        state: dict,
        reset_optimizer: bool = False,
        reset_lr_scheduler: bool = False,
        reset_dataloader: bool = False,
        reset_meters: bool = False,
    ) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("criterion"):
            self.criterion.load_state_dict(state["criterion"])
        if not reset_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        ts = state["train_state"]
        self.num_updates = ts["num_updates"]
        if not reset_dataloader:
            self.epoch = ts["epoch"]
            self.iterations_in_epoch = ts["iterations_in_epoch"]
        if not reset_meters:
            self.best_metric = ts["best_metric"]
            self.nonfinite_streak = ts["nonfinite_streak"]
        if not reset_lr_scheduler:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        else:
            self.lr_scheduler.step_update(self.num_updates)
        rng = state.get("rng") or []
        if len(rng) == self.env.world_size:
            set_rng_state(rng[self.env.rank])
        elif rng:
            logger.warning(
                "checkpoint was written by %d rank(s), this run has %d: RNG states not restored",
                len(rng),
                self.env.world_size,
            )

    def save_checkpoint(
        self, numbered: bool, is_best: bool = False, epoch_label: int | None = None
    ) -> None:
        """Collective: every rank calls it; rank 0 writes. Numbered files are named
        ``checkpoint_<epoch_label>_<update>.pt`` (default: the current epoch). A state with
        non-finite model/criterion tensors is not written (see ``CheckpointWriter.save``).

        Raises:
            OutputError: (rank 0) the disk is full or the folder not writable; the previous
                checkpoint files are intact and no temporary file is left.
        """
        if self.cfg.checkpoint.no_save:
            return
        self._saved_at = (self.epoch, self.num_updates, self.iterations_in_epoch)
        state = self.state_dict()
        if self.env.is_master:
            t0 = time.perf_counter()
            label = self.epoch if epoch_label is None else epoch_label
            # None: refused (non-finite weights, logged as an error; the previous files stay)
            path = self.writer.save(state, label, self.num_updates, numbered, is_best)
            if path is not None:
                logger.info(
                    "saved %s (epoch %d, update %d, %.2fs)",
                    path,
                    self.epoch,
                    self.num_updates,
                    time.perf_counter() - t0,
                )
        dist_utils.barrier()

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint.restore_file`` if it exists, else initialise from
        ``finetune_from_model`` if set. Returns whether a training state was resumed.

        Rank 0 first removes stale temporaries of killed checkpoint writes. Auto-resume from a
        damaged ``checkpoint_last.pt`` falls back to the newest intact numbered checkpoint.

        Raises:
            CheckpointError: no usable checkpoint, an unsafe pickle, or weights that do not fit
                this run's model (the message names both models and the first keys that differ).
        """
        ccfg = self.cfg.checkpoint
        if self.env.is_master:  # temporaries of writes killed in an earlier run
            self.writer.remove_stale_temporaries()
        run_model = getattr(getattr(self.full_cfg, "model", None), "_name", None)
        restore = Path(ccfg.restore_file)
        if not restore.is_absolute():
            restore = self.save_dir / restore
        if restore.is_file():
            # auto-resume (the default checkpoint_last.pt) falls back to the newest intact
            # numbered checkpoint when checkpoint_last is damaged; an explicit file does not
            auto = restore == self.save_dir / LAST
            state, restore = load_resume_checkpoint(restore, fallback=auto)
            saved_cfg = state.get("cfg") or {}
            saved_model = (saved_cfg.get("model") or {}).get("_name")
            check_weights_match(self.model, state.get("model", {}), restore, saved_model, run_model)
            if state.get("criterion"):
                check_weights_match(
                    self.criterion,
                    state["criterion"],
                    restore,
                    (saved_cfg.get("criterion") or {}).get("_name"),
                    getattr(getattr(self.full_cfg, "criterion", None), "_name", None),
                    what="criterion",
                )
            self.load_state_dict(
                state,
                ccfg.reset_optimizer,
                ccfg.reset_lr_scheduler,
                ccfg.reset_dataloader,
                ccfg.reset_meters,
            )
            logger.info(
                "resumed from %s (epoch %d, update %d, %d batches into the epoch)",
                restore,
                self.epoch,
                self.num_updates,
                self.iterations_in_epoch,
            )
            return True
        if ccfg.finetune_from_model:
            state = load_checkpoint_file(ccfg.finetune_from_model)
            if "model" not in state:
                raise CheckpointError(f"{ccfg.finetune_from_model} has no 'model' weights")
            saved_model = ((state.get("cfg") or {}).get("model") or {}).get("_name")
            check_weights_match(
                self.model, state["model"], ccfg.finetune_from_model, saved_model, run_model
            )
            self.model.load_state_dict(state["model"])
            self._warn_model_cfg_differs(state, ccfg.finetune_from_model)
            if state.get("criterion") and len(state["criterion"]):
                missing = self.criterion.load_state_dict(state["criterion"], strict=False)
                if missing.missing_keys or missing.unexpected_keys:
                    logger.warning("criterion weights partly loaded: %s", missing)
            logger.info(
                "initialised the model from %s (fresh optimizer, scheduler and data position)",
                ccfg.finetune_from_model,
            )
        return False

    def _warn_model_cfg_differs(self, state: dict, path: str) -> None:
        """Fine-tuning builds the model from this run's config: say which model fields differ
        from the checkpoint's (e.g. a converted checkpoint's ``input_scale``), since the weights
        load either way when the shapes agree."""
        saved = ((state.get("cfg") or {}).get("model")) or {}
        cfg = self.full_cfg
        model_cfg = cfg.model if isinstance(cfg, DictConfig) else getattr(cfg, "model", None)
        if not saved or model_cfg is None:
            return
        if not isinstance(model_cfg, DictConfig):
            model_cfg = OmegaConf.structured(model_cfg)
        current = OmegaConf.to_container(model_cfg, resolve=True)
        differ = [
            f"{key}={current[key]!r} (checkpoint: {saved[key]!r})"
            for key in sorted(set(saved) & set(current))
            if saved[key] != current[key]
        ]
        if differ:
            logger.warning(
                "fine-tuning from %s with model settings that differ from the checkpoint's: %s",
                path,
                "; ".join(differ),
            )

    # ------------------------------------------------------------------------------------------
    # data
    def _epoch_loader(self, split: str, epoch: int, skip: int = 0) -> tuple[DataLoader, int]:
        dataset = self.task.dataset(split)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        dcfg = self.cfg.dataset
        batches = self.task.batches(
            split, epoch, self.cfg.common.seed, dcfg.batch_size, dcfg.max_tokens
        )
        world = self.env.world_size
        if world > 1:
            usable = len(batches) - len(batches) % world
            if split == "train" and usable < len(batches):
                logger.debug(
                    "dropping %d batch(es) so every rank gets the same number",
                    len(batches) - usable,
                )
            batches = batches[:usable][self.env.rank :: world]
        batches = list(batches[skip:])
        workers = self.cfg.dataset.num_workers
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=dataset.collater,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_signals_in_worker if workers > 0 else None,
            prefetch_factor=self.cfg.dataset.prefetch_factor if workers > 0 else None,
            # a private generator: making an iterator must not draw from the global RNG, or a
            # resumed run would see different dropout masks than an uninterrupted one
            generator=torch.Generator().manual_seed(
                self.cfg.common.seed * 100_003 + epoch * 1009 + self.env.rank
            ),
        )
        return loader, len(batches)

    # ------------------------------------------------------------------------------------------
    # one update
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_update(self, samples: list[Any]) -> bool:
        """Forward/backward over the micro-batches of one update, then step.

        Returns False when the update was skipped (non-finite loss or gradient); a skipped
        update leaves every parameter and buffer exactly as it was. Sets
        ``self._stop_agreed`` when any rank has been signalled: every rank reads the same
        all-reduced flag, so all of them stop (and enter the collective save) at the same update.
        """
        if not self.module.training:  # train() walks every submodule: only when needed
            self.module.train()
        self.criterion.set_num_updates(self.num_updates)
        if self._model_set_num_updates is not None:
            self._model_set_num_updates(self.num_updates)
        self.lr_scheduler.step_update(self.num_updates)
        # the forward pass writes buffers (BatchNorm running statistics, NaN ones for a NaN
        # input) before the update can be judged: keep a copy to restore if it is skipped.
        # The list is made once (buffers are updated in place, load_state_dict copies into
        # them); a model without buffers pays nothing.
        backup = self._buffer_backup
        if backup is None:
            buffers = list(self.module.buffers())
            backup = self._buffer_backup = (buffers, [torch.empty_like(b) for b in buffers])
        if backup[0]:
            torch._foreach_copy_(backup[1], backup[0])

        logs = []
        loss_finite = True
        # one micro-batch on one rank: normalise the loss itself (cheaper than scaling grads)
        normalise_loss = len(samples) == 1 and self.env.world_size == 1
        for i, sample in enumerate(samples):
            if self.device.type != "cpu":  # data loader output is already on the CPU
                sample = move_to_device(sample, self.device)
            last = i == len(samples) - 1
            sync = contextlib.nullcontext() if (last or not self.is_ddp) else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    loss, sample_size, log = self.task.train_step(
                        sample, self.wrapped, self.num_updates
                    )
                if normalise_loss and sample_size not in (0, 1):
                    loss = loss / sample_size
                self.scaler.scale(loss).backward()  # identity unless fp16
            if not math.isfinite(float(log.get("loss", 0.0))):
                loss_finite = False
            log = dict(log)
            log.setdefault("sample_size", sample_size)
            logs.append(log)

        sums = sum_logging_outputs(logs)
        if self._stop_signal is None:
            self._stop_signal = preemption.received()
        flags = [0.0 if loss_finite else 1.0, 1.0 if self._stop_signal else 0.0]
        if self.env.world_size > 1:  # one all-reduce for the logging sums and both flags
            keys = sorted(sums)
            reduced = dist_utils.all_reduce_sums([sums[k] for k in keys] + flags, self.device)
            sums = dict(zip(keys, reduced[: len(keys)]))
            flags = reduced[len(keys) :]
        nonfinite_ranks, stop_ranks = flags
        if stop_ranks > 0 and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM  # another rank was signalled
        self._stop_agreed = stop_ranks > 0

        total = sums.get("sample_size", 0.0)
        if not normalise_loss and total > 0 and total != self._scale_one:
            torch._foreach_mul_(
                [p.grad for p in self.params if p.grad is not None], self._scale_one / total
            )
        grad_norm = None
        clip = self.cfg.optimization.clip_norm
        fp16 = self.scaler.is_enabled()  # only fp16 scales the loss; otherwise skip the scaler
        if fp16:
            self.scaler.unscale_(self.optimizer)
        if clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        skip = nonfinite_ranks > 0 or (
            grad_norm is not None and not math.isfinite(grad_norm) and not fp16
        )
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            if backup[0]:  # parameters are untouched (no step); buffers back as they were
                torch._foreach_copy_(backup[0], backup[1])
            if fp16:
                self.scaler.update()
            self.nonfinite_streak += 1
            logger.warning(
                "update %d skipped: non-finite loss or gradient (%d in a row)",
                self.num_updates + 1,
                self.nonfinite_streak,
            )
            if self.nonfinite_streak >= self.cfg.common.max_nonfinite_steps:
                raise FloatingPointError(
                    f"stopping: {self.nonfinite_streak} consecutive updates had a NaN/inf loss or "
                    "gradient (common.max_nonfinite_steps); lower the LR, enable clipping "
                    "(optimization.clip_norm) or check the data"
                )
            return False
        self.nonfinite_streak = 0
        if fp16:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        self.meter.add(sums, grad_norm)
        return True

    # ------------------------------------------------------------------------------------------
    # validation
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Run the task's validation; returns the metrics (identical on every rank) or None."""
        if self.cfg.dataset.disable_validation:
            return None
        self.model.eval()
        self.criterion.eval()
        with self._autocast():
            metrics = self.task.validate(self.model, self.criterion, self.device, self.env)
            if metrics is None and self.task.has_split("valid"):
                loader, _ = self._epoch_loader("valid", epoch=1)
                logs = []
                for sample in loader:
                    sample = move_to_device(sample, self.device)
                    _, sample_size, log = self.task.valid_step(sample, self.model, self.criterion)
                    log = dict(log)
                    log.setdefault("sample_size", sample_size)
                    logs.append(log)
                sums = sum_logging_outputs(logs)
                keys = sorted(sums)
                reduced = dist_utils.all_reduce_sums([sums[k] for k in keys], self.device)
                metrics = self.task.reduce_metrics(dict(zip(keys, reduced)), self.criterion)
        self.model.train()
        self.criterion.train()
        if metrics is None:
            return None
        name = self.cfg.checkpoint.best_checkpoint_metric
        if name not in metrics:
            raise ConfigError(
                f"checkpoint.best_checkpoint_metric={name!r} is not reported by the validation "
                f"(it reports: {', '.join(sorted(metrics))})"
            )
        self._log("valid", metrics)
        return metrics

    def _is_better(self, value: float) -> bool:
        if self.best_metric is None:
            return True
        if self.cfg.checkpoint.maximize_best_checkpoint_metric:
            return value > self.best_metric
        return value < self.best_metric

    def _validate_and_track(self) -> tuple[dict | None, bool]:
        metrics = self.validate()
        if metrics is None:
            return None, False
        value = float(metrics[self.cfg.checkpoint.best_checkpoint_metric])
        better = self._is_better(value)
        if better:
            self.best_metric = value
        return metrics, better

    # ------------------------------------------------------------------------------------------
    # logging
    def _log(self, tag: str, metrics: dict[str, float]) -> None:
        if not self.env.is_master:
            return
        text = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        logger.info("[%s] epoch %03d | update %06d | %s", tag, self.epoch, self.num_updates, text)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{tag}/{k}", v, self.num_updates)
            self.tb.flush()

    def _log_train_interval(self, bar: Any) -> None:
        if self.meter.updates == 0:
            return
        metrics = self.task.reduce_metrics(self.meter.sums, self.criterion)
        metrics.update(self.meter.extras())
        metrics["lr"] = self.lr_scheduler.get_lr()
        if self.scaler.is_enabled():
            metrics["loss_scale"] = self.scaler.get_scale()
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        if bar is None or self.cfg.common.log_format != "tqdm":
            self._log("train", metrics)
        elif self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", v, self.num_updates)
        self.meter.reset()

    def _open_tensorboard(self) -> None:
        logdir = self.cfg.common.tensorboard_logdir
        if not self.env.is_master or logdir is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(logdir or str(self.save_dir / "tensorboard"))

    # ------------------------------------------------------------------------------------------
    # the loop
    def _announce_preempted(self) -> None:
        """Collective, after the pre-emption save: rank 0 writes ``$SPEECHKIT_STATUS_FILE``
        before any rank may exit, so a launcher that kills the slower ranks as soon as the first
        one leaves still learns that the job was pre-empted, not failed."""
        if self.env.is_master:
            preemption.write_status_file(EXIT_PREEMPTED)
        dist_utils.barrier()

    def _done(self) -> bool:
        opt = self.cfg.optimization
        if opt.max_update > 0 and self.num_updates >= opt.max_update:
            return True
        return opt.max_epoch > 0 and self.epoch > opt.max_epoch

    def train(self) -> dict[str, float] | None:
        """Train until max_update / max_epoch; returns the last validation metrics.

        SIGUSR1/SIGTERM (``speechkit.preemption``): before the checkpoint is loaded, the handlers
        that ``python -m speechkit.train`` installed at start-up raise ``Preempted`` at once
        (nothing new to save); from then on a signal is recorded, every rank finishes its
        update, rank 0 saves ``checkpoint_last.pt`` and ``Preempted`` is raised on every rank.

        Raises:
            Preempted: after SIGUSR1/SIGTERM, once checkpoint_last is saved.
            FloatingPointError: too many consecutive non-finite updates.
        """
        seed_everything(self.cfg.common.seed + self.env.rank)
        self.load_checkpoint()
        self._open_tensorboard()
        last_metrics = None
        try:
            with preemption.deferred():
                if self.cfg.dataset.validate_before_training and self.num_updates == 0:
                    self.validate()
                while not self._done():
                    last_metrics = self._train_epoch() or last_metrics
                if self._saved_at != (self.epoch, self.num_updates, self.iterations_in_epoch):
                    self.save_checkpoint(numbered=False)
        finally:
            if self.tb is not None:
                self.tb.close()
        return last_metrics

    def _train_epoch(self) -> dict[str, float] | None:
        cfg = self.cfg
        update_freq = cfg.optimization.update_freq
        loader, n_batches = self._epoch_loader("train", self.epoch, self.iterations_in_epoch)
        bar = None
        if self.env.is_master and cfg.common.log_format == "tqdm":
            from tqdm import tqdm

            bar = tqdm(
                total=n_batches + self.iterations_in_epoch,
                initial=self.iterations_in_epoch,
                desc=f"epoch {self.epoch:03d}",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
            )
        metrics = None
        pending: list[Any] = []
        self.meter.reset()
        it = iter(loader)
        remaining = n_batches
        end_numbered = end_best = False  # saves due at the last update, made at the epoch end
        while remaining > 0:
            pending.append(next(it))
            remaining -= 1
            if len(pending) < update_freq and remaining > 0:
                continue
            stepped = self._train_update(pending)
            self.iterations_in_epoch += len(pending)
            if bar is not None:
                bar.update(len(pending))
            pending = []
            # a skipped update leaves num_updates as it was: its interval actions already ran
            if stepped and self.num_updates % cfg.common.log_interval == 0:
                self._log_train_interval(bar)
            numbered_save = (
                stepped
                and cfg.checkpoint.save_interval_updates > 0
                and self.num_updates % cfg.checkpoint.save_interval_updates == 0
            )
            val_now = (
                stepped
                and cfg.dataset.validate_interval_updates > 0
                and self.num_updates % cfg.dataset.validate_interval_updates == 0
            )
            is_best = False
            if val_now:
                metrics, is_best = self._validate_and_track()
            # the all-reduced flag, not this rank's own: a signal that arrived after the
            # all-reduce is acted on at the next update, by every rank together
            stop = self._stop_agreed
            if remaining == 0 and not stop:
                # the epoch ends with this update and its end saves anyway, under the same
                # numbered name: one write, carrying this update's numbered/best flags
                end_numbered = end_numbered or numbered_save
                end_best = end_best or is_best
            elif numbered_save or stop or is_best or (self._done() and remaining > 0):
                self.save_checkpoint(numbered=numbered_save, is_best=is_best)
            if stop:
                if bar is not None:
                    bar.close()
                del it, loader
                self._announce_preempted()
                raise Preempted(f"signal {self._stop_signal}: saved checkpoint_last")
            if self._done():
                break
        if bar is not None:
            bar.close()
        del it, loader
        self._log_train_interval(None)
        if remaining > 0:  # stopped at max_update inside the epoch (already saved)
            return metrics
        # end of epoch
        finished = self.epoch
        is_best = False
        vi = cfg.dataset.validate_interval
        if vi > 0 and finished % vi == 0:
            metrics, is_best = self._validate_and_track()
        val_value = (
            None if metrics is None else float(metrics[cfg.checkpoint.best_checkpoint_metric])
        )
        self.lr_scheduler.step_epoch(finished, val_value)
        self.epoch += 1
        self.iterations_in_epoch = 0
        si = cfg.checkpoint.save_interval
        numbered = (si > 0 and finished % si == 0) or end_numbered
        self.save_checkpoint(numbered=numbered, is_best=is_best or end_best, epoch_label=finished)
        return metrics

"""The training loop. It knows no task: data, model and criterion come from the task.

``Trainer.train`` reads top to bottom: seed and resume (``trainer/checkpoint.py``); per epoch,
this rank's share of the task's batches from the resume position on (``data/epoch_iterator.py``);
per update (``_train_update``), forward/backward over ``update_freq`` micro-batches, one
all-reduce of the logging sums and the stop / non-finite flags, the one gradient normalisation
(times ``world_size / global sample_size``: DDP averages over ranks, so the step is that of the
summed loss over the global sample size), unscale, clip and step, or a skip that leaves the
model as it was (``trainer/guard.py``); then the interval actions (log, validation, checkpoint,
pre-emption stop), and at the epoch end validation, the LR scheduler's epoch step and a
checkpoint. Everything an exact resume needs is checkpointed (``state_dict``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn

import speechkit
from speechkit import distributed as dist_utils
from speechkit import preemption
from speechkit.data.epoch_iterator import Batching, EpochIterator, move_to_device
from speechkit.distributed import DistributedEnv
from speechkit.errors import ConfigError
from speechkit.preemption import EXIT_PREEMPTED, Preempted
from speechkit.registry import LR_SCHEDULER_REGISTRY, OPTIMIZER_REGISTRY
from speechkit.trainer.checkpoint import CheckpointWriter, load_finetune_weights, load_resume_state
from speechkit.trainer.compile import maybe_compile
from speechkit.trainer.guard import NonFiniteGuard
from speechkit.trainer.metrics import IntervalMeter, RunLog, sum_logging_outputs, timed_batches
from speechkit.trainer.rng import (
    configure_determinism,
    get_rng_state,
    restore_rank_rng,
    seed_everything,
)
from speechkit.trainer.settings import AMP_DTYPES, read_sections

__all__ = ["EXIT_PREEMPTED", "ModelWithCriterion", "Preempted", "Trainer"]

logger = logging.getLogger("speechkit.trainer")
STATEFUL = ("model", "criterion", "optimizer", "lr_scheduler", "scaler")
"""The trainer's parts whose ``state_dict`` is checkpointed under their own name."""


class ModelWithCriterion(nn.Module):
    """``forward(sample) = criterion(model, sample)``; the unit DDP wraps, so that criterion
    parameters (AAM-softmax weights, learnable scales) are synchronised like model ones."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, sample: Any) -> Any:
        return self.criterion(self.model, sample)


class Trainer:
    """Runs training for one task. ``common.deterministic`` and ``common.num_threads`` are
    applied here, so a Trainer built directly (not by ``python -m speechkit.train``) gets them.

    Args:
        cfg: the composed ``TrainConfig`` (a DictConfig or the dataclass).
        task, model, criterion: a ``speechkit.tasks.base.Task`` and what it built.
        env: the process's place in the job (``speechkit.distributed.detect_env``).
        device: where to train (``speechkit.distributed.init_distributed`` picks it).

    Raises:
        ConfigError: neither ``optimization.max_update`` nor ``max_epoch`` set, an unknown
            precision, ``common.num_threads < 1``, or a best-checkpoint metric the validation
            does not report.
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
        cfg, self.cfg_container, self.cfg = read_sections(cfg)
        c, opt = self.cfg, self.cfg.optimization
        configure_determinism(c.common.deterministic, c.common.num_threads)
        self.amp_dtype = AMP_DTYPES[c.common.precision]
        self.task = task
        self.env = env or DistributedEnv()
        self.device = device or torch.device("cpu")

        self.model = model.to(self.device)
        self.criterion = criterion.to(self.device)
        self.module = ModelWithCriterion(self.model, self.criterion)
        ddp = dist_utils.wrap_ddp(self.module, self.device, c.distributed)
        self.wrapped = maybe_compile(ddp, c.common, self.device)  # torch.compile(DDP(.))
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZER_REGISTRY.build(cfg.optimizer, self.params, opt.lr)
        self.lr_scheduler = LR_SCHEDULER_REGISTRY.build(
            cfg.lr_scheduler, self.optimizer, opt.lr, opt.max_update
        )
        self.lr_scheduler.maximize = c.checkpoint.maximize_best_checkpoint_metric
        fp16, scale = c.common.precision == "fp16", c.common.fp16_init_scale
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=scale, enabled=fp16)
        # a model may follow the update number too (ContentVec's schedules), as fairseq's do
        self._model_set_num_updates = getattr(self.model, "set_num_updates", None)
        self.guard = NonFiniteGuard(self.module, c.common.max_nonfinite_steps)

        self.epoch, self.num_updates, self.iterations_in_epoch = 1, 0, 0
        self.best_metric: float | None = None
        self._stop_signal: int | None = None  # a signal seen by this rank or, via the flag, another
        self._stop_agreed = False  # set by _train_update from the all-reduced flag
        self._saved_at: tuple[int, int, int] | None = None
        self.save_dir = Path(c.checkpoint.save_dir)
        self.writer = CheckpointWriter(self.save_dir, c.checkpoint.keep_last_checkpoints)
        self.meter = IntervalMeter()
        run_dir = None if c.checkpoint.no_save else self.save_dir  # no_save: nothing written there
        self.log = RunLog(
            run_dir, self.env.is_master, c.common.tensorboard_logdir, c.common.log_format
        )
        d = c.dataset
        self.batching = Batching(
            d.batch_size, d.max_tokens, d.num_workers, d.prefetch_factor, self.device.type == "cuda"
        )

    # ------------------------------------------------------------------------------------------
    # state
    def state_dict(self) -> dict:
        """Everything an exact resume needs (called on every rank: RNG states are gathered)."""
        return {
            "speechkit_version": str(speechkit.__version__),
            "torch_version": str(torch.__version__),
            "cfg": self.cfg_container,
            **{key: getattr(self, key).state_dict() for key in STATEFUL},
            "train_state": {
                "epoch": self.epoch,
                "num_updates": self.num_updates,
                "iterations_in_epoch": self.iterations_in_epoch,
                "best_metric": self.best_metric,
                "nonfinite_streak": self.guard.streak,
                "world_size": self.env.world_size,
                "data": self.task.data_state(),
            },
            "rng": dist_utils.all_gather_object(get_rng_state()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output, minus what ``checkpoint.reset_*`` asks to reset."""
        ccfg = self.cfg.checkpoint
        skip = {"optimizer", "scaler"} if ccfg.reset_optimizer else set()
        skip |= {"lr_scheduler"} if ccfg.reset_lr_scheduler else set()
        for key in STATEFUL:
            if key not in skip and state.get(key):
                getattr(self, key).load_state_dict(state[key])
        ts = state["train_state"]
        self.num_updates = ts["num_updates"]
        if not ccfg.reset_dataloader:
            self.epoch, self.iterations_in_epoch = ts["epoch"], ts["iterations_in_epoch"]
            self.task.check_resume(state, self.env, self.batching)
        if not ccfg.reset_meters:
            self.best_metric, self.guard.streak = ts["best_metric"], ts["nonfinite_streak"]
        if ccfg.reset_lr_scheduler:
            self.lr_scheduler.step_update(self.num_updates)
        restore_rank_rng(state.get("rng") or [], self.env.rank, self.env.world_size)

    def save_checkpoint(
        self, numbered: bool, is_best: bool = False, epoch_label: int | None = None
    ) -> None:
        """Collective: every rank calls it; rank 0 writes (``CheckpointWriter.save``: atomic,
        non-finite states refused). Numbered files are ``checkpoint_<epoch_label>_<update>.pt``
        (default: the current epoch).

        Raises:
            OutputError: (rank 0) the disk is full or the folder not writable; the previous
                checkpoint files are intact and no temporary file is left.
        """
        if self.cfg.checkpoint.no_save:
            return
        self._saved_at = (self.epoch, self.num_updates, self.iterations_in_epoch)
        state = self.state_dict()
        if self.env.is_master:
            label = self.epoch if epoch_label is None else epoch_label
            path = self.writer.save(state, label, self.num_updates, numbered, is_best)
            if path is not None:
                logger.info("saved %s (epoch %d, update %d)", path, self.epoch, self.num_updates)
        dist_utils.barrier()

    def load_checkpoint(self) -> bool:
        """Resume from ``checkpoint.restore_file`` if it exists, else initialise the model from
        ``finetune_from_model`` if set. Returns whether a training state was resumed. Rank 0
        first removes stale temporaries of killed checkpoint writes.

        Raises:
            CheckpointError: no usable checkpoint, an unsafe pickle, or weights that do not fit
                this run's model (see ``trainer/checkpoint.py``).
        """
        ccfg = self.cfg.checkpoint
        if self.env.is_master:
            self.writer.remove_stale_temporaries()
        found = load_resume_state(
            ccfg.restore_file, self.save_dir, self.model, self.criterion, self.cfg_container
        )
        if found is None:
            if ccfg.finetune_from_model:
                load_finetune_weights(
                    ccfg.finetune_from_model, self.model, self.criterion, self.cfg_container
                )
            return False
        state, path = found
        self.load_state_dict(state)
        where = f"epoch {self.epoch}, update {self.num_updates}"
        logger.info(
            "resumed from %s (%s, %d batches into the epoch)", path, where, self.iterations_in_epoch
        )
        return True

    # ------------------------------------------------------------------------------------------
    # the loop
    def train(self) -> dict[str, float] | None:
        """Train until max_update / max_epoch; returns the last validation metrics.

        Raises:
            Preempted: SIGUSR1/SIGTERM (``speechkit.preemption``): raised at once before the
                checkpoint is loaded (nothing new to save); from then on every rank finishes
                its update and ``checkpoint_last.pt`` is saved first.
            FloatingPointError: too many consecutive non-finite updates.
        """
        seed_everything(self.cfg.common.seed + self.env.rank)
        resumed = self.load_checkpoint()
        self.log.open(self.num_updates if resumed else None)
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
            self.log.close()
        return last_metrics

    def _done(self) -> bool:
        opt = self.cfg.optimization
        if opt.max_update > 0 and self.num_updates >= opt.max_update:
            return True
        return opt.max_epoch > 0 and self.epoch > opt.max_epoch

    def _train_epoch(self) -> dict[str, float] | None:
        c, env = self.cfg, self.env
        self.task.set_epoch("train", self.epoch)
        batches = self.task.batches("train", self.epoch, c.dataset.batch_size, c.dataset.max_tokens)
        epoch_iter = EpochIterator(
            self.task.dataset("train"),
            batches,
            env.rank,
            env.world_size,
            self.iterations_in_epoch,
            c.optimization.update_freq,
            self.batching,
            seed=c.common.seed * 100_003 + self.epoch * 1009 + env.rank,
        )
        self.log.start_epoch(self.epoch, epoch_iter.total, self.iterations_in_epoch)
        metrics = None
        end_numbered = end_best = False  # saves due at the epoch's last update, made at its end
        validated_at = -1  # the update the last validation of this epoch ran after
        self.meter.reset()

        def due(every: int) -> bool:  # an interval action at this update
            return every > 0 and self.num_updates % every == 0

        for samples in timed_batches(epoch_iter, self.meter):
            stepped = self._train_update(samples)
            self.iterations_in_epoch += len(samples)
            self.log.advance(len(samples))
            # a skipped update leaves num_updates as it was: its interval actions already ran
            if stepped and due(c.common.log_interval):
                self._log_train_interval()
            numbered = stepped and due(c.checkpoint.save_interval_updates)
            is_best = False
            if stepped and due(c.dataset.validate_interval_updates):
                metrics, is_best = self._validate_and_track()
                validated_at = self.num_updates
            # the all-reduced flag, not this rank's own: a signal that arrived after the
            # all-reduce is acted on at the next update, by every rank together
            stop = self._stop_agreed
            if epoch_iter.remaining == 0 and not stop:
                # the epoch's end saves anyway, under the same numbered name: one write
                end_numbered, end_best = end_numbered or numbered, end_best or is_best
            elif numbered or stop or is_best or self._done():
                self.save_checkpoint(numbered=numbered, is_best=is_best)
            if stop:
                epoch_iter.close()
                self.log.end_epoch()
                self._announce_preempted()
                raise Preempted(f"signal {self._stop_signal}: saved checkpoint_last")
            if self._done():
                break
        unfinished = epoch_iter.remaining > 0  # stopped at max_update inside the epoch (saved)
        epoch_iter.close()
        self.log.end_epoch()
        self._log_train_interval()
        if unfinished:
            return metrics
        finished, is_best = self.epoch, False
        vi = c.dataset.validate_interval
        # due at the epoch's end too, but already run after its last update: not twice
        if vi > 0 and finished % vi == 0 and validated_at != self.num_updates:
            metrics, is_best = self._validate_and_track()
        best_name = c.checkpoint.best_checkpoint_metric
        self.lr_scheduler.step_epoch(finished, None if metrics is None else metrics[best_name])
        self.epoch += 1
        self.iterations_in_epoch = 0
        si = c.checkpoint.save_interval
        numbered = (si > 0 and finished % si == 0) or end_numbered
        self.save_checkpoint(numbered=numbered, is_best=is_best or end_best, epoch_label=finished)
        return metrics

    def _announce_preempted(self) -> None:
        """Collective, after the pre-emption save: rank 0 writes ``$SPEECHKIT_STATUS_FILE``
        before any rank may exit, so a launcher that kills the slower ranks as soon as the first
        one leaves still learns that the job was pre-empted, not failed."""
        if self.env.is_master:
            preemption.write_status_file(EXIT_PREEMPTED)
        dist_utils.barrier()

    # ------------------------------------------------------------------------------------------
    # one update
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_update(self, samples: list[Any]) -> bool:
        """Forward/backward over the micro-batches of one update, then step.

        Returns False when the update was skipped (non-finite loss or gradient); a skipped
        update leaves every parameter and buffer exactly as it was. Sets ``self._stop_agreed``
        when any rank has been signalled: every rank reads the same all-reduced flag, so all of
        them stop (and enter the collective save) at the same update.
        """
        self.module.train()
        self.criterion.set_num_updates(self.num_updates)
        if self._model_set_num_updates is not None:
            self._model_set_num_updates(self.num_updates)
        self.lr_scheduler.step_update(self.num_updates)
        self.guard.snapshot()  # buffers, restored if the update is skipped

        logs, loss_finite = [], True
        for i, sample in enumerate(samples):
            if self.device.type != "cpu":  # the loader's output is on the CPU
                sample = move_to_device(sample, self.device)
            last = i == len(samples) - 1
            no_sync = hasattr(self.wrapped, "no_sync") and not last  # DDP, compiled or not
            with self.wrapped.no_sync() if no_sync else contextlib.nullcontext():
                with self._autocast():
                    loss, sample_size, log = self.task.train_step(
                        sample, self.wrapped, self.num_updates
                    )
                self.scaler.scale(loss).backward()  # identity unless fp16
            loss_finite = loss_finite and math.isfinite(float(log.get("loss", 0.0)))
            logs.append({"sample_size": sample_size, **log})

        if self._stop_signal is None:
            self._stop_signal = preemption.received()
        flags = {"_nonfinite": float(not loss_finite), "_stop": float(bool(self._stop_signal))}
        sums = dist_utils.all_reduce_dict({**sum_logging_outputs(logs), **flags}, self.device)
        nonfinite_ranks, stop_ranks = sums.pop("_nonfinite"), sums.pop("_stop")
        if stop_ranks > 0 and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM  # another rank was signalled
        self._stop_agreed = stop_ranks > 0

        total = sums.get("sample_size", 0.0)
        grads = [p.grad for p in self.params if p.grad is not None]
        if total > 0 and grads:  # DDP averaged over W ranks: sum over ranks / global total
            torch._foreach_mul_(grads, self.env.world_size / total)
        fp16 = self.scaler.is_enabled()
        if fp16:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optimization.clip_norm
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip)) if clip > 0 else None
        # fp16: the scaler skips a step with inf/NaN gradients and lowers its scale
        bad_grad = grad_norm is not None and not math.isfinite(grad_norm) and not fp16
        if nonfinite_ranks > 0 or bad_grad:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # fp16: lowers the scale; else nothing
            self.guard.skip(self.num_updates + 1)  # raises after max_nonfinite_steps in a row
            return False
        self.guard.passed()
        self.scaler.step(self.optimizer)  # optimizer.step() unless fp16
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        self.meter.add(sums, grad_norm)
        return True

    # ------------------------------------------------------------------------------------------
    # validation and logging
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """The task's validation (``Task.validate``); the metrics (identical on every rank and
        for every world size) or None. Rank 0 logs them (``train.log``, ``metrics.jsonl``)."""
        if self.cfg.dataset.disable_validation:
            return None
        self.model.eval()
        self.criterion.eval()
        with self._autocast():
            metrics = self.task.validate(
                self.model, self.criterion, self.device, self.env, self.batching
            )
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
        self.log.write("valid", metrics, self.epoch, self.num_updates)
        return metrics

    def _validate_and_track(self) -> tuple[dict | None, bool]:
        metrics = self.validate()
        if metrics is None:
            return None, False
        value = float(metrics[self.cfg.checkpoint.best_checkpoint_metric])
        maximize = self.cfg.checkpoint.maximize_best_checkpoint_metric
        best = self.best_metric
        better = best is None or (value > best if maximize else value < best)
        if better:
            self.best_metric = value
        return metrics, better

    def _log_train_interval(self) -> None:
        if self.meter.updates == 0:
            return
        metrics = self.task.reduce_metrics(self.meter.sums, self.criterion)
        metrics.update(self.meter.extras())
        metrics["lr"] = self.lr_scheduler.get_lr()
        if self.scaler.is_enabled():
            metrics["loss_scale"] = self.scaler.get_scale()
        self.log.write("train", metrics, self.epoch, self.num_updates)
        self.meter.reset()

"""Summing logging outputs over micro-batches, ranks and log intervals; reporting them."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from speechkit.atomic import atomic_write_text

logger = logging.getLogger("speechkit.trainer")


def sum_logging_outputs(outputs: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise sum of logging dicts (missing keys count as 0)."""
    total: dict[str, float] = {}
    for out in outputs:
        for k, v in out.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


T = TypeVar("T")


class IntervalMeter:
    """Accumulates summed logging outputs and timing between two log lines.

    Besides the task's sums, :meth:`extras` reports ``ups`` (updates per second of wall-clock
    time), ``gnorm`` (mean gradient norm before clipping) and ``data_wait``: the fraction (0-1)
    of the interval's wall-clock time the trainer spent waiting for the next batch from the
    data loader (:func:`timed_batches`). Near 0 the loader keeps up; a large value means the
    device idles for data (more ``dataset.num_workers``, augmentation on the device). On a GPU
    the update ends with a host synchronisation (the loss and gradient norm are read), so the
    wait is device idle time, less the optimizer step's kernels still queued. With several
    ranks, ``ups`` and ``data_wait`` are rank 0's (the ranks wait for each other every update).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.updates = 0
        self.grad_norm_sum = 0.0
        self.grad_norm_count = 0
        self.wait_s = 0.0
        self.start = time.perf_counter()

    def add(self, sums: Mapping[str, float], grad_norm: float | None) -> None:
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.updates += 1
        if grad_norm is not None:
            self.grad_norm_sum += grad_norm
            self.grad_norm_count += 1

    def extras(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"ups": self.updates / elapsed, "data_wait": min(self.wait_s / elapsed, 1.0)}
        if self.grad_norm_count:
            out["gnorm"] = self.grad_norm_sum / self.grad_norm_count
        return out


def timed_batches(batches: Iterable[T], meter: IntervalMeter) -> Iterator[T]:
    """Yield the items of ``batches``, adding the time each one took to arrive (the wait for
    the loader, its workers' start-up included) to ``meter.wait_s``."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        meter.wait_s += time.perf_counter() - t0
        yield item


METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Where rank 0 reports metrics: ``train.log`` lines (through ``logging``), TensorBoard and
    ``<save_dir>/metrics.jsonl``; on other ranks every method does nothing.

    ``metrics.jsonl`` holds one JSON object per train log interval and per validation,
    ``{"split": "train" | "valid", "epoch": E, "update": U, <metric>: value, ...}``, appended as
    they happen. A fresh run starts the file anew; a run resumed from update U first drops the
    lines of larger updates (logged after the checkpoint it resumed from), so the file always
    describes the run that the checkpoints hold. Non-finite values are written as ``NaN`` /
    ``Infinity`` (Python's ``json`` reads them).

    Args:
        save_dir: the run directory; None: no ``metrics.jsonl`` (``checkpoint.no_save``
            writes nothing there). enabled: rank 0.
        tensorboard_logdir: ``common.tensorboard_logdir`` (``""``: ``<save_dir>/tensorboard``;
            ``None``: no TensorBoard).
        log_format: ``common.log_format``: ``tqdm`` shows a progress bar per epoch (stderr)
            whose postfix carries the train metrics instead of ``train.log`` lines.
    """

    def __init__(
        self, save_dir: Path | None, enabled: bool, tensorboard_logdir: str | None, log_format: str
    ):
        self.path = Path(save_dir) / METRICS_FILE if save_dir is not None else None
        self.enabled = enabled
        self.tensorboard_logdir = tensorboard_logdir
        self.bar_enabled = enabled and log_format == "tqdm"
        self.tb = self.bar = self._file = None

    def open(self, resumed_update: int | None) -> None:
        """Open the outputs; ``resumed_update``: the update the run resumed from, if any.

        Raises:
            OutputError: ``metrics.jsonl`` cannot be rewritten (disk full, read-only folder).
        """
        if not self.enabled:
            return
        if self.path is not None:
            kept = []
            if resumed_update is not None and self.path.is_file():
                lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                kept = [line for line in lines if _update_of(line) <= resumed_update]
            atomic_write_text(self.path, "".join(kept))  # a fresh run starts a new file
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        if self.tensorboard_logdir is not None and (self.tensorboard_logdir or self.path):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                self.tensorboard_logdir or str(self.path.parent / "tensorboard")
            )

    def start_epoch(self, epoch: int, total: int, done: int) -> None:
        """A new epoch of ``total`` batches on this rank, ``done`` of them before a resume."""
        if self.bar_enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc=f"epoch {epoch:03d}",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
            )

    def advance(self, batches: int) -> None:
        if self.bar is not None:
            self.bar.update(batches)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, split: str, metrics: dict[str, float], epoch: int, update: int) -> None:
        """Report ``metrics`` as a ``[split] epoch E | update U | ...`` line (train metrics: on
        the progress bar instead, when there is one), to TensorBoard and to metrics.jsonl."""
        if not self.enabled:
            return
        if split == "train" and self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        else:
            line = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            logger.info("[%s] epoch %03d | update %06d | %s", split, epoch, update, line)
        if self._file is not None:
            record = {"split": split, "epoch": epoch, "update": update, **metrics}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", v, update)
            self.tb.flush()

    def close(self) -> None:
        self.end_epoch()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _update_of(line: str) -> float:
    try:
        return float(json.loads(line)["update"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line of a killed run: dropped

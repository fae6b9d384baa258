"""Task base class: a task owns the data and builds the model and criterion (fairseq's split).

The trainer only talks to a task through this interface:

* ``build_model(cfg)`` / ``build_criterion(cfg)``
* ``dataset(split)``: a ``torch.utils.data.Dataset`` with a ``collater(list) -> batch`` method
  and, optionally, ``set_epoch(epoch)`` (for per-epoch deterministic augmentation).
* ``batches(split, epoch, seed, batch_size, max_tokens)``: the *global* list of index batches
  for one epoch, a deterministic function of ``(seed, epoch)``; the trainer shards it across ranks and skips the batches already
  consumed when it resumes in the middle of an epoch.
* ``train_step`` / ``valid_step``: one forward pass returning ``(loss, sample_size, logging)``.
* ``validate(...)``: optional whole-split validation (e.g. EER over a trial list) that cannot be
  written as a sum of per-batch numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY


class Task:
    """Base class of all tasks.

    Args:
        cfg: the task's registered config dataclass. Implementations check their data paths
            in ``__init__`` and raise ``speechkit.errors.DataError`` naming the missing file, so
            a bad path fails before any model is built.
    """

    required: tuple[str, ...] = ()
    """Config fields that must be set (not ``???``, empty or null); checked first."""
    needs: str = ""
    """One line naming the paths the task reads (``task.data=DIR with train.tsv ...``), quoted
    by :meth:`missing_config_error` when a required field is not set."""

    def __init__(self, cfg: SpeechkitDataclass):
        self.cfg = cfg
        self._datasets: dict[str, Any] = {}
        missing = [k for k in self.required if getattr(cfg, k, None) in ("???", "", None)]
        if missing:
            raise self.missing_config_error(missing)

    @classmethod
    def missing_config_error(cls, missing: list[str]) -> ConfigError:
        """The one-line error for required ``task.<key>`` fields that are not set: what the
        task needs (:attr:`needs`), then the keys. The registry raises it too, when a composed
        config leaves a field at ``???``."""
        name = getattr(cls, "__speechkit_name__", cls.__name__)
        keys = ", ".join(f"task.{k}" for k in missing)
        if cls.needs:
            return ConfigError(f"task {name} needs {cls.needs}; not set: {keys}")
        return ConfigError(f"task {name}: {keys} not set (e.g. task.{missing[0]}=...)")

    # -- building -----------------------------------------------------------------------------
    def build_model(self, cfg: Any) -> nn.Module:
        """Build the registered model named by ``cfg._name`` (``cls(cfg)``)."""
        return MODEL_REGISTRY.build(cfg)

    def build_criterion(self, cfg: Any) -> nn.Module:
        """Build the registered criterion named by ``cfg._name`` (``cls(cfg, task)``)."""
        return CRITERION_REGISTRY.build(cfg, self)

    # -- data -----------------------------------------------------------------------------------
    def has_split(self, split: str) -> bool:
        """Whether the task has data for ``split`` (``"train"``, ``"valid"``)."""
        return split == "train"

    def load_dataset(self, split: str) -> Any:
        """Create the dataset of ``split``; called once, then cached by ``dataset``."""
        raise NotImplementedError

    def dataset(self, split: str) -> Any:
        if split not in self._datasets:
            self._datasets[split] = self.load_dataset(split)
        return self._datasets[split]

    def batches(
        self,
        split: str,
        epoch: int,
        seed: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[Any]]:
        """Global batches of one epoch (same on every rank); must be deterministic.

        Args:
            split: ``"train"`` or ``"valid"``.
            epoch: 1-based epoch (seeds the shuffling together with ``seed``).
            seed: ``common.seed``.
            batch_size: ``dataset.batch_size`` (items per batch per rank; ``None``: the task's
                default).
            max_tokens: ``dataset.max_tokens`` (padded samples per batch per rank) for tasks
                that batch by length.

        Returns:
            A list of batches, each a list of dataset keys (``dataset[key]`` is one item).
        """
        raise NotImplementedError

    # -- steps ----------------------------------------------------------------------------------
    def train_step(
        self, sample: Any, model_and_criterion: nn.Module, update_num: int
    ) -> tuple[torch.Tensor, int, dict]:
        """Forward one micro-batch in training mode; the trainer does backward and the update.

        ``model_and_criterion(sample)`` runs ``criterion(model, sample)`` (it is the DDP-wrapped
        module, so criterion parameters are synchronised too).
        """
        return model_and_criterion(sample)

    def valid_step(
        self, sample: Any, model: nn.Module, criterion: nn.Module
    ) -> tuple[torch.Tensor, int, dict]:
        """Forward one validation batch (under ``torch.no_grad`` and ``model.eval()``)."""
        return criterion(model, sample)

    def validate(
        self, model: nn.Module, criterion: nn.Module, device: torch.device, env: Any
    ) -> dict[str, float] | None:
        """Whole-split validation; return ``None`` to use the trainer's batch-wise loop.

        ``env`` is the ``speechkit.distributed.DistributedEnv`` (rank, world size). The returned
        dict must be identical on every rank.
        """
        return None

    @torch.no_grad()
    def validate_batches(
        self,
        dataset: Any,
        batches: list[list[int]],
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
    ) -> dict[str, float]:
        """Validation over fixed global ``batches`` of ``dataset`` whatever the world size.

        Rank r runs batches r, r + W, ... (no batch is dropped to even the ranks out, and a
        batch's composition never depends on W); the summed logging outputs of all ranks are
        all-reduced and passed to :meth:`reduce_metrics`, so every rank returns the same
        metrics, equal to a single-process run's. ``model`` may be DDP-wrapped (its ``module``
        is used: no collective runs inside the forward pass).
        """
        from speechkit import distributed as dist_utils
        from speechkit.trainer.metrics import sum_logging_outputs
        from speechkit.trainer.trainer import move_to_device

        rank = 0 if env is None else env.rank
        world = 1 if env is None else env.world_size
        net = getattr(model, "module", model)
        logs = []
        for batch in batches[rank::world]:
            sample = move_to_device(dataset.collater([dataset[i] for i in batch]), device)
            _, sample_size, log = self.valid_step(sample, net, criterion)
            logs.append({"sample_size": sample_size, **log})
        sums = sum_logging_outputs(logs) if logs else {}
        keys: set[str] = set()
        for part in dist_utils.all_gather_object(sorted(sums)):  # a rank may have no batch
            keys.update(part)
        names = sorted(keys)
        reduced = dist_utils.all_reduce_sums([sums.get(k, 0.0) for k in names], device)
        return self.reduce_metrics(dict(zip(names, reduced)), criterion)

    def reduce_metrics(self, sums: dict[str, float], criterion: nn.Module) -> dict[str, float]:
        """Summed logging outputs -> reported metrics (defaults to the criterion's rule)."""
        return criterion.reduce_metrics(sums)

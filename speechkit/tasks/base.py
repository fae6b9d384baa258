"""Task base class: a task owns the data and builds the model and criterion (fairseq's split).

The trainer only talks to a task through this interface:

* ``Task(cfg, seed=common.seed)``: the seed of every random choice the task makes (batch order,
  crops, augmentation, masks); datasets receive it when they are built.
* ``build_model(cfg)`` / ``build_criterion(cfg)``
* ``dataset(split)``: a ``torch.utils.data.Dataset`` with a ``collater(list) -> batch`` method.
* ``set_epoch(split, epoch)``: called before each epoch's batches (per-epoch randomness).
* ``batches(split, epoch, batch_size, max_tokens)``: the *global* list of index batches of one
  epoch, a deterministic function of ``(seed, epoch)``; the trainer shards it across ranks and
  skips the batches already consumed when it resumes in the middle of an epoch
  (``speechkit.data.epoch_iterator``).
* ``train_step`` / ``valid_step``: one forward pass returning ``(loss, sample_size, logging)``.
* ``validate(...)``: the validation metrics, identical on every rank and for every world size.
  The default runs ``valid_step`` over the ``valid`` batches (:meth:`Task.validate_batches`);
  tasks whose metric is not a sum of per-batch numbers (EER over a trial list) override it.

Optional protocol of the other components, declared where they are defined, with these
defaults: a criterion's ``test_normalize = False`` (L2-normalise embeddings before scoring,
``speechkit.criterions.base.Criterion``); an LR scheduler's ``maximize = False`` (set by the
trainer from ``checkpoint.maximize_best_checkpoint_metric``); ``Task.embed_dim = None`` (the
embedding size D of the task's model, for the tasks that have one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechkit import distributed as dist_utils
from speechkit.data.epoch_iterator import Batching, make_loader, move_to_device, shard
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY


def model_embed_dim(model: nn.Module, task_name: str) -> int:
    """The embedding size D a model declares as ``model.embed_dim``.

    Raises:
        ConfigError: the model has no integer ``embed_dim`` attribute.
    """
    try:
        dim = model.embed_dim
    except AttributeError:
        dim = None
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ConfigError(
            f"task {task_name} needs a model with an integer embed_dim attribute (the "
            f"embedding size D); {type(model).__name__} has {dim!r}"
        )
    return dim


class Task:
    """Base class of all tasks.

    Args:
        cfg: the task's registered config dataclass. Implementations check their data paths
            in ``__init__`` and raise ``speechkit.errors.DataError`` naming the missing file, so
            a bad path fails before any model is built.
        seed: ``common.seed``; kept as ``self.seed`` and handed to every dataset the task builds.
    """

    required: tuple[str, ...] = ()
    """Config fields that must be set (not ``???``, empty or null); checked first."""
    needs: str = ""
    """One line naming the paths the task reads (``task.data=DIR with train.tsv ...``), quoted
    by :meth:`missing_config_error` when a required field is not set."""
    embed_dim: int | None = None
    """Embedding size D of the task's model, for tasks that have one (speaker verification,
    embedding enhancement); criterions read it when their own ``embed_dim`` is not set."""

    def __init__(self, cfg: SpeechkitDataclass, seed: int = 1):
        self.cfg = cfg
        self.seed = int(seed)
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

    def set_epoch(self, split: str, epoch: int) -> None:
        """Called by the trainer before the batches of ``epoch`` (1-based) of ``split`` are
        drawn. Tasks whose datasets draw per-epoch randomness (crops, augmentation) pass the
        epoch on; the default does nothing."""

    def data_state(self) -> dict[str, Any]:
        """What the checkpoint keeps about the training data, beyond the config (saved as
        ``train_state["data"]``, read back by :meth:`check_resume`). Tasks that stream shards
        return ``speechkit.data.epoch_iterator.shards_state`` (the index digest); the default
        keeps nothing."""
        return {}

    def check_resume(self, state: dict, env: Any, batching: Batching) -> None:
        """Called with a checkpoint's ``state`` before a mid-epoch resume (unless
        ``checkpoint.reset_dataloader``). Tasks that stream their data (``task.shards``) refuse
        a resume whose world size, workers or buffer differ from the checkpoint's, or whose
        data differ (a list run's checkpoint resumed from shards or the reverse, another shard
        index: ``speechkit.data.epoch_iterator.check_data_resume``), since the position would
        then name other items; the default accepts every resume.

        Raises:
            ConfigError: the resume position cannot be honoured with these settings.
        """

    def batches(
        self,
        split: str,
        epoch: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[Any]]:
        """Global batches of one epoch (same on every rank); deterministic in
        ``(self.seed, epoch)``.

        Args:
            split: ``"train"`` or ``"valid"``.
            epoch: 1-based epoch (seeds the shuffling together with ``self.seed``).
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
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float] | None:
        """The validation metrics, identical on every rank and for every world size; ``None``
        when the task has nothing to validate on.

        The default: epoch 1's ``valid`` batches (``batches("valid", 1, ...)`` with
        ``batching``'s sizes) through :meth:`validate_batches`. Overrides must keep the two
        properties (every rank returns the same dict, whatever ``env.world_size``).

        Args:
            model, criterion: in eval mode, under ``torch.no_grad`` (the trainer's autocast).
            env: the ``speechkit.distributed.DistributedEnv`` (rank, world size).
            batching: ``dataset.batch_size`` / ``max_tokens`` / loader workers.
        """
        if not self.has_split("valid"):
            return None
        batching = batching or Batching()
        self.set_epoch("valid", 1)
        batches = self.batches("valid", 1, batching.batch_size, batching.max_tokens)
        return self.validate_batches(
            self.dataset("valid"), batches, model, criterion, device, env, batching
        )

    @torch.no_grad()
    def validate_batches(
        self,
        dataset: Any,
        batches: list[list[Any]],
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float]:
        """Validation over fixed global ``batches`` of ``dataset`` whatever the world size: the
        one batch-wise validation loop.

        Rank r runs batches r, r + W, ... (none is dropped to even the ranks out, and a batch's
        composition never depends on W). The per-batch logging outputs of all ranks are
        gathered and summed in global batch order on every rank, then passed to
        :meth:`reduce_metrics`: every rank returns the same metrics, bit for bit those of a
        single-process run given the same per-batch numbers. ``model`` may be DDP-wrapped (its
        ``module`` is used: no collective runs inside the forward pass).

        Args:
            batching: loader settings (only ``num_workers``, ``prefetch_factor`` and
                ``pin_memory`` are used); default: load in this process.
        """
        rank = 0 if env is None else env.rank
        world = 1 if env is None else env.world_size
        net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        mine = shard(batches, rank, world, drop_uneven=False)
        logs = []
        if mine:
            # a private generator with a fixed seed: validation draws nothing from (and
            # depends on nothing in) the global RNG
            loader = make_loader(dataset, mine, batching or Batching(), seed=0)
            for sample in loader:
                if device.type != "cpu":
                    sample = move_to_device(sample, device)
                _, sample_size, log = self.valid_step(sample, net, criterion)
                logs.append({"sample_size": float(sample_size), **log})
        sums: dict[str, float] = {}
        for log in dist_utils.gather_shards(logs):
            for k, v in log.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return self.reduce_metrics(sums, criterion)

    def reduce_metrics(self, sums: dict[str, float], criterion: nn.Module) -> dict[str, float]:
        """Summed logging outputs -> reported metrics (defaults to the criterion's rule)."""
        return criterion.reduce_metrics(sums)

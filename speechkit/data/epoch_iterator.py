"""The batches of one epoch on one rank: sharding, resuming mid-epoch, loading, grouping.

A task lists the *global* batches of an epoch (``Task.batches``, a deterministic function of
``(seed, epoch)``). For training they reach the model like this::

    global batches -> drop the tail that W does not divide -> rank r takes r, r + W, ...
                   -> skip the batches consumed before a resume -> DataLoader (workers)
                   -> groups of ``update_freq`` micro-batches (one group per update)

so every rank runs the same number of updates (DDP needs it) and a resumed epoch continues with
the very batches an uninterrupted one would have run.

A streaming dataset (tar shards, ``speechkit.data.shard_dataset.ShardDataset``) has no batch
list: its task's ``batches`` returns a :class:`StreamBatches` (batch size and collater) instead.
The dataset is then placed on this rank (``equal_ranks``: the same item count everywhere), set
to resume at item ``skip * batch_size`` of the rank's stream, loaded one item per fetch and
collated in groups of ``batch_size`` (incomplete tail dropped): ``len(dataset) // batch_size``
batches per rank and epoch. The stream's order depends on the world size, the loader workers and
the shuffle buffer, so a mid-epoch resume needs the interrupted run's values
(:func:`check_stream_resume` refuses others) and the same data: a task that reads either a list
or shards refuses to resume the one's position in the other, or in another shard index
(:func:`check_data_resume`; a checkpoint keeps the index digest, :func:`shards_state`).
Validation shards without dropping (``shard(..., drop_uneven=False)``): every batch is run by
exactly one rank (``Task.validate_batches``). This follows fairseq's ``EpochBatchIterator``
(``fairseq/data/iterators.py``), without its in-memory resume of a half-consumed loader.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from speechkit.data.shard_dataset import batched, make_shard_loader
from speechkit.data.shards import ShardIndex
from speechkit.errors import ConfigError

__all__ = [
    "Batching",
    "EpochIterator",
    "StreamBatches",
    "check_data_resume",
    "check_stream_resume",
    "make_loader",
    "move_to_device",
    "shard",
    "shards_state",
    "stream_layout",
]

logger = logging.getLogger(__name__)


def move_to_device(sample: Any, device: torch.device) -> Any:
    """Copy the tensors of a collated batch (nested dicts, lists, tuples) to ``device``;
    other values are returned as they are. Non-blocking (pinned host memory overlaps)."""
    if torch.is_tensor(sample):
        return sample.to(device, non_blocking=True)
    if isinstance(sample, dict):
        return {k: move_to_device(v, device) for k, v in sample.items()}
    if isinstance(sample, list | tuple):
        return type(sample)(move_to_device(v, device) for v in sample)
    return sample


def shard(batches: Sequence[Any], rank: int, world_size: int, drop_uneven: bool) -> list[Any]:
    """Rank ``rank``'s share of ``batches``: batches ``rank, rank + W, ...``.

    Args:
        drop_uneven: first drop the ``len(batches) % W`` last batches, so that every rank gets
            the same number (training); ``False`` keeps them all (validation: ranks then differ
            by at most one batch, and every batch is run exactly once).
    """
    if world_size <= 1:
        return list(batches)
    if drop_uneven:
        batches = batches[: len(batches) - len(batches) % world_size]
    return list(batches[rank::world_size])


@dataclass(frozen=True)
class Batching:
    """How a split is cut into batches and loaded (the ``dataset`` config section).

    Attributes:
        batch_size: items per batch and rank (``None``: the task's default).
        max_tokens: padded audio samples per batch and rank, for tasks that batch by length.
        num_workers: DataLoader worker processes (0: load in the main process).
        prefetch_factor: batches each worker loads ahead.
        pin_memory: page-locked host memory (for a GPU).
    """

    batch_size: int | None = None
    max_tokens: int | None = None
    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = False


def _ignore_signals_in_worker(_: int) -> None:
    # slurm signals every process of the step; a data worker must not die from SIGUSR1/SIGTERM
    # before the main process has saved its checkpoint
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Any, batches: list[Any], batching: Batching, seed: int) -> DataLoader:
    """A DataLoader over the fixed ``batches`` (lists of dataset keys), collated by
    ``dataset.collater``. Workers ignore SIGUSR1/SIGTERM (the main process handles them).

    Args:
        seed: seeds the loader's private generator: making an iterator then draws nothing from
            the global RNG, so a resumed run sees the dropout masks an uninterrupted one sees.
    """
    workers = batching.num_workers
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=dataset.collater,
        num_workers=workers,
        pin_memory=batching.pin_memory,
        worker_init_fn=_ignore_signals_in_worker if workers > 0 else None,
        prefetch_factor=batching.prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass(frozen=True)
class StreamBatches:
    """The batches of one epoch of a streaming dataset (what ``Task.batches`` returns for one).

    Attributes:
        batch_size: items per batch and rank.
        collater: ``collater(items) -> batch``.
    """

    batch_size: int
    collater: Callable[[list[Any]], Any]


def stream_layout(world_size: int, batching: Batching, shard_buffer: int) -> dict[str, Any]:
    """What a streamed epoch's order depends on, by dotted name (for :func:`check_stream_resume`)."""
    return {
        "world_size": world_size,
        "dataset.num_workers": batching.num_workers,
        "dataset.batch_size": batching.batch_size,
        "task.shard_buffer": shard_buffer,
    }


def check_stream_resume(state: dict, current: dict[str, Any]) -> None:
    """Refuse to resume a streaming epoch in the middle with another data layout.

    Args:
        state: the checkpoint (``Trainer.state_dict``): ``train_state`` (``iterations_in_epoch``,
            ``world_size``) and ``cfg``.
        current: this run's values by dotted name: ``world_size`` (from ``train_state``), other
            names from the saved config (``dataset.num_workers``, ``task.shard_buffer`` ...).
            The shard folder's path is not compared: shards copied elsewhere resume alike.

    Raises:
        ConfigError: the checkpoint stopped inside an epoch and one of the values differs
            (all differences named); the run can restart its data with
            ``checkpoint.reset_dataloader=true``.
    """
    ts = state.get("train_state") or {}
    if not ts.get("iterations_in_epoch"):
        return  # at an epoch boundary: any layout starts the next epoch afresh
    cfg = state.get("cfg") or {}

    def saved(name: str) -> Any:
        if name == "world_size":
            return ts.get("world_size", 1)
        node: Any = cfg
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    diff = [f"{k}={saved(k)!r} (now {v!r})" for k, v in current.items() if saved(k) != v]
    if diff:
        raise ConfigError(
            f"the checkpoint stopped {ts['iterations_in_epoch']} batches into epoch "
            f"{ts.get('epoch')} of a shard stream whose order depends on the layout: "
            f"{', '.join(diff)}; resume with the saved values, or set "
            "checkpoint.reset_dataloader=true to start the data over"
        )


def shards_state(index: ShardIndex | None) -> dict[str, Any]:
    """What a checkpoint keeps of the data a task streams (the trainer saves it as
    ``train_state["data"]``, from ``Task.data_state``): ``{"shards_sha256": hex}``, the digest
    of the ``shards.json`` read (:attr:`ShardIndex.sha256`); ``{}`` without shards."""
    return {} if index is None else {"shards_sha256": index.sha256}


def check_data_resume(
    state: dict,
    task_cfg: Any,
    list_field: str,
    layout: dict[str, Any],
    index: ShardIndex | None,
) -> None:
    """Refuse a mid-epoch resume whose position would name other items than the checkpoint's,
    for a task that reads either a list (``task.<list_field>``) or shards (``task.shards``).

    When the checkpoint stopped inside an epoch, it is refused if

    * it was written by a list run and this run reads shards, or the reverse (the saved
      config's ``task.shards`` tells which): the batch count then indexes another order;
    * both read shards and the layout differs (:func:`check_stream_resume`);
    * both read shards and the checkpoint's ``train_state["data"]["shards_sha256"]``
      (:func:`shards_state`) is not this index's digest: the folder was repacked (another
      shard size) or packed from another list. The folder's path is not compared.

    A checkpoint of a shard run saved before the digest was kept (no ``shards_sha256``) is
    accepted with a warning. At an epoch boundary every resume is accepted.

    Args:
        state: the checkpoint (``Trainer.state_dict``): ``train_state`` and ``cfg``.
        task_cfg: this run's task config (fields ``shards`` and ``list_field``).
        list_field: the field naming the task's data without shards (``train_list``; HuBERT:
            ``data``, the folder of ``train.tsv``).
        layout: this run's :func:`stream_layout` (used with shards only).
        index: this run's shard index (``None`` without shards).

    Raises:
        ConfigError: one line naming both data sources (or digests) and the remedies: resume
            with the checkpoint's data, or ``checkpoint.reset_dataloader=true`` to start the
            epoch over.
    """
    ts = state.get("train_state") or {}
    if not ts.get("iterations_in_epoch"):
        return
    saved_task = (state.get("cfg") or {}).get("task") or {}
    saved_shards = saved_task.get("shards")
    shards = getattr(task_cfg, "shards", None)
    where = (
        f"the checkpoint stopped {ts['iterations_in_epoch']} batches into epoch {ts.get('epoch')}"
    )
    remedy = "set checkpoint.reset_dataloader=true to start the epoch over"
    if bool(saved_shards) != bool(shards):

        def source(shards_dir: Any, listed: Any) -> str:
            return f"task.shards={shards_dir}" if shards_dir else f"task.{list_field}={listed}"

        was = source(saved_shards, saved_task.get(list_field))
        now = source(shards, getattr(task_cfg, list_field, None))
        raise ConfigError(
            f"{where} reading {was}, but this run reads {now}: the position would name other "
            f"items; resume with {was}, or {remedy}"
        )
    if not shards:
        return
    check_stream_resume(state, layout)
    saved_digest = (ts.get("data") or {}).get("shards_sha256")
    if not saved_digest:
        logger.warning(
            "%s of task.shards=%s, but it predates the shard index digest: nothing checks that "
            "%s is the index it was written with (if the shards were repacked, the rest of the "
            "epoch reads other items; %s)",
            where,
            saved_shards,
            index.path if index is not None else shards,
            remedy,
        )
        return
    if index is not None and saved_digest != index.sha256:
        raise ConfigError(
            f"{where} of task.shards={saved_shards} (shards.json sha256 {saved_digest[:12]}), but "
            f"{index.path} has sha256 {index.sha256[:12]} (repacked, or packed from another "
            f"list): the position would name other items; resume with the original shards, or "
            f"{remedy}"
        )


def _stream_epoch(
    dataset: Any,
    plan: StreamBatches,
    rank: int,
    world_size: int,
    skip: int,
    batching: Batching,
    seed: int,
) -> tuple[int, DataLoader, Iterator[Any]]:
    """(batches this rank runs in the epoch, the loader, its batches from ``skip`` on)."""
    dataset.set_rank(rank, world_size)
    dataset.equal_ranks = True  # DDP: the same number of updates on every rank
    total = len(dataset) // plan.batch_size
    if skip > total:
        raise ConfigError(
            f"resume position {skip} batches is beyond epoch {dataset.epoch}'s {total} batches "
            f"of {plan.batch_size} items on rank {rank} (same data and batch size?)"
        )
    dataset.set_epoch(dataset.epoch, start=skip * plan.batch_size)
    workers = batching.num_workers
    loader = make_shard_loader(
        dataset,
        workers,
        batching.prefetch_factor,
        batching.pin_memory,
        worker_init_fn=_ignore_signals_in_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    return total, loader, batched(loader, plan.batch_size, plan.collater, drop_last=True)


class EpochIterator:
    """This rank's training batches of one epoch, in groups of ``update_freq``.

    Iterating yields lists of collated micro-batches: ``update_freq`` of them, fewer for the
    epoch's last group. ``remaining`` counts the batches not yet yielded; :meth:`close` shuts
    the loader's workers down (also when the epoch is left early).

    Args:
        dataset: the split's dataset (``dataset[key]``, ``dataset.collater``), or a streaming
            one (``ShardDataset``, its epoch set) with ``batches`` a :class:`StreamBatches`.
        batches: the epoch's global batches (``Task.batches``).
        rank, world_size: this process's place; batches are sharded with ``drop_uneven``.
        skip: batches of this rank's share consumed before a resume (``iterations_in_epoch``).
        update_freq: micro-batches per update.
        batching: loader settings.
        seed: loader generator seed (see :func:`make_loader`).
    """

    def __init__(
        self,
        dataset: Any,
        batches: Sequence[Any],
        rank: int,
        world_size: int,
        skip: int,
        update_freq: int,
        batching: Batching,
        seed: int,
    ):
        self.update_freq = update_freq
        self._it: Any = None
        if isinstance(batches, StreamBatches):
            self.total, self._loader, self._batches = _stream_epoch(
                dataset, batches, rank, world_size, skip, batching, seed
            )
            self.remaining = self.total - skip
            return
        mine = shard(batches, rank, world_size, drop_uneven=True)[skip:]
        self.total = len(mine) + skip
        self.remaining = len(mine)
        self._loader = make_loader(dataset, mine, batching, seed)
        self._batches = None

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> list[Any]:
        if self.remaining == 0 or self._loader is None:
            raise StopIteration
        if self._it is None:
            self._it = iter(self._loader) if self._batches is None else self._batches
        group = [next(self._it) for _ in range(min(self.update_freq, self.remaining))]
        self.remaining -= len(group)
        return group

    def close(self) -> None:
        """Drop the loader and its iterator (worker processes end)."""
        if self._batches is not None:
            self._batches.close()  # the generator drops its loader iterator (workers end)
        self._it = self._batches = None
        self._loader = None

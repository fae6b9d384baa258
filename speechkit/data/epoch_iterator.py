"""The batches of one epoch on one rank: sharding, resuming mid-epoch, loading, grouping.

A task lists the *global* batches of an epoch (``Task.batches``, a deterministic function of
``(seed, epoch)``). For training they reach the model like this::

    global batches -> drop the tail that W does not divide -> rank r takes r, r + W, ...
                   -> skip the batches consumed before a resume -> DataLoader (workers)
                   -> groups of ``update_freq`` micro-batches (one group per update)

so every rank runs the same number of updates (DDP needs it) and a resumed epoch continues with
the very batches an uninterrupted one would have run. Validation shards without dropping
(``shard(..., drop_uneven=False)``): every batch is run by exactly one rank
(``Task.validate_batches``). This follows fairseq's ``EpochBatchIterator``
(``fairseq/data/iterators.py``), without its in-memory resume of a half-consumed loader.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

__all__ = ["Batching", "EpochIterator", "make_loader", "move_to_device", "shard"]


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


class EpochIterator:
    """This rank's training batches of one epoch, in groups of ``update_freq``.

    Iterating yields lists of collated micro-batches: ``update_freq`` of them, fewer for the
    epoch's last group. ``remaining`` counts the batches not yet yielded; :meth:`close` shuts
    the loader's workers down (also when the epoch is left early).

    Args:
        dataset: the split's dataset (``dataset[key]``, ``dataset.collater``).
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
        mine = shard(batches, rank, world_size, drop_uneven=True)[skip:]
        self.total = len(mine) + skip
        self.remaining = len(mine)
        self.update_freq = update_freq
        self._loader: DataLoader | None = make_loader(dataset, mine, batching, seed)
        self._it: Any = None

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> list[Any]:
        if self.remaining == 0 or self._loader is None:
            raise StopIteration
        if self._it is None:
            self._it = iter(self._loader)
        group = [next(self._it) for _ in range(min(self.update_freq, self.remaining))]
        self.remaining -= len(group)
        return group

    def close(self) -> None:
        """Drop the loader and its iterator (worker processes end)."""
        self._it = None
        self._loader = None

"""``Task.validate_batches``: the same metrics on 1 and 2 gloo ranks, with an uneven number of
fixed batches and a per-batch loss (so a dropped or re-composed batch would show)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from speechkit.tasks.base import Task
from tests.helpers import free_port

BATCHES = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9], [10, 11]]  # 5 batches: 3 + 2 over 2 ranks


class Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), float(i * i % 7)])

    def collater(self, items):
        return torch.stack(items)


class BatchMeanCriterion(nn.Module):
    """Per call: loss = mean over the batch of |x|^2 (a per-batch mean, sample_size 1), plus a
    count of items; both depend on how items are grouped into batches."""

    def forward(self, model, sample):
        loss = model(sample).square().sum(-1).mean()
        return loss, 1, {"loss": float(loss), "items": len(sample), "sample_size": 1}

    @staticmethod
    def reduce_metrics(sums):
        return {"loss": sums["loss"] / sums["sample_size"], "items": sums["items"]}


def run(rank: int, world: int) -> dict[str, float]:
    task = Task.__new__(Task)  # validate_batches needs no config
    torch.manual_seed(0)  # the same weights on every rank
    model = nn.Linear(2, 3)
    env = SimpleNamespace(rank=rank, world_size=world)
    return task.validate_batches(
        Items(), BATCHES, model, BatchMeanCriterion(), torch.device("cpu"), env
    )


def _worker(rank: int, world: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = run(rank, world)
    finally:
        dist.destroy_process_group()


def test_two_ranks_report_what_one_process_reports():
    single = run(0, 1)
    assert single["items"] == 12
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
        results = [dict(out[r]) for r in range(2)]
    for result in results:
        assert result["items"] == 12
        assert abs(result["loss"] - single["loss"]) < 1e-9 * max(1.0, abs(single["loss"]))

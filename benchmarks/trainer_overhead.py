"""Trainer overhead: updates/s of speechkit's Trainer vs a bare PyTorch loop, same process.

Both loops train the same small MLP (tests/user_dir_example's toy regression task) on the same
batches with Adam in fp32 on the CPU, each from a DataLoader over the same index batches, with
the same criterion call (a summed squared error divided by the batch size, loss logged). The
Trainer adds: the criterion wrapper, logging sums, the non-finite guard, the LR schedule,
gradient normalisation by sample size, metrics and (at the end) a checkpoint. Both clocks start
after the data set is built and include the epoch's batch list.

    python benchmarks/trainer_overhead.py [--updates 3000] [--hidden 256] [--batch 64]

Goal: the Trainer is at most 5% slower than the bare loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from speechkit.train import build_components  # noqa: E402
from speechkit.trainer.rng import seed_everything  # noqa: E402
from speechkit.trainer.trainer import Trainer  # noqa: E402
from tests.helpers import TOY, compose_cfg  # noqa: E402


def overrides(args, save_dir):
    return [
        *TOY,
        f"checkpoint.save_dir={save_dir}",
        f"model.hidden={args.hidden}",
        "model.dropout=0",
        f"task.dim={args.dim}",
        f"model.dim={args.dim}",
        f"dataset.batch_size={args.batch}",
        f"task.num_items={args.batch * args.updates}",
        f"optimization.max_update={args.updates}",
        "common.log_format=none",
        "common.log_interval=100",
        "dataset.disable_validation=true",
        "checkpoint.save_interval=0",
    ]


def run_trainer(args) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = compose_cfg(overrides(args, d))
        seed_everything(1)
        task, model, criterion = build_components(cfg)
        trainer = Trainer(cfg, task, model, criterion)
        task.dataset("train")  # generated and cached before the clock, as in run_bare
        t0 = time.perf_counter()
        trainer.train()
        return args.updates / (time.perf_counter() - t0)


def run_bare(args) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = compose_cfg(overrides(args, d))
        seed_everything(1)
        task, model, criterion = build_components(cfg)
        dataset = task.dataset("train")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        batches = task.batches("train", 1, cfg.common.seed, args.batch)  # the trainer's too
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, collate_fn=dataset.collater
        )
        for sample in loader:
            loss, sample_size, log = criterion(model, sample)  # same loss and logging
            (loss / sample_size).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return len(batches) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=3000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    bare, framework = [], []
    for _ in range(args.repeats):  # interleaved, best of N
        bare.append(run_bare(args))
        framework.append(run_trainer(args))
    b, f = max(bare), max(framework)
    paired = sorted(x / y for x, y in zip(bare, framework))  # each repeat's bare/trainer
    median = paired[len(paired) // 2]
    print(
        f"model: MLP {args.dim}-{args.hidden}-1, batch {args.batch}, {args.updates} updates, "
        f"CPU, 1 thread, {args.repeats} interleaved repeats"
    )
    print(f"bare PyTorch loop : {b:9.1f} updates/s (best)")
    print(f"speechkit Trainer : {f:9.1f} updates/s (best)")
    print(f"overhead          : {100 * (b / f - 1):+.1f}% best vs best, ", end="")
    print(f"{100 * (median - 1):+.1f}% median of paired repeats  (goal < 5%)")
    print(f"per update        : {1e6 * (1 / f - 1 / b):+.1f} us (best vs best)")


if __name__ == "__main__":
    main()

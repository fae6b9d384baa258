"""Trainer overhead on a realistic model: speechkit's Trainer vs a bare PyTorch loop, same process.

Both loops train ResNetSE34L (``resnet_se34l``, Chung et al. 2020, voxceleb_trainer's
``ResNetSE34L.py``) with the ``speaker_verification`` task's default loss (AAM-softmax) and Adam,
fp32, on the CPU, from the same model weights, on the same batches: 32 speakers per batch, one
2 s crop each (``task.max_frames=200``), read from ``shared/data``'s 211-speaker LibriSpeech
cohort by the task's own dataset and sampler through the same DataLoader settings (no workers).
The bare loop is what a researcher would write by hand: ``loss, n, log = criterion(model,
batch); (loss / n).backward(); opt.step(); opt.zero_grad()``. The Trainer adds the LR schedule
and update counters, the buffer snapshot and non-finite guard, logging sums, the gradient
normalisation and the epoch iterator; checkpoints and validation are off in both.

The two loops live side by side in one process and alternate in blocks of ``--block`` updates
after ``--warmup`` untimed updates each: one ``Trainer.train()`` run goes through all its
updates, and after every ``--block`` of them (timed from the end of the previous bare block) it
hands over to the bare loop for a block of its own (a ``Trainer`` subclass whose update hook
runs it; its time is not the Trainer's). So the Trainer is timed in its steady state, as a long
run pays, with its start-up outside the blocks. Identical work timed in separate runs on this
shared virtual machine varies by 15 %, slowly; alternating blocks makes both loops see the
same drift. The figures are the medians over blocks of this process's CPU seconds per update
(one intra-op thread and no data workers, so CPU time is the work done); ``config`` adds the
median of the per-block CPU ratios (Trainer / bare; 1.00 = no overhead), their mean +- 2
standard errors and range, and the same in wall time.

    python benchmarks/trainer_overhead.py [--block 4] [--repeats 12] [--threads 1]

Prints one JSON line: ``{name, device, config, figure, reference_figure, ratio}`` (figures in
seconds per update). Goal: ratio below 1.02.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import hydra
import torch
from _report import log, report
from hydra.core.global_hydra import GlobalHydra

from speechkit.cli.paths import find_shared_data
from speechkit.data.epoch_iterator import Batching, make_loader
from speechkit.train import CONFIG_DIR, build_components, prepare
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer


def compose_cfg(overrides: list[str]):
    """The composed training config for ``overrides`` (as ``python -m speechkit.train``)."""
    prepare([])
    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra.compose(config_name="train", overrides=overrides)


BATCH, MAX_FRAMES = 32, 200


def compose(shared: Path, save_dir: str, updates: int, threads: int):
    return compose_cfg(
        [
            "task=speaker_verification",
            "model=resnet_se34l",
            f"task.root={shared}",
            f"task.train_list={shared / 'lists/cohort_list.txt'}",
            f"task.max_frames={MAX_FRAMES}",
            f"dataset.batch_size={BATCH}",
            "dataset.num_workers=0",
            "dataset.disable_validation=true",
            f"optimization.max_update={updates}",
            "optimization.lr=0.001",
            "common.cpu=true",
            "common.log_format=none",
            "common.log_interval=10",
            "common.tensorboard_logdir=null",
            f"common.num_threads={threads}",
            "checkpoint.no_save=true",
            f"checkpoint.save_dir={save_dir}",
        ]
    )


def paired_blocks(shared: Path, args) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """((wall, CPU) s/update of the Trainer, the same of the bare loop) per block pair: one
    ``Trainer.train()`` run whose update hook hands over to the bare loop (``bare_blocks``) for
    ``--block`` updates after every ``--block`` of its own, past ``--warmup`` updates each."""
    bare = bare_blocks(shared, args)
    pairs = []

    class Paired(Trainer):
        mark: tuple[float, float] | None = None

        def _train_update(self, samples):
            stepped = super()._train_update(samples)
            done = self.num_updates - args.warmup
            if done == 0:
                next(bare)  # the bare loop's warm-up, outside every block
            if done >= 0 and done % args.block == 0:
                now = (time.perf_counter(), time.process_time())
                if self.mark is not None:
                    mine = tuple((n - m) / args.block for n, m in zip(now, self.mark))
                    pairs.append((mine, next(bare)))
                self.mark = (time.perf_counter(), time.process_time())
            return stepped

    with tempfile.TemporaryDirectory() as d:
        cfg = compose(shared, d, args.warmup + args.block * args.repeats, args.threads)
        seed_everything(cfg.common.seed)
        Paired(cfg, *build_components(cfg)).train()
    return pairs


def bare_blocks(shared: Path, args):
    """Generator: (wall, CPU) seconds per update of each next ``--block`` updates of a
    hand-written loop over the same data, model and optimizer, after ``--warmup`` updates."""
    with tempfile.TemporaryDirectory() as d:
        cfg = compose(shared, d, args.warmup + args.block * args.repeats, args.threads)
        seed_everything(cfg.common.seed)
        task, model, criterion = build_components(cfg)
        torch.set_num_threads(args.threads)
        params = [p for p in [*model.parameters(), *criterion.parameters()] if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.optimization.lr)
        dataset = task.dataset("train")
        model.train()
        criterion.train()

        def updates():
            epoch = 1
            while True:
                task.set_epoch("train", epoch)
                batches = task.batches("train", epoch, BATCH)
                for sample in make_loader(dataset, batches, Batching(), seed=epoch):
                    loss, sample_size, _ = criterion(model, sample)
                    (loss / sample_size).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    yield
                epoch += 1

        steps = updates()
        for _ in range(args.warmup):
            next(steps)
        yield None  # warmed up
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.block):
                next(steps)
            yield (
                (time.perf_counter() - t0) / args.block,
                (time.process_time() - c0) / args.block,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--block", type=int, default=4, help="timed updates per loop and repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    p.add_argument("--repeats", type=int, default=12, help="alternating blocks per loop")
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    args = p.parse_args()
    shared = find_shared_data("lists/cohort_list.txt")
    if shared is None:
        raise SystemExit("shared/data not found (set SPEECHKIT_SHARED_DATA)")
    pairs = paired_blocks(shared, args)
    framework, bare = [p[0] for p in pairs], [p[1] for p in pairs]
    wall = [f[0] / b[0] for f, b in zip(framework, bare)]
    cpu = [f[1] / b[1] for f, b in zip(framework, bare)]
    log(f"paired wall ratios (Trainer / bare): {[round(r, 4) for r in wall]}")
    log(f"paired CPU ratios (Trainer / bare):  {[round(r, 4) for r in cpu]}")
    report(
        "trainer_overhead",
        f"cpu, {args.threads} thread(s)",
        {
            "model": "resnet_se34l + aam_softmax, Adam, fp32",
            "batch": f"{BATCH} x 2 s crops",
            "block_updates": args.block,
            "repeats": args.repeats,
            "median_paired_cpu_ratio": round(statistics.median(cpu), 4),
            # mean +- 2 standard errors: the interval the goal (< 1.02) is judged on
            "mean_paired_cpu_ratio_2se": [
                round(statistics.fmean(cpu), 4),
                round(2 * statistics.stdev(cpu) / len(cpu) ** 0.5, 4) if len(cpu) > 1 else None,
            ],
            "paired_cpu_ratio_range": [round(min(cpu), 4), round(max(cpu), 4)],
            "median_wall_s_per_update": round(statistics.median(f[0] for f in framework), 4),
            "reference_median_wall_s_per_update": round(statistics.median(b[0] for b in bare), 4),
            "median_paired_wall_ratio": round(statistics.median(wall), 4),
        },
        statistics.median(f[1] for f in framework),
        "CPU s/update of this process (lower is better)",
        "bare PyTorch loop, same model/optimizer/batches",
        statistics.median(b[1] for b in bare),
    )


if __name__ == "__main__":
    main()

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

Each repeat times ``--updates`` updates of each loop after ``--warmup`` untimed ones, the two
interleaved (bare, Trainer, bare, ...). The figures are the medians over repeats of this
process's CPU seconds per update (one intra-op thread and no data workers, so CPU time is the
work done, and other jobs on the machine disturb it far less than wall time); ``config`` adds
the median of the per-repeat CPU ratios (Trainer / bare; 1.00 = no overhead), their range, and
the same in wall time.

    python benchmarks/trainer_overhead.py [--updates 8] [--repeats 5] [--threads 1]

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


def time_trainer(shared: Path, args) -> tuple[float, float]:
    """(wall, CPU) seconds per update of ``Trainer.train`` over ``--updates`` updates (after a
    warm-up)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = compose(shared, d, args.warmup + args.updates, args.threads)
        seed_everything(cfg.common.seed)
        trainer = Trainer(cfg, *build_components(cfg))
        trainer.task.dataset("train")  # list read before the clock, as in time_bare
        trainer.cfg.optimization.max_update = args.warmup
        trainer.train()
        trainer.cfg.optimization.max_update = args.warmup + args.updates
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
        return (
            (time.perf_counter() - t0) / args.updates,
            (time.process_time() - c0) / args.updates,
        )


def time_bare(shared: Path, args) -> tuple[float, float]:
    """(wall, CPU) seconds per update of a hand-written loop over the same data, model and
    optimizer."""
    with tempfile.TemporaryDirectory() as d:
        cfg = compose(shared, d, args.warmup + args.updates, args.threads)
        seed_everything(cfg.common.seed)
        task, model, criterion = build_components(cfg)
        torch.set_num_threads(args.threads)
        params = [p for p in [*model.parameters(), *criterion.parameters()] if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.optimization.lr)
        dataset = task.dataset("train")
        model.train()
        criterion.train()
        done, epoch, t0, c0 = 0, 1, None, None
        while done < args.warmup + args.updates:
            task.set_epoch("train", epoch)
            batches = task.batches("train", epoch, BATCH)
            for sample in make_loader(dataset, batches, Batching(), seed=epoch):
                if done == args.warmup:
                    t0, c0 = time.perf_counter(), time.process_time()
                loss, sample_size, _ = criterion(model, sample)
                (loss / sample_size).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                done += 1
                if done == args.warmup + args.updates:
                    break
            epoch += 1
        return (
            (time.perf_counter() - t0) / args.updates,
            (time.process_time() - c0) / args.updates,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=8, help="timed updates per loop and repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    args = p.parse_args()
    shared = find_shared_data("lists/cohort_list.txt")
    if shared is None:
        raise SystemExit("shared/data not found (set SPEECHKIT_SHARED_DATA)")
    bare, framework = [], []
    for _ in range(args.repeats):  # interleaved
        bare.append(time_bare(shared, args))
        framework.append(time_trainer(shared, args))
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
            "timed_updates": args.updates,
            "repeats": args.repeats,
            "median_paired_cpu_ratio": round(statistics.median(cpu), 4),
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

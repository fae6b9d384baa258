"""Does the SV training step wait for data? The Trainer's ``data_wait`` with each augmentation path.

Trains voxceleb_trainer's ResNetSE34L angular-prototypical recipe
(``experiment=sv_resnet_se34l_angleproto_vox2``: 200 speakers x 2 utterances of 2 s per batch)
with the ``speaker_verification`` task's real data path (list, sampler, DataLoader workers,
augmentation with the shared noise and RIR lists) through speechkit's ``Trainer``, once per
augmentation path, and reads what the Trainer logs every ``--log-interval`` updates
(``metrics.jsonl``): ``data_wait``, the fraction of wall-clock time spent waiting for the next
batch from the loader, and ``ups``. The first interval (worker start-up, cuDNN / allocator
warm-up) is left out. Paths:

- ``worker``: decode, crop and augment in the workers (voxceleb_trainer's way; the reference);
- ``bank``: the workers decode and crop only and send 16-bit PCM and the draws; noise mixing
  and reverberation run batched on the training device, the noise files decoded once into a
  device-resident bank (``task.augmentation.on_device=true noise_bank=true``; the figure);
- ``device``: on the device, the workers sending the noise segments and RIRs themselves;
- ``clean``: no augmentation (what decode and crop alone leave the step waiting).

The data: the 211 one-utterance speakers of ``shared/data/lists/cohort_list.txt``, each file
listed ``--copies`` times (the sampler then makes one long epoch; crops are random, so the batches
differ). Run from the repository root, on a GPU (the goal: the step never waits with 8 workers)::

    .venv/bin/python benchmarks/sv_train_step.py --device cuda --workers 8

or ``--quick`` on a CPU (8 speakers x 2 x 1 s, 2 workers, fp32: a check that it runs; on a CPU
the model step is so slow that no path waits). JSON line: the ``bank`` path's ``data_wait``
(lower is better) against the ``worker`` path's, with every path's ``data_wait`` and seconds per
update in ``config``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _report import device_label, log, report
from trainer_overhead import compose_cfg

from speechkit.cli.paths import find_shared_data
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer

PATHS = {
    "worker": ["task.augment=true", "task.augmentation.on_device=false"],
    "bank": [
        "task.augment=true",
        "task.augmentation.on_device=true",
        "task.augmentation.noise_bank=true",
    ],
    "device": ["task.augment=true", "task.augmentation.on_device=true"],
    "clean": ["task.augment=false"],
}


def write_train_list(shared: Path, copies: int, out: Path) -> int:
    """``copies`` lines per speaker of the cohort list into ``out``; returns the speakers."""
    rows = (shared / "lists/cohort_list.txt").read_text().splitlines()
    out.write_text("".join(f"{row}\n" for row in rows for _ in range(copies)))
    return len(rows)


def run_path(shared: Path, train_list: Path, path: str, args) -> dict[str, float]:
    """Train ``--updates`` updates on one path; the data-wait fraction and seconds per update
    over the log intervals after the first."""
    lists = shared / "lists"
    with tempfile.TemporaryDirectory() as save_dir:
        cfg = compose_cfg(
            [
                "experiment=sv_resnet_se34l_angleproto_vox2",
                f"task.root={shared}",
                f"task.train_list={train_list}",
                "task.test_list=null",
                f"task.max_frames={args.max_frames}",
                f"task.augmentation.noise_list={lists / 'noise_list.txt'}",
                f"task.augmentation.rir_list={lists / 'rir_list.txt'}",
                f"dataset.batch_size={args.speakers}",
                f"dataset.num_workers={args.workers}",
                "dataset.disable_validation=true",
                "optimization.max_epoch=0",
                f"optimization.max_update={args.updates}",
                f"common.log_interval={args.log_interval}",
                f"common.cpu={str(args.device == 'cpu').lower()}",
                f"common.precision={args.precision}",
                "common.log_format=none",
                "common.tensorboard_logdir=null",
                "checkpoint.save_interval_updates=0",  # metrics.jsonl needs a save_dir; one save at the end
                f"checkpoint.save_dir={save_dir}",
                *PATHS[path],
            ]
        )
        seed_everything(cfg.common.seed)
        trainer = Trainer(cfg, *build_components(cfg))
        trainer.train()
        lines = (Path(save_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    train = [r for r in records if r.get("split") == "train"][1:]  # first interval: warm-up
    if not train:
        raise SystemExit(
            f"sv_train_step: no log interval after the first ({args.updates} updates, interval "
            f"{args.log_interval}); raise --updates"
        )
    walls = [args.log_interval / r["ups"] for r in train]
    waited = sum(r["data_wait"] * w for r, w in zip(train, walls, strict=True))
    result = {
        "data_wait": waited / sum(walls),
        "s_per_update": sum(walls) / (len(train) * args.log_interval),
    }
    log(f"{path:>6}: data_wait {result['data_wait']:.4f}, {result['s_per_update']:.3f} s/update")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    p.add_argument("--speakers", type=int, default=200, help="speakers per batch (2 crops each)")
    p.add_argument("--max-frames", type=int, default=200, help="crop length, 10 ms frames")
    p.add_argument("--updates", type=int, default=60)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="default: bf16 on a GPU (the recipe's), fp32 on a CPU",
    )
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=["worker", "bank"])
    p.add_argument("--quick", action="store_true", help="8 speakers x 2 x 1 s, 2 workers")
    args = p.parse_args()
    if args.quick:
        args.speakers, args.max_frames, args.workers = 8, 100, 2
        args.updates, args.log_interval = 6, 2
    if args.precision is None:
        args.precision = "fp32" if args.device == "cpu" else "bf16"
    for needed in ("worker", "bank"):
        if needed not in args.paths:
            args.paths.append(needed)
    shared = find_shared_data("lists/cohort_list.txt")
    if shared is None:
        raise SystemExit("shared/data not found (set SPEECHKIT_SHARED_DATA)")
    with tempfile.TemporaryDirectory() as d:
        train_list = Path(d) / "train_list.txt"
        # enough utterances per speaker for one epoch of all updates (2 per batch)
        speakers = write_train_list(shared, 2 * args.updates + 2, train_list)
        if speakers < args.speakers:
            raise SystemExit(f"--speakers {args.speakers}: the cohort list has {speakers}")
        results = {path: run_path(shared, train_list, path, args) for path in args.paths}
    report(
        name="sv_train_step",
        device=device_label(args.device),
        config={
            "recipe": "sv_resnet_se34l_angleproto_vox2 (ResNetSE34L, angleproto, Adam)",
            "batch": f"{args.speakers} speakers x 2 x {args.max_frames * 10} ms",
            "workers": args.workers,
            "precision": args.precision,
            "updates": args.updates,
            "log_interval": args.log_interval,
            "data_wait": {k: round(v["data_wait"], 4) for k, v in results.items()},
            "s_per_update": {k: round(v["s_per_update"], 4) for k, v in results.items()},
        },
        figure=results["bank"]["data_wait"],
        unit="fraction of training wall time waiting for the loader (lower is better)",
        reference="decode + crop + augment in the workers (task.augmentation.on_device=false)",
        reference_figure=results["worker"]["data_wait"],
    )


if __name__ == "__main__":
    main()

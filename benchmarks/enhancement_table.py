#!/usr/bin/env python
"""Raw vs enhanced EER of every enhancement model x loss on the real test data.

Run from the repository root::

    .venv/bin/python benchmarks/enhancement_table.py [--data ../shared/data] [--work DIR] \\
        [--checkpoint sv.pt | --sv-updates 100] [--epochs 20] [--batch-size 64] [--lr 1e-3] \\
        [--models enhancement_residual,...] [--criterions enh_cosine,...] [--threads 1] [--quick]

Pipeline (the speaker-embedding enhancement system of Dorika0203/proj_2022NC, ``m_gen_embs.py``,
``m_comb_embs.py``, ``m_trainer.py``):

1. a small ECAPA-TDNN speaker model is trained for ``--sv-updates`` updates on the 6 speakers
   of ``lists/split_train_list.txt`` (or ``--checkpoint`` is used);
2. ``speechkit-dump-embeddings`` embeds ``lists/librispeech_test_other_train_all.txt`` (10
   speakers x 10) and ``lists/cohort_list.txt`` (211 speakers x 1);
3. ``speechkit-combine-embeddings`` builds the speaker targets;
4. ``speechkit-make-enhancement-lists`` writes normal / triplet / distribution train lists over
   the 6 train speakers + the cohort (distribution categories: blocks of 5 utterances, since
   every LibriSpeech speaker here has one chapter);
5. every model is trained with every loss through the Trainer and validated on
   ``lists/split_test_trials.txt`` (360 trials over the 4 held-out speakers): EER (%) and
   minDCF (p_target 0.05) of the raw embeddings and of the network outputs on the same trials.

This data is far too small to say which loss is best; the table shows that the pipeline works
and how far each model moves from the raw embeddings (the residual net starts at the identity).
The table goes to stderr. JSON line: the mean enhanced EER over the table's rows vs the raw EER
on the same trials (ratio < 1: the networks improve on the raw embeddings). ``--work`` defaults
to a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import device_label, log, report
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import speechkit.criterions.embedding_enhancement  # noqa: F401
import speechkit.models.embedding_enhancement  # noqa: F401
import speechkit.tasks.embedding_enhancement  # noqa: F401
from speechkit.cli import combine_embeddings, dump_embeddings, make_enhancement_lists
from speechkit.cli.paths import find_shared_data
from speechkit.train import build_components, prepare
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TRIALS = "lists/split_test_trials.txt"

MODELS = [
    "enhancement_residual",
    "enhancement_mlp5_dropout",
    "enhancement_mlp5",
    "enhancement_mlp3_dropout",
]
CRITERIONS = [
    "enh_mse",
    "enh_mae",
    "enh_cosine",
    "enh_mse_cosine",
    "enh_softmax",
    "enh_mse_softmax",
    "enh_triplet_cosine",
    "enh_mmd_cosine",
    "enh_mmd_mse",
]
LIST_FORMAT = {
    "enh_triplet_cosine": "triplet",
    "enh_mmd_cosine": "distribution",
    "enh_mmd_mse": "distribution",
}
QUIET = [
    "common.cpu=true",
    "common.log_format=none",
    "common.tensorboard_logdir=null",
    "checkpoint.no_save=true",
]


def compose_cfg(overrides: list[str]):
    """Compose ``configs/train.yaml`` as ``python -m speechkit.train`` does."""
    prepare([])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def train_speaker_model(data: Path, save_dir: Path, updates: int) -> Path:
    """A small ECAPA-TDNN (C=64, 64-d) trained with angular prototypical loss; returns
    ``checkpoint_last.pt``."""
    cfg = compose_cfg(
        [
            "task=speaker_verification",
            "model=ecapa_tdnn",
            "criterion=angleproto",
            f"task.root={data}",
            f"task.train_list={data}/lists/split_train_list.txt",
            "task.max_frames=100",
            "task.n_per_speaker=2",
            "model.channels=64",
            "model.mfa_channels=192",
            "model.n_mels=40",
            "model.embed_dim=64",
            "optimization.lr=0.002",
            f"optimization.max_update={updates}",
            "dataset.batch_size=6",
            "dataset.disable_validation=true",
            f"checkpoint.save_dir={save_dir}",
            "common.cpu=true",
            "common.log_format=none",
            "common.tensorboard_logdir=null",
            "checkpoint.save_interval=0",
        ]
    )
    seed_everything(cfg.common.seed)
    task, model, criterion = build_components(cfg)
    Trainer(cfg, task, model, criterion).train()
    return save_dir / "checkpoint_last.pt"


def prepare_data(data: Path, work: Path, checkpoint: Path) -> dict[str, Path]:
    """Dump, combine and make lists; returns the paths the task needs."""
    lists = data / "lists"
    all_list, cohort = lists / "librispeech_test_other_train_all.txt", lists / "cohort_list.txt"
    emb, targets, enh_lists = work / "emb", work / "targets", work / "lists"
    steps = [
        (
            dump_embeddings,
            [
                "--checkpoint",
                str(checkpoint),
                "--list",
                str(all_list),
                "--list",
                str(cohort),
                "--root",
                str(data),
                "--out",
                str(emb),
                "--eval-frames",
                "200",
                "--num-eval",
                "4",
                "--device",
                "cpu",
            ],
        ),
        (
            combine_embeddings,
            [
                "--emb-dir",
                str(emb),
                "--list",
                str(all_list),
                "--list",
                str(cohort),
                "--out",
                str(targets),
            ],
        ),
        (
            make_enhancement_lists,
            [
                "--list",
                str(lists / "split_train_list.txt"),
                "--list",
                str(cohort),
                "--out-dir",
                str(enh_lists),
                "--name",
                "train",
                "--formats",
                "normal,triplet,distribution",
                "--category",
                "block",
                "--emb-dir",
                str(emb),
            ],
        ),
    ]
    for module, argv in steps:
        with contextlib.redirect_stdout(sys.stderr):  # their progress lines: stdout is JSON only
            status = module.main(argv)
        if status != 0:
            raise SystemExit(f"{module.__name__} failed")
    return {
        "emb": emb,
        "targets": targets,
        "lists": enh_lists,
        "test": data / TRIALS,
    }


def enhancement_overrides(
    paths: dict[str, Path],
    model: str,
    criterion: str,
    epochs: int,
    batch_size: int,
    lr: float,
    embed_dim: int,
) -> list[str]:
    fmt = LIST_FORMAT.get(criterion, "normal")
    return [
        "task=embedding_enhancement",
        f"model={model}",
        f"criterion={criterion}",
        f"task.embedding_dir={paths['emb']}",
        f"task.target_dir={paths['targets']}",
        f"task.train_list={paths['lists'] / f'train_{fmt}_list.txt'}",
        f"task.list_format={fmt}",
        f"task.test_list={paths['test']}",
        f"model.embed_dim={embed_dim}",
        f"optimization.max_epoch={epochs}",
        f"optimization.lr={lr}",
        f"dataset.batch_size={batch_size}",
        f"dataset.validate_interval={epochs}",
        "checkpoint.best_checkpoint_metric=eer_enhanced",
        *QUIET,
    ] + (["model.activation=elu"] if model != "enhancement_residual" else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--data", default=None, help="shared data (default: found)")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--checkpoint", default=None, help="speaker model (default: train one)")
    p.add_argument("--sv-updates", type=int, default=100)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--criterions", default=",".join(CRITERIONS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--quick",
        action="store_true",
        help="10 speaker-model updates, 2 epochs, enhancement_residual x enh_cosine only",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sv_updates, args.epochs = 10, 2
        args.models, args.criterions = "enhancement_residual", "enh_cosine"
    torch.set_num_threads(args.threads)
    data = find_shared_data(TRIALS, args.data)
    if data is None:
        raise SystemExit(
            f"enhancement_table: {args.data or 'shared data'}: no {TRIALS}; expected the shared "
            "test data (--data DIR or $SPEECHKIT_SHARED_DATA)"
        )
    if args.work:
        return run(args, data, Path(args.work))
    with tempfile.TemporaryDirectory(prefix="speechkit_enhancement_table_") as work:
        return run(args, data, Path(work))


def run(args, data: Path, work: Path) -> int:
    """Build the embeddings in ``work``, train every model x loss, log the table and report."""
    t0 = time.perf_counter()
    checkpoint = (
        Path(args.checkpoint)
        if args.checkpoint
        else train_speaker_model(data, work / "sv", args.sv_updates)
    )
    paths = prepare_data(data, work, checkpoint)
    embed_dim = int(np.load(next(paths["emb"].rglob("*.npy"))).shape[-1])
    log(f"speaker model + dump + targets + lists: {time.perf_counter() - t0:.1f}s (D={embed_dim})")

    rows = []
    for model_name in args.models.split(","):
        for crit_name in args.criterions.split(","):
            t1 = time.perf_counter()
            cfg = compose_cfg(
                enhancement_overrides(
                    paths, model_name, crit_name, args.epochs, args.batch_size, args.lr, embed_dim
                )
            )
            seed_everything(cfg.common.seed)
            task, model, criterion = build_components(cfg)
            trainer = Trainer(cfg, task, model, criterion)
            trainer.train()
            m = trainer.validate()
            rows.append((model_name, crit_name, m, trainer.num_updates, time.perf_counter() - t1))
            log(
                f"{model_name:26s} {crit_name:20s} EER raw {m['eer_raw']:6.2f}  enhanced "
                f"{m['eer_enhanced']:6.2f}  ({trainer.num_updates} updates, "
                f"{time.perf_counter() - t1:.1f}s)"
            )

    trials = int(rows[0][2]["num_trials"])
    log(
        f"\nRaw vs enhanced on {paths['test'].name} ({trials} trials, same trials for both); "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}"
    )
    header = (
        "| model | loss | EER raw % | EER enhanced % | minDCF0.05 raw | "
        "minDCF0.05 enhanced | updates | time s |"
    )
    log(header)
    log("|" + "---|" * 8)
    for model_name, crit_name, m, updates, secs in rows:
        log(
            f"| {model_name} | {crit_name} | {m['eer_raw']:.2f} | {m['eer_enhanced']:.2f} | "
            f"{m['min_dcf_raw']:.3f} | {m['min_dcf_enhanced']:.3f} | {updates} | {secs:.1f} |"
        )
    report(
        name="enhancement_table",
        device=device_label("cpu"),
        config={
            "trials": trials,
            "rows": len(rows),
            "models": args.models.split(","),
            "criterions": args.criterions.split(","),
            "sv_updates": None if args.checkpoint else args.sv_updates,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "embed_dim": embed_dim,
        },
        figure=statistics.mean(m["eer_enhanced"] for _, _, m, _, _ in rows),
        unit="EER %, mean over the table's rows (lower is better)",
        reference="raw speaker embeddings on the same trials",
        reference_figure=statistics.mean(m["eer_raw"] for _, _, m, _, _ in rows),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

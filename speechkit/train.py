"""``python -m speechkit.train task=... model=... criterion=... [overrides]``

Hydra composes ``configs/train.yaml`` with the registered structured configs; speechkit then
builds the task, its model and criterion, and runs the Trainer. Hydra only composes: the run
directory is ``checkpoint.save_dir`` (the same on every rank, no timestamp) and speechkit writes
``config.yaml``, ``train.log`` and TensorBoard events there from rank 0.

Exit status: 0 done; 2 bad input (one ``speechkit: error: ...`` line); 75 pre-empted by
SIGUSR1/SIGTERM after saving ``checkpoint_last.pt`` (requeue the job to resume); 1 other errors.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from speechkit import components
from speechkit.config import register_train_schema
from speechkit.distributed import DistributedEnv, destroy_distributed, detect_env, init_distributed
from speechkit.errors import SpeechkitError
from speechkit.registry import TASK_REGISTRY
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import EXIT_PREEMPTED, Preempted, Trainer
from speechkit.user_dir import import_user_module, user_dir_from_argv

CONFIG_DIR = os.environ.get(
    "SPEECHKIT_CONFIG_DIR", str(Path(__file__).resolve().parents[1] / "configs")
)
logger = logging.getLogger("speechkit.train")


def setup_logging(env: DistributedEnv, save_dir: str | None) -> None:
    """Rank 0 logs INFO to stderr and ``<save_dir>/train.log``; other ranks WARNING only."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    prefix = f"[rank {env.rank}] " if env.is_distributed else ""
    fmt = logging.Formatter(
        f"%(asctime)s | %(levelname)s | {prefix}%(name)s | %(message)s", "%Y-%m-%d %H:%M:%S"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    root.setLevel(logging.INFO if env.is_master else logging.WARNING)
    if env.is_master and save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(save_dir) / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def build_components(cfg: DictConfig):
    """Build ``(task, model, criterion)`` from a composed config."""
    task = TASK_REGISTRY.build(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion


def main(cfg: DictConfig) -> int:
    """Train with a composed config; returns the process exit status."""
    env = detect_env()
    setup_logging(env, cfg.checkpoint.save_dir)
    try:
        device = init_distributed(
            env,
            expected_world_size=cfg.distributed.world_size,
            backend=cfg.distributed.backend,
            use_cuda=not cfg.common.cpu,
            timeout_minutes=cfg.distributed.timeout_minutes,
        )
        if cfg.common.deterministic:
            import torch

            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.common.seed)  # identical initial weights on every rank
        task, model, criterion = build_components(cfg)
        if env.is_master:
            Path(cfg.checkpoint.save_dir).mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, Path(cfg.checkpoint.save_dir) / "config.yaml", resolve=True)
            n_params = sum(p.numel() for p in model.parameters())
            logger.info(
                "task %s | model %s (%.2fM parameters) | criterion %s | %d process(es) "
                "via %s | device %s",
                cfg.task._name,
                cfg.model._name,
                n_params / 1e6,
                cfg.criterion._name,
                env.world_size,
                env.launcher,
                device,
            )
        trainer = Trainer(cfg, task, model, criterion, env, device)
        trainer.train()
        logger.info(
            "done: %d updates, best %s = %s",
            trainer.num_updates,
            cfg.checkpoint.best_checkpoint_metric,
            trainer.best_metric,
        )
        return 0
    except SpeechkitError as e:
        print(f"speechkit: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        logger.warning("pre-empted: %s; exiting with status %d for requeue", e, EXIT_PREEMPTED)
        return EXIT_PREEMPTED
    finally:
        destroy_distributed()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    status = main(cfg)
    if status:
        sys.exit(status)


def prepare(argv: list[str] | None = None) -> None:
    """Register everything Hydra needs before composing (built-ins, schema, user module)."""
    components.import_all()
    register_train_schema()
    user_dir = user_dir_from_argv(sys.argv[1:] if argv is None else argv)
    if user_dir:
        import_user_module(user_dir)


def cli_main() -> None:
    try:
        prepare()
    except SpeechkitError as e:
        print(f"speechkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    cli_main()

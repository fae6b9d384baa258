"""Helpers shared by the trainer/CLI tests: composing configs and running the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
USER_DIR = REPO_ROOT / "tests" / "user_dir_example"
TOY = [
    f"common.user_dir={USER_DIR}",
    "task=toy_regression",
    "model=toy_mlp",
    "criterion=squared_error",
    "common.cpu=true",
    "common.log_format=simple",
    "common.tensorboard_logdir=null",
]


def prepare_registries() -> None:
    """Built-in registrations + the schema + the example user module (once per process)."""
    from speechkit.train import prepare

    prepare([f"common.user_dir={USER_DIR}"])


def compose_cfg(overrides: list[str]):
    prepare_registries()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "speechkit.train", *overrides]


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") or k.startswith(
            "SLURM_"
        ):
            env.pop(k)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_train(*overrides: str, timeout: float = 180, check: bool = True):
    proc = subprocess.run(
        train_cmd(*overrides),
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def read_metrics(save_dir: Path, split: str = "valid") -> dict[int, dict]:
    """``{update: record}`` of the ``split`` records of ``<save_dir>/metrics.jsonl`` (rank 0's
    metrics log; see ``speechkit.trainer.metrics.RunLog``)."""
    import json

    lines = (Path(save_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["update"]: r for r in records if r["split"] == split}


def run_torchrun(*overrides: str, nproc: int = 2, timeout: float = 300):
    """``torchrun --nproc_per_node=N -m speechkit.train ...`` on one node (gloo on the CPU);
    returns the finished process (the caller checks its status)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1"]
    cmd += [f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    return subprocess.run(
        [*cmd, "-m", "speechkit.train", *overrides],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""CUDA checks, selected only with ``pytest -m gpu`` on a machine with a GPU (see conftest.py).

They fail, never skip, when selected without CUDA. Not run in CI (no GPU there).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.helpers import (
    REPO_ROOT,
    TOY,
    clean_env,
    free_port,
    load_model_weights,
    run_train,
    train_cmd,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.fail("selected with -m gpu but torch.cuda.is_available() is False")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(tmp_path, precision):
    run_dir = tmp_path / "run"
    run_train(
        *[o for o in TOY if o != "common.cpu=true"],
        "common.cpu=false",
        f"common.precision={precision}",
        "optimization.max_update=20",
        f"checkpoint.save_dir={run_dir}",
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("split") == "train" and "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    weights = load_model_weights(run_dir / "checkpoint_last.pt")
    assert all(t.device.type == "cpu" for t in weights.values())  # saved device-free


def test_nccl_process_group_on_one_gpu(tmp_path):
    """One rank through torchrun's variables with the NCCL backend: init, all-reduce, train."""
    run_dir = tmp_path / "run"
    env = clean_env()
    env.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    proc = subprocess.run(
        train_cmd(
            *[o for o in TOY if o != "common.cpu=true"],
            "common.cpu=false",
            "distributed.backend=nccl",
            "optimization.max_update=10",
            f"checkpoint.save_dir={run_dir}",
        ),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "done: 10 updates" in proc.stderr

"""Two gloo processes (torchrun) train exactly like one process with the same global batch."""

from __future__ import annotations

import pytest
import torch

from speechkit.distributed import detect_env, expand_slurm_nodelist
from tests.helpers import (
    TOY,
    load_model_weights,
    run_torchrun,
    run_train,
)

pytestmark = pytest.mark.slow


def test_two_processes_equal_one_process(tmp_path):
    common = [
        *TOY,
        "model.dropout=0",
        "optimization.max_update=12",
        "optimization.lr=0.01",
        "optimization.update_freq=2",
    ]
    run_train(*common, "dataset.batch_size=16", f"checkpoint.save_dir={tmp_path / 'one'}")
    two = tmp_path / "two"
    proc = run_torchrun(
        *common, "dataset.batch_size=8", "distributed.world_size=2", f"checkpoint.save_dir={two}"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es) via torchrun" in proc.stderr
    a = load_model_weights(tmp_path / "one" / "checkpoint_last.pt")
    b = load_model_weights(two / "checkpoint_last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    state = torch.load(two / "checkpoint_last.pt", weights_only=True)
    assert state["train_state"]["num_updates"] == 12
    assert len(state["rng"]) == 2  # each rank's RNG state is kept for an exact resume
    # only rank 0 writes: one log file, no per-rank files
    assert sorted(p.name for p in two.iterdir() if p.suffix in (".log", ".yaml")) == [
        "config.yaml",
        "train.log",
    ]


def test_detect_torchrun_env():
    env = detect_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "h1",
            "MASTER_PORT": "1234",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (3, 8, 1, "torchrun")
    assert (env.master_addr, env.master_port) == ("h1", 1234)


def test_detect_slurm_env():
    env = detect_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "16",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_JOB_ID": "4242",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (5, 16, 1, "slurm")
    assert env.master_addr == "gpu07" and env.master_port == 10000 + 4242
    # one slurm task (e.g. sbatch without srun) is a single process
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).launcher == "single"
    assert detect_env({}).world_size == 1


def test_expand_nodelist():
    assert expand_slurm_nodelist("n[001-003,010],login2") == [
        "n001",
        "n002",
        "n003",
        "n010",
        "login2",
    ]
    assert expand_slurm_nodelist("a1") == ["a1"]

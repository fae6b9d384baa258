"""CUDA checks, selected only with ``pytest -m gpu`` on a machine with a GPU (see conftest.py).

They fail, never skip, when selected without CUDA. Not run in CI (no GPU there).
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from speechkit.data.audio import read_audio
from speechkit.data.augment import Augmenter, read_babble_list, read_noise_list, read_rir_list
from speechkit.data.crop import random_crop
from speechkit.data.lists import read_train_list
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import (
    REPO_ROOT,
    TOY,
    clean_env,
    compose_cfg,
    free_port,
    load_model_weights,
    run_train,
    train_cmd,
)
from tests.test_device_augment import CROP, _worker_and_device

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


@pytest.mark.parametrize("bank", [False, True], ids=["sent", "noise_bank"])
def test_device_augmentation_on_cuda_equals_the_worker_path(shared_data, bank):
    """Noise, babble, reverb and speed rendered on the GPU (cuFFT, the bank's gather) against
    the worker path on the CPU for the same draws. Reads only the cohort, noise and RIR files
    (the subset ``benchmarks/gpu_checks.sh prepare`` carries)."""
    lists = shared_data / "lists"
    aug = Augmenter(
        read_noise_list(lists / "noise_list.txt", shared_data),
        read_rir_list(lists / "rir_list.txt", shared_data),
        read_babble_list(lists / "cohort_list.txt", shared_data)[:40],
        speed_perturb=True,
    )
    items = read_train_list(lists / "cohort_list.txt", shared_data)[40:]
    rng = np.random.default_rng(0)
    crops = np.stack([random_crop(read_audio(path), CROP, rng) for _, path in items[:24]])
    worker, device, kinds = _worker_and_device(aug, crops, range(100, 124), bank, on="cuda")
    assert set(kinds) == {"none", "reverb", "babble", "noise"}
    print(
        f"\nmax |GPU - worker| ({'bank' if bank else 'sent'}): {np.abs(device - worker).max():.2e}"
    )
    np.testing.assert_allclose(device, worker, rtol=0, atol=1e-5)  # CPU: 2e-6 (float32 FFTs)


def test_compiled_cuda_run_matches_eager_and_resumes_exactly(tmp_path):
    """``common.compile=true`` on CUDA (Inductor's Triton kernels): fp32 weights after 8
    updates close to the eager run's; with dropout (Philox seeds drawn from the CUDA
    generator, which the checkpoint restores) a run stopped at 4 and resumed ends bit-exactly
    where the uninterrupted compiled run ends."""
    base = [o for o in TOY if o != "common.cpu=true"]
    base += ["common.cpu=false", "optimization.lr=0.01", "dataset.batch_size=16"]

    def run(name, updates, *extra):
        cfg = compose_cfg(
            [
                *base,
                f"checkpoint.save_dir={tmp_path / name}",
                f"optimization.max_update={updates}",
                *extra,
            ]
        )
        seed_everything(cfg.common.seed)
        Trainer(cfg, *build_components(cfg)).train()
        return load_model_weights(tmp_path / name / "checkpoint_last.pt")

    eager = run("eager", 8, "model.dropout=0")
    compiled = run("compiled", 8, "model.dropout=0", "common.compile=true")
    assert list(compiled) == list(eager)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-5)
    drop = ["common.compile=true", "model.dropout=0.2"]
    full = run("full", 8, *drop)
    run("part", 4, *drop)
    part = run("part", 8, *drop)
    for k in full:
        assert torch.equal(part[k], full[k]), k

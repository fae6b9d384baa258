"""End to end: ``python -m speechkit.train experiment=tss_demo`` on real LibriSpeech mixtures
for a few updates, with validation on the fixed mixtures (finite SI-SDRi) and a checkpoint."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from speechkit.data.embedding_dataset import embedding_path
from tests.helpers import run_train

pytestmark = pytest.mark.slow

LIST = "lists/librispeech_test_other_train_all.txt"


def test_tss_demo_trains_and_validates(shared_data, tmp_path):
    emb = tmp_path / "emb"
    rng = np.random.default_rng(0)
    for line in (shared_data / LIST).read_text().splitlines():
        if line.strip():
            path = emb / embedding_path(line.split()[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.standard_normal((2, 128)).astype(np.float32))
    save = tmp_path / "run"
    proc = run_train(
        "experiment=tss_demo",
        f"task.root={shared_data}",
        f"task.train_list={shared_data / 'lists/split_train_list.txt'}",
        f"task.valid_list={shared_data / LIST}",
        f"task.embedding_dir={emb}",
        "task.num_valid=8",
        "dataset.batch_size=4",
        "optimization.max_update=3",
        "dataset.validate_interval_updates=3",
        "checkpoint.save_interval_updates=3",
        "common.log_format=simple",
        "common.tensorboard_logdir=null",
        f"checkpoint.save_dir={save}",
        timeout=120,
    )
    log = proc.stdout + proc.stderr
    found = re.findall(r"\[valid\].*?si_sdri (\S+)", log)
    assert found, log[-3000:]
    assert all(math.isfinite(float(v)) for v in found)
    assert "sdri" in log and "loss" in log
    ckpt = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert ckpt["model"] and (save / "checkpoint_best.pt").is_file()

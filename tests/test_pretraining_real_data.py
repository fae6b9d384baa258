"""HuBERT / ContentVec pretraining on real speech (``../shared/data/lists/pretrain_manifest.tsv``,
318 utterances): the label pipeline and spk2info of ``scripts/prepare_contentvec_demo.py``, then
the ``contentvec_demo`` and ``hubert_demo`` presets (full model code, small sizes, 1 s crops)
trained on CPU. ContentVec: the masked-prediction loss falls, the accuracy rises well above
chance, a SIGKILLed run resumes from ``checkpoint_last`` and features come out of the result.
HuBERT: iteration 1 on MFCC labels, then iteration 2 on k-means of the first model's layer."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.cli import hubert_labels, prepare_contentvec_demo
from speechkit.data.manifest import read_manifest
from speechkit.inference.hubert_features import HubertFeatureExtractor
from tests.helpers import (
    REPO_ROOT,
    clean_env,
    read_metrics,
    run_torchrun,
    run_train,
    train_cmd,
)

pytestmark = pytest.mark.slow

N_CLUSTERS = 32
CHANCE = 100.0 / N_CLUSTERS  # % masked accuracy of a uniform guess over the clusters
FAST_KMEANS = ["--n-init", "2", "--max-iter", "20", "--km-batch-size", "4096", "--threads", "1"]


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contentvec_demo")
    argv = ["--out", str(out), "--shared", str(shared_data), "--n-clusters", str(N_CLUSTERS)]
    argv += ["--max-seconds", "2"]
    assert prepare_contentvec_demo.main(argv) == 0
    for name in ("train.tsv", "valid.tsv", "labels/train.km", "labels/valid.km", "spk2info.dict"):
        assert (out / name).is_file(), name
    assert len(read_manifest(out / "train.tsv")) + len(read_manifest(out / "valid.tsv")) == 318
    return out


def overrides(experiment: str, data: Path, save_dir: Path, max_update: int) -> list[str]:
    out = [
        f"experiment={experiment}",
        f"task.data={data}",
        f"task.label_dir={data / 'labels'}",
        "task.max_sample_size=16000",
        "task.min_sample_size=16000",
        "dataset.max_tokens=128000",
        "dataset.num_workers=1",
        "dataset.validate_before_training=true",
        f"dataset.validate_interval_updates={max_update}",
        f"optimization.max_update={max_update}",
        f"checkpoint.save_dir={save_dir}",
        "common.log_interval=25",
        "common.tensorboard_logdir=null",
    ]
    if experiment.startswith("contentvec"):
        out.append(f"task.spk2info={data / 'spk2info.dict'}")
    return out


def _wait_for(predicate, proc, timeout=600.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode})")
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_contentvec_demo_learns_resumes_after_kill_and_extracts(prepared, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides("contentvec_demo", prepared, run_dir, 200)
    args += ["checkpoint.save_interval_updates=60", "checkpoint.keep_last_checkpoints=3"]
    proc = subprocess.Popen(
        train_cmd(*args),
        cwd=REPO_ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: any(run_dir.glob("checkpoint_*_60.pt")), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    resumed = run_train(*args, timeout=900)
    assert re.search(
        r"resumed from .*checkpoint_last\.pt \(epoch \d+, update (6\d)", resumed.stderr
    )

    valid_log = read_metrics(run_dir)  # the resumed run kept the records up to its checkpoint
    before, after = valid_log[0], valid_log[200]
    print(f"\ncontentvec_demo valid: before {before}\nafter 200 updates {after}")
    assert after["loss_m_0"] < before["loss_m_0"] - 0.3  # bits per masked frame
    assert after["accuracy"] > 2 * CHANCE
    assert after["ctr_accuracy"] > before["ctr_accuracy"]

    ckpt = run_dir / "checkpoint_last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["train_state"]["num_updates"] == 200
    assert "encoder.layers.2.final_layer_norm.weight_ln.weight" in state["model"]

    valid = read_manifest(prepared / "valid.tsv")
    wav = Path(valid.root) / valid.paths[0]
    extractor = HubertFeatureExtractor.from_checkpoint(ckpt)
    feats = extractor.features(wav, layer=2)
    assert feats.shape == ((int(valid.sizes[0]) - 400) // 320 + 1, 96)
    assert torch.isfinite(feats).all()
    out = tmp_path / "feats"
    cmd = [
        "python",
        "-m",
        "speechkit.extract",
        f"checkpoint={ckpt}",
        "layer=2",
        f"manifest={prepared / 'valid.tsv'}",
        f"out={out}",
    ]
    proc = subprocess.run(
        [sys.executable, *cmd[1:]],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lengths = [int(x) for x in (out / "valid_0_1.len").read_text().split()]
    dumped = np.load(out / "valid_0_1.npy")
    assert len(lengths) == len(valid) and dumped.shape == (sum(lengths), 96)
    np.testing.assert_allclose(dumped[: lengths[0]], feats.numpy(), rtol=1e-4, atol=1e-4)


def test_hubert_iteration_1_then_2(prepared, tmp_path):
    it1 = tmp_path / "it1"
    run_train(*overrides("hubert_demo", prepared, it1, 150), timeout=900)
    v = read_metrics(it1)
    print(f"\nhubert_demo iteration 1 valid: before {v[0]}\nafter 150 updates {v[150]}")
    assert v[150]["loss_m_0"] < v[0]["loss_m_0"] - 0.3
    assert v[150]["accuracy"] > 2 * CHANCE

    labels_it2 = tmp_path / "labels_it2"
    argv = ["all", "--manifest", str(prepared / "train.tsv")]
    argv += ["--valid-manifest", str(prepared / "valid.tsv"), "--feature", "hubert"]
    argv += ["--checkpoint", str(it1 / "checkpoint_last.pt"), "--layer", "2"]
    argv += ["--n-clusters", str(N_CLUSTERS), "--out", str(labels_it2), *FAST_KMEANS]
    assert hubert_labels.main(argv) == 0
    rows = (labels_it2 / "train.km").read_text().splitlines()
    manifest = read_manifest(prepared / "train.tsv")
    assert len(rows) == len(manifest)
    assert len(rows[0].split()) == (int(manifest.sizes[0]) - 400) // 320 + 1  # 50 Hz labels
    assert len({u for r in rows for u in r.split()}) > N_CLUSTERS // 2

    it2 = tmp_path / "it2"
    args = overrides("hubert_demo", prepared, it2, 30)
    args += [f"task.label_dir={labels_it2}", "task.label_rate=50"]
    run_train(*args, timeout=600)
    v2 = read_metrics(it2)
    assert np.isfinite(v2[30]["loss"]) and v2[30]["loss_m_0"] < v2[0]["loss_m_0"]
    state = torch.load(it2 / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["cfg"]["model"]["label_rate"] == 50.0


def test_contentvec_demo_trains_on_two_processes(prepared, tmp_path):
    """DDP (2 gloo ranks): LayerDrop and the contrastive head idle at update 0 leave parameters
    without gradients in some updates; the preset's find_unused_parameters lets DDP cope, and
    both ranks' masked-prediction metrics are aggregated."""
    run_dir = tmp_path / "ddp"
    args = overrides("contentvec_demo", prepared, run_dir, 6)
    args += ["model.encoder_layerdrop=0.5", "distributed.world_size=2"]
    proc = run_torchrun(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es) via torchrun" in proc.stderr
    assert np.isfinite(read_metrics(run_dir)[6]["loss_m_0"])
    state = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["train_state"]["num_updates"] == 6 and len(state["rng"]) == 2

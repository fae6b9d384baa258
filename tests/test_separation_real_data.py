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


def _extra_metrics_task(shared_data, tmp_path):
    from speechkit.criterions.separation import WaveformL1Config, WaveformL1Criterion
    from speechkit.models.voicevector import VoiceVectorConfig
    from speechkit.tasks.target_speaker_separation import (
        TargetSpeakerSeparationConfig,
        TargetSpeakerSeparationTask,
    )

    emb = tmp_path / "emb"
    rng = np.random.default_rng(0)
    for line in (shared_data / LIST).read_text().splitlines():
        if line.strip():
            path = emb / embedding_path(line.split()[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.standard_normal((2, 8)).astype(np.float32))
    task = TargetSpeakerSeparationTask(
        TargetSpeakerSeparationConfig(
            root=str(shared_data),
            train_list=str(shared_data / LIST),
            valid_list=str(shared_data / LIST),
            embedding_dir=str(emb),
            emb_dim=8,
            segment=2.0,
            num_valid=6,
            valid_batch_size=2,
            valid_extra_metrics=True,
        )
    )
    torch.manual_seed(0)
    model = task.build_model(
        VoiceVectorConfig(
            _name="voicevector_ae",
            emb_dim=8,
            hidden=4,
            depth=5,
            heads=2,
            ffn_dim=16,
            transformer_layers=1,
            enrol_hidden=8,
            dropout=0.0,
            head_init=1.0,
        )
    ).eval()
    return task, model, WaveformL1Criterion(WaveformL1Config(), task)


def test_validation_extra_metrics_world_size_independent(shared_data, tmp_path, monkeypatch):
    """``task.valid_extra_metrics``: PESQ / STOI / BSS-Eval SDR of the estimate and the mixture
    and their improvement, finite on real mixtures, and the same numbers from 1 rank as from
    2 ranks' logs gathered in global batch order."""
    from types import SimpleNamespace

    from speechkit import distributed

    task, model, criterion = _extra_metrics_task(shared_data, tmp_path)
    cpu = torch.device("cpu")
    with torch.no_grad():
        single = task.validate(model, criterion, cpu, None)
    for name in ("pesq", "stoi", "bss_sdr"):
        for key in (name, f"{name}_mix", f"{name}i"):
            assert math.isfinite(single[key]), (key, single)
        assert single[f"{name}i"] == pytest.approx(single[name] - single[f"{name}_mix"])
    assert 1.0 <= single["pesq_mix"] <= 4.7 and 0.0 < single["stoi_mix"] <= 1.0
    assert math.isfinite(single["si_sdri"]) and single["num_mixtures"] == 6.0

    # two ranks: rank r runs global batches r, r + 2 (3 batches: 2 + 1), then all logs are
    # gathered; simulate the gather with each rank's captured logs
    shards = []
    monkeypatch.setattr(distributed, "all_gather_object", lambda items: [items])
    for rank in (0, 1):
        captured = []
        monkeypatch.setattr(
            distributed, "gather_shards", lambda items, c=captured: c.extend(items) or items
        )
        with torch.no_grad():
            task.validate(model, criterion, cpu, SimpleNamespace(rank=rank, world_size=2))
        shards.append(captured)
    assert [len(s) for s in shards] == [2, 1]
    assert all(log["pesq_count"] == 2.0 for s in shards for log in s)
    monkeypatch.undo()
    monkeypatch.setattr(distributed, "all_gather_object", lambda items: shards)
    with torch.no_grad():
        merged = task.validate(model, criterion, cpu, SimpleNamespace(rank=1, world_size=2))
    assert merged == single


def test_validation_extra_metrics_skip_silent_reference(shared_data, tmp_path):
    """A silent target gives NaN PESQ (a warning, not an error): that item is left out of the
    PESQ sums and count, while the others still count it."""
    from speechkit.metrics.separation import SeparationMetricWarning

    task, model, criterion = _extra_metrics_task(shared_data, tmp_path)
    dataset = task.dataset("valid")
    sample = dataset.collater([dataset[i] for i in range(3)])
    sample["target"][1] = 0.0
    with torch.no_grad(), pytest.warns(SeparationMetricWarning, match="NoUtterancesError"):
        _, size, log = task.valid_step(sample, model, criterion)
        plain = criterion(model, sample)[2]  # the criterion's own numbers, unchanged
    assert size == 3 and {k: log[k] for k in plain} == plain
    assert log["pesq_count"] == 2.0 and log["stoi_count"] == 3.0
    assert math.isfinite(log["pesq"]) and math.isfinite(log["pesqi"])
    metrics = task.reduce_metrics({"sample_size": 3.0, **log}, criterion)
    assert metrics["pesq"] == pytest.approx(log["pesq"] / 2)

"""HuBERT and ContentVec validation reports the same metrics on 1 and on 2 gloo ranks.

The trainer's one validation path (``Task.validate`` -> ``Task.validate_batches``) runs every
validation batch exactly once, on one rank, and sums the per-batch logs in global batch order:
with 8 utterances in 3 batches (2 + 1 over two ranks) the numbers equal a single process's.
Real LibriSpeech audio, random labels and speaker embeddings, the demo presets' tiny models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechkit.data.audio import audio_info
from speechkit.data.spk2info import SpeakerInfo, save_spk2info
from speechkit.distributed import DistributedEnv
from tests.helpers import compose_cfg, free_port

pytestmark = pytest.mark.slow

SPEAKERS = {"1688": "M", "2414": "M", "367": "F", "533": "F"}  # librispeech_test_other
CLUSTERS = 16


def _write_data(shared_data: Path, out: Path) -> Path:
    """train/valid manifests (2 utterances per speaker), 50 Hz random labels, a dictionary and
    a spk2info table with train and valid splits."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, labels, table = [], [], {}
    for spk, sex in SPEAKERS.items():
        files = sorted((shared_data / "speech/librispeech_test_other" / spk).glob("*.wav"))[:2]
        for f in files:
            n = audio_info(f).frames
            rows.append(f"{f.relative_to(shared_data)}\t{n}\n")
            labels.append(" ".join(map(str, rng.integers(0, CLUSTERS, (n - 400) // 320 + 1))))
        floor = 50.0 if sex == "M" else 100.0
        emb = rng.normal(size=16).astype(np.float32)
        table[spk] = SpeakerInfo(emb, floor, 300.0 if sex == "M" else 500.0)
    for split in ("train", "valid"):
        (out / f"{split}.tsv").write_text(f"{shared_data}\n" + "".join(rows))
        (out / f"{split}.km").write_text("\n".join(labels) + "\n")
    (out / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(CLUSTERS)))
    save_spk2info(out / "spk2info.dict", {"train": table, "valid": dict(table)})
    return out


def _overrides(experiment: str, data: Path, save_dir: Path) -> list[str]:
    out = [
        f"experiment={experiment}",
        f"task.data={data}",
        f"task.label_dir={data}",
        "task.label_rate=50",
        "task.max_sample_size=16000",
        "task.min_sample_size=16000",
        "dataset.max_tokens=48000",  # 3 crops per batch: 8 utterances -> 3, 3, 2
        "dataset.num_workers=0",
        "optimization.max_update=1",
        "common.tensorboard_logdir=null",
        "common.num_threads=1",
        f"checkpoint.save_dir={save_dir}",
    ]
    if experiment == "contentvec_demo":
        out += [f"task.spk2info={data / 'spk2info.dict'}", "task.perturb.formant_pitch=false"]
    return out


def _validate(overrides: list[str], rank: int, world: int) -> dict[str, float]:
    from speechkit.train import build_components
    from speechkit.trainer.rng import seed_everything
    from speechkit.trainer.trainer import Trainer

    cfg = compose_cfg(overrides)
    seed_everything(cfg.common.seed)  # the same initial weights in every process
    env = DistributedEnv(rank=rank, world_size=world)
    trainer = Trainer(cfg, *build_components(cfg), env=env)
    batches = trainer.task.batches("valid", 1, None, cfg.dataset.max_tokens)
    metrics = trainer.validate()
    return {**metrics, "_batches": float(len(batches))}


def _worker(rank: int, world: int, port: int, runs: list[list[str]], out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = [_validate(overrides, rank, world) for overrides in runs]
    finally:
        dist.destroy_process_group()


def test_hubert_and_contentvec_validation_do_not_depend_on_the_world_size(shared_data, tmp_path):
    data = _write_data(shared_data, tmp_path / "data")
    runs = [_overrides(e, data, tmp_path / e) for e in ("hubert_demo", "contentvec_demo")]
    threads = torch.get_num_threads()
    try:
        single = [_validate(overrides, 0, 1) for overrides in runs]
    finally:
        torch.set_num_threads(threads)
    for metrics in single:
        assert metrics["_batches"] == 3  # uneven over two ranks: a dropped batch would show
        assert metrics["nsentences"] == 8 and np.isfinite(metrics["loss"])
    assert "ctr_loss" in single[1]  # ContentVec's own loss is validated too
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), runs, out), nprocs=2, join=True)
        ranks = [list(out[r]) for r in range(2)]
    for per_rank in ranks:
        for metrics, expected in zip(per_rank, single):
            assert metrics.keys() == expected.keys()
            for key, value in expected.items():
                assert metrics[key] == pytest.approx(value, rel=1e-12, abs=0), key

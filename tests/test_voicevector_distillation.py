"""The two-stage VoiceVector enrolment recipe on the real speech of the talking-face clips of
``shared/data``: ``experiment=voicevector_distill_v`` distils a tiny ``voicevector_embedding_v``
(its training loss falls), then ``experiment=tss_voicevector_vem`` trains a tiny
``voicevector_vem`` composite on enrolment clips from that checkpoint (its frozen enrolment net
keeps the distilled weights exactly). Lip features and teacher vectors are random values in the
layouts ``speechkit-dump-lip-features`` and ``speechkit-dump-embeddings`` write (dumping lip
features costs ~45 s on the CPU; it is tested in tests/test_lip_features.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import read_metrics, run_train

pytestmark = pytest.mark.slow

CLIPS = [f"video/talking_heads_videoretalking/face{k}" for k in (1, 2, 3)]
EMBEDDING_NET = [
    "model.d_model=32",
    "model.transformer_layers=1",
    "model.heads=2",
    "model.ffn_dim=32",
    "model.proj_dim=16",
    "model.ecapa_channels=[32,32,32,32,96]",
    "model.ecapa_attention_channels=8",
    "model.ecapa_se_channels=8",
    "model.ecapa_res2net_scale=4",
]
RUN = [
    "dataset.num_workers=0",
    "common.log_format=simple",
    "common.log_interval=1",
    "common.tensorboard_logdir=null",
]


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """Speaker list (one speaker per clip), lip features and (2, 192) teacher crops."""
    out = tmp_path_factory.mktemp("vv_distill")
    rng = np.random.default_rng(0)
    for c in CLIPS:
        frames = -(-sf.info(shared_data / f"{c}.wav").frames // 640)  # one row per video frame
        for sub in ("lip", "emb"):
            (out / sub / c).parent.mkdir(parents=True, exist_ok=True)
        np.save(out / "lip" / f"{c}.npy", rng.standard_normal((frames, 512)).astype(np.float32))
        np.save(out / "emb" / f"{c}.npy", rng.standard_normal((2, 192)).astype(np.float32))
    speakers = out / "speakers.txt"
    speakers.write_text("".join(f"f{k} {c}.wav\n" for k, c in enumerate(CLIPS)))
    return out


@pytest.fixture(scope="module")
def distilled(data, shared_data):
    """A 16-update distillation run (one batch of the 3 clips per epoch)."""
    save = data / "distill"
    run_train(
        "experiment=voicevector_distill_v",
        f"task.root={shared_data}",
        f"task.train_list={data / 'speakers.txt'}",
        f"task.valid_list={data / 'speakers.txt'}",
        f"task.embedding_dir={data / 'emb'}",
        f"task.lip_dir={data / 'lip'}",
        *EMBEDDING_NET,
        *RUN,
        "optimization.lr=0.003",
        "dataset.batch_size=3",
        "optimization.max_update=16",
        "dataset.validate_interval=1000",  # one update per epoch: validate at update 16 only
        "dataset.validate_interval_updates=16",
        "checkpoint.save_interval_updates=16",
        f"checkpoint.save_dir={save}",
        timeout=240,
    )
    return save


def test_distillation_loss_falls_and_validation_reports_cosine(distilled):
    train = read_metrics(distilled, "train")
    losses = [train[u]["loss"] for u in sorted(train)]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4]), losses  # 0.20 vs 0.43 here
    valid = read_metrics(distilled)[16]
    assert valid["num_clips"] == 3 and -1.0 <= valid["cosine"] <= 1.0
    state = torch.load(distilled / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert state["cfg"]["model"]["_name"] == "voicevector_embedding_v"
    assert state["cfg"]["task"]["inputs"] == "v"


def test_vem_composite_trains_from_the_distilled_net(data, distilled, shared_data):
    save = data / "vem"
    enrolment = [f"model.enrolment.{o.removeprefix('model.')}" for o in EMBEDDING_NET]
    proc = run_train(
        "experiment=tss_voicevector_vem",
        f"task.root={shared_data}",
        f"task.train_list={data / 'speakers.txt'}",
        f"task.valid_list={data / 'speakers.txt'}",
        f"task.lip_dir={data / 'lip'}",
        "task.segment=1.0",
        "task.enrol_segment=2.0",
        "task.num_enrol=2",
        "task.num_positive=1",
        "task.num_valid=3",
        f"model.enrolment_checkpoint={distilled / 'checkpoint_best.pt'}",
        "model.separation_init=",
        *enrolment,
        "model.separation.hidden=8",
        "model.separation.depth=3",
        "model.separation.transformer_layers=1",
        "model.separation.heads=4",
        "model.separation.ffn_dim=64",
        *RUN,
        "dataset.batch_size=3",
        "optimization.max_update=3",
        "dataset.validate_interval_updates=3",
        "checkpoint.save_interval_updates=3",
        f"checkpoint.save_dir={save}",
        timeout=240,
    )
    log = proc.stdout + proc.stderr
    found = re.findall(r"\[valid\].*?si_sdri (\S+)", log)
    assert found and all(math.isfinite(float(v)) for v in found), log[-3000:]
    teacher = torch.load(distilled / "checkpoint_best.pt", map_location="cpu", weights_only=True)
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["train_state"]["num_updates"] == 3
    weights = state["model"]
    frozen = {k[len("enrolment.") :]: v for k, v in weights.items() if k.startswith("enrolment.")}
    assert frozen.keys() == teacher["model"].keys()
    assert all(torch.equal(frozen[k], v) for k, v in teacher["model"].items())
    assert any(k.startswith("separation.") for k in weights)

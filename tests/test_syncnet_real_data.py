"""The SyncNet trainer on real talking-face clips (``../shared/data/lists/video_list.txt``):
``experiment=syncnet_demo`` through the real command line for a few CPU updates, validation on
the middle crops, and a checkpoint holding the reference's model and ``__L__`` loss keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechkit.data.audio import read_audio
from speechkit.data.video import read_video_frames
from speechkit.metrics.av_sync import av_offset
from speechkit.metrics.scoring import read_score_file
from speechkit.models.syncnet import SyncNetConfig, SyncNetFBank, audio_samples_for_frames
from tests.helpers import read_metrics, run_train

pytestmark = pytest.mark.slow


def test_syncnet_demo_trains_validates_and_saves(shared_data, tmp_path):
    proc = run_train(
        "experiment=syncnet_demo",
        f"task.root={shared_data}",
        f"task.train_list={shared_data / 'lists/video_list.txt'}",
        f"task.valid_list={shared_data / 'lists/video_list.txt'}",
        "task.num_valid=4",
        "optimization.max_update=3",
        "dataset.validate_interval_updates=3",
        "common.log_interval=1",
        "common.tensorboard_logdir=null",
        f"checkpoint.save_dir={tmp_path}",
        timeout=600,
    )
    assert "done: 3 updates" in proc.stderr
    valid = read_metrics(tmp_path)
    assert 3 in valid, proc.stderr[-3000:]
    fields = valid[3]
    for key in ("loss", "content_loss", "identity_loss", "content_accuracy"):
        assert math.isfinite(float(fields[key])), key
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["train_state"]["num_updates"] == 3
    assert {"netcnnaud.0.weight", "netcnnlip.18.weight", "netfcface.3.weight"} <= set(
        state["model"]
    )
    assert set(state["criterion"]) == {"wI", "bI", "wC", "bC"}
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    # section 2.5: speaker verification with the audio identity head, through eval_eer.py
    from speechkit.cli import eval_eer

    scores = tmp_path / "scores.txt"
    argv = ["--checkpoint", str(tmp_path / "checkpoint_last.pt"), "--test-path", str(shared_data)]
    argv += ["--test-list", str(shared_data / "lists/voxceleb1_mini_trials.txt")]
    argv += ["--eval-frames", "200", "--num-eval", "2", "--scores", str(scores)]
    assert eval_eer.main(argv) == 0
    written = read_score_file(scores)
    assert len(written.scores) == 12 and np.isfinite(written.scores).all()


def test_av_offset_runs_on_real_clip_features(shared_data):
    """Content features of a real clip through ``av_offset``: one distance per shift and a
    finite offset and confidence (an untrained net: the value itself is not meaningful)."""
    torch.manual_seed(0)
    model = SyncNetFBank(SyncNetConfig(embed_dim=64, temporal_stride=1)).eval()
    frames = 12
    video = read_video_frames(shared_data / "video/voxceleb2_pcavs/00002.mp4", 10, frames)
    wav = read_audio(shared_data / "video/voxceleb2_pcavs/00002.wav")
    start = 10 * 640
    audio = torch.from_numpy(wav[start : start + audio_samples_for_frames(frames)])[None]
    clip = torch.from_numpy(video).permute(3, 0, 1, 2).float()[None]
    with torch.no_grad():
        v, _ = model.forward_vid(clip)
        a, _ = model.forward_aud(audio)
    result = av_offset(v[0].T, a[0].T, vshift=3)
    assert v.shape[2] == a.shape[2] == frames - 4
    assert result.mean_dist.shape == (7,) and -3 <= result.offset <= 3
    assert math.isfinite(result.confidence) and result.framewise_confidence.shape == (frames - 4,)

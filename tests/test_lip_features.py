"""Lip features for the audio-visual VoiceVector variant: reading and aligning ``.npy`` files to
the 640-samples-per-frame audio grid, ``speechkit-dump-lip-features`` on real talking-face clips
(a SyncNet lip stream), and ``voicevector_av`` trained end to end on those clips through
``python -m speechkit.train experiment=tss_voicevector_av``."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import dump_lip_features
from speechkit.data.lip_features import (
    align_lip_features,
    crop_lip_features,
    lip_feature_path,
    read_lip_features,
)
from speechkit.data.separation_dataset import SeparationDataset, collate_separation
from speechkit.errors import DataError
from speechkit.models.syncnet import SyncNetConfig, SyncNetFBank
from tests.helpers import run_train

CLIPS = ("video/voxceleb2_pcavs/00010", "video/voxceleb2_pcavs/517600055")


def test_align_accepts_small_mismatch_and_refuses_large(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    # 5 frames of audio (3200 samples): one extra frame is trimmed
    assert align_lip_features(feats, 3200).tolist() == feats[:5].tolist()
    # 7.5 frames of audio: 8 frames, the last one repeated twice
    out = align_lip_features(feats, 4800)
    assert out.shape == (8, 2) and out[6].tolist() == out[7].tolist() == feats[5].tolist()
    with pytest.raises(DataError, match=r"clip\.npy: 6 lip frames but the audio has 6400"):
        align_lip_features(feats, 6400, tmp_path / "clip.npy")  # 10 frames: 4 too few
    assert lip_feature_path("spk/a.wav") == "spk/a.npy" == lip_feature_path("spk/a.mp4")


def test_read_refuses_bad_files(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((4, 3), dtype=np.float16))
    assert read_lip_features(tmp_path / "ok.npy", dim=3).dtype == np.float32
    with pytest.raises(DataError, match="expected 8-d"):
        read_lip_features(tmp_path / "ok.npy", dim=8)
    np.save(tmp_path / "flat.npy", np.ones(4, dtype=np.float32))
    with pytest.raises(DataError, match=r"flat\.npy.*\(frames, dim\)"):
        read_lip_features(tmp_path / "flat.npy")
    with pytest.raises(DataError, match="not found"):
        read_lip_features(tmp_path / "missing.npy", where="list.txt:3")


def test_crop_follows_offset_and_wraps_short_files():
    aligned = np.arange(10, dtype=np.float32)[:, None]  # 10 frames = 6400 samples
    assert crop_lip_features(aligned, 1280, 1920, 6400)[:, 0].tolist() == [2, 3, 4]
    # a 5-frame file (3200 samples) in an 8-frame crop repeats from its start, as the audio
    short = np.arange(5, dtype=np.float32)[:, None]
    assert crop_lip_features(short, 0, 5120, 3200)[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    # a file of 4.5 frames: the wrapped audio restarts mid-frame; each crop frame takes the
    # lip frame holding its first sample
    odd = np.arange(5, dtype=np.float32)[:, None]
    assert crop_lip_features(odd, 0, 3840, 2880)[:, 0].tolist() == [0, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="multiples of 640"):
        crop_lip_features(aligned, 100, 1920, 6400)


def _dataset_files(tmp_path, frames=(10, 8), extra=0):
    rng = np.random.default_rng(0)
    lines = []
    for k, n in enumerate(frames):
        rel = f"s{k}/u{k}.wav"
        (tmp_path / f"s{k}").mkdir(exist_ok=True)
        sf.write(tmp_path / rel, rng.standard_normal(n * 640).astype(np.float32) * 0.1, 16000)
        (tmp_path / "lip" / f"s{k}").mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "lip" / f"s{k}/u{k}.npy", rng.standard_normal((n + extra, 6)))
        lines.append(f"s{k} {rel}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")


def test_dataset_items_carry_the_target_crop_lip_frames(tmp_path):
    _dataset_files(tmp_path)
    ds = SeparationDataset(
        tmp_path / "list.txt", tmp_path, None, segment=0.2, lip_dir=tmp_path / "lip", seed=3
    )
    assert ds.lip_dim == 6
    item = ds[0]
    assert "enrol" not in item and item["lip"].shape == (5, 6)
    utt, off = item["meta"]["target"], item["meta"]["target_offset"]
    full = np.load(tmp_path / "lip" / f"s{utt}/u{utt}.npy").astype(np.float32)
    assert np.array_equal(item["lip"].numpy(), full[off // 640 : off // 640 + 5])
    batch = collate_separation([ds[0], ds[1]])
    assert batch["lip"].shape == (2, 5, 6) and "enrol" not in batch


def test_dataset_refuses_misaligned_or_missing_features(tmp_path):
    _dataset_files(tmp_path, extra=3)
    with pytest.raises(DataError, match=r"u0\.npy: 13 lip frames but the audio has 6400"):
        SeparationDataset(tmp_path / "list.txt", tmp_path, None, lip_dir=tmp_path / "lip")
    (tmp_path / "lip/s1/u1.npy").unlink()
    np.save(tmp_path / "lip/s0/u0.npy", np.zeros((10, 6)))
    with pytest.raises(DataError, match=r"not found: .*u1\.npy \(listed at .*list\.txt:2\)"):
        SeparationDataset(tmp_path / "list.txt", tmp_path, None, lip_dir=tmp_path / "lip")


def _syncnet_checkpoint(path):
    torch.manual_seed(0)
    cfg = {"_name": "syncnet_fbank", "embed_dim": 32, "temporal_stride": 1}
    model = SyncNetFBank(SyncNetConfig(embed_dim=32, temporal_stride=1))
    torch.save({"cfg": {"model": cfg}, "model": model.state_dict()}, path)


@pytest.mark.slow
def test_dump_then_train_voicevector_av_on_real_clips(shared_data, tmp_path):
    """SyncNet lip stream -> per-frame .npy of two real clips -> 3 AV updates and a checkpoint."""
    ckpt = tmp_path / "syncnet.pt"
    _syncnet_checkpoint(ckpt)
    video_list = tmp_path / "video.txt"
    video_list.write_text("".join(f"{c}.mp4 {c}.wav\n" for c in CLIPS))
    lip = tmp_path / "lip"
    argv = ["--checkpoint", str(ckpt), "--list", str(video_list), "--root", str(shared_data)]
    assert dump_lip_features.main([*argv, "--out", str(lip)]) == 0
    for clip in CLIPS:
        feats = np.load(lip / f"{clip}.npy")
        audio = sf.info(shared_data / f"{clip}.wav").frames
        assert feats.shape[1] == 512 and abs(feats.shape[0] - audio / 640) <= 2
        assert np.isfinite(feats).all() and feats.std() > 0

    speakers = tmp_path / "speakers.txt"
    speakers.write_text("".join(f"v{k} {c}.wav\n" for k, c in enumerate(CLIPS)))
    save = tmp_path / "run"
    proc = run_train(
        "experiment=tss_voicevector_av",
        f"task.root={shared_data}",
        f"task.train_list={speakers}",
        f"task.valid_list={speakers}",
        f"task.lip_dir={lip}",
        "task.segment=1.0",
        "task.num_valid=4",
        "model.hidden=8",
        "model.depth=3",
        "model.transformer_layers=1",
        "model.heads=4",
        "model.ffn_dim=64",
        "dataset.batch_size=2",
        "dataset.num_workers=0",
        "optimization.max_update=3",
        "dataset.validate_interval_updates=3",
        "checkpoint.save_interval_updates=3",
        "common.log_format=simple",
        "common.log_interval=1",
        "common.tensorboard_logdir=null",
        f"checkpoint.save_dir={save}",
        timeout=180,
    )
    log = proc.stdout + proc.stderr
    found = re.findall(r"\[valid\].*?si_sdri (\S+)", log)
    assert found and all(math.isfinite(float(v)) for v in found), log[-3000:]
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["cfg"]["model"]["_name"] == "voicevector_av"
    assert state["train_state"]["num_updates"] == 3
    assert "video_adapter.conv.weight" in state["model"] and "enrol_adapter" not in str(
        list(state["model"])
    )

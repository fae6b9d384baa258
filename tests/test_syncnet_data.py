"""SyncNet data: PyAV video reading, the list maker and the aligned crop dataset, on the real
talking-face clips of ``shared/data/video`` (syncnet_trainer facts: research/sv_syncnet_enh.md
section 2.1-2.2)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import make_syncnet_list
from speechkit.data.syncnet_dataset import (
    SyncNetClip,
    SyncNetDataset,
    audio_crop_samples,
    crop_positions,
    read_syncnet_list,
    start_range,
)
from speechkit.data.video import read_video_frames, video_info
from speechkit.errors import ConfigError, DataError

VOX = "video/voxceleb2_pcavs"
# frames counted by demuxing, and the WAV lengths (16 kHz samples) of the real clips
CLIPS = {"00002": (126, 80896), "00373": (128, 81920), "00010": (106, 68608)}


@pytest.fixture(scope="module")
def vox(shared_data: Path) -> Path:
    return shared_data / VOX


# -- video ---------------------------------------------------------------------------------------
def test_video_info_on_real_clips(vox: Path):
    for name, (frames, samples) in CLIPS.items():
        info = video_info(vox / f"{name}.mp4")
        assert (info.num_frames, info.width, info.height) == (frames, 224, 224)
        assert info.fps == 25.0 and info.declared_frames == frames
        assert sf.info(str(vox / f"{name}.wav")).frames == samples
        assert sf.info(str(vox / f"{name}.wav")).samplerate == 16000


def test_frames_are_bgr_and_crops_match_full_decode(vox: Path):
    path = vox / "00002.mp4"
    with av.open(str(path)) as c:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0))]
    head = read_video_frames(path, 0, 3)
    assert head.shape == (3, 224, 224, 3) and head.dtype == np.uint8
    np.testing.assert_array_equal(head, np.stack(rgb)[..., ::-1])

    full = read_video_frames(path)
    assert full.shape == (126, 224, 224, 3)
    for start, n in ((0, 4), (7, 3), (60, 5), (121, 5)):  # 60 and 121 take the seek path
        np.testing.assert_array_equal(read_video_frames(path, start, n), full[start : start + n])
    assert read_video_frames(path, 120, None).shape[0] == 6
    assert read_video_frames(path, 5, 2, size=112).shape == (2, 112, 112, 3)


def test_video_errors_name_the_file(vox: Path, tmp_path: Path, shared_data: Path):
    with pytest.raises(DataError, match="only 126 frames"):
        read_video_frames(vox / "00002.mp4", 124, 5)
    with pytest.raises(DataError, match="missing.mp4: video file not found"):
        video_info(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match="bad.mp4"):
        read_video_frames(bad, 0, 2)
    with pytest.raises(DataError, match="bad.mp4"):
        video_info(bad)
    vfr = shared_data / "video/talking_heads_videoretalking/face1.mp4"  # about 22 fps
    with pytest.raises(DataError, match="face1.mp4: video frame rate is 22.1.*expected 25"):
        video_info(vfr)
    assert read_video_frames(vox / "00002.mp4", 0, 1, expected_fps=None).shape[0] == 1


# -- list maker ----------------------------------------------------------------------------------
def test_list_maker_on_video_list(shared_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "list.txt"
    rc = make_syncnet_list.main(
        ["--video-list", str(shared_data / "lists/video_list.txt"), "--root", str(shared_data),
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    lines = [line.split() for line in out.read_text().splitlines()]
    by_video = {Path(f[0]).stem: f for f in lines}
    assert by_video["00002"] == [f"{VOX}/00002.mp4", f"{VOX}/00002.wav", "0", "126"]
    # |len(wav)/640 - frames| > 1: 00010 (107.2 vs 106), 00086, 741400104, 741400163 and
    # face1_25fps (152.7 vs 154) are skipped by the reference's rule
    assert len(lines) == 7 and "00010" not in by_video and "face1_25fps" not in by_video
    err = capsys.readouterr().err
    assert "skipped 5 clip(s): length mismatch" in err
    clips = read_syncnet_list(out, shared_data)
    assert [c.num_frames for c in clips][:2] == [126, 174]


def _vox_tree(tmp_path: Path, vox: Path) -> Path:
    """mp4/<spk>/<yt>/<clip>.mp4 (+ .wav, .txt) symlinked from two real clips."""
    root = tmp_path / "vox2"
    for spk, yt, name, offset in (("id001", "ytA", "00002", 2), ("id002", "ytB", "00010", None)):
        d = root / "mp4" / spk / yt
        d.mkdir(parents=True)
        (d / "00001.mp4").symlink_to(vox / f"{name}.mp4")
        (d / "00001.wav").symlink_to(vox / f"{name}.wav")
        if offset is not None:
            (d / "00001.txt").write_text(
                f"Identity  : \t{spk}\nReference : \t{yt}\nOffset    : \t{offset}\n"
                "FV Conf   : \t16.6\t(1)\n"
            )
    return root


def test_list_maker_on_vox2_tree(vox: Path, tmp_path: Path, capsys):
    root = _vox_tree(tmp_path, vox)
    out = tmp_path / "train.txt"
    args = ["--mp4-dir", str(root / "mp4"), "--root", str(root), "--out", str(out)]
    assert make_syncnet_list.main(args) == 0
    assert out.read_text() == "mp4/id001/ytA/00001.mp4 mp4/id001/ytA/00001.wav 2 126\n"
    assert "skipped 1 clip(s): length mismatch" in capsys.readouterr().err
    # a looser rule keeps the second clip, with the default offset (no .txt)
    args += ["--max-diff", "1.5", "--default-offset", "-1"]
    assert make_syncnet_list.main(args) == 0
    assert out.read_text().splitlines()[1].endswith(" -1 106")

    (root / "mp4/id001/ytA/00001.txt").write_text("Identity : x\nReference : y\nConf : 3\n")
    out.write_text("kept\n")
    assert make_syncnet_list.main(args) == 2
    err = capsys.readouterr().err
    assert "make_syncnet_list: error:" in err and "00001.txt:3: expected 'Offset : N'" in err
    assert out.read_text() == "kept\n"  # nothing written on error


def test_list_maker_bad_video_list(shared_data: Path, tmp_path: Path, capsys):
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{VOX}/00002.mp4 {VOX}/00002.wav\n{VOX}/nope.mp4 {VOX}/00002.wav\n")
    out = tmp_path / "out.txt"
    base = ["--video-list", str(listing), "--root", str(shared_data), "--out", str(out)]
    assert make_syncnet_list.main(base) == 2
    assert f"videos.txt:2: {shared_data / VOX}/nope.mp4 not found" in capsys.readouterr().err
    listing.write_text(f"{VOX}/00002.mp4\n")
    assert make_syncnet_list.main(base) == 2
    assert "videos.txt:1: expected 'video.mp4 audio.wav'" in capsys.readouterr().err
    assert not out.exists()


# -- dataset -------------------------------------------------------------------------------------
def test_crop_arithmetic():
    assert audio_crop_samples(50) == 32240
    assert start_range(100, 0, 50) == (2, 48)
    assert start_range(100, 3, 50) == (2, 45)
    assert start_range(100, -3, 50) == (5, 48)
    # the video crop ends inside the clip and the audio crop ends within frames * 640 samples
    for offset in (-3, 0, 3):
        first, last = start_range(100, offset, 50)
        for start in (first, last):
            a0, n, v0 = crop_positions(start, offset, 50)
            assert a0 == 640 * start and n == 32240 and v0 == start + offset - 1
            assert v0 >= 1 and v0 + 50 <= 100 - 2
            assert a0 + n <= 640 * 99


def _clip(vox: Path, name: str, offset: int, frames: int, line: int = 1) -> SyncNetClip:
    return SyncNetClip(str(vox / f"{name}.mp4"), str(vox / f"{name}.wav"), offset, frames, line)


def test_dataset_items_are_aligned_crops(vox: Path):
    clip = _clip(vox, "00002", 2, 126)
    ds = SyncNetDataset([clip], max_frames=5, seed=3)
    ds.set_epoch(2)
    item = ds[0]
    start = ds.crop_start(0)
    first, last = start_range(126, 2, 5)
    assert first <= start <= last
    wav, rate = sf.read(clip.audio, dtype="float32")
    assert rate == 16000
    assert item["audio"].shape == (4 * 5 * 160 + 240,) and item["audio"].dtype == torch.float32
    np.testing.assert_array_equal(item["audio"].numpy(), wav[640 * start : 640 * start + 3440])
    frames = read_video_frames(clip.video, start + 2 - 1, 5)  # offset 2 applied
    assert item["video"].shape == (3, 5, 224, 224) and item["video"].dtype == torch.float32
    np.testing.assert_array_equal(item["video"].numpy(), frames.transpose(3, 0, 1, 2))
    assert float(item["video"].max()) <= 255.0

    # reproducible per (seed, epoch, index); other epochs / seeds draw other crops
    starts = {ds.crop_start(0)}
    again = SyncNetDataset([clip], max_frames=5, seed=3)
    again.set_epoch(2)
    assert again.crop_start(0) == start
    for epoch in range(3, 12):
        ds.set_epoch(epoch)
        starts.add(ds.crop_start(0))
    assert len(starts) > 3

    # eval mode: the middle of the start range, whatever the epoch
    ev = SyncNetDataset([clip], max_frames=5, eval_mode=True)
    ev.set_epoch(7)
    assert ev.crop_start(0) == (first + last) // 2


def test_collater_and_filtering(vox: Path):
    clips = [_clip(vox, "00002", 0, 126, 1), _clip(vox, "00373", -1, 128, 2)]
    short = _clip(vox, "00010", 100, 106, 3)  # 106 - 100 < max_frames + 4
    ds = SyncNetDataset(clips + [short], max_frames=3, image_size=96)
    assert len(ds) == 2 and ds.num_dropped == 1
    batch = ds.collater([ds[0], ds[1]])
    assert batch["audio"].shape == (2, 3 * 640 + 240) and batch["audio"].dtype == torch.float32
    assert batch["video"].shape == (2, 3, 3, 96, 96) and batch["id"].tolist() == [0, 1]
    assert batch["audio"].abs().max() <= 1.0
    with pytest.raises(DataError, match="no clip has num_frames"):
        SyncNetDataset([short], max_frames=3, list_path="l.txt")


def test_dataset_bad_inputs(vox: Path, tmp_path: Path, shared_data: Path):
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"{VOX}/00002.mp4 {VOX}/00002.wav 0 126\n{VOX}/00002.mp4 {VOX}/00002.wav x 1\n"
    )
    with pytest.raises(DataError, match=r"list.txt:2: offset must be an integer"):
        read_syncnet_list(listing, shared_data)
    listing.write_text(f"{VOX}/00002.mp4 {VOX}/00002.wav 0\n")
    with pytest.raises(DataError, match=r"list.txt:1: expected 'video.mp4 audio.wav offset"):
        read_syncnet_list(listing, shared_data)
    listing.write_text(f"\n{VOX}/00002.mp4 {VOX}/gone.wav 0 126\n")
    with pytest.raises(DataError, match=r"list.txt: 1 listed file\(s\) not found.*line 2: .*gone"):
        read_syncnet_list(listing, shared_data)
    # two-field lines: offset 0, frames counted
    listing.write_text(f"{VOX}/00373.mp4 {VOX}/00373.wav\n")
    assert read_syncnet_list(listing, shared_data)[0].num_frames == 128

    # a WAV at the wrong rate, and one too short for the listed frames: named with file:line
    wav, _ = sf.read(str(vox / "00002.wav"), dtype="float32")
    sf.write(tmp_path / "r8k.wav", wav[::2], 8000)
    sf.write(tmp_path / "short.wav", wav[:3000], 16000)
    video = str(vox / "00002.mp4")
    ds = SyncNetDataset(
        [
            SyncNetClip(video, str(tmp_path / "r8k.wav"), 0, 126, 4),
            SyncNetClip(video, str(tmp_path / "short.wav"), 0, 126, 5),
        ],
        max_frames=3,
        list_path="my.txt",
    )
    with pytest.raises(DataError, match=r"my.txt:4: .*r8k.wav: sample rate is 8000 Hz"):
        ds[0]
    with pytest.raises(DataError, match=r"my.txt:5: .*short.wav: holds too few samples"):
        ds[1]


# -- task ----------------------------------------------------------------------------------------
def test_task_batches_and_errors(shared_data: Path, tmp_path: Path):
    from speechkit.tasks.syncnet import SyncNetTask, SyncNetTaskConfig

    listing = tmp_path / "list.txt"
    rows = [f"{VOX}/{n}.mp4 {VOX}/{n}.wav 0 {f}" for n, (f, _) in CLIPS.items()]
    listing.write_text("\n".join(rows * 3) + "\n")  # 9 clips
    cfg = SyncNetTaskConfig(
        root=str(shared_data), train_list=str(listing), valid_list=str(listing), max_frames=4
    )
    task = SyncNetTask(cfg, seed=5)
    assert task.has_split("train") and task.has_split("valid")
    b1 = task.batches("train", epoch=1, batch_size=2)
    assert len(b1) == 4 and all(len(b) == 2 for b in b1)  # 9 // 2, partial batch dropped
    assert b1 == task.batches("train", epoch=1, batch_size=2)
    assert b1 != task.batches("train", epoch=2, batch_size=2)
    valid = task.batches("valid", epoch=1, batch_size=4)
    assert [len(b) for b in valid] == [4, 4]  # a last batch of one clip is left out
    assert task.dataset("valid").eval_mode and not task.dataset("train").eval_mode

    cfg.num_train_per_epoch = 5
    assert sum(map(len, SyncNetTask(cfg, seed=5).batches("train", 1, batch_size=2))) == 4
    with pytest.raises(DataError, match="fewer than one batch"):
        task.batches("train", 1, batch_size=20)
    with pytest.raises(ConfigError, match="not set: task.train_list"):
        SyncNetTask(SyncNetTaskConfig())
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{VOX}/00002.mp4 {VOX}/00002.wav 0 126\nonly-one-field\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        SyncNetTask(SyncNetTaskConfig(root=str(shared_data), train_list=str(bad)))

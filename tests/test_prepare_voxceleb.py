"""scripts/prepare_voxceleb.py on a small VoxCeleb-layout tree of real speech.

The tree holds real 16 kHz WAVs from shared_data, one of them re-encoded to AAC in an .m4a
container with PyAV (as VoxCeleb2 ships) and one resampled to 22.05 kHz stereo with scipy.
"""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from speechkit.cli import prepare_voxceleb as prep

VOX = "speech/voxceleb1_mini"
A1 = "id10001/1zcIwhmdeo4/00001"
A2 = "id10001/1zcIwhmdeo4/00002"
B1 = "id10002/xTV-jFAUKcw/00001"
B2 = "id10002/xTV-jFAUKcw/00002"


def encode_m4a(wav: np.ndarray, sample_rate: int, path) -> None:
    """AAC in an MPEG-4 audio (.m4a) container, as VoxCeleb2's files."""
    pcm = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
    with av.open(str(path), "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def best_lag_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 160) -> tuple[int, float]:
    """(lag, Pearson correlation) of the best alignment of ``a`` and ``b`` within +-max_lag."""
    best = (0, -1.0)
    n = min(len(a), len(b)) - 2 * max_lag
    for lag in range(-max_lag, max_lag + 1):
        x = a[max_lag + lag : max_lag + lag + n]
        y = b[max_lag : max_lag + n]
        r = float(np.corrcoef(x, y)[0, 1])
        if r > best[1]:
            best = (lag, r)
    return best


@pytest.fixture()
def tree(tmp_path, shared_data):
    """<root>/<speaker>/<video>/<utt>: two WAVs, one .m4a (AAC), one 22.05 kHz stereo WAV."""
    root = tmp_path / "vox" / "aac"
    src = {}
    for name in (A1, A2, B1, B2):
        src[name], sr = sf.read(shared_data / VOX / f"{name}.wav", dtype="float32")
        assert sr == 16000
        (root / name).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / f"{A1}.wav", src[A1], 16000, subtype="PCM_16")
    sf.write(root / f"{A2}.wav", src[A2], 16000, subtype="PCM_16")
    encode_m4a(src[B1], 16000, root / f"{B1}.m4a")
    hi = resample_poly(src[B2].astype(np.float64), 441, 320)  # 16 kHz -> 22.05 kHz
    sf.write(root / f"{B2}.wav", np.stack([hi, 0.5 * hi], axis=1), 22050, subtype="FLOAT")
    return root, src


def test_builds_wavs_and_lists(tree, tmp_path, capsys):
    root, src = tree
    out = tmp_path / "vox" / "wav"
    train_list = tmp_path / "lists" / "train.txt"
    trials = tmp_path / "veri_test2.txt"
    trials.write_text(f"1 {A1}.wav {A2}.wav\n0 {A1}.wav {B1}.m4a\n0 {A2}.wav {B2}.wav\n")
    args = [
        "--root",
        str(root),
        "--out-root",
        str(out),
        "--train-list",
        str(train_list),
        "--trials",
        str(trials),
        "--workers",
        "2",
        "--no-progress",
    ]
    assert prep.main(args) == 0
    stdout = capsys.readouterr().out
    assert "converted 2" in stdout and "linked 2" in stdout

    assert train_list.read_text().splitlines() == [
        f"id10001 {A1}.wav",
        f"id10001 {A2}.wav",
        f"id10002 {B1}.wav",
        f"id10002 {B2}.wav",
    ]
    converted_trials = (tmp_path / "lists" / "veri_test2.txt").read_text().splitlines()
    assert converted_trials[1] == f"0 {A1}.wav {B1}.wav"

    # 16 kHz mono PCM-16 WAVs are hard-linked, not rewritten
    assert os.path.samefile(out / f"{A1}.wav", root / f"{A1}.wav")
    for name in (B1, B2):  # the AAC file and the 22.05 kHz stereo file were converted
        info = sf.info(out / f"{name}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        wav, _ = sf.read(out / f"{name}.wav", dtype="float32")
        assert abs(len(wav) - len(src[name])) <= 80, (name, len(wav), len(src[name]))  # 5 ms
        lag, r = best_lag_correlation(wav, src[name])
        assert abs(lag) <= 2 and r > 0.98, (name, lag, r)
    # the stereo file's mono mix is the mean of its channels: 0.75 of the original's level
    mixed, _ = sf.read(out / f"{B2}.wav", dtype="float32")
    n = min(len(mixed), len(src[B2]))
    gain = float(np.dot(mixed[:n], src[B2][:n]) / np.dot(src[B2][:n], src[B2][:n]))
    assert gain == pytest.approx(0.75, abs=0.01)

    # a second run skips every existing output
    mtime = (out / f"{B1}.wav").stat().st_mtime_ns
    assert prep.main(args) == 0
    assert "exists 4" in capsys.readouterr().out
    assert (out / f"{B1}.wav").stat().st_mtime_ns == mtime


def test_in_place_and_excluded_trial_speakers(tree, tmp_path):
    root, _ = tree
    (root / f"{B1}.m4a").unlink()
    (root / f"{B2}.wav").unlink()
    trials = tmp_path / "list_test_hard2.txt"
    trials.write_text(f"1 {A1}.wav {A2}.wav\n")
    train_list = tmp_path / "train.txt"
    args = [
        "--root",
        str(root),
        "--train-list",
        str(train_list),
        "--trials",
        str(trials),
        "--trials-dir",
        str(tmp_path / "out"),
        "--exclude-trial-speakers",
        "--workers",
        "1",
        "--no-progress",
    ]
    # id10002's folder is now empty of audio: only id10001 remains, and it is a trial speaker
    assert prep.main(args) == 2
    (root / "id10003" / "abc").mkdir(parents=True)
    sf.write(root / "id10003" / "abc" / "00001.wav", np.zeros(1600, np.float32), 16000)
    assert prep.main(args) == 0
    assert train_list.read_text().splitlines() == ["id10003 id10003/abc/00001.wav"]
    assert (tmp_path / "out" / "list_test_hard2.txt").read_text() == f"1 {A1}.wav {A2}.wav\n"


def test_bad_inputs_fail_clearly(tree, tmp_path, capsys):
    root, _ = tree
    assert prep.main(["--root", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "id10001" / "video").mkdir(parents=True)
    assert prep.main(["--root", str(empty), "--no-progress"]) == 2
    assert "no .wav or .m4a files" in capsys.readouterr().err

    # a corrupt .m4a is reported by name; the other files are still converted and listed
    bad = root / "id10002" / "broken" / "00001.m4a"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00not an mp4 file" * 100)
    out = tmp_path / "wav"
    train_list = tmp_path / "train.txt"
    args = [
        "--root",
        str(root),
        "--out-root",
        str(out),
        "--train-list",
        str(train_list),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert prep.main(args) == 2
    err = capsys.readouterr().err
    assert "1 file(s) failed" in err and str(bad) in err
    assert len(train_list.read_text().splitlines()) == 4
    assert (out / f"{B1}.wav").is_file()


def test_trial_lists_are_checked(tree, tmp_path, capsys):
    root, _ = tree
    trials = tmp_path / "list_test_all2.txt"
    trials.write_text(f"1 {A1}.wav {A2}.wav\n0 {A1}.wav id10270/x6uYqmx31kE/00001.wav\n")
    args = [
        "--root",
        str(root),
        "--trials",
        str(trials),
        "--trials-dir",
        str(tmp_path / "o"),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert prep.main(args) == 2
    err = capsys.readouterr().err
    assert "id10270/x6uYqmx31kE/00001.wav" in err and "dev and test" in err
    assert prep.main(args + ["--skip-missing-trials"]) == 0
    assert (tmp_path / "o" / trials.name).read_text() == f"1 {A1}.wav {A2}.wav\n"
    assert "1 dropped" in capsys.readouterr().out

    trials.write_text(f"1 {A1}.wav {A2}.wav\n2 {A1}.wav {A2}.wav\n")
    assert prep.main(args) == 2
    assert f"{trials}:2: label must be 0 or 1" in capsys.readouterr().err

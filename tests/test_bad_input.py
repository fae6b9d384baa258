"""Bad audio and data input through the commands users run (issue 12): one line, exit status 2.

Every case runs the real command in a subprocess (``python -m speechkit.train``, ``-m
speechkit.extract``, ``scripts/*.py``) on files built here from real speech of ``shared_data``:
NaN/inf samples, 8 kHz / 44.1 kHz and stereo WAVs, a manifest whose ``num_samples`` is stale, a
label outside ``dict.km.txt``, a 30 fps video, a HuBERT checkpoint where a speaker model is
expected, a waveform shorter than the model's minimum, and augmentation lists.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.data import audio as audio_module
from speechkit.data.audio import read_audio
from speechkit.data.augment import AugmentConfig, build_augmenter
from speechkit.data.labels import LabelDictionary
from speechkit.errors import CheckpointError, DataError
from tests.helpers import REPO_ROOT, clean_env, run_train

SR = 16000
SPEECH = "speech/librispeech_test_other"


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python ARGS...`` in the repository like a user (scripts/... or -m module)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The stderr's last line, after checking that the failure printed no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Caught " not in proc.stderr, proc.stderr[-3000:]
    return [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1]


def _speech_files(shared_data: Path, n_speakers: int = 2, per_speaker: int = 2) -> list[Path]:
    files = []
    for spk in sorted((shared_data / SPEECH).iterdir())[:n_speakers]:
        if spk.is_dir():
            files += sorted(spk.glob("*.wav"))[:per_speaker]
    return files


def _write_copy(src: Path, dst: Path, seconds: float = 3.0, subtype: str = "FLOAT") -> np.ndarray:
    """Copy the first ``seconds`` of a real 16 kHz utterance as a float WAV; returns it."""
    x, rate = sf.read(src, dtype="float32")
    assert rate == SR
    x = x[: int(seconds * SR)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, x, SR, subtype=subtype)
    return x


def _poison(path: Path, every: int = 400) -> None:
    """Write NaN into every ``every``-th sample (any crop hits one) and one +inf."""
    x, rate = sf.read(path, dtype="float32")
    x[5::every] = np.nan
    x[7] = np.inf
    sf.write(path, x, rate, subtype="FLOAT")


def _nan_count(path: Path) -> int:
    x, _ = sf.read(path, dtype="float32")
    return int((~np.isfinite(x)).sum())


@pytest.fixture
def sv_data(tmp_path, shared_data):
    """A 2-speaker x 2-utterance train list under ``tmp/data``, and the list's lines."""
    root = tmp_path / "data"
    lines = []
    for src in _speech_files(shared_data):
        rel = f"{src.parent.name}/{src.name}"
        _write_copy(src, root / rel)
        lines.append(f"ls{src.parent.name} {rel}")
    train_list = tmp_path / "train.txt"
    train_list.write_text("\n".join(lines) + "\n")
    return root, train_list, [ln.split()[1] for ln in lines]


def _speaker_checkpoint(path: Path, task: str = "speaker_verification") -> Path:
    from speechkit import components
    from speechkit.registry import MODEL_REGISTRY
    from speechkit.trainer.checkpoint import atomic_torch_save

    components.import_all()
    torch.manual_seed(0)
    cfg = {"_name": "resnet_se34l", "n_mels": 16, "encoder_type": "SAP", "embed_dim": 16}
    model = MODEL_REGISTRY.build(cfg)
    atomic_torch_save(
        {"cfg": {"task": {"_name": task}, "model": cfg}, "model": model.state_dict()}, path
    )
    return path


def _hubert_checkpoint(path: Path, model_name: str = "hubert") -> Path:
    from speechkit.models.hubert import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=4,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        conv_pos=16,
        conv_pos_groups=4,
        final_dim=8,
        num_classes=[14],
    )
    model = HubertModel(cfg).eval()
    model_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "_name"}
    model_cfg["_name"] = model_name
    torch.save(
        {"cfg": {"task": {"_name": model_name}, "model": model_cfg}, "model": model.state_dict()},
        path,
    )
    return path


# -- read_audio: the one reader ----------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_read_audio_refuses_non_finite_samples(tmp_path, shared_data, bad):
    path = tmp_path / "x.wav"
    x = _write_copy(_speech_files(shared_data)[0], path, seconds=1.0)
    x[1600] = bad
    x[1700] = bad
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(DataError) as info:
        read_audio(path)
    assert str(info.value) == (
        f"{path}: 2 non-finite sample(s) (NaN/inf), the first at sample 1600 (0.100 s); "
        "expected finite audio (float samples in [-1, 1])"
    )
    # a partial read names the position in the file; a clean range passes
    with pytest.raises(DataError, match="the first at sample 1700 "):
        read_audio(path, start=1650, frames=100)
    assert np.isfinite(read_audio(path, start=0, frames=1600)).all()


def test_conversions_are_logged_once_per_file(tmp_path, shared_data, caplog, monkeypatch):
    monkeypatch.setattr(audio_module, "_warned", {"channels": set(), "rate": set()})
    x = _write_copy(_speech_files(shared_data)[0], tmp_path / "mono.wav", seconds=1.0)
    sf.write(tmp_path / "stereo.wav", np.stack([x, 0.5 * x], axis=1), SR)
    sf.write(tmp_path / "x8k.wav", x[::2], 8000)
    with caplog.at_level(logging.WARNING, logger="speechkit.data.audio"):
        read_audio(tmp_path / "mono.wav")
        assert caplog.records == []  # nothing to convert: nothing logged
        for _ in range(3):
            stereo = read_audio(tmp_path / "stereo.wav")
            read_audio(tmp_path / "x8k.wav")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"{tmp_path / 'stereo.wav'}: 2 channels, averaged to mono (expected mono audio)",
        f"{tmp_path / 'x8k.wav'}: sample rate 8000 Hz, resampled to 16000 Hz with soxr (convert "
        "the data once to avoid this cost on every read)",
    ]
    np.testing.assert_allclose(stereo, 0.75 * x, atol=1e-4)  # 16-bit PCM of the mean


def test_conversion_warnings_name_the_first_20_files_then_one_summary(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(audio_module, "_warned", {"channels": set(), "rate": set()})
    stereo = np.zeros((800, 2), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="speechkit.data.audio"):
        for i in range(25):
            sf.write(tmp_path / f"{i}.wav", stereo, SR)
            read_audio(tmp_path / f"{i}.wav")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:20] == [
        f"{tmp_path / f'{i}.wav'}: 2 channels, averaged to mono (expected mono audio)"
        for i in range(20)
    ]
    assert messages[20:] == [
        "more files need the same conversion (downmix to mono); not listed one by one any more"
    ]


def test_worker_errors_reach_the_main_process_as_the_original_message():
    """torch re-raises a worker's exception as ``type(e)("Caught ... Original Traceback ...")``;
    a speechkit error keeps its one-line message."""

    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise DataError("list.txt:3: a.wav: 1 non-finite sample(s); expected finite")
            return torch.zeros(1)

    loader = torch.utils.data.DataLoader(Bad(), batch_size=1, num_workers=2)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value) == "list.txt:3: a.wav: 1 non-finite sample(s); expected finite"


# -- speechkit.train ----------------------------------------------------------------------------
def _sv_train(tmp_path, root, train_list, *extra):
    return run_train(
        "experiment=sv_demo",
        f"task.root={root}",
        f"task.train_list={train_list}",
        "task.test_list=null",
        "dataset.batch_size=2",
        "dataset.disable_validation=true",
        "dataset.validate_before_training=false",
        "optimization.max_update=2",
        "common.log_format=simple",
        "common.tensorboard_logdir=null",
        f"checkpoint.save_dir={tmp_path / 'run'}",
        *extra,
        check=False,
        timeout=300,
    )


def test_sv_training_refuses_nan_audio_from_a_worker(tmp_path, sv_data):
    root, train_list, rels = sv_data
    _poison(root / rels[1])
    proc = _sv_train(tmp_path, root, train_list, "dataset.num_workers=2")
    line = _error_line(proc)
    assert line.startswith(f"speechkit: error: {train_list}:2: {root / rels[1]}: ")
    assert "non-finite sample(s) (NaN/inf), the first at sample " in line
    assert line.endswith("; expected finite audio (float samples in [-1, 1])")
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_sv_training_refuses_8k_and_downmixes_stereo(tmp_path, sv_data):
    root, train_list, rels = sv_data
    x, _ = sf.read(root / rels[0], dtype="float32")
    sf.write(root / rels[0], np.stack([x, x], axis=1), SR)  # stereo: taken, with a warning
    x, _ = sf.read(root / rels[3], dtype="float32")
    sf.write(root / rels[3], x[::2], 8000)  # 8 kHz: refused
    proc = _sv_train(tmp_path, root, train_list)
    assert _error_line(proc) == (
        f"speechkit: error: {train_list}:4: {root / rels[3]}: sample rate is 8000 Hz, expected "
        "16000 Hz (the model's rate; training does not resample): convert the data to 16 kHz "
        "mono WAV once (scripts/prepare_voxceleb.py, or sox IN.wav -r 16000 -c 1 OUT.wav)"
    )
    assert f"{root / rels[0]}: 2 channels, averaged to mono (expected mono audio)" in proc.stderr


@pytest.fixture
def hubert_data(tmp_path, shared_data):
    """``task.data`` with train/valid manifests of 2 s utterances, 100 Hz labels and a
    10-unit ``dict.km.txt``."""
    data = tmp_path / "hubert"
    rels = []
    for i, src in enumerate(_speech_files(shared_data, 2, 2)):
        rel = f"wav/{i}.wav"
        _write_copy(src, data / rel, seconds=2.0)
        rels.append(rel)
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        (data / f"{split}.tsv").write_text(f"{data}\n" + "".join(f"{r}\t32000\n" for r in rels))
        (data / f"{split}.km").write_text(
            "".join(" ".join(map(str, rng.integers(0, 10, 200))) + "\n" for _ in rels)
        )
    (data / "dict.km.txt").write_text("".join(f"{k} 1\n" for k in range(10)))
    return data, rels


def _hubert_train(tmp_path, data, *extra):
    return run_train(
        "experiment=hubert_demo",
        f"task.data={data}",
        f"task.label_dir={data}",
        "dataset.max_tokens=64000",
        "dataset.num_workers=2",
        "dataset.disable_validation=true",
        "optimization.max_update=2",
        "common.tensorboard_logdir=null",
        f"checkpoint.save_dir={tmp_path / 'run'}",
        *extra,
        check=False,
        timeout=300,
    )


def test_hubert_training_refuses_nan_audio(tmp_path, hubert_data):
    data, rels = hubert_data
    _poison(data / rels[2])
    line = _error_line(_hubert_train(tmp_path, data))
    n = _nan_count(data / rels[2])
    assert line == (
        f"speechkit: error: {data / 'train.tsv'}:4 ({rels[2]}): {data / rels[2]}: {n} "
        "non-finite sample(s) (NaN/inf), the first at sample 5 (0.000 s); expected finite "
        "audio (float samples in [-1, 1])"
    )


def test_hubert_training_refuses_a_unit_outside_the_dictionary(tmp_path, hubert_data):
    data, _ = hubert_data
    lines = (data / "train.km").read_text().splitlines()
    units = lines[1].split()
    units[17] = "12"  # dict.km.txt has units 0..9
    lines[1] = " ".join(units)
    (data / "train.km").write_text("\n".join(lines) + "\n")
    line = _error_line(_hubert_train(tmp_path, data))
    assert line == (
        f"speechkit: error: {data / 'train.km'}:2: unit '12' (label 18 of the line; 1 unknown on "
        f"the line) is not in the dictionary {data / 'dict.km.txt'}; expected one of its 10 "
        "units ('0'..'9'): were the labels made with another k-means or dict.km.txt?"
    )


def test_label_dictionary_encode_strict():
    d = LabelDictionary.dummy(5)
    np.testing.assert_array_equal(d.encode_strict(["0", "4"], "x.km:1"), [4, 8])
    with pytest.raises(DataError, match=r"^x.km:3: unit '007' \(label 2 of the line"):
        d.encode_strict(["1", "007"], "x.km:3")  # not a dictionary symbol, though an integer


# -- speechkit.extract and hubert_labels.py dump ---------------------------------------------
@pytest.fixture
def manifest_data(tmp_path, shared_data):
    root = tmp_path / "corpus"
    rels = []
    for i, src in enumerate(_speech_files(shared_data, 1, 3)):
        rel = f"{i}.wav"
        _write_copy(src, root / rel, seconds=1.0)
        rels.append(rel)
    manifest = tmp_path / "dev.tsv"
    manifest.write_text(f"{root}\n" + "".join(f"{r}\t16000\n" for r in rels))
    return root, manifest, rels


def _extract(tmp_path, manifest, out="feats"):
    ckpt = tmp_path / "hubert.pt"
    if not ckpt.exists():
        _hubert_checkpoint(ckpt)
    return _run(
        "-m",
        "speechkit.extract",
        f"checkpoint={ckpt}",
        "layer=1",
        f"manifest={manifest}",
        f"out={tmp_path / out}",
    )


def test_extract_refuses_nan_audio_and_writes_nothing(tmp_path, manifest_data):
    root, manifest, rels = manifest_data
    _poison(root / rels[1])
    proc = _extract(tmp_path, manifest)
    assert _error_line(proc) == (
        f"speechkit.extract: error: {manifest}:3 ({rels[1]}): {root / rels[1]}: "
        f"{_nan_count(root / rels[1])} non-finite sample(s) (NaN/inf), the first at sample 5 "
        "(0.000 s); expected finite audio (float samples in [-1, 1])"
    )
    assert not list((tmp_path / "feats").glob("*.npy"))


def test_extract_refuses_a_stale_manifest_size(tmp_path, manifest_data):
    _, manifest, rels = manifest_data
    text = manifest.read_text().replace(f"{rels[2]}\t16000", f"{rels[2]}\t16320")
    manifest.write_text(text)
    proc = _extract(tmp_path, manifest)
    root = manifest_data[0]
    assert _error_line(proc) == (
        f"speechkit.extract: error: {manifest}:4 ({rels[2]}): {root / rels[2]}: the file holds "
        "16000 samples; expected the manifest's num_samples 16320 (regenerate the manifest: "
        "num_samples is the file's frame count at its own rate)"
    )


def test_extract_resamples_44k_and_downmixes_stereo_with_warnings(tmp_path, manifest_data):
    root, manifest, rels = manifest_data
    x, _ = sf.read(root / rels[0], dtype="float32")
    sf.write(root / rels[0], np.stack([x, x], axis=1), SR)
    from scipy.signal import resample_poly

    y = resample_poly(x.astype(np.float64), 441, 160)  # an independent resampler to 44.1 kHz
    sf.write(root / rels[1], y, 44100, subtype="FLOAT")
    manifest.write_text(manifest.read_text().replace(f"{rels[1]}\t16000", f"{rels[1]}\t{len(y)}"))
    proc = _extract(tmp_path, manifest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{root / rels[0]}: 2 channels, averaged to mono" in proc.stderr
    assert f"{root / rels[1]}: sample rate 44100 Hz, resampled to 16000 Hz" in proc.stderr
    lens = (tmp_path / "feats" / "dev_0_1.len").read_text().split()
    assert lens == ["49", "49", "49"]  # 1 s at 16 kHz each: the 44.1 kHz file was resampled


def test_hubert_labels_dump_refuses_nan_audio(tmp_path, manifest_data):
    root, manifest, rels = manifest_data
    _poison(root / rels[0])
    proc = _run(
        "scripts/hubert_labels.py",
        "dump",
        "--manifest",
        str(manifest),
        "--feature",
        "mfcc",
        "--feat-dir",
        str(tmp_path / "feat"),
    )
    line = _error_line(proc)
    assert line.startswith(f"hubert_labels: error: {manifest}:2 ({rels[0]}): {root / rels[0]}: ")
    assert "non-finite sample(s) (NaN/inf)" in line
    assert not list((tmp_path / "feat").glob("*.npy"))


# -- eval_eer.py, dump_embeddings.py, make_spk2info.py ---------------------------------------
@pytest.fixture
def trials(tmp_path, sv_data):
    root, _, rels = sv_data
    trial_list = tmp_path / "trials.txt"
    trial_list.write_text(
        f"1 {rels[0]} {rels[1]}\n0 {rels[0]} {rels[2]}\n1 {rels[2]} {rels[3]}\n"
        f"0 {rels[1]} {rels[3]}\n"
    )
    return root, trial_list, rels


def _eval_eer(tmp_path, checkpoint, root, trial_list):
    return _run(
        "scripts/eval_eer.py",
        "--checkpoint",
        str(checkpoint),
        "--test-list",
        str(trial_list),
        "--test-path",
        str(root),
        "--eval-frames",
        "100",
        "--num-eval",
        "2",
        "--num-workers",
        "2",
        "--device",
        "cpu",
    )


def test_eval_eer_refuses_nan_audio_naming_the_trial_line(tmp_path, trials):
    root, trial_list, rels = trials
    _poison(root / rels[3])
    ckpt = _speaker_checkpoint(tmp_path / "spk.pt")
    line = _error_line(_eval_eer(tmp_path, ckpt, root, trial_list))
    assert line.startswith(f"eval_eer: error: {trial_list}:3: {root / rels[3]}: ")
    assert line.endswith(
        "non-finite sample(s) (NaN/inf), the first at sample 5 (0.000 s); expected finite audio "
        "(float samples in [-1, 1])"
    )


def test_eval_eer_resamples_8k_and_downmixes_stereo_with_warnings(tmp_path, trials):
    root, trial_list, rels = trials
    x, _ = sf.read(root / rels[1], dtype="float32")
    sf.write(root / rels[1], x[::2], 8000)
    x, _ = sf.read(root / rels[2], dtype="float32")
    sf.write(root / rels[2], np.stack([x, x], axis=1), SR)
    proc = _eval_eer(tmp_path, _speaker_checkpoint(tmp_path / "spk.pt"), root, trial_list)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{root / rels[1]}: sample rate 8000 Hz, resampled to 16000 Hz" in proc.stderr
    assert f"{root / rels[2]}: 2 channels, averaged to mono" in proc.stderr
    assert "EER " in proc.stdout


def test_speaker_tools_refuse_a_hubert_checkpoint(tmp_path, trials):
    root, trial_list, rels = trials
    kind = "hubert"
    ckpt = _hubert_checkpoint(tmp_path / f"{kind}.pt", model_name=kind)
    expected = (
        f"{ckpt}: a {kind} checkpoint (model {kind}); expected a speaker model: a "
        "speaker_verification or syncnet checkpoint (e.g. resnet_se34l, ecapa_tdnn, rawnet3, "
        "syncnet_fbank; convert a voxceleb_trainer model with scripts/convert_voxceleb_trainer.py)"
    )
    assert (
        _error_line(_eval_eer(tmp_path, ckpt, root, trial_list)) == f"eval_eer: error: {expected}"
    )
    proc = _run(
        "scripts/dump_embeddings.py",
        "--checkpoint",
        str(ckpt),
        "--list",
        str(trial_list),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "emb"),
        "--device",
        "cpu",
    )
    assert _error_line(proc) == f"dump_embeddings: error: {expected}"
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{root}\n" + "".join(f"{r}\t48000\n" for r in rels))
    proc = _run(
        "scripts/make_spk2info.py",
        "--manifest",
        str(manifest),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "spk2info.dict"),
        "--speaker-path-index",
        "0",
        "--device",
        "cpu",
    )
    assert _error_line(proc) == f"make_spk2info: error: {expected}"
    assert not (tmp_path / "spk2info.dict").exists()


def test_dump_embeddings_refuses_nan_audio_naming_the_list_line(tmp_path, sv_data):
    root, train_list, rels = sv_data
    _poison(root / rels[2])
    proc = _run(
        "scripts/dump_embeddings.py",
        "--checkpoint",
        str(_speaker_checkpoint(tmp_path / "spk.pt")),
        "--list",
        str(train_list),
        "--root",
        str(root),
        "--out",
        str(tmp_path / "emb"),
        "--eval-frames",
        "100",
        "--num-eval",
        "2",
        "--device",
        "cpu",
    )
    line = _error_line(proc)
    assert line.startswith(f"dump_embeddings: error: {train_list}:3: {root / rels[2]}: ")
    assert "non-finite sample(s) (NaN/inf)" in line
    assert not list((tmp_path / "emb").rglob("*.npy"))


def test_make_spk2info_refuses_nan_audio_naming_the_manifest_line(tmp_path, sv_data):
    root, _, rels = sv_data
    _poison(root / rels[1])
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{root}\n" + "".join(f"{r}\t48000\n" for r in rels))
    proc = _run(
        "scripts/make_spk2info.py",
        "--manifest",
        str(manifest),
        "--checkpoint",
        str(_speaker_checkpoint(tmp_path / "spk.pt")),
        "--out",
        str(tmp_path / "spk2info.dict"),
        "--speaker-path-index",
        "0",
        "--device",
        "cpu",
    )
    line = _error_line(proc)
    assert line.startswith(f"make_spk2info: error: {manifest}:3 ({rels[1]}): {root / rels[1]}: ")
    assert "non-finite sample(s) (NaN/inf)" in line
    assert not (tmp_path / "spk2info.dict").exists()


# -- SpeakerEmbedding.embed on short input ----------------------------------------------------
def test_embed_refuses_waveforms_shorter_than_the_model_minimum(tmp_path):
    from speechkit.inference.speaker_embedding import SpeakerEmbedding

    spk = SpeakerEmbedding.from_checkpoint(_speaker_checkpoint(tmp_path / "spk.pt"))
    assert spk.min_samples() == 257  # 512-point STFT with reflect padding: more than 256
    rng = np.random.default_rng(0)
    assert spk.embed(rng.normal(0, 0.1, 257).astype(np.float32)).shape == (16,)
    for n in (0, 100, 256):
        with pytest.raises(ValueError) as info:
            spk.embed(np.zeros(n, dtype=np.float32))
        assert not isinstance(info.value, DataError)
        assert str(info.value) == (
            f"the waveform has {n} samples ({1000 * n / SR:.1f} ms at 16000 Hz); expected at "
            "least 257 samples for this model"
        )
    path = tmp_path / "short.wav"
    sf.write(path, rng.normal(0, 0.1, 200), SR)
    with pytest.raises(DataError) as info:
        spk.embed(path)
    assert str(info.value) == (
        f"{path}: 200 samples (12.5 ms at 16000 Hz); expected at least 257 samples for this model"
    )
    with pytest.raises(ValueError, match="1 non-finite sample"):
        spk.embed(np.array([0.1] * 300 + [np.nan], dtype=np.float32))
    # with fixed-length crops a short waveform is wrap-padded as in evaluation; empty is refused
    spk.eval_frames = 10
    assert spk.embed(np.full(100, 0.1, dtype=np.float32)).shape == (16,)
    with pytest.raises(ValueError, match="has 0 samples"):
        spk.embed(np.zeros(0, dtype=np.float32))


def test_from_checkpoint_names_the_kind_it_got(tmp_path):
    from speechkit.inference.speaker_embedding import SpeakerEmbedding

    for kind in ("hubert", "contentvec"):
        ckpt = _hubert_checkpoint(tmp_path / f"{kind}.pt", model_name=kind)
        with pytest.raises(CheckpointError) as info:
            SpeakerEmbedding.from_checkpoint(ckpt)
        assert str(info.value).startswith(
            f"{ckpt}: a {kind} checkpoint (model {kind}); expected a speaker model: a "
            "speaker_verification or syncnet checkpoint"
        )
    # a syncnet-task or task-less speaker checkpoint is accepted
    SpeakerEmbedding.from_checkpoint(_speaker_checkpoint(tmp_path / "s.pt", task="syncnet"))


# -- make_syncnet_list.py -----------------------------------------------------------------------
def _write_video(path: Path, fps: int, seconds: float) -> None:
    import av  # a declared dependency (DESIGN.md): its absence is a failure, not a skip

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(int(fps * seconds)):
            img = np.full((64, 64, 3), (i * 7) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_make_syncnet_list_names_each_skipped_clip(tmp_path):
    _write_video(tmp_path / "a25.mp4", 25, 2.0)
    _write_video(tmp_path / "b30.mp4", 30, 2.0)
    wav = np.zeros(32000, dtype=np.float32)
    for name in ("a25", "b30"):
        sf.write(tmp_path / f"{name}.wav", wav, SR)
    video_list = tmp_path / "videos.txt"
    video_list.write_text("a25.mp4 a25.wav\nb30.mp4 b30.wav\n")
    out = tmp_path / "list.txt"
    proc = _run(
        "scripts/make_syncnet_list.py",
        "--video-list",
        str(video_list),
        "--root",
        str(tmp_path),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "a25.mp4 a25.wav 0 50\n"
    detail = (
        f"{tmp_path / 'b30.mp4'}: video frame rate is 30.000 fps, expected 25 fps (re-encode it, "
        "e.g. ffmpeg -i IN -r 25 OUT.mp4)"
    )
    assert f"make_syncnet_list: skipped {video_list}:2: frame rate: {detail}" in proc.stderr
    skipped = Path(f"{out}.skipped.tsv")
    assert skipped.read_text() == f"{video_list}:2\tframe rate\t{detail}\n"


# -- augmentation list files ------------------------------------------------------------------
def test_augmentation_lists_resolve_like_the_train_list(tmp_path, shared_data, monkeypatch):
    """List files are found like ``task.train_list`` (working directory or absolute); their
    lines are relative to ``task.root``; a name that only exists under root gets a hint."""
    monkeypatch.chdir(tmp_path)
    lists = shared_data / "lists"
    cfg = AugmentConfig(noise_list=str(lists / "noise_list.txt"), rir_list="rirs.txt")
    (tmp_path / "rirs.txt").write_text("rir/clap_seminar_room/rir_clap.wav\n")
    aug = build_augmenter(cfg, shared_data)
    assert aug.rir_files == [str(shared_data / "rir/clap_seminar_room/rir_clap.wav")]
    assert aug.sources["noise"][0] == str(
        shared_data / "noise/speech_commands_bg/doing_the_dishes.wav"
    )
    with pytest.raises(DataError) as info:
        build_augmenter(AugmentConfig(noise_list="lists/noise_list.txt"), shared_data)
    assert str(info.value) == (
        f"lists/noise_list.txt: task.augmentation.noise_list list file not found (looked in the "
        f"working directory {tmp_path}, as for task.train_list; the paths on its lines are "
        f"relative to task.root); {lists / 'noise_list.txt'} exists: give "
        f"task.augmentation.noise_list={lists / 'noise_list.txt'}"
    )

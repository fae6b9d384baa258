"""ContentVec data: RBJ EQ biquads, Praat "Change gender" on real speech, spk2info files (and the
restricted unpickler), scripts/make_spk2info.py, and the two-view dataset."""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import signal
from torch.utils.data import DataLoader

import speechkit.data.contentvec_transforms as cvt
from speechkit.cli import make_spk2info
from speechkit.data.audio import read_audio
from speechkit.data.contentvec_dataset import ContentVecDataset
from speechkit.data.contentvec_transforms import (
    ContentVecPerturbConfig,
    change_gender,
    eq_sos,
    high_shelf_sos,
    low_shelf_sos,
    peaking_sos,
    perturb_view,
    random_eq,
    random_formant_pitch,
    random_formant_pitch_params,
    voiced_f0,
)
from speechkit.data.labels import LabelDictionary
from speechkit.data.manifest import read_manifest, write_manifest
from speechkit.data.spk2info import SpeakerInfo, load_spk2info, save_spk2info, speaker_from_path
from speechkit.errors import DataError

SR = 16000
MALE, FEMALE = ("2414", "2609"), ("367", "533")  # LibriSpeech test-other (speakers.tsv)


def _speaker_files(shared_data: Path, spk: str, n: int) -> list[Path]:
    return sorted((shared_data / "speech/librispeech_test_other" / spk).glob("*.wav"))[:n]


# -- EQ ----------------------------------------------------------------------------------------
def _analog_prototype_sos(kind: str, gain_db: float, fc: float, q: float, sr: float):
    """The cookbook's analog prototypes (centre at 1 rad/s) mapped by the bilinear transform
    with the centre pre-warped: s -> (z - 1) / ((z + 1) tan(w0 / 2))."""
    a = 10 ** (gain_db / 40)
    if kind == "peak":
        num, den = [1, a / q, 1], [1, 1 / (a * q), 1]
    elif kind == "low":
        num, den = [a, a * math.sqrt(a) / q, a * a], [a, math.sqrt(a) / q, 1]
    else:
        num, den = [a * a, a * math.sqrt(a) / q, a], [1, math.sqrt(a) / q, a]
    k = math.tan(math.pi * fc / sr)
    b, a_ = signal.bilinear(num, den, fs=1 / (2 * k))
    return signal.tf2sos(b, a_)


@pytest.mark.parametrize(
    "gain_db, fc, q", [(9.0, 1000.0, 2.5), (-7.0, 60.0, 3.0), (11.5, 7600.0, 5.0)]
)
@pytest.mark.parametrize("kind", ["peak", "low", "high"])
def test_biquads_match_the_cookbook_prototypes(kind, gain_db, fc, q):
    ours = {"peak": peaking_sos, "low": low_shelf_sos, "high": high_shelf_sos}[kind](
        gain_db, fc, q, SR
    )
    assert ours.shape == (1, 6) and ours[0, 3] == 1.0
    freqs = np.geomspace(20, 7990, 400)
    _, h_ours = signal.sosfreqz(ours, worN=freqs, fs=SR)
    _, h_ref = signal.sosfreqz(_analog_prototype_sos(kind, gain_db, fc, q, SR), worN=freqs, fs=SR)
    np.testing.assert_allclose(20 * np.log10(abs(h_ours)), 20 * np.log10(abs(h_ref)), atol=1e-6)
    # defining gains: a peak has the gain at its centre; a shelf half of it (dB) at its corner
    _, h = signal.sosfreqz(ours, worN=[0.0, fc, SR / 2 - 1e-6], fs=SR)
    db = 20 * np.log10(abs(h))
    expected = {
        "peak": [0, gain_db, 0],
        "low": [gain_db, gain_db / 2, 0],
        "high": [0, gain_db / 2, gain_db],
    }[kind]
    np.testing.assert_allclose(db, expected, atol=1e-6)


def test_random_eq_draws_the_reference_ranges_and_filters(shared_data):
    wav = read_audio(_speaker_files(shared_data, "367", 1)[0])[: 2 * SR]
    out = random_eq(wav, SR, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    u = rng.uniform(0, 1, 10)
    gains = rng.uniform(-12, 12, 10)
    qs = 2 * 2.5**u
    centres = np.exp(np.linspace(np.log(60), np.log(7600), 10))
    assert np.all((qs >= 2) & (qs <= 5)) and np.all(np.abs(gains) <= 12)
    expected = wav.astype(np.float64)
    for section in eq_sos(gains, centres, qs, SR):  # one biquad at a time with lfilter
        expected = signal.lfilter(section[:3], section[3:], expected)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert not np.allclose(out, wav, atol=1e-3)


# -- Praat -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def male_wav(shared_data):
    return read_audio(_speaker_files(shared_data, MALE[0], 1)[0])[: 6 * SR]


def test_change_gender_sets_the_pitch_median(male_wav):
    f0_before = np.median(voiced_f0(male_wav, SR))
    for target in (1.4 * f0_before, 100.0):
        out = change_gender(male_wav, SR, 1.0, target, 1.0)
        assert out.shape == male_wav.shape and out.dtype == np.float32
        assert abs(np.median(voiced_f0(out, SR)) / target - 1) < 0.05


def test_change_gender_formant_shift_lowers_the_spectrum(male_wav):
    def centroid(x):
        f, _, z = signal.stft(x, SR, nperseg=512)
        power = np.abs(z) ** 2
        return (f[:, None] * power).sum() / power.sum()

    out = change_gender(male_wav, SR, 0.8, 0.0, 1.0)  # pitch kept (median 0)
    assert centroid(out) / centroid(male_wav) < 0.85
    assert abs(np.median(voiced_f0(out, SR)) / np.median(voiced_f0(male_wav, SR)) - 1) < 0.05


def test_random_formant_pitch_uses_its_drawn_ratios(male_wav):
    _, r_p, _ = random_formant_pitch_params(np.random.default_rng(5))
    out = random_formant_pitch(male_wav, SR, np.random.default_rng(5), 75.0, 300.0)
    f0_before = np.median(voiced_f0(male_wav, SR, 75.0, 300.0))
    after = np.median(voiced_f0(out, SR, 60.0, 600.0))
    assert abs(after / (f0_before * r_p) - 1) < 0.06
    draws = [random_formant_pitch_params(np.random.default_rng(s)) for s in range(300)]
    r = np.array(draws)
    assert np.all((r[:, 0] >= 1 / 1.4) & (r[:, 0] <= 1.4)) and np.all(r[:, 1] >= 0.5)
    assert 0.35 < np.mean(r[:, 1] < 1) < 0.65  # inverted half of the time


def test_praat_failure_falls_back_to_the_unperturbed_copy(monkeypatch, caplog):
    silence = np.zeros(SR, dtype=np.float32) + np.float32(1e-4) * np.sin(np.arange(SR) / 3)
    monkeypatch.setattr(cvt, "_fallback_logged", False)
    cfg = ContentVecPerturbConfig()
    with caplog.at_level(logging.WARNING):
        out = perturb_view(silence, SR, 75.0, 300.0, np.random.default_rng(1), cfg, "quiet.wav")
        perturb_view(silence, SR, 75.0, 300.0, np.random.default_rng(2), cfg, "quiet.wav")
    assert caplog.text.count("Praat failed") == 1 and "quiet.wav" in caplog.text
    rng = np.random.default_rng(1)
    random_formant_pitch_params(rng)  # the ratios and Praat's seed are drawn before it fails
    rng.integers(2**31)
    np.testing.assert_allclose(out, random_eq(silence, SR, rng), atol=1e-7)


# -- spk2info ----------------------------------------------------------------------------------
def _table(dim: int = 8) -> dict[str, dict[str, SpeakerInfo]]:
    rng = np.random.default_rng(0)
    return {
        "train": {
            "19": SpeakerInfo(rng.normal(size=dim).astype(np.float32), 50.0, 300.0, 110.0, "M"),
            "26": SpeakerInfo(rng.normal(size=dim).astype(np.float32), 100.0, 500.0, 210.0, "F"),
        },
        "valid": {"40": SpeakerInfo(rng.normal(size=dim).astype(np.float32), 100.0, 600.0)},
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_spk2info_round_trip(tmp_path, legacy):
    table = _table()
    save_spk2info(tmp_path / "spk2info.dict", table, legacy_pickle=legacy)
    loaded = load_spk2info(tmp_path / "spk2info.dict")
    assert set(loaded) == {"train", "valid"} and set(loaded["train"]) == {"19", "26"}
    for split in table:
        for spk, info in table[split].items():
            got = loaded[split][spk]
            np.testing.assert_array_equal(got.spk_emb, info.spk_emb)
            assert (got.pitch_floor, got.pitch_ceiling) == (info.pitch_floor, info.pitch_ceiling)
            assert got.is_male == info.is_male
    assert loaded["train"]["19"].analysis_range() == (75.0, 300.0)  # lo == 50 -> 75
    assert loaded["train"]["26"].analysis_range() == (100.0, 500.0)


def test_reads_a_reference_style_pickle(tmp_path):
    emb = np.arange(256, dtype=np.float32) / 256
    ref = {
        "train": {"1447": (emb, (np.int64(50), 400, 0)), "84": (emb * 2, (100.0, 600.0, 1))},
        "valid": {},
    }
    for protocol in (2, 4):
        path = tmp_path / f"p{protocol}.dict"
        path.write_bytes(pickle.dumps(ref, protocol=protocol))
        table = load_spk2info(path)
        np.testing.assert_array_equal(table["train"]["84"].spk_emb, emb * 2)
        assert table["train"]["1447"].is_male and not table["train"]["84"].is_male
        assert table["train"]["1447"].analysis_range() == (75.0, 400.0)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    emb = np.zeros(4, np.float32)
    path = tmp_path / "evil.dict"
    path.write_bytes(pickle.dumps({"train": {"1": (emb, (50, 400, _Exploit(marker)))}}, protocol=4))
    with pytest.raises(
        DataError, match=r"refusing to load .*evil.dict.*'posix.system' is not allowed"
    ):
        load_spk2info(path)
    assert not marker.exists()
    torch.save({"format": "speechkit.spk2info", "splits": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match=r"evil.pt: cannot read the spk2info file safely"):
        load_spk2info(tmp_path / "evil.pt")
    assert not marker.exists()


def test_speaker_from_path():
    assert speaker_from_path("train-clean-100/103/1240/103-1240-0000.flac") == "103"
    assert speaker_from_path("speech/librispeech_test_other/367/x.wav", 2) == "367"
    with pytest.raises(DataError, match=r"no path component 3"):
        speaker_from_path("a/b.wav", 3)


# -- make_spk2info -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speaker_checkpoint(tmp_path_factory):
    from speechkit import components
    from speechkit.registry import MODEL_REGISTRY
    from speechkit.trainer.checkpoint import atomic_torch_save

    components.import_all()
    torch.manual_seed(0)
    cfg = {"_name": "resnet_se34l", "n_mels": 16, "encoder_type": "SAP", "embed_dim": 32}
    model = MODEL_REGISTRY.build(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "speaker.pt"
    atomic_torch_save({"cfg": {"model": cfg}, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def four_speaker_manifest(tmp_path_factory, shared_data):
    d = tmp_path_factory.mktemp("cv")
    full = read_manifest(shared_data / "lists/pretrain_manifest.tsv", root_override=shared_data)
    wanted = {spk: 0 for spk in MALE + FEMALE}
    paths, sizes = [], []
    for p, n in zip(full.paths, full.sizes):
        parts = p.split("/")
        if len(parts) > 3 and parts[2] in wanted and wanted[parts[2]] < 2 and n < 10 * SR:
            wanted[parts[2]] += 1
            paths.append(p)
            sizes.append(int(n))
    assert all(v == 2 for v in wanted.values())
    write_manifest(d / "train.tsv", ".", paths, sizes)
    return d / "train.tsv"


def test_make_spk2info_on_four_real_speakers(
    tmp_path, shared_data, speaker_checkpoint, four_speaker_manifest
):
    from speechkit.inference.speaker_embedding import SpeakerEmbedding

    script = make_spk2info
    out = tmp_path / "spk2info.dict"
    argv = [
        "--manifest",
        str(four_speaker_manifest),
        "--checkpoint",
        str(speaker_checkpoint),
        "--out",
        str(out),
        "--speaker-path-index",
        "2",
        "--root-override",
        str(shared_data),
        "--utterances-per-speaker",
        "2",
        "--max-seconds",
        "2",
        "--device",
        "cpu",
    ]
    assert script.main(argv) == 0
    table = load_spk2info(out)
    assert set(table) == {"train"} and set(table["train"]) == set(MALE + FEMALE)
    # sex from the median f0 agrees with LibriSpeech's SPEAKERS.TXT for these speakers
    for spk in MALE:
        info = table["train"][spk]
        assert info.is_male and (info.pitch_floor, info.pitch_ceiling) == (50.0, 300.0)
        assert info.f0_median < 160
    for spk in FEMALE:
        info = table["train"][spk]
        assert not info.is_male and (info.pitch_floor, info.pitch_ceiling) == (100.0, 500.0)

    # the embedding is the re-normalised mean of the unit utterance embeddings
    embedder = SpeakerEmbedding.from_checkpoint(speaker_checkpoint)
    manifest = read_manifest(four_speaker_manifest, root_override=shared_data)
    spk = FEMALE[0]
    files = [manifest.audio_path(i) for i, p in enumerate(manifest.paths) if p.split("/")[2] == spk]
    embs = []
    for f in files:
        with torch.no_grad():
            e = embedder.model(torch.from_numpy(read_audio(f)[: 2 * SR])[None])[0].double()
        embs.append(e / e.norm())
    mean = torch.stack(embs).mean(0)
    np.testing.assert_allclose(table["train"][spk].spk_emb, (mean / mean.norm()).numpy(), atol=1e-5)
    assert table["train"][spk].spk_emb.shape == (32,)

    # a sex file overrides the f0 rule; --embedding-dim checks the model's size
    sex_file = tmp_path / "speakers.tsv"
    sex_file.write_text("speaker_id\tgender\n2414\tF\n")
    legacy = tmp_path / "legacy.dict"
    argv2 = (
        argv[:5]
        + [str(legacy)]
        + argv[6:]
        + [
            "--speaker-sex",
            str(sex_file),
            "--legacy-pickle",
            "--max-seconds",
            "1",
            "--utterances-per-speaker",
            "1",
        ]
    )
    assert script.main(argv2) == 0
    assert legacy.read_bytes()[:1] == b"\x80"
    assert load_spk2info(legacy)["train"]["2414"].pitch_floor == 100.0
    assert script.main(argv + ["--embedding-dim", "256"]) == 2


# -- dataset -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cv_parts(tmp_path_factory, shared_data, four_speaker_manifest):
    d = tmp_path_factory.mktemp("cv_labels")
    manifest = read_manifest(four_speaker_manifest, root_override=shared_data)
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, 50, (int(n) - 400) // 320 + 1) for n in manifest.sizes]
    (d / "train.km").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    table = _table(dim=16)
    emb_rng = np.random.default_rng(9)
    table["train"] = {
        spk: SpeakerInfo(
            emb_rng.normal(size=16).astype(np.float32),
            50.0 if spk in MALE else 100.0,
            300.0 if spk in MALE else 500.0,
        )
        for spk in MALE + FEMALE
    }
    table["valid"] = dict(table["train"])
    save_spk2info(d / "spk2info.dict", table)
    return manifest, d / "train.km", d / "spk2info.dict", rows


def _cv_dataset(cv_parts, **kwargs):
    manifest, km, spk2info, _ = cv_parts
    return ContentVecDataset(
        manifest,
        [km],
        50,
        [LabelDictionary.dummy(50)],
        spk2info,
        speaker_path_index=2,
        min_sample_size=None,
        **kwargs,
    )


def test_contentvec_train_views(cv_parts):
    ds = _cv_dataset(cv_parts)
    assert ds.spk_dim == 16 and len(ds) == 8
    keys = [0, 5]
    items = [ds[k] for k in keys]
    table = load_spk2info(cv_parts[2])["train"]
    for key, item in zip(keys, items):
        original = torch.from_numpy(ds.load_audio(key))
        v1, v2 = item["source"], item["source_2"]
        assert v1.shape == v2.shape == original.shape
        assert not torch.allclose(v1, v2, atol=1e-3) and not torch.allclose(v1, original, atol=1e-3)
        spk = ds.paths[key].split("/")[2]
        np.testing.assert_array_equal(item["spk_emb"].numpy(), table[spk].spk_emb)
    again = ds[0]
    assert torch.equal(again["source"], items[0]["source"])  # a function of (seed, epoch, key)
    ds.set_epoch(2)
    assert not torch.equal(ds[0]["source"], items[0]["source"])
    ds.set_epoch(1)

    batch = ds.collater(items)
    net = batch["net_input"]
    size = min(len(s["source"]) for s in items)
    assert net["source"].shape == net["source_2"].shape == (2, size)
    assert net["spk_emb"].shape == (2, 16) and not net["padding_mask"].any()
    for b, (item, start) in enumerate(zip(items, batch["crop_starts"].tolist())):
        assert torch.equal(net["source"][b], item["source"][start : start + size])
        assert torch.equal(net["source_2"][b], item["source_2"][start : start + size])  # same start
        rows = cv_parts[3][int(ds.indices[item["id"]])]
        frame = round(start * 50 / SR)
        width = batch["target_list"][0].shape[1]
        assert batch["target_list"][0][b].tolist() == (rows[frame : frame + width] + 4).tolist()


def test_contentvec_valid_views(cv_parts):
    ds = _cv_dataset(cv_parts, split="valid")
    assert not ds.random_views
    for key in (0, 6):
        item = ds[key]
        original = ds.load_audio(key)
        np.testing.assert_array_equal(item["source"].numpy(), original)
        male = ds.paths[key].split("/")[2] in MALE
        target = 300.0 if male else 100.0
        f0 = np.median(voiced_f0(item["source_2"].numpy(), SR, 60.0, 600.0))
        assert abs(f0 / target - 1) < 0.08, (male, f0)


def test_contentvec_workers_are_deterministic(cv_parts):
    ds = _cv_dataset(cv_parts, perturb=ContentVecPerturbConfig(eq=True), max_sample_size=48000)
    batches = [[1, 3], [4, 7]]
    a = list(DataLoader(ds, batch_sampler=batches, collate_fn=ds.collater, num_workers=0))
    b = list(DataLoader(ds, batch_sampler=batches, collate_fn=ds.collater, num_workers=2))
    for x, y in zip(a, b):
        for key in ("source", "source_2", "spk_emb"):
            assert torch.equal(x["net_input"][key], y["net_input"][key])


def test_contentvec_missing_speaker_is_named(cv_parts, tmp_path):
    manifest, km, _, _ = cv_parts
    table = {"train": {"2414": SpeakerInfo(np.ones(4, np.float32), 50.0, 300.0)}}
    with pytest.raises(DataError, match=r"3 speaker\(s\) of .*train.tsv are not in split 'train'"):
        ContentVecDataset(
            manifest, [km], 50, None, table, speaker_path_index=2, min_sample_size=None
        )
    with pytest.raises(DataError, match=r"no split 'valid'"):
        ContentVecDataset(
            manifest,
            [km],
            50,
            None,
            table,
            split="valid",
            speaker_path_index=2,
            min_sample_size=None,
        )


def test_long_utterances_are_windowed_on_the_label_grid_before_perturbing(cv_parts):
    off = ContentVecPerturbConfig(formant_pitch=False, eq=False)
    ds = _cv_dataset(cv_parts, perturb=off, max_sample_size=32000)
    assert ds.frame_step() == 320
    starts = set()
    for key in range(4):
        original = ds.load_audio(key)
        assert len(original) > 32000
        item = ds[key]
        view = item["source"].numpy()
        assert len(view) == 32000 and torch.equal(item["source"], item["source_2"])
        matches = [
            s
            for s in range(0, len(original) - 32000 + 1, 320)
            if np.array_equal(original[s : s + 32000], view)
        ]
        assert matches, "the view is not a frame-aligned window of the utterance"
        start = matches[0]
        starts.add(start)
        rows = cv_parts[3][int(ds.indices[key])]
        labels = item["label_list"][0].tolist()
        assert labels == (rows[start // 320 : start // 320 + len(labels)] + 4).tolist()
        assert len(labels) >= 32000 // 320 - 2
    assert len(starts) > 1  # random windows, not always the first 2 s
    ds_whole = _cv_dataset(cv_parts, perturb=off, max_sample_size=32000, random_crop=False)
    assert len(ds_whole[0]["source"]) == len(ds_whole.load_audio(0))

"""VoiceVector reference metadata (speechkit.data.voicevector_metadata) and the mixture
augmentations of target_speaker_separation, on real LibriSpeech speech (10 speakers x 10
utterances) and the shared noise list, with JSON files in the reference's formats written to a
temporary folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from hydra.errors import ConfigCompositionException

from speechkit.data.embedding_dataset import embedding_path
from speechkit.data.separation_dataset import GAIN_DB, SHIFT_SAMPLES
from speechkit.data.voicevector_metadata import (
    read_dns_json,
    read_librispeech_json,
    read_lrs_json,
    read_speaker_json,
    separation_entries,
)
from speechkit.errors import ConfigError, DataError
from speechkit.registry import TASK_REGISTRY
from tests.helpers import compose_cfg

LIST = "lists/librispeech_test_other_train_all.txt"
NOISE = "lists/noise_list.txt"
DIM = 16


@pytest.fixture(scope="module")
def meta(shared_data, tmp_path_factory):
    """LibriSpeech / LRS / speaker / DNS JSON files for the shared LibriSpeech list."""
    out = tmp_path_factory.mktemp("vvmeta")
    rows = [ln.split() for ln in (shared_data / LIST).read_text().splitlines() if ln.strip()]
    rng = np.random.default_rng(0)
    libri, lrs, speakers = [], [], {}
    for i, (spk, rel) in enumerate(rows):
        n = sf.info(str(shared_data / rel)).frames
        libri.append([rel, n, int(spk[2:])])
        lrs.append([rel[: -len(".wav")], n // 640, int(spk[2:])])
        speakers.setdefault(spk[2:], []).append(i)
        path = out / "emb" / embedding_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.standard_normal((2, DIM)).astype(np.float32))
    noise = [ln.strip() for ln in (shared_data / NOISE).read_text().splitlines() if ln.strip()]
    dns = [[rel, sf.info(str(shared_data / rel)).frames] for rel in noise]
    files = {"libri": libri, "lrs": lrs, "speaker": speakers, "dns": dns}
    for name, value in files.items():
        (out / f"{name}.json").write_text(json.dumps(value))
    return shared_data, out, rows


def _task(meta, *overrides, seed=1):
    root, out, _ = meta
    cfg = compose_cfg(
        [
            "task=target_speaker_separation",
            f"task.root={root}",
            f"task.train_list={out / 'libri.json'}",
            "task.metadata_format=librispeech_json",
            f"task.embedding_dir={out / 'emb'}",
            f"task.emb_dim={DIM}",
            "task.segment=1.0",
            *overrides,
        ]
    )
    return TASK_REGISTRY.build(cfg.task, seed=seed)


def _snr(signal, noise):
    return 10 * math.log10(float(signal.double().pow(2).sum() / noise.double().pow(2).sum()))


def test_readers_follow_the_reference_formats(meta):
    root, out, rows = meta
    libri = read_librispeech_json(out / "libri.json", root)
    lrs = read_lrs_json(out / "lrs.json", root)
    assert len(libri) == len(lrs) == 100
    first = sf.info(str(root / rows[0][1])).frames
    assert libri[0].num_samples == first and libri[0].speaker == rows[0][0][2:]
    assert lrs[0].num_samples == first // 640 * 640 and lrs[0].rel_path == rows[0][1]
    assert libri[0].path == lrs[0].path == str(root / rows[0][1])
    speakers = read_speaker_json(out / "speaker.json", 100)
    assert len(speakers) == 10 and sorted(i for v in speakers.values() for i in v) == list(
        range(100)
    )
    noise = read_dns_json(out / "dns.json", root)
    assert len(noise) == 6 and noise[2][1] == 80000
    entries = separation_entries(out / "lrs.json", root, "lrs_json", out / "speaker.json")
    assert entries[5] == (rows[5][0][2:], rows[5][1], str(root / rows[5][1]), 5)


@pytest.mark.parametrize(
    ("reader", "content", "message"),
    [
        (
            "libri",
            [["a.wav", 10, 1], ["b.wav", 10]],
            r"\[entry 1\]: expected \[path, samples, speaker\] \(3",
        ),
        ("libri", [["a.wav", 10.5, 1]], r"\[entry 0\]: the length must be a positive integer"),
        ("libri", [["a.wav", True, 1]], r"\[entry 0\]: the length must be a positive integer"),
        (
            "lrs",
            [["a", 3, 1], ["b", "7", 2]],
            r"\[entry 1\]: the length must be a positive integer \(25 fps",
        ),
        ("lrs", [["a", 3, "x"]], r"\[entry 0\]: the speaker id must be an integer"),
        ("lrs", {"a": 1}, r": expected a JSON list of \[relative_id, frames, speaker\]"),
        ("dns", [["n.wav", 5, 0]], r"\[entry 0\]: expected \[noise_file.wav, n_samples\] \(2"),
        ("speaker", {"1": [0, 200]}, r"\[speaker 1\]: row 200 out of range \[0, 100\)"),
    ],
)
def test_malformed_entries_name_file_and_index(meta, tmp_path, reader, content, message):
    root = meta[0]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    call = {
        "libri": lambda: read_librispeech_json(path, root, check_files=False),
        "lrs": lambda: read_lrs_json(path, root, check_files=False),
        "dns": lambda: read_dns_json(path, root, check_files=False),
        "speaker": lambda: read_speaker_json(path, 100),
    }[reader]
    with pytest.raises(DataError, match=str(path).replace(".", r"\.") + message):
        call()


def test_missing_files_and_speaker_mismatch(meta, tmp_path):
    root, out, rows = meta
    bad = tmp_path / "libri.json"
    bad.write_text(json.dumps([[rows[0][1], 10, 1], ["nowhere/x.flac", 10, 2]]))
    with pytest.raises(
        DataError, match=r"1 listed file\(s\) not found.*entry 1: .*nowhere/x\.flac"
    ):
        read_librispeech_json(bad, root)
    assert len(read_librispeech_json(bad, root, check_files=False)) == 2
    (tmp_path / "bad.txt").write_text("not json")
    with pytest.raises(DataError, match=r"bad\.txt: not valid JSON"):
        read_lrs_json(tmp_path / "bad.txt", root)
    swapped = json.loads((out / "speaker.json").read_text())
    a, b = list(swapped)[:2]
    swapped[a], swapped[b] = swapped[b], swapped[a]
    (tmp_path / "speaker.json").write_text(json.dumps(swapped))
    with pytest.raises(
        DataError, match=rf"\[speaker {a}\]: row \d+ is speaker {b} in .*lrs\.json\[entry"
    ):
        separation_entries(out / "lrs.json", root, "lrs_json", tmp_path / "speaker.json")


def test_task_json_mixtures_with_noise(meta):
    """Three-speaker mixtures from a LibriSpeech JSON, noise forced on (p=1): distinct speakers,
    noise at the drawn SNR, reproducible per (seed, epoch, index), mixing unchanged by noise."""
    root, out, rows = meta
    task = _task(meta, "task.speakers=3", f"task.noise_list={root / NOISE}", "task.noise_prob=1.0")
    ds = task.dataset("train")
    assert len(ds) == 100 and ds.num_speakers == 10 and ds.where(7).endswith("libri.json:7")
    clean = _task(meta, "task.speakers=3").dataset("train")
    ds.set_epoch(2)
    clean.set_epoch(2)
    snrs = []
    for i in (0, 13, 42, 77):
        it = ds[i]
        m = it["meta"]
        assert it["mixture"].shape == it["target"].shape == it["interferer"].shape == (16000,)
        utts = [m["target"], *m["interferers"]]
        assert len({ds.speakers[u] for u in utts}) == 3 and len(m["sir_db"]) == 2
        assert all(-5 <= r <= 5 for r in m["sir_db"]) and it["sir_db"] == m["sir_db"][0]
        assert 0 <= m["noise"] < 6 and 8.0 <= m["noise_snr_db"] <= 10.0
        speech = it["target"] + it["interferer"]
        assert _snr(speech, it["mixture"] - speech) == pytest.approx(m["noise_snr_db"], abs=0.02)
        snrs.append(m["noise_snr_db"])
        again = ds[i]
        assert again["meta"] == m and bool((again["mixture"] == it["mixture"]).all())
        ref = clean[i]
        assert ref["meta"]["interferers"] == m["interferers"] and ref["meta"]["noise"] == -1
        assert bool((ref["mixture"] == speech).all()) and bool((ref["enrol"] == it["enrol"]).all())
    assert len(set(snrs)) == 4
    # a rebuilt task (a resumed run) with the same seed gives the same items; another epoch not
    rebuilt = _task(
        meta, "task.speakers=3", f"task.noise_list={root / NOISE}", "task.noise_prob=1.0"
    )
    rebuilt = rebuilt.dataset("train")
    rebuilt.set_epoch(2)
    assert rebuilt[77]["meta"] == m and bool((rebuilt[77]["mixture"] == it["mixture"]).all())
    ds.set_epoch(3)
    assert ds[77]["meta"]["noise_snr_db"] != m["noise_snr_db"]


def test_task_checks_speakers_and_augmentation_options(meta):
    with pytest.raises(ConfigError, match=r"task.speakers must be >= 2"):
        _task(meta, "task.speakers=1")
    with pytest.raises(ConfigError, match=r"task.noise_prob must be in \[0, 1\], got 1.5"):
        _task(meta, "task.noise_prob=1.5")
    with pytest.raises(DataError, match=r"mixtures of 11 speakers need at least as many"):
        _task(meta, "task.speakers=11")


def test_task_lrs_json_gain_shift_and_dns_noise(meta):
    root, out, rows = meta
    task = _task(
        meta,
        f"task.train_list={out / 'lrs.json'}",
        "task.metadata_format=lrs_json",
        "task.gain_prob=1.0",
        "task.shift_prob=1.0",
        f"task.noise_list={out / 'dns.json'}",
        "task.noise_prob=0.0",
    )
    ds = task.dataset("train")
    for i in (3, 58):
        it = ds[i]
        m = it["meta"]
        assert GAIN_DB[0] <= m["gain_db"] <= GAIN_DB[1] and m["noise"] == -1
        assert SHIFT_SAMPLES[0] <= m["shift"] <= SHIFT_SAMPLES[1]
        speech = (it["target"] + it["interferer"]).numpy() * 10 ** (m["gain_db"] / 20)
        np.testing.assert_allclose(it["mixture"].numpy(), np.roll(speech, m["shift"]), atol=1e-6)
        assert ds.speakers[m["target"]] != ds.speakers[m["interferer"]]
    noisy = _task(meta, f"task.noise_list={out / 'dns.json'}", "task.noise_prob=1.0").dataset(
        "train"
    )
    assert noisy[0]["meta"]["noise"] >= 0 and noisy.noise_files[0].endswith("doing_the_dishes.wav")


def test_bad_format_fails_at_composition(meta):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(["task=target_speaker_separation", "task.metadata_format=csv"])
    assert "expected one of [speechkit, librispeech_json, lrs_json]" in str(e.value) + str(
        e.value.__cause__
    )

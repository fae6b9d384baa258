"""On-the-fly two-speaker mixing for VoiceVector separation (speechkit.data.separation_dataset)
on real LibriSpeech speech (10 speakers x 10 utterances), with per-utterance .npy embeddings
(random crop vectors, in the dump_embeddings.py layout) written to a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.data.audio import read_audio
from speechkit.data.embedding_dataset import embedding_path
from speechkit.data.separation_dataset import SeparationDataset, collate_separation
from speechkit.errors import ConfigError, DataError

LIST = "lists/librispeech_test_other_train_all.txt"
DIM = 16


def _write_embeddings(out: Path, lines: list[str], dim: int = DIM, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for line in lines:
        rel = line.split()[1]
        path = out / embedding_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.standard_normal((3, dim)).astype(np.float32))


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    emb = tmp_path_factory.mktemp("emb")
    lines = (shared_data / LIST).read_text().split("\n")
    lines = [ln for ln in lines if ln.strip()]
    _write_embeddings(emb, lines)
    return shared_data, emb, lines


def _dataset(data, **kw):
    root, emb, _ = data
    kw.setdefault("segment", 1.0)
    return SeparationDataset(root / LIST, root, emb, **kw)


def _unit(x):
    return x / np.linalg.norm(x)


def test_mixture_levels_offsets_enrolment(data):
    root, emb, lines = data
    ds = _dataset(data, num_enrol=5, seed=3)
    assert len(ds) == 100 and ds.emb_dim == DIM and ds.num_speakers == 10
    ds.set_epoch(2)
    seen_p = set()
    for i in range(0, 100, 7):
        it = ds[i]
        meta = it["meta"]
        t, j = meta["target"], meta["interferer"]
        assert t == i
        assert ds.speakers[t] != ds.speakers[j]
        mix, tgt, itf = it["mixture"], it["target"], it["interferer"]
        assert mix.shape == tgt.shape == (16000,) and mix.dtype == torch.float32
        assert torch.equal(mix, tgt + itf)
        r = it["sir_db"]
        assert r == int(r) and -5 <= r <= 5
        ratio = itf.double().norm() / tgt.double().norm()
        assert abs(float(ratio) - 10 ** (r / 20)) < 1e-4
        for off in (meta["target_offset"], meta["interferer_offset"]):
            assert off % 640 == 0
        # the target is the file's samples at that offset
        wav = read_audio(ds.paths[t])
        o = meta["target_offset"]
        np.testing.assert_array_equal(tgt.numpy(), wav[o : o + 16000])
        # enrolment: positives of the target speaker (never the target itself), negatives of
        # the interferer's speaker (never the interferer itself)
        pos, neg = meta["positives"], meta["negatives"]
        assert 1 <= len(pos) <= 5 and len(pos) + len(neg) == 5
        seen_p.add(len(pos))
        assert all(ds.speakers[p] == ds.speakers[t] and p != t for p in pos)
        assert all(ds.speakers[n] == ds.speakers[j] and n != j for n in neg)
        assert len(set(pos)) == len(pos)  # 9 others: drawn without replacement
        assert it["enrol_type"].tolist() == [1] * len(pos) + [0] * len(neg)
        # vectors = L2-normalised crop means of the right .npy
        for row, u in zip(it["enrol"].numpy(), pos + neg):
            arr = np.load(emb / embedding_path(lines[u].split()[1]))
            np.testing.assert_allclose(row, _unit(arr.mean(0)), rtol=1e-5, atol=1e-6)
    assert len(seen_p) > 1  # P varies in training


def test_reproducible_per_seed_epoch_index(data):
    a, b = _dataset(data, seed=5), _dataset(data, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    x, y = a[11], b[11]
    assert torch.equal(x["mixture"], y["mixture"]) and x["meta"] == y["meta"]
    b.set_epoch(4)
    z = b[11]
    assert z["meta"] != x["meta"] or not torch.equal(z["mixture"], x["mixture"])
    c = _dataset(data, seed=6)
    c.set_epoch(3)
    assert c[11]["meta"] != x["meta"]


def test_eval_mode_fixed_and_num_positive(data):
    ds = _dataset(data, eval_mode=True, num_items=12, num_enrol=5, num_positive=3, seed=2038)
    assert len(ds) == 12
    first = [ds[i] for i in range(12)]
    ds.set_epoch(7)
    for i, it in enumerate(first):
        again = ds[i]
        assert torch.equal(again["mixture"], it["mixture"]) and again["meta"] == it["meta"]
        assert it["enrol_type"].tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(IndexError):
        ds[12]


def test_collater_pads_enrolment(data):
    ds = _dataset(data, num_enrol=4)
    items = [ds[i] for i in (0, 1, 2)]
    items[1] = dict(items[1], enrol=items[1]["enrol"][:2], enrol_type=items[1]["enrol_type"][:2])
    batch = collate_separation(items)
    assert batch["mixture"].shape == batch["target"].shape == (3, 16000)
    assert batch["enrol"].shape == (3, 4, DIM) and batch["enrol_type"].dtype == torch.long
    assert batch["enrol_mask"].dtype == torch.bool
    assert batch["enrol_mask"].tolist() == [[True] * 4, [True, True, False, False], [True] * 4]
    assert torch.all(batch["enrol"][1, 2:] == 0) and torch.all(batch["enrol_type"][1, 2:] == 0)
    assert torch.equal(batch["enrol"][0], items[0]["enrol"])
    assert ds.collater([]) == {}


def test_short_files_and_sparse_speakers(data, tmp_path):
    root, emb, lines = data
    # a 0.5 s file (repeated from its start), a speaker with one utterance (own vector as
    # positive), a speaker with two (positives with replacement)
    wav = read_audio(root / lines[0].split()[1])[:8000]
    sf.write(tmp_path / "short.wav", wav, 16000)
    rel_other = [ln.split()[1] for ln in lines if ln.startswith(lines[50].split()[0])][:2]
    lst = tmp_path / "list.txt"
    lst.write_text(
        f"solo {tmp_path / 'short.wav'}\n" + "".join(f"duo {root / r}\n" for r in rel_other)
    )
    e2 = tmp_path / "emb"
    _write_embeddings(e2, [f"x {root / r}" for r in rel_other] + [f"x {tmp_path / 'short.wav'}"])
    # absolute list paths stay absolute under the embedding folder (.npy next to the audio)
    ds = SeparationDataset(lst, root, e2, segment=1.0, num_enrol=3, eval_mode=True, num_positive=3)
    it = ds[0]
    np.testing.assert_array_equal(it["target"].numpy(), np.concatenate([wav, wav]))
    assert it["meta"]["target_offset"] == 0
    assert it["meta"]["positives"] == [0, 0, 0]
    it = ds[1]
    assert it["meta"]["positives"] == [2, 2, 2] and it["meta"]["interferer"] == 0


def test_bad_inputs_name_file_and_line(data, tmp_path):
    root, emb, lines = data
    # malformed line
    bad = tmp_path / "bad.txt"
    bad.write_text(lines[0] + "\n" + lines[1] + " extra\n")
    with pytest.raises(DataError, match=rf"{bad}:2"):
        SeparationDataset(bad, root, emb)
    # missing audio
    miss = tmp_path / "miss.txt"
    miss.write_text(lines[0] + "\nls367 speech/nope.wav\n")
    with pytest.raises(DataError, match="line 2"):
        SeparationDataset(miss, root, emb)
    # single speaker
    one = tmp_path / "one.txt"
    one.write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(DataError, match="at least 2 speakers"):
        SeparationDataset(one, root, emb)
    # missing .npy
    e2 = tmp_path / "e2"
    _write_embeddings(e2, lines)
    gone = e2 / embedding_path(lines[4].split()[1])
    os.remove(gone)
    with pytest.raises(DataError, match=rf"{LIST}:5.*not found"):
        SeparationDataset(root / LIST, root, e2)
    # wrong dimension
    np.save(gone, np.ones((3, DIM + 1), np.float32))
    with pytest.raises(DataError, match=rf"{gone.name}.*{LIST}:5.*D={DIM}"):
        SeparationDataset(root / LIST, root, e2)
    with pytest.raises(DataError, match=f"D={DIM + 1}"):
        SeparationDataset(root / LIST, root, emb, emb_dim=DIM + 1)


def test_wrong_sample_rate(data, tmp_path):
    root, emb, lines = data
    wav = read_audio(root / lines[0].split()[1])
    import soxr

    sf.write(tmp_path / "a8k.wav", soxr.resample(wav, 16000, 8000), 8000)
    lst = tmp_path / "l.txt"
    lst.write_text(f"s1 {tmp_path / 'a8k.wav'}\n{lines[20]}\n")
    e2 = tmp_path / "e"
    _write_embeddings(e2, [f"x {tmp_path / 'a8k.wav'}", lines[20]])
    ds = SeparationDataset(lst, root, e2, segment=1.0, eval_mode=True, num_positive=1, num_enrol=1)
    with pytest.raises(DataError, match=r"8000 Hz.*expected 16000"):
        ds[0]
    ds.resample = True
    assert ds[0]["target"].shape == (16000,)


def test_task_checks_emb_dim(data, tmp_path):
    from speechkit.tasks.target_speaker_separation import (
        TargetSpeakerSeparationConfig,
        TargetSpeakerSeparationTask,
    )

    root, emb, _ = data
    cfg = TargetSpeakerSeparationConfig(
        root=str(root),
        train_list=str(root / LIST),
        valid_list=str(root / LIST),
        embedding_dir=str(emb),
        segment=1.0,
        emb_dim=DIM + 1,
    )
    with pytest.raises(ConfigError, match=f"task.emb_dim={DIM + 1}.*{DIM}-d"):
        TargetSpeakerSeparationTask(cfg)
    cfg.emb_dim, cfg.num_valid = DIM, 8
    task = TargetSpeakerSeparationTask(cfg)
    assert task.has_split("valid") and len(task.dataset("valid")) == 8
    b1 = task.batches("train", 1, batch_size=40)
    assert sorted(i for b in b1 for i in b) == list(range(100)) and len(b1) == 3
    assert b1 == task.batches("train", 1, batch_size=40)
    assert b1 != task.batches("train", 2, batch_size=40)
    assert task.batches("valid", 1, batch_size=5) == [[0, 1, 2, 3, 4], [5, 6, 7]]


def test_task_lip_features_path_and_model_checks(data, tmp_path):
    """task.lip_dir feeds ``lip`` batches; the enrolment / lip requirements of each model are
    checked against what the task has before any weights are built."""
    from speechkit.models.voicevector import VoiceVectorAVConfig, VoiceVectorConfig
    from speechkit.tasks.target_speaker_separation import (
        TargetSpeakerSeparationConfig,
        TargetSpeakerSeparationTask,
    )

    root, emb, lines = data
    lip = tmp_path / "lip"
    for line in lines:
        rel = line.split()[1]
        frames = -(-sf.info(root / rel).frames // 640)
        path = lip / embedding_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.ones((frames, 8), dtype=np.float32))
    base = dict(root=str(root), train_list=str(root / LIST), segment=1.0)
    with pytest.raises(ConfigError, match="not set: task.embedding_dir"):
        TargetSpeakerSeparationTask(TargetSpeakerSeparationConfig(**base))
    with pytest.raises(ConfigError, match="multiple of 0.04 s"):
        TargetSpeakerSeparationTask(
            TargetSpeakerSeparationConfig(**{**base, "segment": 1.01}, lip_dir=str(lip))
        )
    task = TargetSpeakerSeparationTask(
        TargetSpeakerSeparationConfig(**base, lip_dir=str(lip), lip_dim=8)
    )
    batch = task.dataset("train").collater([task.dataset("train")[i] for i in (0, 1)])
    assert batch["lip"].shape == (2, 25, 8) and "enrol" not in batch
    with pytest.raises(ConfigError, match="needs enrolment vectors: set task.embedding_dir"):
        task.build_model(VoiceVectorConfig(_name="voicevector_ae", emb_dim=DIM))
    with pytest.raises(ConfigError, match="model.lip_dim=512 but .* 8-d"):
        task.build_model(VoiceVectorAVConfig(_name="voicevector_av"))
    model = task.build_model(
        VoiceVectorAVConfig(_name="voicevector_av", lip_dim=8, hidden=8, depth=3, heads=2)
    )
    assert model(batch["mixture"], batch["lip"]).shape == batch["mixture"].shape
    ae_task = TargetSpeakerSeparationTask(
        TargetSpeakerSeparationConfig(**base, embedding_dir=str(emb), emb_dim=DIM)
    )
    with pytest.raises(ConfigError, match="needs lip features: set task.lip_dir"):
        ae_task.build_model(VoiceVectorAVConfig(_name="voicevector_av"))

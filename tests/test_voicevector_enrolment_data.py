"""Data side of the VoiceVector enrolment nets and composites: face embeddings, the enrolment
clips of the distillation task (lip frames on the audio's 640-sample grid, noisy AV clips at the
drawn SIR, teacher vectors), the ``enrolment_l1`` criterion against a hand computation, and the
separation items that carry enrolment clips instead of vectors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.criterions.enrolment_distillation import EnrolmentL1Config, EnrolmentL1Criterion
from speechkit.criterions.separation import WaveformL1Config, WaveformL1Criterion
from speechkit.data.audio import read_audio
from speechkit.data.enrolment_dataset import EnrolmentDataset, collate_enrolment
from speechkit.data.face_embeddings import face_folder, read_face_embeddings
from speechkit.data.separation_dataset import SeparationDataset, collate_separation
from speechkit.errors import ConfigError, DataError

LIP = 6
EMB = 8
FACE = 4
FRAMES = {"a": (30, 12, 40), "b": (25, 33), "c": (20, 36)}  # per speaker: utterance lengths


def _write_data(root, frames=FRAMES):
    """Speaker list, audio (frames * 640 samples), lip (frames, LIP), teachers (3, EMB)."""
    rng = np.random.default_rng(0)
    lines = []
    for spk, lengths in frames.items():
        for u, n in enumerate(lengths):
            rel = f"{spk}/u{u}.wav"
            for sub in ("", "lip/", "emb/"):
                (root / sub / spk).mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, rng.standard_normal(n * 640).astype(np.float32) * 0.1, 16000)
            np.save(root / f"lip/{spk}/u{u}.npy", rng.standard_normal((n, LIP)).astype(np.float32))
            np.save(root / f"emb/{spk}/u{u}.npy", rng.standard_normal((3, EMB)).astype(np.float32))
            lines.append(f"{spk} {rel}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return lines


def _dataset(root, **kw):
    return EnrolmentDataset(root / "list.txt", root, root / "emb", root / "lip", **kw)


# -- face embeddings ----------------------------------------------------------------------------
def test_faces_sorted_cycled_zero_without_faces(tmp_path):
    assert face_folder("spk/utt.wav") == "spk/utt" == face_folder("spk/utt.mp4")
    assert face_folder("spk/utt") == "spk/utt"
    missing = read_face_embeddings(tmp_path / "nope", dim=FACE)
    assert missing.shape == (3, FACE) and missing.dtype == np.float32 and not missing.any()
    (tmp_path / "empty").mkdir()
    assert not read_face_embeddings(tmp_path / "empty", dim=FACE).any()
    folder = tmp_path / "clip"
    folder.mkdir()
    np.save(folder / "b.npy", np.full((1, FACE), 2.0))  # the reference's (1, 128) layout
    np.save(folder / "a.npy", np.full(FACE, 1.0))
    np.save(folder / "c.npy", np.ones((2, FACE)))  # two faces in one image: skipped
    (folder / "notes.txt").write_text("x")
    faces = read_face_embeddings(folder, dim=FACE)
    assert faces[:, 0].tolist() == [1.0, 2.0, 1.0]  # by name, cycled to 3


def test_bad_face_files_name_file_and_line(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    np.save(folder / "f0.npy", np.zeros((1, FACE + 1)))
    with pytest.raises(DataError, match=r"f0\.npy \(listed at l\.txt:4\).*expected dimension 4"):
        read_face_embeddings(folder, "l.txt:4", dim=FACE)
    np.save(folder / "f0.npy", np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(DataError, match=r"f0\.npy.*NaN"):
        read_face_embeddings(folder, dim=FACE)
    np.save(folder / "f0.npy", np.zeros((1, 1, FACE)))
    with pytest.raises(DataError, match=r"f0\.npy.*expected a face embedding"):
        read_face_embeddings(folder, dim=FACE)


# -- distillation items -------------------------------------------------------------------------
def test_v_clip_lip_frames_follow_the_offset_and_teacher_is_the_unit_mean(tmp_path):
    lines = _write_data(tmp_path)
    ds = _dataset(tmp_path, segment=0.4, seed=5)
    assert len(ds) == len(lines) and ds.lip_dim == LIP and ds.emb_dim == EMB
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"id", "lip", "teacher", "meta"}
        spk, rel = lines[i].split()
        off = item["meta"]["offset"]
        assert off % 640 == 0 and item["lip"].shape == (10, LIP)  # 6400 samples / 640
        full = np.load(tmp_path / "lip" / rel.replace(".wav", ".npy"))
        assert np.array_equal(item["lip"].numpy(), full[off // 640 : off // 640 + 10])
        crops = np.load(tmp_path / "emb" / rel.replace(".wav", ".npy")).astype(np.float64)
        mean = crops.mean(0)
        np.testing.assert_allclose(item["teacher"].numpy(), mean / np.linalg.norm(mean), 1e-6)
    offsets = {ds[i]["meta"]["offset"] for i in range(len(ds))}
    assert len(offsets) > 1  # random crops, not all at 0
    batch = collate_enrolment([ds[0], ds[1], ds[2]])
    assert batch["lip"].shape == (3, 10, LIP) and batch["teacher"].shape == (3, EMB)
    assert batch["ntokens"] == 30 and batch["nsentences"] == 3 and "audio" not in batch


def test_av_clip_is_the_crop_plus_an_interferer_at_the_drawn_sir(tmp_path):
    lines = _write_data(tmp_path)
    ds = _dataset(tmp_path, inputs="av", segment=0.4, seed=1)
    speakers = [line.split()[0] for line in lines]
    sirs = set()
    for i in range(len(ds)):
        item = ds[i]
        meta = item["meta"]
        assert item["audio"].shape == (6400,) and item["lip"].shape == (6400 // 640, LIP)
        other = meta["interferer"]
        assert speakers[other] != speakers[i]
        target = read_audio(ds.paths[i], 16000, start=meta["offset"], frames=6400)
        wav = read_audio(ds.paths[other], 16000, start=meta["interferer_offset"], frames=6400)
        noise = item["audio"].numpy().astype(np.float64) - target
        ratio = 20 * np.log10(np.linalg.norm(noise) / np.linalg.norm(target))
        assert isinstance(meta["sir_db"], int) and -5 <= meta["sir_db"] <= 5
        assert ratio == pytest.approx(meta["sir_db"], abs=1e-4)
        gain = np.linalg.norm(noise) / np.linalg.norm(wav)
        np.testing.assert_allclose(noise, wav * gain, atol=1e-6)
        sirs.add(meta["sir_db"])
    assert len(sirs) > 1
    assert "audio" in collate_enrolment([ds[0], ds[1]])


def test_iv_faces_and_fixed_validation_clips(tmp_path):
    _write_data(tmp_path)
    faces = tmp_path / "faces"
    (faces / "a/u0").mkdir(parents=True)
    np.save(faces / "a/u0/0.npy", np.ones((1, FACE), dtype=np.float32))
    ds = _dataset(tmp_path, inputs="iv", face_dir=faces, face_dim=FACE, segment=0.4)
    assert ds[0]["face"].shape == (3, FACE) and ds[0]["face"].eq(1).all()
    assert not ds[1]["face"].any()  # no folder: the reference's zero "no face"
    with pytest.raises(ValueError, match="need face_dir"):
        _dataset(tmp_path, inputs="iv")
    valid = _dataset(tmp_path, inputs="av", segment=0.4, eval_mode=True, num_items=9, seed=7)
    first = [valid[i]["audio"] for i in range(9)]
    valid.set_epoch(4)
    assert all(torch.equal(a, valid[i]["audio"]) for i, a in enumerate(first))
    train = _dataset(tmp_path, inputs="av", segment=0.4)
    epoch1 = [train[i]["meta"] for i in range(len(train))]
    train.set_epoch(2)
    assert epoch1 != [train[i]["meta"] for i in range(len(train))]


def test_bad_data_names_file_and_line(tmp_path):
    _write_data(tmp_path)
    np.save(tmp_path / "lip/b/u1.npy", np.zeros((20, LIP), dtype=np.float32))  # audio: 33
    with pytest.raises(
        DataError, match=r"b/u1\.npy: 20 lip frames but the audio has 21120.*list\.txt:5"
    ):
        _dataset(tmp_path)
    np.save(tmp_path / "lip/b/u1.npy", np.zeros((33, LIP), dtype=np.float32))
    (tmp_path / "emb/c/u0.npy").unlink()
    with pytest.raises(DataError, match=r"list\.txt:6: embedding file not found: .*c/u0\.npy"):
        _dataset(tmp_path)
    np.save(tmp_path / "emb/c/u0.npy", np.ones((2, EMB + 1), dtype=np.float32))
    with pytest.raises(DataError, match=r"c/u0\.npy \(listed at .*list\.txt:6\).*D=8"):
        _dataset(tmp_path, emb_dim=EMB)
    np.save(tmp_path / "emb/c/u0.npy", np.ones((2, EMB), dtype=np.float32))
    np.save(tmp_path / "lip/a/u2.npy", np.zeros((40, LIP + 1), dtype=np.float32))
    with pytest.raises(DataError, match=r"a/u2\.npy.*listed at .*list\.txt:3.*expected 6-d"):
        _dataset(tmp_path, lip_dim=LIP)
    with pytest.raises(ValueError, match="multiple of 0.04 s"):
        _dataset(tmp_path, segment=0.41, lip_dim=None)


# -- criterion ----------------------------------------------------------------------------------
class _Fixed(torch.nn.Module):
    """Returns a fixed output and records the keyword inputs it was called with."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.out


def test_enrolment_l1_matches_a_hand_computation():
    pred = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 0.0]])
    model = _Fixed(pred.clone().requires_grad_())
    crit = EnrolmentL1Criterion(EnrolmentL1Config())
    lip, audio = torch.zeros(2, 4, LIP), torch.zeros(2, 2560)
    loss, size, log = crit(model, {"lip": lip, "audio": audio, "teacher": teacher})
    assert set(model.calls[0][1]) == {"lip", "audio"} and model.calls[0][0] == ()
    # item 0: (1 + 0 + 1) / 3, item 1: (0 + 2 + 0) / 3
    assert size == 2 and loss.item() == pytest.approx(4 / 3)
    cos0 = 2 / (np.sqrt(5) * 1.0)
    cos1 = (0.25 - 1.0) / (np.sqrt(1.25) * np.sqrt(1.25))
    assert log["cosine"] == pytest.approx(cos0 + cos1, rel=1e-6)
    out = crit.reduce_metrics({**log, "sample_size": 2})
    assert out["loss"] == pytest.approx(2 / 3) and out["cosine"] == pytest.approx((cos0 + cos1) / 2)
    assert out["loss"] == pytest.approx(torch.nn.functional.l1_loss(pred, teacher).item())
    with pytest.raises(ValueError, match=r"output shape \(2, 3\).*\(2, 4\)"):
        crit(model, {"lip": lip, "teacher": torch.zeros(2, 4)})
    with pytest.raises(DataError, match="missing \\['teacher'\\]"):
        crit(model, {"lip": lip})


# -- separation with enrolment clips ------------------------------------------------------------
def _separation(root, **kw):
    return SeparationDataset(root / "list.txt", root, None, segment=0.4, lip_dir=root / "lip", **kw)


def test_separation_items_with_clips_keep_the_vector_items_mixing(tmp_path):
    _write_data(tmp_path)
    vectors = SeparationDataset(tmp_path / "list.txt", tmp_path, tmp_path / "emb", segment=0.4)
    clips = _separation(tmp_path, enrolment_source="clips", enrol_inputs="av", enrol_segment=0.2)
    assert len(clips) == len(vectors)
    for i in range(len(clips)):
        a, b = vectors[i], clips[i]
        assert torch.equal(a["mixture"], b["mixture"]) and torch.equal(a["target"], b["target"])
        assert torch.equal(a["enrol_type"], b["enrol_type"])
        assert a["meta"]["positives"] == b["meta"]["positives"]
        assert a["meta"]["negatives"] == b["meta"]["negatives"]
        assert "enrol" not in b and "lip" not in b and "enrol_face" not in b
        k = len(b["enrol_type"])
        assert b["enrol_lip"].shape == (k, 5, LIP) and b["enrol_audio"].shape == (k, 3200)
        # each clip's lip frames are its utterance's frames at some 640-multiple offset
        for j, utt in enumerate(b["meta"]["positives"] + b["meta"]["negatives"]):
            full = np.load(tmp_path / "lip" / clips.rel_paths[utt].replace(".wav", ".npy"))
            rows = b["enrol_lip"][j].numpy()
            starts = [s for s in range(len(full) - 4) if np.array_equal(full[s : s + 5], rows)]
            assert starts, (i, j)
    batch = collate_separation([clips[0], clips[1]])
    assert batch["enrol_lip"].shape == (2, 5, 5, LIP) and batch["enrol_audio"].shape == (2, 5, 3200)
    assert batch["enrol_mask"].all() and "enrol" not in batch


def test_collate_pads_clips_and_criterion_calls_the_composite(tmp_path):
    _write_data(tmp_path)
    faces = tmp_path / "faces"
    with pytest.raises(DataError, match=r"face_dir .*faces not found"):
        _separation(tmp_path, enrolment_source="clips", enrol_inputs="iv", face_dir=faces)
    faces.mkdir()
    ds = _separation(
        tmp_path,
        enrolment_source="clips",
        enrol_inputs="iv",
        enrol_segment=0.4,
        face_dir=faces,
        face_dim=FACE,
    )
    a, b = ds[0], ds[1]
    b = {**b, **{k: b[k][:2] for k in ("enrol_lip", "enrol_face", "enrol_type")}}
    batch = collate_separation([a, b])
    assert batch["enrol_lip"].shape == (2, 5, 10, LIP) and batch["enrol_face"].shape[1:] == (
        5,
        3,
        4,
    )
    assert batch["enrol_mask"][1].tolist() == [True, True, False, False, False]
    assert not batch["enrol_lip"][1, 2:].any() and "enrol_audio" not in batch
    model = _Fixed(batch["target"] * 0.5)
    crit = WaveformL1Criterion(WaveformL1Config())
    loss, size, _ = crit(model, batch)
    args, kwargs = model.calls[0]
    assert args[0] is batch["mixture"] and size == 2
    assert set(kwargs) == {"enrol_type", "enrol_mask", "enrol_lip", "enrol_face"}
    expected = (batch["target"] * 0.5).abs().mean(-1).sum()
    assert loss.item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="need face_dir"):
        _separation(tmp_path, enrolment_source="clips", enrol_inputs="iv")
    with pytest.raises(ValueError, match="no embedding_dir"):
        SeparationDataset(
            tmp_path / "list.txt", tmp_path, tmp_path / "emb", lip_dir=tmp_path / "lip",
            enrolment_source="clips", segment=0.4,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="enrolment_source"):
        _separation(tmp_path, enrolment_source="audio")


# -- task settings ------------------------------------------------------------------------------
def test_tasks_refuse_inconsistent_enrolment_settings(tmp_path):
    from speechkit.models.voicevector import VoiceVectorConfig
    from speechkit.models.voicevector_composite import VoiceVectorVEMConfig
    from speechkit.models.voicevector_enrolment import VoiceVectorEmbeddingConfig
    from speechkit.tasks.enrolment_distillation import (
        EnrolmentDistillationConfig,
        EnrolmentDistillationTask,
    )
    from speechkit.tasks.target_speaker_separation import (
        TargetSpeakerSeparationConfig,
        TargetSpeakerSeparationTask,
    )

    _write_data(tmp_path)
    paths = dict(root=str(tmp_path), train_list=str(tmp_path / "list.txt"))
    lip = dict(lip_dir=str(tmp_path / "lip"), lip_dim=LIP)
    clips = dict(**paths, **lip, segment=0.4, enrolment_source="clips", enrol_segment=0.4)
    with pytest.raises(ConfigError, match="needs task.lip_dir"):
        TargetSpeakerSeparationTask(
            TargetSpeakerSeparationConfig(**paths, enrolment_source="clips")
        )
    with pytest.raises(ConfigError, match="embedding_dir=null"):
        TargetSpeakerSeparationTask(
            TargetSpeakerSeparationConfig(**clips, embedding_dir=str(tmp_path / "emb"))
        )
    with pytest.raises(ConfigError, match="needs task.face_dir"):
        TargetSpeakerSeparationTask(TargetSpeakerSeparationConfig(**clips, enrol_inputs="iv"))
    with pytest.raises(ConfigError, match="enrol_segment=0.41"):
        TargetSpeakerSeparationTask(
            TargetSpeakerSeparationConfig(**{**clips, "enrol_segment": 0.41})
        )
    task = TargetSpeakerSeparationTask(TargetSpeakerSeparationConfig(**clips))
    with pytest.raises(ConfigError, match="needs model voicevector_vem, got model voicevector_ae"):
        task.build_model(VoiceVectorConfig(_name="voicevector_ae"))
    small = dict(d_model=16, transformer_layers=1, heads=2, ffn_dim=16, proj_dim=8)
    small.update(ecapa_channels=[16, 16, 16, 16, 48], ecapa_attention_channels=4)
    small.update(ecapa_se_channels=4, ecapa_res2net_scale=4, out_dim=EMB)
    separation = VoiceVectorConfig(hidden=4, depth=2, transformer_layers=1, heads=2, ffn_dim=8)
    separation.emb_dim = EMB
    with pytest.raises(ConfigError, match="model.enrolment.lip_dim=512 .* 6-d"):
        task.build_model(
            VoiceVectorVEMConfig(
                _name="voicevector_vem",
                enrolment=VoiceVectorEmbeddingConfig(**small),
                separation=separation,
            )
        )
    enrolment = VoiceVectorEmbeddingConfig(**small, lip_dim=LIP)
    vem = VoiceVectorVEMConfig(_name="voicevector_vem", enrolment=enrolment, separation=separation)
    model = task.build_model(vem)
    batch = collate_separation([task.dataset("train")[0], task.dataset("train")[1]])
    enrol = {k: v for k, v in batch.items() if k.startswith("enrol")}
    assert model(batch["mixture"], **enrol).shape == (2, 6400)

    distill = dict(**paths, **lip, embedding_dir=str(tmp_path / "emb"), emb_dim=EMB, segment=0.4)
    with pytest.raises(ConfigError, match="task.inputs=iv needs task.face_dir"):
        EnrolmentDistillationTask(EnrolmentDistillationConfig(**distill, inputs="iv"))
    with pytest.raises(ConfigError, match="not set: task.embedding_dir"):
        EnrolmentDistillationTask(EnrolmentDistillationConfig(**paths, **lip))
    task = EnrolmentDistillationTask(EnrolmentDistillationConfig(**distill, inputs="av"))
    with pytest.raises(ConfigError, match="takes 'v' enrolment inputs but task.inputs=av"):
        task.build_model(VoiceVectorEmbeddingConfig(_name="voicevector_embedding_v", **small))
    with pytest.raises(ConfigError, match="model.out_dim=192 but the task's data is 8-d"):
        EnrolmentDistillationTask(EnrolmentDistillationConfig(**distill)).build_model(
            VoiceVectorEmbeddingConfig(
                _name="voicevector_embedding_v", **{**small, "out_dim": 192}, lip_dim=LIP
            )
        )
    v_task = EnrolmentDistillationTask(EnrolmentDistillationConfig(**distill))
    net = v_task.build_model(
        VoiceVectorEmbeddingConfig(_name="voicevector_embedding_v", **small, lip_dim=LIP)
    )
    batch = collate_enrolment([v_task.dataset("train")[i] for i in range(3)])
    loss, size, log = EnrolmentL1Criterion(EnrolmentL1Config())(net, batch)
    assert size == 3 and torch.isfinite(loss) and loss.requires_grad and "cosine" in log

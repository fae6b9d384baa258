"""Composite VoiceVector checkpoints (``voicevector_vem`` / ``_avem`` / ``_ivem``) at inference:
``Separator.from_checkpoint`` reads no other file, enrolment clips go through the frozen
enrolment net in training-length windows, ``speechkit-separate --enrol-lip ...`` and
``speechkit-eval-separation`` on the ``ID_enrolK_*`` layout; tiny models."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit import components
from speechkit.cli import eval_separation, separate
from speechkit.data.lip_features import crop_lip_features
from speechkit.inference.clip_enrolment import window_offsets
from speechkit.inference.separation import Separator, chunk_starts
from speechkit.metrics.separation import si_sdr
from speechkit.models.voicevector import VoiceVectorAE, VoiceVectorConfig
from speechkit.registry import MODEL_REGISTRY
from tests.test_separate_cli import save_checkpoint, speech
from tests.test_voicevector_enrolment import HEAD  # the tiny enrolment nets' sizes

components.import_all()

SR = 16000
LIP_NET = dict(HEAD, d_model=16, heads=2, ffn_dim=12, transformer_layers=1, max_len=50)
AV_NET = dict(HEAD, hidden=1, depth=5, d_model=16, heads=2, ffn_dim=12, transformer_layers=1)
# 0.5 s positional limit (400 tokens of 1.25 ms): a 2 s mixture is separated in chunks
SEP = dict(hidden=4, depth=3, transformer_layers=1, heads=2, ffn_dim=12, max_len=400, emb_dim=8)
SEP.update(enrol_hidden=6, dropout=0.0, head_init=1.0)
NETS = {"v": LIP_NET, "av": AV_NET, "iv": LIP_NET}
NAMES = {"v": "voicevector_vem", "av": "voicevector_avem", "iv": "voicevector_ivem"}
WINDOW = 25  # task.enrol_segment = 1 s in the saved checkpoints: 25 lip frames


def save_composite(path: Path, kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny composite in speechkit's checkpoint format whose config still names the weight
    files it was (notionally) built from; they do not exist."""
    torch.manual_seed(seed)
    model = MODEL_REGISTRY.build({"_name": NAMES[kind], "separation": SEP, "enrolment": NETS[kind]})
    with torch.no_grad():  # a "trained" enrolment net: BatchNorm statistics that matter
        for m in model.enrolment.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model_cfg = {
        "_name": NAMES[kind],
        "separation": SEP,
        "enrolment": NETS[kind],
        "enrolment_checkpoint": str(path.parent / "deleted_distill.pt"),
        "separation_init": str(path.parent / "deleted_ae.pt"),
    }
    task = {"_name": "target_speaker_separation", "enrolment_source": "clips"}
    task.update(enrol_inputs=kind, enrol_segment=WINDOW / 25)
    torch.save({"cfg": {"task": task, "model": model_cfg}, "model": model.state_dict()}, path)
    return model.eval()


def lip(rng: np.random.Generator, frames: int) -> np.ndarray:
    return rng.standard_normal((frames, 6)).astype(np.float32)


def write_clips(folder: Path, kind: str, names: list[str], frames: int, seed: int = 0) -> dict:
    """Per name ``name_feat.npy`` (+ ``name.wav`` for av, ``name_face/`` for iv); returns the
    arrays the net should see: ``lip`` (n, frames, 6), ``audio`` (n, frames * 640), ``face``
    (n, 3, 5)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"lip": [], "audio": [], "face": []}
    for name in names:
        x = lip(rng, frames)
        np.save(folder / f"{name}_feat.npy", x)
        out["lip"].append(x)
        if kind == "av":
            wav = (0.1 * rng.standard_normal(frames * 640)).astype(np.float32)
            sf.write(folder / f"{name}.wav", wav, SR, subtype="FLOAT")
            out["audio"].append(wav)
        if kind == "iv":
            faces = folder / f"{name}_face"
            faces.mkdir()
            a, b = rng.standard_normal((2, 5)).astype(np.float32)
            np.save(faces / "0.npy", a)
            np.save(faces / "1.npy", b[None])  # (1, dim) is one face too
            np.save(faces / "2_group.npy", rng.standard_normal((2, 5)).astype(np.float32))
            out["face"].append(np.stack([a, b, a]))  # cycled; the two-face file skipped
    return {k: torch.from_numpy(np.stack(v)) for k, v in out.items() if v}


def clip_args(folder: Path, kind: str, names: list[str], negative: bool = False) -> list[str]:
    lip_opt, audio_opt, face_opt = (
        ("--negative-lip", "--negative-audio", "--negative-face")
        if negative
        else ("--enrol-lip", "--enrol-audio", "--enrol-face")
    )
    argv = [lip_opt] + [str(folder / f"{n}_feat.npy") for n in names]
    if kind == "av":
        argv += [audio_opt] + [str(folder / f"{n}.wav") for n in names]
    if kind == "iv":
        argv += [face_opt] + [str(folder / f"{n}_face") for n in names]
    return argv


@pytest.mark.parametrize("kind", ["v", "av", "iv"])
def test_separate_with_clips_is_the_model_on_those_clips(kind, shared_data, tmp_path, capsys):
    model = save_composite(tmp_path / "comp.pt", kind)
    assert not (tmp_path / "deleted_distill.pt").exists()
    sep = Separator.from_checkpoint(tmp_path / "comp.pt", overlap_seconds=0.1)  # reads neither file
    assert sep.is_composite and sep.clip_inputs == kind and sep.enrol_window == WINDOW * 640
    for k, v in model.state_dict().items():
        assert torch.equal(sep.model.state_dict()[k], v), k
    n = 6000  # one chunk (the limit is 0.5 s)
    mix = speech(shared_data, "1688", n) + 0.5 * speech(shared_data, "367", n)
    sf.write(tmp_path / "mix.wav", mix, SR, subtype="FLOAT")
    pos = write_clips(tmp_path, kind, ["p0", "p1"], WINDOW, seed=1)
    neg = write_clips(tmp_path, kind, ["n0"], WINDOW, seed=2)
    argv = ["--checkpoint", str(tmp_path / "comp.pt"), "--mixture", str(tmp_path / "mix.wav")]
    argv += clip_args(tmp_path, kind, ["p0", "p1"]) + clip_args(tmp_path, kind, ["n0"], True)
    argv += ["--out", str(tmp_path / "est.wav"), "--device", "cpu", "--overlap", "0.1"]
    assert separate.main(argv) == 0, capsys.readouterr().err
    assert "2 positive and 1 negative enrolment clip(s)" in capsys.readouterr().out
    est, rate = sf.read(tmp_path / "est.wav", dtype="float32")
    assert rate == SR and est.shape == (n,)

    # the composite itself, on the same clips (each exactly one window long)
    clips = {k: torch.cat([pos[k], neg[k]])[None] for k in pos}
    with torch.no_grad():
        direct = model(
            torch.from_numpy(mix)[None],
            torch.tensor([[1, 1, 0]]),
            None,
            enrol_lip=clips["lip"],
            enrol_audio=clips.get("audio"),
            enrol_face=clips.get("face"),
        )[0]
    torch.testing.assert_close(torch.from_numpy(est), direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["v", "av", "iv"])
def test_clips_embed_in_training_length_windows(kind, tmp_path, caplog):
    """A long clip is the mean over ceil(F / W) evenly spaced W-frame windows; a short one is
    wrap-repeated to W frames as the training data does; avem audio at another rate is
    resampled with a warning naming the file."""
    model = save_composite(tmp_path / "comp.pt", kind)
    sep = Separator.from_checkpoint(tmp_path / "comp.pt", overlap_seconds=0.1)
    assert window_offsets(60 * 640, WINDOW * 640) == [0, 18 * 640, 35 * 640]
    assert window_offsets(10 * 640, WINDOW * 640) == [0]
    rng = np.random.default_rng(3)
    long_lip, short_lip = lip(rng, 60), lip(rng, 10)
    face = rng.standard_normal((3, 5)).astype(np.float32)

    def net(lips: np.ndarray, audio: np.ndarray | None = None) -> torch.Tensor:
        b = len(lips)
        with torch.no_grad():
            return model.enrolment(
                lip=torch.from_numpy(np.stack(lips)),
                audio=None if audio is None else torch.from_numpy(np.stack(audio)),
                face=torch.from_numpy(face).expand(b, -1, -1) if kind == "iv" else None,
            )

    audios, faces = [], []
    if kind == "av":  # the long clip's audio at 24 kHz, 100 samples (< 1 frame) short
        long_wav = (0.1 * rng.standard_normal(60 * 640 - 100)).astype(np.float32)
        from speechkit.data.audio import resample_waveform

        sf.write(tmp_path / "long.wav", resample_waveform(long_wav, SR, 24000), 24000, "FLOAT")
        short_wav = (0.1 * rng.standard_normal(10 * 640)).astype(np.float32)
        audios = [str(tmp_path / "long.wav"), short_wav]
        long_wav = resample_waveform(resample_waveform(long_wav, SR, 24000), 24000, SR)
    if kind == "iv":
        faces = [face, face]
    with caplog.at_level(logging.WARNING):
        long_vec, short_vec = sep.embed_clips([long_lip, short_lip], audios, faces)
    if kind == "av":
        assert any("long.wav" in r.getMessage() for r in caplog.records)
        length = len(long_wav)
        starts = [0, 18 * 640, 35 * 640]
        wins = [
            np.pad(long_wav[s : s + 16000], (0, max(0, s + 16000 - length)), "wrap") for s in starts
        ]
        lips = [crop_lip_features(long_lip, s, 16000, length) for s in starts]
        expected_long = net(lips, wins).mean(0)
        short = [np.pad(short_wav, (0, 16000 - len(short_wav)), "wrap")]
        expected_short = net([crop_lip_features(short_lip, 0, 16000, 6400)], short)[0]
    else:
        expected_long = net([long_lip[s : s + WINDOW] for s in (0, 18, 35)]).mean(0)
        wrapped = short_lip[np.arange(WINDOW) % 10]
        expected_short = net([wrapped])[0]
    torch.testing.assert_close(long_vec, expected_long, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(short_vec, expected_short, rtol=1e-4, atol=1e-5)


def test_long_mixture_chunks_like_the_inner_separation_net(shared_data, tmp_path):
    """A 2 s mixture (4 chunks of the 0.5 s limit): the composite's separator gives exactly
    what a voicevector_ae separator with the same separation weights gives for the clips'
    vectors, the same enrolment for every chunk."""
    model = save_composite(tmp_path / "comp.pt", "v")
    sep = Separator.from_checkpoint(tmp_path / "comp.pt", batch_chunks=3, overlap_seconds=0.1)
    ae = VoiceVectorAE(VoiceVectorConfig(**SEP))
    ae.load_state_dict(model.separation.state_dict())
    plain = Separator(ae, batch_chunks=3, overlap_seconds=0.1)
    assert sep.chunk == plain.chunk and sep.emb_dim == 8
    n = 2 * SR + 77
    mix = torch.from_numpy(speech(shared_data, "1688", n) + 0.5 * speech(shared_data, "367", n))
    assert len(chunk_starts(n, sep.chunk, sep.overlap)) >= 4
    rng = np.random.default_rng(4)
    pos = sep.embed_clips([lip(rng, WINDOW), lip(rng, 40)])
    neg = sep.embed_clips([lip(rng, WINDOW)])
    est = sep.separate(mix, pos, neg)
    assert est.shape == (n,) and torch.isfinite(est).all()
    torch.testing.assert_close(est, plain.separate(mix, pos, neg), rtol=0, atol=1e-6)


def test_clip_combinations_that_do_not_fit_exit_2(shared_data, tmp_path, capsys):
    for kind in NETS:
        save_composite(tmp_path / f"{kind}.pt", kind)
    save_checkpoint(tmp_path / "ae.pt")
    sf.write(tmp_path / "mix.wav", speech(shared_data, "367", 4000), SR)
    write_clips(tmp_path, "av", ["a"], WINDOW)  # a_feat.npy, a.wav
    write_clips(tmp_path, "iv", ["b"], WINDOW)  # b_feat.npy, b_face/
    np.save(tmp_path / "wide_feat.npy", np.zeros((WINDOW, 7), np.float32))
    np.save(tmp_path / "long_feat.npy", np.zeros((WINDOW + 5, 6), np.float32))
    np.save(tmp_path / "vec.npy", np.ones(8, np.float32))
    io = ["--mixture", str(tmp_path / "mix.wav"), "--out", str(tmp_path / "o.wav")]
    io += ["--overlap", "0.1"]
    v, av, iv, ae = (
        ["--checkpoint", str(tmp_path / f"{k}.pt")] + io for k in ("v", "av", "iv", "ae")
    )
    lip_a, wav_a = str(tmp_path / "a_feat.npy"), str(tmp_path / "a.wav")
    lip_b, face_b = str(tmp_path / "b_feat.npy"), str(tmp_path / "b_face")
    cases = [
        (
            v + ["--enrol-lip", lip_a, "--enrol-audio", wav_a],
            "--enrol-audio given, but voicevector_vem takes enrolment clips of lip features; "
            "enrolment audio is for voicevector_avem",
        ),
        (v + ["--enrol-lip", lip_a, "--negative-face", face_b], "--negative-face given"),
        (
            av + ["--enrol-lip", lip_a],
            "one --enrol-audio per --enrol-lip entry, in the same order; got 1 --enrol-lip "
            "and 0 --enrol-audio",
        ),
        (
            av + ["--enrol-lip", lip_a, lip_b, "--enrol-audio", wav_a],
            "got 2 --enrol-lip and 1 --enrol-audio",
        ),
        (
            av + ["--enrol-lip", lip_a, "--enrol-audio", wav_a, "--negative-audio", wav_a],
            "got 0 --negative-lip and 1 --negative-audio",
        ),
        (iv + ["--enrol-lip", lip_b], "one --enrol-face per --enrol-lip entry"),
        (
            iv + ["--enrol-lip", lip_b, "--enrol-face", lip_b],
            "b_feat.npy: not a folder; expected a face-embedding folder",
        ),
        (v, "needs at least one --enrol-lip FILE.npy"),
        (
            av + ["--enrol-audio", wav_a],
            "needs at least one --enrol-lip FILE.npy (the target's enrolment clip lip "
            "features) with --enrol-audio",
        ),
        (v + ["--positive", str(tmp_path / "vec.npy")], "--positive: "),
        (v + ["--enrol-lip", lip_a, "--lip", lip_a], "audio-only mixture"),
        (
            v + ["--enrol-lip", str(tmp_path / "wide_feat.npy")],
            "wide_feat.npy: lip features are 7-d, expected 6-d",
        ),
        (v + ["--enrol-lip", str(tmp_path / "none.npy")], "none.npy"),
        (
            av + ["--enrol-lip", str(tmp_path / "long_feat.npy"), "--enrol-audio", wav_a],
            "long_feat.npy: 30 lip frames but the audio has 16000 samples",
        ),
        (
            ae + ["--enrol-lip", lip_a],
            "--enrol-lip: "
            + str(tmp_path / "ae.pt")
            + " is a voicevector_ae checkpoint; enrolment clips are for the composites",
        ),
    ]
    for argv, needle in cases:
        assert separate.main(argv) == 2, needle
        err = capsys.readouterr().err.strip()
        assert err.startswith("separate: error:") and needle in err and "\n" not in err, err
    assert separate.main(av + ["--enrol-lip", lip_a, "--enrol-audio", wav_a]) == 0


def test_eval_separation_clip_layout(shared_data, tmp_path, capsys):
    model = save_composite(tmp_path / "avem.pt", "av")
    data = tmp_path / "test"
    data.mkdir()
    n = SR // 2 - 1000
    mixes, targets, clips = {}, {}, {}
    for i, (a, b, count) in enumerate([("1688", "367", 2), ("367", "1998", 1)]):
        item = f"item{i}"
        targets[item], other = speech(shared_data, a, n), speech(shared_data, b, n)
        mixes[item] = targets[item] + other
        sf.write(data / f"{item}_mix.wav", mixes[item], SR, subtype="FLOAT")
        sf.write(data / f"{item}_target.wav", targets[item], SR, subtype="FLOAT")
        names = [f"{item}_enrol{k}" for k in range(count)]
        clips[item] = write_clips(data, "av", names, WINDOW, seed=i)
    np.save(data / "item0_embedding.npy", np.ones(8, np.float32))  # not used by a composite
    argv = ["--checkpoint", str(tmp_path / "avem.pt"), "--data", str(data), "--metrics", ""]
    argv += ["--csv", str(tmp_path / "s.csv"), "--device", "cpu", "--overlap", "0.1"]
    assert eval_separation.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "2 items from" in out and "1 ID_embedding.npy / ID_feat.npy file(s) not used" in out
    table = out.splitlines()
    for metric in ("si_sdr", "sdr"):
        line = next(x for x in table if x.split()[:1] == [metric])
        assert line.rstrip().endswith("  2")
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    for item, c in clips.items():
        k = c["lip"].shape[0]
        with torch.no_grad():
            est = model(
                torch.from_numpy(mixes[item])[None],
                torch.ones(1, k, dtype=torch.long),
                enrol_lip=c["lip"][None],
                enrol_audio=c["audio"][None],
            )[0]
        score = float(si_sdr(est.double(), torch.from_numpy(targets[item]).double()))
        assert float(rows[item]["si_sdr"]) == pytest.approx(score, abs=1e-3)
    (data / "item1_enrol0.wav").unlink()
    assert eval_separation.main(argv) == 2
    err = capsys.readouterr().err
    assert "item1_enrol0.wav: missing (voicevector_avem needs the audio" in err
    for f in data.glob("item1_enrol0*"):
        f.unlink()
    assert eval_separation.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("takes the target's enrolment clips ID_enrolK_feat.npy)")
    assert "item1_enrol0_feat.npy: missing" in err and "\n" not in err


def test_converted_reference_vem_runs_with_clips(shared_data, tmp_path, capsys):
    """A reference ``vem.pth`` layout converted by ``speechkit-convert-voicevector`` separates
    with ``--enrol-lip``: the 4 s default window (no ``task.enrol_segment`` in a converted
    checkpoint), the converted composite's own output."""
    from speechkit.cli import convert_voicevector
    from speechkit.interop.speechbrain_ecapa import convert_speechbrain_ecapa
    from tests.test_voicevector_enrolment import (
        ECAPA_FIXTURE,
        enrolment_reference_layout,
        reference_layout,
        sb_ecapa,
    )

    torch.manual_seed(0)
    enrol = dict(LIP_NET, **ECAPA_FIXTURE)
    source = MODEL_REGISTRY.build(
        {"_name": "voicevector_vem", "enrolment": enrol, "separation": dict(SEP, emb_dim=32)}
    ).eval()
    source.enrolment.speaker_head.ecapa.load_state_dict(convert_speechbrain_ecapa(sb_ecapa())[0])
    ref = {"speaker_separation." + k: v for k, v in reference_layout(source.separation).items()}
    layout = enrolment_reference_layout(source.enrolment, "v")
    ref.update({f"v_speaker_embedding.{k}": v for k, v in layout.items()})
    torch.save(ref, tmp_path / "vem.pth")
    argv = ["--input", str(tmp_path / "vem.pth"), "--output", str(tmp_path / "vem.pt")]
    assert convert_voicevector.main([*argv, "--heads", "2"]) == 0
    capsys.readouterr()
    assert Separator.from_checkpoint(tmp_path / "vem.pt", overlap_seconds=0.1).enrol_window == 64000
    n = 5000
    mix = speech(shared_data, "1688", n) + 0.5 * speech(shared_data, "367", n)
    sf.write(tmp_path / "mix.wav", mix, SR, subtype="FLOAT")
    clip = lip(np.random.default_rng(5), 100)
    np.save(tmp_path / "clip.npy", clip)
    argv = ["--checkpoint", str(tmp_path / "vem.pt"), "--mixture", str(tmp_path / "mix.wav")]
    argv += ["--enrol-lip", str(tmp_path / "clip.npy"), "--out", str(tmp_path / "o.wav")]
    assert separate.main([*argv, "--overlap", "0.1", "--device", "cpu"]) == 0
    est, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    with torch.no_grad():
        direct = source(
            torch.from_numpy(mix)[None],
            torch.ones(1, 1, dtype=torch.long),
            enrol_lip=torch.from_numpy(clip)[None, None],
        )[0]
    torch.testing.assert_close(torch.from_numpy(est), direct, rtol=1e-4, atol=1e-5)

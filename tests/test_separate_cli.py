"""``speechkit-separate`` (chunked overlap-add on long audio, any rate) and
``speechkit-eval-separation`` (the VoiceVector test-folder layout) with a tiny ``voicevector_ae``
checkpoint on real LibriSpeech speech."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import eval_separation, separate
from speechkit.data.audio import resample_waveform
from speechkit.inference.separation import Separator, chunk_starts, overlap_add
from speechkit.models.voicevector import (
    VoiceVectorAE,
    VoiceVectorAV,
    VoiceVectorAVConfig,
    VoiceVectorConfig,
)

SR = 16000
SPEECH = "speech/librispeech_test_other"
# tiny but with the paper's depth / stride, so the positional limit is the real 30 s
TINY = dict(
    hidden=4,
    depth=5,
    heads=2,
    ffn_dim=32,
    transformer_layers=1,
    emb_dim=16,
    enrol_hidden=16,
    dropout=0.0,
    head_init=1.0,
)


def speech(shared_data: Path, speaker: str, samples: int) -> np.ndarray:
    """``samples`` of a speaker's utterances, concatenated (cycled), float32 at 16 kHz."""
    parts, total = [], 0
    files = sorted((shared_data / SPEECH / speaker).glob("*.wav"))
    assert files, f"no speech for {speaker} in {shared_data}"
    while total < samples:
        for f in files:
            wav, rate = sf.read(f, dtype="float32")
            assert rate == SR
            parts.append(wav)
            total += len(wav)
            if total >= samples:
                break
    return np.concatenate(parts)[:samples]


def save_checkpoint(path: Path, seed: int = 0) -> VoiceVectorAE:
    torch.manual_seed(seed)
    model = VoiceVectorAE(VoiceVectorConfig(**TINY)).eval()
    cfg = {
        "task": {"_name": "target_speaker_separation"},
        "model": {"_name": "voicevector_ae", **TINY},
    }
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    return model


def rms_10ms(x: torch.Tensor, rate: int) -> torch.Tensor:
    hop = rate // 100
    return x[: len(x) // hop * hop].reshape(-1, hop).pow(2).mean(1).sqrt()


def seam_ratio(out: torch.Tensor, whole: torch.Tensor, seams: list[int], rate: int) -> float:
    """Largest per-10 ms RMS error near a seam (+-30 ms) over the largest elsewhere."""
    err = rms_10ms(out - whole, rate)
    near = torch.zeros(len(err), dtype=torch.bool)
    for s in seams:
        near[max(s * 100 // rate - 3, 0) : s * 100 // rate + 3] = True
    return float(err[near].max() / err[~near].max())


def test_overlap_add_crossfades_constant_chunks():
    starts = chunk_starts(1000, 400, 100)
    assert starts[0] == 0 and starts[-1] == 600 and len(starts) == 3
    assert all(b - a <= 300 for a, b in zip(starts, starts[1:]))  # overlaps >= 100
    assert chunk_starts(300, 400, 100) == [0]
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(1000, 400, 250)
    # weights sum to 1: equal chunks give the same signal back
    ones = [torch.ones(400, dtype=torch.float64)] * 3
    torch.testing.assert_close(
        overlap_add(ones, starts, 1000), torch.ones(1000, dtype=torch.float64)
    )
    # chunks at different levels: each level is kept outside overlaps, and inside one the
    # output moves smoothly (a hard cut would step by the full 3.0 in one sample)
    levels = [1.0, 4.0, -2.0]
    y = overlap_add([torch.full((400,), v, dtype=torch.float64) for v in levels], starts, 1000)
    assert y[0] == 1.0 and y[starts[1] + 250] == 4.0 and y[-1] == -2.0
    steps = (y[1:] - y[:-1]).abs()
    for i in (1, 2):
        overlap = starts[i - 1] + 400 - starts[i]
        jump = abs(levels[i] - levels[i - 1])
        assert steps.max() <= math.pi / 2 * 6.0 / overlap + 1e-12
        seg = y[starts[i] : starts[i - 1] + 400]
        assert ((seg[1:] - seg[:-1]) * np.sign(levels[i] - levels[i - 1]) >= 0).all()
        assert jump > 10 * steps[starts[i] - 1 : starts[i - 1] + 400].max()


def test_separate_75s_mixture_at_24k(shared_data, tmp_path, caplog):
    n = 75 * SR
    mix16 = speech(shared_data, "1688", n) + 0.5 * speech(shared_data, "367", n)
    rate = 24000
    mix = resample_waveform(mix16, SR, rate)
    assert len(mix) == 75 * rate
    sf.write(tmp_path / "mix.wav", mix, rate, subtype="FLOAT")
    model = save_checkpoint(tmp_path / "tss.pt")
    pos = torch.randn(16, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "pos.npy", np.stack([pos.numpy(), pos.numpy()]))  # (crops, D)
    np.save(tmp_path / "neg.npy", np.random.default_rng(2).standard_normal(16).astype(np.float32))
    out = tmp_path / "out.wav"
    with caplog.at_level(logging.WARNING):
        code = separate.main(
            [
                "--checkpoint",
                str(tmp_path / "tss.pt"),
                "--mixture",
                str(tmp_path / "mix.wav"),
                "--positive",
                str(tmp_path / "pos.npy"),
                "--negative",
                str(tmp_path / "neg.npy"),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
    assert code == 0
    assert any("mix.wav" in r.getMessage() for r in caplog.records)  # resampling named
    est, est_rate = sf.read(out, dtype="float32")
    assert est_rate == rate and est.shape == (75 * rate,) and np.isfinite(est).all()

    # the whole 75 s in one pass, by the same weights with a longer positional table
    big = VoiceVectorAE(VoiceVectorConfig(**TINY, max_len=4000)).eval()
    big.load_state_dict(model.state_dict())
    sep = Separator(model)
    wav16 = torch.from_numpy(resample_waveform(mix, rate, SR))
    pos_n = torch.nn.functional.normalize(pos, dim=0)
    neg_n = torch.from_numpy(np.load(tmp_path / "neg.npy"))
    neg_n = neg_n / neg_n.norm()
    enrol, types = sep.enrolment([pos_n], [neg_n])
    with torch.no_grad():
        whole16 = big(wav16[None], enrol[None], types[None])[0]
    whole = torch.from_numpy(resample_waveform(whole16.numpy(), SR, rate))
    starts = chunk_starts(len(wav16), sep.chunk, sep.overlap)
    assert len(starts) == 3  # 75 s in three chunks of <= 30 s
    seams = [
        round(s * rate / SR) for i in range(1, 3) for s in (starts[i], starts[i - 1] + sep.chunk)
    ]
    assert seam_ratio(torch.from_numpy(est), whole, seams, rate) <= 1.0

    # plain concatenation of 30 s pieces fails the same check: its seams are loud
    size = sep.chunk
    with torch.no_grad():
        pieces = [
            model(wav16[None, s : s + size], enrol[None], types[None])[0]
            for s in range(0, len(wav16), size)
        ]
    naive = torch.from_numpy(resample_waveform(torch.cat(pieces).numpy(), SR, rate))
    naive_seams = [round(s * rate / SR) for s in range(size, len(wav16), size)]
    assert seam_ratio(naive[: len(whole)], whole, naive_seams, rate) > 10.0


def test_eval_separation_folder(shared_data, tmp_path, capsys):
    save_checkpoint(tmp_path / "tss.pt")
    data = tmp_path / "test"
    data.mkdir()
    n = 3 * SR
    rng = np.random.default_rng(0)
    for i, (a, b) in enumerate([("1688", "367"), ("367", "1998"), ("1998", "1688")]):
        target, other = speech(shared_data, a, n + i * SR)[i * SR :], speech(shared_data, b, n)
        sf.write(data / f"item{i}_mix.wav", target + other, SR, subtype="FLOAT")
        sf.write(data / f"item{i}_target.wav", target, SR, subtype="FLOAT")
        shape = (16,) if i else (2, 16)  # one vector, or two positive rows
        np.save(data / f"item{i}_embedding.npy", rng.standard_normal(shape).astype(np.float32))
    np.save(data / "item0_feat.npy", np.zeros((75, 512), np.float32))
    # a silent target: PESQ is NaN with a warning naming the item, not an error
    sf.write(data / "silent_mix.wav", speech(shared_data, "367", n), SR, subtype="FLOAT")
    sf.write(data / "silent_target.wav", np.zeros(n, np.float32), SR, subtype="FLOAT")
    np.save(data / "silent_embedding.npy", rng.standard_normal(16).astype(np.float32))
    out_csv, est_dir = tmp_path / "scores.csv", tmp_path / "est"
    code = eval_separation.main(
        [
            "--checkpoint",
            str(tmp_path / "tss.pt"),
            "--data",
            str(data),
            "--csv",
            str(out_csv),
            "--save-estimates",
            str(est_dir),
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 ID_feat.npy file(s) not used" in captured.out
    assert "silent: PESQ not computed (NoUtterancesError" in captured.err
    table = captured.out.splitlines()
    for metric in ("si_sdr", "sdr", "bss_sdr", "pesq", "stoi"):
        assert any(line.split()[:1] == [metric] for line in table), captured.out
    pesq_line = next(line for line in table if line.startswith("pesq "))
    assert pesq_line.rstrip().endswith("3 (1 NaN)")
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["id"] for r in rows] == ["item0", "item1", "item2", "silent"]
    assert rows[3]["pesq"] == "nan" and rows[3]["bss_sdr"] == "nan"
    for r in rows[:3]:
        assert float(r["seconds"]) == pytest.approx(3.0)
        assert float(r["si_sdri"]) == pytest.approx(
            float(r["si_sdr"]) - float(r["si_sdr_mix"]), abs=2e-6
        )
        est, _ = sf.read(est_dir / f"{r['id']}_estimate.wav", dtype="float64")
        ref, _ = sf.read(data / f"{r['id']}_target.wav", dtype="float64")
        from speechkit.metrics.separation import si_sdr

        assert float(r["si_sdr"]) == pytest.approx(
            si_sdr(torch.from_numpy(est), torch.from_numpy(ref)), abs=1e-5
        )
    # the summary's mean is the mean of the CSV column
    si_line = next(line for line in table if line.startswith("si_sdr "))
    mean = np.mean([float(r["si_sdr"]) for r in rows])
    assert float(si_line.split()[1]) == pytest.approx(mean, abs=1e-3)


def test_bad_input_is_one_line_exit_2(shared_data, tmp_path, capsys):
    save_checkpoint(tmp_path / "tss.pt")
    mix = tmp_path / "mix.wav"
    sf.write(mix, speech(shared_data, "367", SR), SR)
    np.save(tmp_path / "bad.npy", np.ones(20, np.float32))
    np.save(tmp_path / "ok.npy", np.ones(16, np.float32))
    base = [
        "--checkpoint",
        str(tmp_path / "tss.pt"),
        "--mixture",
        str(mix),
        "--out",
        str(tmp_path / "o.wav"),
    ]
    cases = [
        (base + ["--positive", str(tmp_path / "bad.npy")], "bad.npy"),
        (base + ["--positive", str(mix)], "--speaker-checkpoint"),
        (base + ["--positive", str(tmp_path / "missing.npy")], "missing.npy"),
        (
            [
                "--checkpoint",
                str(tmp_path / "tss.pt"),
                "--mixture",
                str(tmp_path / "none.wav"),
                "--positive",
                str(tmp_path / "ok.npy"),
                "--out",
                str(tmp_path / "o.wav"),
            ],
            "none.wav",
        ),
    ]
    for argv, needle in cases:
        assert separate.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("separate: error:") and needle in err and "\n" not in err
    # a checkpoint of another kind is refused with its task and model named
    other = tmp_path / "sv.pt"
    torch.save(
        {
            "cfg": {"task": {"_name": "speaker_verification"}, "model": {"_name": "ecapa_tdnn"}},
            "model": {},
        },
        other,
    )
    assert (
        separate.main(
            ["--checkpoint", str(other)] + base[2:] + ["--positive", str(tmp_path / "ok.npy")]
        )
        == 2
    )
    assert "speaker_verification checkpoint (model ecapa_tdnn)" in capsys.readouterr().err
    # eval folder: an item without its target
    data = tmp_path / "test"
    data.mkdir()
    sf.write(data / "a_mix.wav", speech(shared_data, "367", SR), SR)
    np.save(data / "a_embedding.npy", np.ones(16, np.float32))
    assert (
        eval_separation.main(["--checkpoint", str(tmp_path / "tss.pt"), "--data", str(data)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("eval_separation: error:") and "a_target.wav: missing" in err
    assert (
        eval_separation.main(
            ["--checkpoint", str(tmp_path / "tss.pt"), "--data", str(data), "--metrics", "foo"]
        )
        == 2
    )
    assert "unknown metric" in capsys.readouterr().err


# ---------------------------------------------------------------------- audio-visual (lip) models

TINY_AV = dict(
    hidden=4,
    depth=5,
    heads=2,
    ffn_dim=32,
    transformer_layers=1,
    lip_dim=8,
    dropout=0.0,
    video_dropout=0.0,
    head_init=1.0,
)


def save_av_checkpoint(path: Path, seed: int = 0) -> VoiceVectorAV:
    torch.manual_seed(seed)
    model = VoiceVectorAV(VoiceVectorAVConfig(**TINY_AV)).eval()
    cfg = {
        "task": {"_name": "target_speaker_separation"},
        "model": {"_name": "voicevector_av", **TINY_AV},
    }
    torch.save({"cfg": cfg, "model": model.state_dict()}, path)
    return model


def snr_db(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (estimate - reference).pow(2).sum()))


def test_separate_av_lip_chunks_follow_audio(shared_data, tmp_path, capsys):
    """``speechkit-separate --lip``: a 10 s real mixture (not a whole number of lip frames) with
    a lip file one frame longer than ceil(T / 640) comes back at the input length; chunks of 3 s
    with 1 s overlaps stay close to one pass away from the seams."""
    n = 10 * SR + 123
    mix = speech(shared_data, "1688", n) + 0.5 * speech(shared_data, "367", n)
    sf.write(tmp_path / "mix.wav", mix, SR, subtype="FLOAT")
    frames = -(-n // 640)
    lip = np.random.default_rng(0).standard_normal((frames + 1, 8)).astype(np.float32)
    np.save(tmp_path / "lip.npy", lip)
    model = save_av_checkpoint(tmp_path / "av.pt")
    out = tmp_path / "out.wav"
    argv = ["--checkpoint", str(tmp_path / "av.pt"), "--mixture", str(tmp_path / "mix.wav")]
    argv += ["--lip", str(tmp_path / "lip.npy"), "--out", str(out), "--device", "cpu"]
    assert separate.main(argv + ["--chunk", "3", "--overlap", "1"]) == 0, capsys.readouterr().err
    assert "lip features" in capsys.readouterr().out
    est, rate = sf.read(out, dtype="float32")
    assert rate == SR and est.shape == (n,) and np.isfinite(est).all()

    sep = Separator(model, chunk_seconds=3.0, overlap_seconds=1.0)
    assert sep.is_av and sep.chunk == 48000 and sep.overlap == 16000  # whole lip frames
    whole = Separator(model).separate(torch.from_numpy(mix), lip=torch.from_numpy(lip[:frames]))
    starts = chunk_starts(frames, sep.chunk // 640, sep.overlap // 640)
    assert len(starts) == 5 and starts[-1] * 640 + sep.chunk == frames * 640
    chunked = torch.from_numpy(est)
    for s in starts:  # the middle of each chunk, half a second from its edges
        inner = slice(s * 640 + 8000, s * 640 + sep.chunk - 8000)
        assert snr_db(chunked[inner], whole[inner]) > 20.0


class FrameIndexAV(VoiceVectorAV):
    """Outputs each sample's lip feature 0 (its frame's value): shows which frames a chunk got."""

    def forward(self, mixture: torch.Tensor, lip: torch.Tensor) -> torch.Tensor:
        assert lip.shape[1] == -(-mixture.shape[1] // 640)
        return lip[..., 0].repeat_interleave(640, dim=1)[:, : mixture.shape[1]] + 0 * mixture


def test_av_chunk_starts_on_lip_frames():
    """Every chunk gets exactly the lip frames of its own samples: a model echoing each
    sample's frame index gives the frame index back after chunking and overlap-add."""
    model = FrameIndexAV(VoiceVectorAVConfig(**TINY_AV)).eval()
    n = 50 * 640 + 77
    frames = 51
    lip = torch.zeros(frames, 8)
    lip[:, 0] = torch.arange(frames, dtype=torch.float32)
    sep = Separator(model, chunk_seconds=0.5, overlap_seconds=0.1, batch_chunks=3)
    assert sep.chunk == 12 * 640 and sep.overlap == 3 * 640  # 0.5 s down, 0.1 s up to frames
    out = sep.separate(torch.randn(n), lip=lip)
    expected = torch.arange(n) // 640
    torch.testing.assert_close(out, expected.float(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"needs lip features \(51, 8\)"):
        sep.separate(torch.randn(n), lip=lip[:-1])
    with pytest.raises(ValueError, match="needs lip features"):
        sep.separate(torch.randn(n))
    with pytest.raises(ValueError, match="enrolment vectors given to an audio-visual"):
        sep.separate(torch.randn(n), [torch.ones(16)], lip=lip)


def test_av_bad_input_is_one_line_exit_2(shared_data, tmp_path, capsys):
    save_checkpoint(tmp_path / "ae.pt")
    save_av_checkpoint(tmp_path / "av.pt")
    n = 2 * SR
    sf.write(tmp_path / "mix.wav", speech(shared_data, "367", n), SR)
    np.save(tmp_path / "lip.npy", np.zeros((50, 8), np.float32))
    np.save(tmp_path / "short.npy", np.zeros((45, 8), np.float32))
    np.save(tmp_path / "wide.npy", np.zeros((50, 9), np.float32))
    np.save(tmp_path / "ok.npy", np.ones(16, np.float32))
    mix = ["--mixture", str(tmp_path / "mix.wav"), "--out", str(tmp_path / "o.wav")]
    av = ["--checkpoint", str(tmp_path / "av.pt")] + mix
    ae = ["--checkpoint", str(tmp_path / "ae.pt")] + mix
    cases = [
        (
            ae + ["--positive", str(tmp_path / "ok.npy"), "--lip", str(tmp_path / "lip.npy")],
            "audio-only (voicevector_ae)",
        ),
        (ae, "needs at least one --positive"),
        (av, "needs --lip FILE.npy"),
        (
            av + ["--lip", str(tmp_path / "lip.npy"), "--positive", str(tmp_path / "ok.npy")],
            "takes --lip, not --positive",
        ),
        (av + ["--lip", str(tmp_path / "short.npy")], "short.npy: 45 lip frames"),
        (av + ["--lip", str(tmp_path / "wide.npy")], "wide.npy: lip features are 9-d"),
        (av + ["--lip", str(tmp_path / "none.npy")], "none.npy"),
    ]
    for argv, needle in cases:
        assert separate.main(argv) == 2, needle
        err = capsys.readouterr().err.strip()
        assert err.startswith("separate: error:") and needle in err and "\n" not in err, err
    assert separate.main(av + ["--lip", str(tmp_path / "lip.npy")]) == 0


def test_eval_separation_av_uses_feat_files(shared_data, tmp_path, capsys):
    model = save_av_checkpoint(tmp_path / "av.pt")
    data = tmp_path / "test"
    data.mkdir()
    rng = np.random.default_rng(0)
    n = 2 * SR + 300
    target, other = speech(shared_data, "1688", n), speech(shared_data, "367", n)
    sf.write(data / "a_mix.wav", target + other, SR, subtype="FLOAT")
    sf.write(data / "a_target.wav", target, SR, subtype="FLOAT")
    lip = rng.standard_normal((-(-n // 640), 8)).astype(np.float32)
    np.save(data / "a_feat.npy", lip)
    np.save(data / "a_embedding.npy", np.ones(16, np.float32))
    argv = ["--checkpoint", str(tmp_path / "av.pt"), "--data", str(data), "--metrics", ""]
    argv += ["--csv", str(tmp_path / "s.csv"), "--device", "cpu"]
    assert eval_separation.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 ID_embedding.npy file(s) not used" in out
    row = next(csv.DictReader((tmp_path / "s.csv").open()))
    est = Separator(model).separate(torch.from_numpy(target + other), lip=torch.from_numpy(lip))
    from speechkit.metrics.separation import si_sdr

    assert float(row["si_sdr"]) == pytest.approx(si_sdr(est, torch.from_numpy(target)), abs=1e-4)
    (data / "a_feat.npy").unlink()
    assert eval_separation.main(argv) == 2
    assert "a_feat.npy: missing" in capsys.readouterr().err

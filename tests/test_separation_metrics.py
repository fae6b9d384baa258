"""Separation metrics (SI-SDR, SNR, improvements) and the ``waveform_l1`` criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.separation import WaveformL1Config, WaveformL1Criterion
from speechkit.errors import ConfigError, DataError
from speechkit.metrics.separation import (
    separation_scores,
    si_sdr,
    si_sdr_improvement,
    snr,
    snr_improvement,
)


def np_si_sdr(est: np.ndarray, ref: np.ndarray, zero_mean: bool = True, eps: float = 1e-8) -> float:
    """Independent float64 reference, written from Le Roux et al. 2019 with the documented eps."""
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if zero_mean:
        est = est - est.mean()
        ref = ref - ref.mean()
    alpha = (np.dot(est, ref) + eps) / (np.dot(ref, ref) + eps)
    proj = alpha * ref
    err = est - proj
    return float(10 * np.log10((np.sum(proj**2) + eps) / (np.sum(err**2) + eps)))


def np_snr(est: np.ndarray, ref: np.ndarray, eps: float = 1e-7) -> float:
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(10 * np.log10((np.sum(ref**2) + eps) / (np.sum((ref - est) ** 2) + eps)))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ---------------------------------------------------------------------------------------------
# metrics


def test_si_sdr_matches_numpy_on_random_signals(gen):
    ref = torch.randn(5, 1600, generator=gen)
    est = ref * 0.7 + 0.5 * torch.randn(5, 1600, generator=gen) + 0.1
    for zero_mean in (True, False):
        got = si_sdr(est, ref, zero_mean=zero_mean)
        assert got.dtype == torch.float64 and got.shape == (5,)
        want = [np_si_sdr(e.numpy(), r.numpy(), zero_mean) for e, r in zip(est, ref)]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_si_sdr_structured_signals(gen):
    t = torch.arange(8000, dtype=torch.float64) / 8000
    ref = torch.sin(2 * math.pi * 220 * t) + 0.3 * torch.sin(2 * math.pi * 330 * t)
    # a scaled copy: (near) perfect, only limited by eps
    assert si_sdr(3.5 * ref, ref) > 80.0
    assert si_sdr(ref, ref) > 80.0
    # reference + zero-mean white noise at a known SNR -> SI-SDR about that SNR
    noise = torch.randn(8000, generator=gen, dtype=torch.float64)
    for target_db in (0.0, 10.0, 20.0):
        scaled = noise * (ref.norm() / noise.norm()) * 10 ** (-target_db / 20)
        assert si_sdr(ref + scaled, ref) == pytest.approx(target_db, abs=0.3)
        assert snr(ref + scaled, ref) == pytest.approx(target_db, abs=1e-6)
    # negating the estimate: alpha < 0 projects it onto -ref, SI-SDR stays high
    assert si_sdr(-ref, ref) > 80.0


def test_si_sdr_scale_invariance(gen):
    ref = torch.randn(3, 4000, generator=gen, dtype=torch.float64)
    est = ref + 0.3 * torch.randn(3, 4000, generator=gen, dtype=torch.float64)
    base = si_sdr(est, ref)
    exact = si_sdr(est, ref, eps=0.0)
    for scale in (0.01, 2.0, 100.0):
        # exact without eps; eps (1e-8 vs a noise energy ~0.04 at scale 0.01) moves it ~1e-6 dB
        torch.testing.assert_close(si_sdr(est * scale, ref, eps=0.0), exact, rtol=0, atol=1e-9)
        torch.testing.assert_close(si_sdr(est * scale, ref), base, rtol=0, atol=1e-4)
    # SNR is not scale-invariant
    assert not torch.allclose(snr(est * 2.0, ref), snr(est, ref))


def test_zero_mean_and_eps_conventions(gen):
    ref = torch.randn(4000, generator=gen, dtype=torch.float64)
    # a DC offset is ignored with zero_mean, penalised without
    assert si_sdr(ref + 5.0, ref, zero_mean=True) > 80.0
    assert si_sdr(ref + 5.0, ref, zero_mean=False) < 0.0
    # eps caps a perfect estimate: 10 log10((||s||^2 + eps) / eps)
    energy = float((ref - ref.mean()).pow(2).sum())  # zero_mean: the centred energy
    assert si_sdr(ref, ref) == pytest.approx(10 * math.log10((energy + 1e-8) / 1e-8), abs=1e-6)
    assert si_sdr(ref, ref, eps=1e-3) == pytest.approx(10 * math.log10((energy + 1e-3) / 1e-3))
    # two silent signals score 0 dB; with eps 0 the textbook formula is undefined
    zeros = torch.zeros(100, dtype=torch.float64)
    assert si_sdr(zeros, zeros) == pytest.approx(0.0)
    assert snr(zeros, zeros) == pytest.approx(0.0)
    assert math.isnan(si_sdr(zeros, zeros, eps=0.0))
    # a quiet reference: eps moves the value (the ears_benchmark caveat)
    quiet = ref * 1e-5
    est = quiet + 1e-6 * torch.randn(4000, generator=gen, dtype=torch.float64)
    assert abs(si_sdr(est, quiet, eps=1e-8) - si_sdr(est, quiet, eps=0.0)) > 0.01
    assert si_sdr(est, quiet, eps=1e-8) == pytest.approx(np_si_sdr(est.numpy(), quiet.numpy()))


def test_snr_formula(gen):
    ref = torch.randn(4, 1000, generator=gen)
    est = ref + 0.2 * torch.randn(4, 1000, generator=gen)
    got = snr(est, ref)
    assert got.dtype == torch.float64
    want = [np_snr(e.numpy(), r.numpy()) for e, r in zip(est, ref)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    assert snr(est, ref, eps=0.5)[0] == pytest.approx(np_snr(est[0].numpy(), ref[0].numpy(), 0.5))


def test_improvement_sign(gen):
    ref = torch.randn(2, 2000, generator=gen)
    interferer = torch.randn(2, 2000, generator=gen)
    mixture = ref + interferer
    better = ref + 0.1 * interferer
    worse = ref + 3.0 * interferer
    assert (si_sdr_improvement(better, mixture, ref) > 0).all()
    assert (si_sdr_improvement(worse, mixture, ref) < 0).all()
    assert (snr_improvement(better, mixture, ref) > 0).all()
    assert si_sdr_improvement(mixture, mixture, ref).abs().max() == 0
    torch.testing.assert_close(
        si_sdr_improvement(better, mixture, ref), si_sdr(better, ref) - si_sdr(mixture, ref)
    )


def test_batch_equals_per_item_and_scores(gen):
    ref = torch.randn(3, 1200, generator=gen)
    mix = ref + torch.randn(3, 1200, generator=gen)
    est = ref + 0.3 * torch.randn(3, 1200, generator=gen)
    scores = separation_scores(est, mix, ref)
    assert set(scores) == {"si_sdr", "si_sdri", "sdr", "sdri"}
    for i in range(3):
        assert isinstance(si_sdr(est[i], ref[i]), float)
        assert scores["si_sdr"][i].item() == pytest.approx(si_sdr(est[i], ref[i]), abs=1e-9)
        assert scores["sdr"][i].item() == pytest.approx(snr(est[i], ref[i]), abs=1e-9)
        assert scores["si_sdri"][i].item() == pytest.approx(
            si_sdr_improvement(est[i], mix[i], ref[i]), abs=1e-9
        )
        assert scores["sdri"][i].item() == pytest.approx(
            snr(est[i], ref[i]) - snr(mix[i], ref[i]), abs=1e-9
        )
    one = separation_scores(est[0], mix[0], ref[0])
    assert one["si_sdr"].shape == (1,)
    # float32 inputs are computed in float64
    assert si_sdr(est.float(), ref.float()).dtype == torch.float64


def test_shape_errors():
    x = torch.zeros(2, 100)
    with pytest.raises(ValueError, match="shapes differ"):
        si_sdr(x, torch.zeros(2, 99))
    with pytest.raises(ValueError, match="shapes differ"):
        snr(x, torch.zeros(100))
    with pytest.raises(ValueError, match="empty"):
        si_sdr(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        snr(torch.zeros(2, 0), torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"\(T,\) or \(B, T\)"):
        si_sdr(torch.zeros(1, 2, 100), torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="mixture"):
        separation_scores(x, torch.zeros(2, 50), x)
    with pytest.raises(ValueError):
        si_sdr_improvement(x, x, torch.zeros(3, 100))


# ---------------------------------------------------------------------------------------------
# criterion


class ScaleModel(nn.Module):
    """Stand-in separator with the VoiceVector forward signature: mixture * learnable scalar."""

    def __init__(self, scale: float = 0.5):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, mixture, enrol, enrol_type, enrol_mask):
        assert enrol.dim() == 3 and enrol_type.dtype == torch.long
        assert enrol_mask.dtype == torch.bool
        return mixture * self.scale


def make_sample(gen: torch.Generator, b: int = 3, t: int = 800) -> dict:
    target = torch.randn(b, t, generator=gen)
    mixture = target + 0.8 * torch.randn(b, t, generator=gen)
    return {
        "mixture": mixture,
        "target": target,
        "enrol": torch.randn(b, 2, 16, generator=gen),
        "enrol_type": torch.zeros(b, 2, dtype=torch.long),
        "enrol_mask": torch.ones(b, 2, dtype=torch.bool),
    }


def test_criterion_l1_loss_gradients_and_logging(gen):
    model = ScaleModel()
    crit = WaveformL1Criterion(WaveformL1Config())
    sample = make_sample(gen)
    loss, sample_size, log = crit(model, sample)
    assert sample_size == 3
    est = sample["mixture"] * 0.5
    direct = F.l1_loss(est, sample["target"])
    torch.testing.assert_close(loss / sample_size, direct)
    loss.backward()
    assert model.scale.grad is not None and model.scale.grad.abs() > 0
    # logging sums reduce to the batch means
    scores = separation_scores(est.detach(), sample["mixture"], sample["target"])
    out = crit.reduce_metrics(log)
    assert out["loss"] == pytest.approx(direct.item(), rel=1e-6)
    for key in ("si_sdr", "si_sdri", "sdr", "sdri"):
        assert out[key] == pytest.approx(scores[key].mean().item(), rel=1e-9, abs=1e-9)
    assert out["sample_size"] == 3


def test_criterion_sums_aggregate_over_micro_batches(gen):
    crit = WaveformL1Criterion(WaveformL1Config())
    model = ScaleModel(0.9)
    a, b = make_sample(gen, b=2), make_sample(gen, b=3)
    _, _, log_a = crit(model, a)
    _, _, log_b = crit(model, b)
    summed = {k: log_a[k] + log_b[k] for k in log_a}
    out = crit.reduce_metrics(summed)
    est = torch.cat([a["mixture"], b["mixture"]]) * 0.9
    ref = torch.cat([a["target"], b["target"]])
    mix = torch.cat([a["mixture"], b["mixture"]])
    assert out["loss"] == pytest.approx(F.l1_loss(est, ref).item(), rel=1e-6)
    assert out["si_sdr"] == pytest.approx(si_sdr(est, ref).mean().item(), rel=1e-9)
    assert out["si_sdri"] == pytest.approx(
        si_sdr_improvement(est, mix, ref).mean().item(), abs=1e-9
    )
    assert out["nsentences"] == 5


def test_criterion_si_sdr_loss_option(gen):
    model = ScaleModel(0.5)
    crit = WaveformL1Criterion(WaveformL1Config(loss="si_sdr"))
    sample = make_sample(gen)
    loss, sample_size, log = crit(model, sample)
    want = -si_sdr(sample["mixture"] * 0.5, sample["target"]).sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    # SI-SDR is scale-invariant: the scalar gets (numerically) no gradient, but the graph exists
    assert model.scale.grad is not None and model.scale.grad.abs() < 1e-3
    out = crit.reduce_metrics(log)
    assert out["loss"] == pytest.approx(-out["si_sdr"], rel=1e-5)


def test_criterion_errors(gen):
    with pytest.raises(ConfigError, match="loss must be one of"):
        WaveformL1Criterion(WaveformL1Config(loss="mse"))
    crit = WaveformL1Criterion(WaveformL1Config())
    sample = make_sample(gen)
    del sample["enrol_mask"]
    with pytest.raises(DataError, match="enrol_mask"):
        crit(ScaleModel(), sample)

    class Trim(ScaleModel):
        def forward(self, mixture, enrol, enrol_type, enrol_mask):
            return mixture[:, :-1] * self.scale

    with pytest.raises(ValueError, match="estimate shape"):
        crit(Trim(), make_sample(gen))


def test_criterion_registered():
    from speechkit.components import import_all
    from speechkit.registry import CRITERION_REGISTRY

    import_all()
    assert "waveform_l1" in CRITERION_REGISTRY


# ---------------------------------------------------------------------------------------------
# BSS-Eval v4 framewise SDR, PESQ, STOI


def test_bss_sdr_matches_museval_fixture(shared_data):
    """museval 0.4.1 ``bss_eval`` v4 values (tests/make_bss_eval_fixture.py) on real speech."""
    import json
    from pathlib import Path

    from speechkit.metrics.separation import bss_sdr, bss_sdr_framewise
    from tests.make_bss_eval_fixture import build_cases

    expected = json.loads((Path(__file__).parent / "data/bss_eval_v4.json").read_text())
    for name, case in build_cases(shared_data).items():
        got = bss_sdr_framewise(
            torch.from_numpy(case["estimate"]),
            case["reference"],
            sample_rate=16000,
            window=case["window"] / 16000,
            hop=case["hop"] / 16000,
        )
        want = np.array([np.nan if v is None else v for v in expected[name]])
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, equal_nan=True, err_msg=name)
    silent = build_cases(shared_data)["silent_reference_window"]
    values = bss_sdr_framewise(silent["estimate"], silent["reference"])
    assert bss_sdr(silent["estimate"], silent["reference"]) == pytest.approx(np.nanmean(values))


def test_bss_sdr_windows_and_errors(gen):
    from speechkit.metrics.separation import bss_sdr, bss_sdr_framewise

    ref = torch.randn(40000, generator=gen, dtype=torch.float64)
    est = ref + 0.1 * torch.randn(40000, generator=gen, dtype=torch.float64)
    # 2.5 s: two full 1 s windows, the trailing half second is not scored
    values = bss_sdr_framewise(est, ref)
    assert values.shape == (2,)
    for i, v in enumerate(values):
        w = slice(i * 16000, (i + 1) * 16000)
        assert v == pytest.approx(np_snr(est[w].numpy(), ref[w].numpy(), eps=0.0), abs=1e-9)
    assert np.isinf(bss_sdr_framewise(ref, ref)).all()
    assert math.isnan(bss_sdr(torch.zeros(100), ref[:100]))  # silent estimate -> NaN
    with pytest.raises(ValueError, match="shapes differ"):
        bss_sdr(est[:10], ref[:11])
    with pytest.raises(ValueError, match=r"\(T,\)"):
        bss_sdr(est[None], ref[None])
    with pytest.raises(ValueError, match="hop"):
        bss_sdr_framewise(est, ref, hop=0.0)


def _speech(shared_data, rel: str, seconds: float) -> np.ndarray:
    import soundfile as sf

    wav, rate = sf.read(shared_data / "speech/librispeech_test_other" / rel, dtype="float64")
    assert rate == 16000
    return wav[: int(seconds * rate)]


def test_pesq_and_stoi_on_real_speech(shared_data):
    from speechkit.metrics.separation import pesq_wb, stoi

    ref = _speech(shared_data, "1688/1688-142285-0000.wav", 3.0)
    other = _speech(shared_data, "367/367-130732-0001.wav", 3.0)
    clean, noisy = pesq_wb(ref, ref), pesq_wb(ref + 0.3 * other, ref)
    worse = pesq_wb(ref + other, ref)
    assert 4.4 < clean <= 4.65 and 1.0 <= worse < noisy < clean
    assert stoi(ref, ref) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < stoi(ref + other, ref) < stoi(ref + 0.3 * other, ref) < 1.0
    with pytest.raises(ValueError, match="16000"):
        pesq_wb(ref, ref, sample_rate=8000)


def test_pesq_silent_reference_is_nan_with_warning(shared_data):
    from speechkit.metrics.separation import SeparationMetricWarning, pesq_wb

    est = _speech(shared_data, "1688/1688-142285-0000.wav", 2.0)
    with pytest.warns(SeparationMetricWarning, match=r"utt_7: PESQ not computed \(NoUtterances"):
        assert math.isnan(pesq_wb(est, np.zeros_like(est), name="utt_7"))


def test_extra_scores_and_validation_sums(shared_data):
    from speechkit.metrics.separation import (
        SeparationMetricWarning,
        bss_sdr,
        extra_scores,
        reduce_extra_sums,
        sum_extra_scores,
    )

    ref = _speech(shared_data, "1688/1688-142285-0000.wav", 2.0)
    other = _speech(shared_data, "367/367-130732-0001.wav", 2.0)
    mix, est = ref + other, ref + 0.2 * other
    scores = extra_scores(est, mix, ref, ("bss_sdr", "pesq", "stoi"))
    assert scores["bss_sdr"] == pytest.approx(bss_sdr(est, ref))
    for m in ("bss_sdr", "pesq", "stoi"):
        assert (
            scores[f"{m}i"] == pytest.approx(scores[m] - scores[f"{m}_mix"]) and scores[f"{m}i"] > 0
        )
    with pytest.raises(ValueError, match="unknown metric"):
        extra_scores(est, mix, ref, ("sisnr",))
    # a batch with a silent reference: PESQ / BSS SDR of that item are left out of the means
    e = torch.from_numpy(np.stack([est, other]))
    m_ = torch.from_numpy(np.stack([mix, other]))
    r = torch.from_numpy(np.stack([ref, np.zeros_like(ref)]))
    with pytest.warns(SeparationMetricWarning, match="batch item 1"):
        sums = sum_extra_scores(e, m_, r, ("bss_sdr", "pesq"))
    assert sums["pesq_count"] == 1 and sums["bss_sdr_count"] == 1
    out = reduce_extra_sums(sums)
    assert out["pesq"] == pytest.approx(scores["pesq"]) and out["pesqi"] == pytest.approx(
        scores["pesqi"]
    )
    assert math.isnan(reduce_extra_sums({"stoi": 0.0, "stoii": 0.0, "stoi_count": 0.0})["stoi"])

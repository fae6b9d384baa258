"""SyncNet (syncnet_fbank), its criterion and the AV offset metric against independent references.

Layer shapes and keys are written out here from research/sv_syncnet_enh.md §2.3 / §2.6; the
losses are recomputed in float64 clip by clip; the front-end with numpy FFT + librosa filters.
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.criterions.syncnet_criterion import SyncNetCriterion, SyncNetCriterionConfig
from speechkit.metrics.av_sync import av_offset
from speechkit.models.syncnet import SyncNetConfig, SyncNetFBank, audio_samples_for_frames
from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY

SR = 16000


@pytest.fixture(scope="module")
def model() -> SyncNetFBank:
    torch.manual_seed(0)
    return SyncNetFBank(SyncNetConfig()).eval()


# ------------------------------------------------------------------------------- state dict


def _conv_bn(prefix: str, idx: int, weight: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    out = weight[0]
    return {
        f"{prefix}.{idx}.weight": weight,
        f"{prefix}.{idx}.bias": (out,),
        f"{prefix}.{idx + 1}.weight": (out,),
        f"{prefix}.{idx + 1}.bias": (out,),
        f"{prefix}.{idx + 1}.running_mean": (out,),
        f"{prefix}.{idx + 1}.running_var": (out,),
        f"{prefix}.{idx + 1}.num_batches_tracked": (),
    }


def reference_keys(n_out: int = 1024) -> dict[str, tuple[int, ...]]:
    """syncnet_trainer's ``__S__.*`` keys (minus the prefix and ``torchfb.*``) with shapes."""
    keys: dict[str, tuple[int, ...]] = {}
    aud = {
        0: (96, 1, 5, 7),
        4: (256, 96, 5, 5),
        8: (384, 256, 3, 3),
        11: (256, 384, 3, 3),
        14: (256, 256, 3, 3),
        18: (512, 256, 4, 1),
    }
    lip = {
        0: (96, 3, 5, 7, 7),
        4: (256, 96, 1, 5, 5),
        8: (256, 256, 1, 3, 3),
        11: (256, 256, 1, 3, 3),
        14: (256, 256, 1, 3, 3),
        18: (512, 256, 1, 6, 6),
    }
    for idx, shape in aud.items():
        keys.update(_conv_bn("netcnnaud", idx, shape))
    for idx, shape in lip.items():
        keys.update(_conv_bn("netcnnlip", idx, shape))
    for head in ("netfcaud", "netfcspk", "netfclip", "netfcface"):
        keys.update(_conv_bn(head, 0, (512, 512, 1)))
        keys[f"{head}.3.weight"] = (n_out, 512, 1)
        keys[f"{head}.3.bias"] = (n_out,)
    return keys


def test_state_dict_matches_reference_keys(model):
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_keys()
    assert len([k for k in got if k.startswith("netcnnaud.")]) == 6 * 7


def test_registered():
    from speechkit.components import import_all

    import_all()
    assert MODEL_REGISTRY.get("syncnet_fbank") is SyncNetFBank
    assert CRITERION_REGISTRY.get("syncnet") is SyncNetCriterion


# ------------------------------------------------------------------------------- shapes


def test_output_shapes_f50_stride2(model):
    assert audio_samples_for_frames(50) == 32240
    wav = torch.randn(1, 32240) * 0.1
    video = torch.rand(1, 3, 50, 224, 224) * 255
    with torch.no_grad():
        assert model.log_mel(wav).shape == (1, 40, 200)
        out = model(wav, video)
        ident = model.embed_identity(wav)
    for key in ("audio_content", "audio_identity", "video_content", "video_identity"):
        assert out[key].shape == (1, 1024, 23), key
    assert ident.shape == (1, 1024)
    torch.testing.assert_close(ident, out["audio_identity"].mean(dim=2))


@pytest.mark.parametrize("frames,stride", [(30, 1), (17, 3), (50, 2)])
def test_audio_and_video_lengths_agree(frames, stride):
    m = SyncNetFBank(SyncNetConfig(embed_dim=8, temporal_stride=stride)).eval()
    with torch.no_grad():
        a, _ = m.forward_aud(torch.randn(1, audio_samples_for_frames(frames)))
    assert a.shape[2] == (frames - 5) // stride + 1
    # the lip CNN's time axis only sees conv 0 (k 5, stride s): checked on its first layer
    conv0 = m.netcnnlip[0]
    t = conv0(torch.zeros(1, 3, frames, 7, 7)).shape[2]
    assert t == a.shape[2]


def test_too_short_inputs_raise(model):
    with pytest.raises(ValueError, match="too short"):
        model.forward_aud(torch.zeros(1, 2879))
    with pytest.raises(ValueError, match="at least 5 frames"):
        model.forward_vid(torch.zeros(1, 3, 4, 224, 224))
    with pytest.raises(ValueError, match="224x224"):
        model.forward_vid(torch.zeros(1, 3, 5, 112, 112))
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        model.forward_vid(torch.zeros(1, 1, 5, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        model.forward_aud(torch.zeros(32240))
    with torch.no_grad():
        model.forward_aud(torch.zeros(1, 2880))  # the shortest accepted clip


def test_mismatched_audio_video_raises(model):
    with pytest.raises(ValueError, match="6 video frames need 4080 audio samples"):
        model(torch.randn(1, 32240), torch.zeros(1, 3, 6, 224, 224))


# ------------------------------------------------------------------------------- front-end


def reference_log_mel(wav: np.ndarray) -> np.ndarray:
    """float64: centred reflect-padded frames, periodic hann 400 in 512, |rfft|^2, librosa HTK
    mel (0-8000 Hz, no norm), log(x + 1e-6), per-bin (x - mean) / sqrt(var + 1e-5), drop ends."""
    n_fft, win, hop = 512, 400, 160
    x = np.pad(wav.astype(np.float64), n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    n = np.arange(win)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)
    num = 1 + len(wav) // hop
    frames = np.stack([x[i * hop : i * hop + n_fft] * window for i in range(num)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 257)
    fb = librosa.filters.mel(
        sr=SR, n_fft=n_fft, n_mels=40, fmin=0.0, fmax=8000.0, htk=True, norm=None
    )
    mel = np.log(power @ fb.astype(np.float64).T + 1e-6).T  # (40, T)
    mel = (mel - mel.mean(axis=1, keepdims=True)) / np.sqrt(mel.var(axis=1, keepdims=True) + 1e-5)
    return mel[:, 1:-1]


def test_log_mel_matches_float64_reference(model):
    rng = np.random.default_rng(0)
    t = np.arange(audio_samples_for_frames(20)) / SR
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    wav = (wav + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    got = model.log_mel(torch.from_numpy(wav)[None])[0].double().numpy()
    ref = reference_log_mel(wav)
    assert got.shape == ref.shape == (40, 80)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=0)


# ------------------------------------------------------------------------------- criterion


class FixedFeatures(nn.Module):
    """Stands in for the model: returns given (B, D, T') features as parameters."""

    def __init__(self, b: int, d: int, t: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for name in ("audio_content", "audio_identity", "video_content", "video_identity"):
            self.register_parameter(name, nn.Parameter(torch.randn(b, d, t, generator=g)))

    def forward(self, audio, video):
        return {n: p for n, p in self.named_parameters()}


def reference_losses(feats: dict, frame_index: torch.Tensor, w=10.0, b=-5.0):
    """float64 content / identity CE and top-1 counts, clip by clip."""
    f = {k: v.detach().double() for k, v in feats.items()}
    batch, _, t = f["video_content"].shape
    content, c_correct = [], 0
    for i in range(batch):
        v, a = f["video_content"][i].T, f["audio_content"][i].T  # (T', D)
        logits = torch.empty(t, t, dtype=torch.float64)
        for r in range(t):
            for s in range(t):
                logits[r, s] = w * F.cosine_similarity(v[r], a[s], dim=0) + b
        content.append(F.cross_entropy(logits, torch.arange(t)))
        c_correct += int((logits.argmax(1) == torch.arange(t)).sum())
    vid = torch.stack([f["video_identity"][i, :, frame_index[i]] for i in range(batch)])
    aud = f["audio_identity"].mean(dim=2)
    logits = torch.empty(batch, batch, dtype=torch.float64)
    for i in range(batch):
        for j in range(batch):
            logits[i, j] = w * F.cosine_similarity(vid[i], aud[j], dim=0) + b
    identity = F.cross_entropy(logits, torch.arange(batch))
    i_correct = int((logits.argmax(1) == torch.arange(batch)).sum())
    return torch.stack(content).mean(), identity, c_correct, i_correct


def _sample(b: int) -> dict:
    return {"audio": torch.zeros(b, 10), "video": torch.zeros(b, 3, 1, 1, 1)}


def test_criterion_matches_reference_and_backprops():
    b, d, t = 4, 16, 6
    crit = SyncNetCriterion(SyncNetCriterionConfig(alpha_content=1.0, alpha_identity=0.5, seed=3))
    crit.set_num_updates(7)
    fake = FixedFeatures(b, d, t)
    # the random identity frames: as documented, from a CPU generator seeded by (seed, update)
    frame_index = torch.randint(0, t, (b,), generator=crit.identity_frame_generator())
    loss, sample_size, log = crit(fake, _sample(b))
    lc, li, c_correct, i_correct = reference_losses(dict(fake.named_parameters()), frame_index)
    assert sample_size == 1
    assert log["content_loss"] == pytest.approx(float(lc), rel=1e-5)
    assert log["identity_loss"] == pytest.approx(float(li), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(lc + 0.5 * li), rel=1e-5)
    assert (log["content_correct"], log["content_total"]) == (c_correct, b * t)
    assert (log["identity_correct"], log["identity_total"]) == (i_correct, b)
    loss.backward()
    for name in ("wC", "bC", "wI", "bI"):
        grad = getattr(crit, name).grad
        assert grad is not None and torch.isfinite(grad) and grad != 0, name
    assert set(crit.state_dict()) == {"wI", "bI", "wC", "bC"}
    # same update -> same frames; another update -> other frames (for this seed)
    again = crit(fake, _sample(b))[2]
    assert again["identity_loss"] == log["identity_loss"]
    crit.set_num_updates(8)
    other = torch.randint(0, t, (b,), generator=crit.identity_frame_generator())
    assert not torch.equal(other, frame_index)


def test_criterion_reduce_metrics_sums_micro_batches():
    crit = SyncNetCriterion(SyncNetCriterionConfig())
    logs = [crit(FixedFeatures(3, 8, 5, seed=s), _sample(3))[2] for s in (0, 1)]
    sums = {k: logs[0][k] + logs[1][k] for k in logs[0]}
    out = SyncNetCriterion.reduce_metrics(sums)
    assert out["loss"] == pytest.approx((logs[0]["loss"] + logs[1]["loss"]) / 2)
    assert out["content_loss"] == pytest.approx(
        (logs[0]["content_loss"] + logs[1]["content_loss"]) / 2
    )
    correct = logs[0]["content_correct"] + logs[1]["content_correct"]
    assert out["content_accuracy"] == pytest.approx(100.0 * correct / 30)
    correct = logs[0]["identity_correct"] + logs[1]["identity_correct"]
    assert out["identity_accuracy"] == pytest.approx(100.0 * correct / 6)
    assert out["nsentences"] == 6


def test_criterion_perfect_features_reach_full_accuracy():
    b, d, t = 3, 8, 5
    fake = FixedFeatures(b, d, t)
    with torch.no_grad():
        fake.audio_content.copy_(torch.eye(d)[:t].T.expand(b, d, t))
        fake.video_content.copy_(fake.audio_content)
        ident = torch.eye(d)[:b, :, None].expand(b, d, t)
        fake.audio_identity.copy_(ident)
        fake.video_identity.copy_(ident)
    out = SyncNetCriterion.reduce_metrics(
        SyncNetCriterion(SyncNetCriterionConfig())(fake, _sample(b))[2]
    )
    assert out["content_accuracy"] == 100.0 and out["identity_accuracy"] == 100.0


def test_criterion_batch_of_one():
    with pytest.raises(ValueError, match="at least 2 clips"):
        SyncNetCriterion(SyncNetCriterionConfig())(FixedFeatures(1, 8, 5), _sample(1))
    crit = SyncNetCriterion(SyncNetCriterionConfig(alpha_identity=0.0))
    loss, _, log = crit(FixedFeatures(1, 8, 5), _sample(1))
    assert float(loss.detach()) == pytest.approx(log["content_loss"]) and log["identity_total"] == 0


def test_criterion_with_model_end_to_end():
    torch.manual_seed(0)
    m = SyncNetFBank(SyncNetConfig(embed_dim=32, temporal_stride=2))
    frames = 7  # T' = 2
    sample = {
        "audio": torch.randn(2, audio_samples_for_frames(frames)) * 0.1,
        "video": torch.rand(2, 3, frames, 224, 224) * 255,
    }
    crit = SyncNetCriterion(SyncNetCriterionConfig())
    loss, _, log = crit(m, sample)
    loss.backward()
    assert torch.isfinite(loss) and log["content_total"] == 4
    assert m.netcnnaud[0].weight.grad is not None and m.netcnnlip[0].weight.grad is not None
    assert crit.wI.grad is not None


# ------------------------------------------------------------------------------- AV offset


@pytest.mark.parametrize("k", [3, -4, 0])
def test_av_offset_recovers_shift(k):
    rng = np.random.default_rng(1)
    t, d = 60, 32
    video = rng.standard_normal((t, d))
    audio = rng.standard_normal((t, d))  # frames with no counterpart stay random
    # audio leads by k frames: a[s] = v[s + k], i.e. v[i] matches a[i - k]
    for s in range(t):
        if 0 <= s + k < t:
            audio[s] = video[s + k]
    audio += 0.1 * rng.standard_normal((t, d))
    res = av_offset(torch.from_numpy(video).float(), audio, vshift=15)
    assert res.offset == k
    assert res.confidence > 1.0
    assert res.min_dist == pytest.approx(res.mean_dist.min())
    assert res.framewise_confidence.shape == (t,)
    assert res.mean_dist.shape == (31,)


def test_av_offset_bad_input():
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        av_offset(np.zeros((5, 3)), np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        av_offset(np.zeros(5), np.zeros(5))

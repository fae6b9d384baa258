"""Speaker-verification models and pooling layers: registry build, shapes, gradients, sizes,
reference checkpoint key names, and the pooling / sinc maths against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import speechkit.models.ecapa_tdnn  # noqa: F401  (registers ecapa_tdnn)
import speechkit.models.rawnet3  # noqa: F401
import speechkit.models.resnet_se  # noqa: F401
import speechkit.models.vggvox  # noqa: F401
from speechkit.errors import ConfigError
from speechkit.models.rawnet3 import ParamSincFilterbank
from speechkit.modules.pooling import (
    AttentiveStatisticsPooling,
    AttentiveStatsPool,
    SelfAttentivePooling,
    TemporalAveragePooling,
    TemporalMaxPooling,
)
from speechkit.registry import MODEL_REGISTRY

SR = 16000
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def build(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODEL_REGISTRY.build({"_name": name, **overrides})


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN]


def resnet_reference_keys(stem_bias: bool, sap: bool) -> set[str]:
    """voxceleb_trainer ResNetSE34L/V2 ``__S__.*`` keys (research notes 1.2/1.3) minus torchfb."""
    keys = ["conv1.weight", *(["conv1.bias"] if stem_bias else []), *bn_keys("bn1")]
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            keys += [
                f"{p}.conv1.weight",
                *bn_keys(f"{p}.bn1"),
                f"{p}.conv2.weight",
                *bn_keys(f"{p}.bn2"),
            ]
            keys += [f"{p}.se.fc.{j}.{w}" for j in (0, 2) for w in ("weight", "bias")]
            if layer > 1 and i == 0:
                keys += [f"{p}.downsample.0.weight", *bn_keys(f"{p}.downsample.1")]
    if sap:
        keys += ["sap_linear.weight", "sap_linear.bias", "attention"]
    else:
        keys += ["attention.0.weight", "attention.0.bias", *bn_keys("attention.2")]
        keys += ["attention.3.weight", "attention.3.bias"]
    return set(keys + ["fc.weight", "fc.bias"])


# ------------------------------------------------------------------------------- models

# (registry name, overrides, embedding size, expected parameters, relative tolerance)
MODELS = [
    ("resnet_se34l", {}, 512, 1.44e6, 0.01),  # research 1.2: SAP, nOut 512
    ("resnet_se34v2", {}, 512, 8.03e6, 0.01),  # research 1.3: 64 mels, ASP, nOut 512
    ("vggvox40", {"encoder_type": "SAP"}, 512, None, None),
    ("rawnet3", {}, 256, None, None),
    ("ecapa_tdnn", {"channels": 512}, 192, 6.19e6, 0.02),  # wespeaker ECAPA_TDNN_GLOB_c512
    ("ecapa_tdnn", {"channels": 1024, "frontend": "fbank"}, 192, 14.65e6, 0.02),  # ..._c1024
]


@pytest.mark.parametrize("name, overrides, dim, params, rtol", MODELS, ids=lambda v: str(v))
def test_model_builds_embeds_and_backprops(name, overrides, dim, params, rtol):
    model = build(name, **overrides).train()
    assert model.embed_dim == dim
    if params is not None:
        assert n_params(model) == pytest.approx(params, rel=rtol)
    wav = 0.1 * torch.randn(2, 2 * SR)
    emb = model(wav)
    assert emb.shape == (2, dim) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    emb.square().mean().backward()
    for key, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), key
            assert p.grad.abs().sum() > 0, key


def test_resnet_se34l_reference_keys():
    sd = build("resnet_se34l").state_dict()
    assert (
        len(sd) == 287 - 2
    )  # research 1.2: 287 entries incl. torchfb.spectrogram.window, .mel_scale.fb
    assert set(sd) == resnet_reference_keys(stem_bias=False, sap=True)
    assert sd["attention"].shape == (128, 1) and sd["fc.weight"].shape == (512, 128)
    assert sd["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert sd["layer1.0.se.fc.0.weight"].shape == (2, 16)  # SE reduction 8


def test_resnet_se34v2_reference_keys():
    sd = build("resnet_se34v2").state_dict()
    assert (
        len(sd) == 295 - 3
    )  # research 1.3: minus torchfb.0.flipped_filter, torchfb.1.{window, fb}
    assert set(sd) == resnet_reference_keys(stem_bias=True, sap=False)
    assert sd["attention.0.weight"].shape == (128, 2048, 1)
    assert sd["fc.weight"].shape == (512, 4096)


def test_vggvox40_reference_keys():
    sd = build("vggvox40", encoder_type="SAP").state_dict()
    convs, bns = (0, 4, 8, 11, 14, 18), (1, 5, 9, 12, 15, 19)
    expected = {f"netcnn.{i}.{w}" for i in convs for w in ("weight", "bias")}
    expected |= {k for i in bns for k in bn_keys(f"netcnn.{i}")}
    expected |= {"sap_linear.weight", "sap_linear.bias", "attention", "fc.weight", "fc.bias"}
    assert set(sd) == expected
    assert sd["netcnn.18.weight"].shape == (512, 256, 4, 1)
    assert set(build("vggvox40", encoder_type="MAX").state_dict()) == expected - {
        "sap_linear.weight",
        "sap_linear.bias",
        "attention",
    }


def test_rawnet3_reference_keys():
    sd = build("rawnet3").state_dict()
    shapes = {
        "preprocess.0.flipped_filter": (1, 1, 2),
        "preprocess.1.weight": (1,),
        "conv1.filterbank.low_hz_": (128, 1),
        "conv1.filterbank.band_hz_": (128, 1),
        "conv1.filterbank.window_": (125,),
        "conv1.filterbank.n_": (1, 125),
        "layer1.conv1.weight": (1024, 256, 1),
        "layer1.convs.6.weight": (128, 128, 3),
        "layer1.residual.0.weight": (1024, 256, 1),
        "layer1.afms.alpha": (1024, 1),
        "layer4.weight": (1536, 3072, 1),
        "attention.0.weight": (128, 4608, 1),
        "attention.3.weight": (1536, 128, 1),
        "bn5.weight": (3072,),
        "fc6.weight": (256, 3072),
        "bn6.weight": (256,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer2.residual.0.weight" not in sd  # identity shortcut when channels match
    assert not any(k.startswith("frontend") for k in sd)


def test_frontend_buffers_are_not_saved():
    for name in ("resnet_se34l", "resnet_se34v2", "vggvox40", "ecapa_tdnn"):
        assert not any(k.startswith("frontend") for k in build(name).state_dict()), name


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("resnet_se34l", {"encoder_type": "TAP"}),
        ("resnet_se34v2", {"n_mels": 60}),
        ("resnet_se34l", {"feature_norm": "cmvn"}),
        ("vggvox40", {"encoder_type": "ASP"}),
        ("rawnet3", {"norm_sinc": "std"}),
        ("ecapa_tdnn", {"frontend": "mfcc"}),
    ],
)
def test_bad_config_raises(name, overrides):
    with pytest.raises(ConfigError, match=list(overrides)[0]):
        build(name, **overrides)


@pytest.mark.parametrize("name", ["resnet_se34l", "resnet_se34v2"])
def test_feature_norm_choices(name):
    """``instance`` (the reference) and ``mean`` remove the per-bin mean over time; ``none``
    keeps the raw log-mel levels, and the embedding changes with the choice."""
    wav = 0.1 * torch.randn(2, SR)
    feats, embs = {}, {}
    for norm in ("instance", "mean", "none"):
        torch.manual_seed(0)
        model = build(name, feature_norm=norm).eval()
        with torch.no_grad():
            feats[norm], embs[norm] = model.frontend(wav), model(wav)
    for norm in ("instance", "mean"):
        assert feats[norm].mean(-1).abs().max() < 1e-4, norm
    assert feats["none"].mean(-1).abs().max() > 1.0
    torch.testing.assert_close(
        feats["instance"].std(-1), torch.ones_like(feats["instance"][..., 0]), atol=1e-2, rtol=0
    )
    assert not torch.allclose(embs["none"], embs["instance"])


def test_eval_embedding_is_batch_independent_and_input_scale_applies():
    model = build("resnet_se34l", encoder_type="ASP").eval()
    wav = 0.1 * torch.randn(3, 2 * SR)
    with torch.no_grad():
        batch = model(wav)
        single = model(wav[1:2])
        scaled = build("resnet_se34l", encoder_type="ASP", input_scale=32768.0).eval()
        scaled.load_state_dict(model.state_dict())
        torch.testing.assert_close(scaled(wav / 32768.0), batch, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single[0], batch[1], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_embedding_close_to_fp32():
    model = build("resnet_se34l").eval()
    wav = 0.1 * torch.randn(1, SR)  # bf16 convolutions are slow on CPU: keep it small
    with torch.no_grad():
        ref = model(wav)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(wav)
    cos = torch.nn.functional.cosine_similarity(mixed.float(), ref, dim=1)
    assert (cos > 0.99).all(), cos


# ------------------------------------------------------------------------------- pooling


def test_tap_and_max():
    x = torch.randn(2, 5, 7)
    torch.testing.assert_close(TemporalAveragePooling()(x), torch.from_numpy(x.numpy().mean(-1)))
    torch.testing.assert_close(TemporalMaxPooling()(x), torch.from_numpy(x.numpy().max(-1)))
    assert TemporalAveragePooling.output_dim(5) == TemporalMaxPooling.output_dim(5) == 5


def sap_reference(x: np.ndarray, w_lin, b_lin, a) -> tuple[np.ndarray, np.ndarray]:
    """float64 SAP / ASP on (B, C, T): per-frame scalar weights, weighted mean and std."""
    mus, sigmas = [], []
    for utt in x:  # (C, T)
        scores = np.array([np.tanh(w_lin @ f + b_lin) @ a[:, 0] for f in utt.T])
        w = np.exp(scores - scores.max())
        w /= w.sum()
        mu = (utt * w).sum(1)
        mus.append(mu)
        sigmas.append(np.sqrt(np.maximum((utt**2 * w).sum(1) - mu**2, 1e-5)))
    return np.array(mus), np.array(sigmas)


def test_sap_and_asp_match_float64_reference():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 9)
    asp = AttentiveStatisticsPooling(6)
    sap = SelfAttentivePooling(6)
    sap.load_state_dict(asp.state_dict())
    params = [
        t.detach().double().numpy()
        for t in (asp.sap_linear.weight, asp.sap_linear.bias, asp.attention)
    ]
    mu, sigma = sap_reference(x.double().numpy(), *params)
    np.testing.assert_allclose(sap(x).detach().numpy(), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        asp(x).detach().numpy(), np.concatenate([mu, sigma], 1), rtol=1e-5, atol=1e-6
    )
    assert sap.output_dim(6) == 6 and asp.output_dim(6) == 12
    assert set(asp.state_dict()) == {"sap_linear.weight", "sap_linear.bias", "attention"}


def test_channel_attentive_stats_pool_matches_float64_reference():
    torch.manual_seed(0)
    pool = AttentiveStatsPool(4, bottleneck_dim=3, global_context=True, activation="tanh").eval()
    x = torch.randn(2, 4, 11)
    out = pool(x).detach().numpy()
    w1, b1 = (
        pool[0].weight[:, :, 0].detach().double().numpy(),
        pool[0].bias.detach().double().numpy(),
    )
    w2, b2 = (
        pool[2].weight[:, :, 0].detach().double().numpy(),
        pool[2].bias.detach().double().numpy(),
    )
    for b, utt in enumerate(x.double().numpy()):  # (C, T)
        ctx = np.concatenate(
            [
                utt,
                np.repeat(utt.mean(1, keepdims=True), 11, 1),
                np.repeat(utt.std(1, ddof=1, keepdims=True), 11, 1),
            ]
        )
        scores = w2 @ np.tanh(w1 @ ctx + b1[:, None]) + b2[:, None]  # (C, T)
        w = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
        mu = (w * utt).sum(1)
        sigma = np.sqrt((w * utt**2).sum(1) - mu**2)
        np.testing.assert_allclose(out[b], np.concatenate([mu, sigma]), rtol=1e-5, atol=1e-5)
    assert pool.output_dim() == 8


def test_attentive_stats_pool_layouts():
    relu_bn = AttentiveStatsPool(8, 4, global_context=False, activation="relu_bn", with_std=False)
    assert [k for k in relu_bn.state_dict() if k.endswith("weight")] == [
        "0.weight",
        "2.weight",
        "3.weight",
    ]
    assert relu_bn.eval()(torch.randn(2, 8, 5)).shape == (2, 8) and relu_bn.output_dim() == 8
    shared = AttentiveStatsPool(8, 4, channel_wise=False)
    assert shared[-1].out_channels == 1 and shared(torch.randn(2, 8, 5)).shape == (2, 16)
    with pytest.raises(ConfigError, match="activation"):
        AttentiveStatsPool(8, activation="gelu")


# ------------------------------------------------------------------------------- sinc filters


def test_param_sinc_filterbank_matches_direct_formula():
    fb = ParamSincFilterbank(256, 251)
    filters = fb.filters().detach().double().numpy()[:, 0]  # (256, 251)
    low, high = (t.detach().double().numpy()[:, 0] for t in fb.band_edges())
    # initial edges: mel-spaced 30..7900 Hz, shifted up by the 50 Hz floors (clamped at 8 kHz)
    assert low[0] == pytest.approx(80.0, abs=0.01) and high[-1] == pytest.approx(8000.0)
    t = (np.arange(251) - 125) / SR  # seconds
    window = np.hamming(251)
    for k in (0, 37, 127):
        with np.errstate(invalid="ignore", divide="ignore"):
            even = (np.sin(2 * np.pi * high[k] * t) - np.sin(2 * np.pi * low[k] * t)) / (np.pi * t)
            odd = (np.cos(2 * np.pi * low[k] * t) - np.cos(2 * np.pi * high[k] * t)) / (np.pi * t)
        even[125], odd[125] = 2 * (high[k] - low[k]), 0.0
        scale = 2 * (high[k] - low[k])
        np.testing.assert_allclose(filters[k], even * window / scale, atol=2e-4)
        np.testing.assert_allclose(filters[128 + k], odd * window / scale, atol=2e-4)
        # the even filter passes its band centre and rejects far-away frequencies
        response = np.abs(np.fft.rfft(filters[k], n=8192))
        freqs = np.fft.rfftfreq(8192, 1 / SR)
        centre = response[np.argmin(np.abs(freqs - (low[k] + high[k]) / 2))]
        far = response[np.abs(freqs - (low[k] + high[k]) / 2) > 3 * (high[k] - low[k]) + 200]
        assert centre > 10 * far.max()
    assert math.isclose(fb.window_[0].item(), 0.08, abs_tol=1e-6)

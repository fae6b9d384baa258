"""VoiceVector AE separation network and the windowed-sinc resampler.

The resampler is checked against a direct float64 evaluation of the band-limited interpolation
sum (no polyphase arrangement), against analytic sines, and against scipy's resample_poly. The
model's shapes, enrolment invariances and sizes follow research/voicevector_separation.md §1.3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from speechkit.models.voicevector import (
    VoiceVectorAE,
    VoiceVectorAV,
    VoiceVectorAVConfig,
    VoiceVectorConfig,
)
from speechkit.modules.resample import Resample, resampled_length
from speechkit.registry import MODEL_REGISTRY

SR = 16000
UP = 51200

# ----------------------------------------------------------------------------------- resampler


def direct_sinc_resample(
    x: np.ndarray, orig: int, new: int, width: int, rolloff: float, window: str, beta: float
) -> np.ndarray:
    """y[j] = sum_n x[n] h(j orig/new - n), h = 2fc sinc(2fc t) w(t); float64, x zero outside."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    two_fc = rolloff * min(1.0, new / orig)
    half = width / two_fc
    out_len = -(-len(x) * new // orig)
    tau = np.arange(out_len)[:, None] * orig / new
    t = tau - np.arange(len(x))[None, :]
    u = np.clip(t / half, -1, 1)
    if window == "hann":
        w = np.cos(0.5 * np.pi * u) ** 2
    else:
        w = np.i0(beta * np.sqrt(1 - u * u)) / np.i0(beta)
    h = two_fc * np.sinc(two_fc * t) * w * (np.abs(t) <= half)
    return h @ x


@pytest.mark.parametrize(
    "orig,new,window",
    [(SR, UP, "hann"), (UP, SR, "hann"), (SR, UP, "kaiser"), (3, 2, "hann"), (2, 3, "kaiser")],
)
def test_resample_matches_direct_sum(orig: int, new: int, window: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(357)
    rs = Resample(orig, new, lowpass_filter_width=6, rolloff=0.99, window=window)
    y = rs(torch.tensor(x, dtype=torch.float32)).double().numpy()
    ref = direct_sinc_resample(x, orig, new, 6, 0.99, window, rs.beta)
    assert y.shape == ref.shape == (resampled_length(357, orig, new),)
    np.testing.assert_allclose(y, ref, atol=2e-5)


@pytest.mark.parametrize("freq", [440.0, 3000.0])
def test_upsampled_sine_keeps_amplitude_and_phase(freq: float) -> None:
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * freq * t + 0.3)
    y = Resample(SR, UP)(torch.tensor(x, dtype=torch.float32)).double().numpy()
    t_up = np.arange(len(y)) / UP
    ref = np.sin(2 * np.pi * freq * t_up + 0.3)
    edge = 300  # > filter half-length at 51.2 kHz
    assert np.abs(y - ref)[edge:-edge].max() < 2e-3
    # least-squares amplitude and phase of the fitted sinusoid
    basis = np.stack([np.sin(2 * np.pi * freq * t_up), np.cos(2 * np.pi * freq * t_up)], 1)
    (a, b), *_ = np.linalg.lstsq(basis[edge:-edge], y[edge:-edge], rcond=None)
    assert abs(math.hypot(a, b) - 1.0) < 1e-3
    assert abs(math.atan2(b, a) - 0.3) < 1e-3
    # an independent polyphase design (Kaiser FIR) agrees away from the edges
    sp = resample_poly(x, 16, 5)[: len(y)]
    assert np.abs(y - sp)[edge:-edge].max() < 3e-3


def test_round_trip_is_close_to_identity() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(int(0.5 * SR)) / SR
    x = sum(
        0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        for f in (120.0, 517.0, 1333.0, 2900.0, 5100.0)
    )
    up, down = Resample(SR, UP), Resample(UP, SR)
    xt = torch.tensor(x, dtype=torch.float32)
    z = down(up(xt)).double().numpy()
    assert z.shape == x.shape
    assert np.abs(z - x)[100:-100].max() < 3e-3


@pytest.mark.parametrize("length", [0, 1, 4, 5, 16, 999, 16000, 21920])
def test_output_length(length: int) -> None:
    up, down = Resample(SR, UP), Resample(UP, SR)
    y = up(torch.zeros(2, 3, length))
    assert y.shape == (2, 3, math.ceil(length * 16 / 5))
    assert down(torch.zeros(length)).shape == (math.ceil(length * 5 / 16),)
    # 16k -> 51.2k -> 16k gives T or T + 1 samples (the model crops to T)
    assert down(y).shape[-1] in (length, length + 1)


def test_resample_buffer_dtype_and_autocast() -> None:
    rs = Resample(SR, UP)
    assert "kernel" not in rs.state_dict() and len(list(rs.parameters())) == 0
    assert rs.kernel.dtype == torch.float32
    x = torch.randn(2, 800)
    ref = rs(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rs(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref)
    assert rs(x.double()).dtype == torch.float64
    assert Resample(SR, SR)(x) is x
    with pytest.raises(ValueError, match="rolloff"):
        Resample(SR, UP, rolloff=1.5)


def test_resample_is_differentiable() -> None:
    x = torch.randn(1, 200, requires_grad=True)
    Resample(UP, SR)(Resample(SR, UP)(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def model() -> VoiceVectorAE:
    torch.manual_seed(0)
    return VoiceVectorAE(VoiceVectorConfig()).eval()


def test_parameter_count_and_registry(model: VoiceVectorAE) -> None:
    total = sum(p.numel() for p in model.parameters())
    enrol = sum(
        p.numel() for p in [*model.enrol_adapter.parameters(), *model.enrol_type_embed.parameters()]
    )
    print(f"voicevector_ae: {total / 1e6:.3f} M parameters ({enrol / 1e6:.3f} M enrolment)")
    assert 19.5e6 < total < 20.3e6  # research's estimate: about 19.9 M
    assert MODEL_REGISTRY.get("voicevector_ae") is VoiceVectorAE
    built = MODEL_REGISTRY.build({"_name": "voicevector_ae", "hidden": 8, "depth": 3})
    assert built.d_model == 32
    # buffers (filters, positional encoding) are not saved
    assert not any("kernel" in k or k.endswith(".pe") for k in model.state_dict())
    assert [lvl[0].out_channels for lvl in model.encoder] == [48, 96, 192, 384, 768]
    assert model.max_seconds() == pytest.approx(30.0)


def _enrol(b: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 192, generator=g), torch.randint(0, 2, (b, n), generator=g)


@pytest.mark.parametrize("length", [SR, int(1.37 * SR), 1234])
def test_output_shape_equals_input_shape(model: VoiceVectorAE, length: int) -> None:
    x = torch.randn(1, length) * 0.1
    e, t = _enrol(1, 3)
    with torch.no_grad():
        y = model(x, e, t)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_padded_enrolment_equals_running_alone(model: VoiceVectorAE) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4000) * 0.1
    e, t = _enrol(2, 3, seed=2)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    e_pad = e.clone()
    e_pad[0, 2] = 100.0  # garbage in the padded slot must not matter
    with torch.no_grad():
        both = model(x, e_pad, t, mask)
        alone0 = model(x[:1], e[:1, :2], t[:1, :2])
        alone1 = model(x[1:], e[1:], t[1:])
        unmasked = model(x, e, t, None)
        all_true = model(x, e, t, torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(both[0], alone0[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[1], alone1[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unmasked, all_true, atol=1e-6, rtol=1e-5)


def test_enrolment_order_does_not_matter(model: VoiceVectorAE) -> None:
    x = torch.randn(1, 4000) * 0.1
    e, t = _enrol(1, 4, seed=3)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a = model(x, e, t)
        b = model(x, e[:, perm], t[:, perm])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_positive_vs_negative_changes_output(model: VoiceVectorAE) -> None:
    x = torch.randn(1, 4000) * 0.1
    e, _ = _enrol(1, 2, seed=4)
    with torch.no_grad():
        pos = model(x, e, torch.ones(1, 2, dtype=torch.long))
        neg = model(x, e, torch.zeros(1, 2, dtype=torch.long))
        none = model(x, e[:, :0], torch.zeros(1, 0, dtype=torch.long))
    assert (pos - neg).abs().max() > 1e-4 * max(pos.abs().max(), 1e-6)
    assert none.shape == x.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        amp = model(x, e, torch.ones(1, 2, dtype=torch.long))
    assert amp.dtype == torch.float32 and torch.isfinite(amp).all()
    with pytest.raises(ValueError, match="enrol_type"):
        model(x, e, torch.full((1, 2), 2, dtype=torch.long))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    m = VoiceVectorAE(VoiceVectorConfig(hidden=8, depth=3, ffn_dim=64, heads=4))
    x = torch.randn(2, 4000) * 0.1
    e, _ = _enrol(2, 3, seed=5)
    t = torch.tensor([[1, 0, 1], [0, 1, 1]])
    y = m(x, e, t, torch.tensor([[True, True, True], [True, True, False]]))
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_full_model_backward(model: VoiceVectorAE) -> None:
    model.zero_grad(set_to_none=True)
    x = torch.randn(1, 4000) * 0.1
    e, t = _enrol(1, 2, seed=6)
    t[0] = torch.tensor([0, 1])
    model(x, e, t).pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_too_long_input_raises(model: VoiceVectorAE) -> None:
    e, t = _enrol(1, 1)
    with pytest.raises(ValueError, match=r"30\.00 s"):
        model(torch.zeros(1, 30 * SR + 16), e, t)
    small = VoiceVectorAE(VoiceVectorConfig(hidden=8, depth=3, heads=4, max_len=10))
    ok = small(torch.zeros(1, 200), e, t)  # 640 samples at 51.2 kHz = 10 tokens of 64
    assert ok.shape == (1, 200)
    with pytest.raises(ValueError, match="max_len 10"):
        small(torch.zeros(1, 201), e, t)


def test_bad_config_and_shapes_raise() -> None:
    with pytest.raises(ValueError, match="d_model"):
        VoiceVectorAE(VoiceVectorConfig(d_model=512))
    m = VoiceVectorAE(VoiceVectorConfig(hidden=8, depth=2, heads=2))
    e, t = _enrol(1, 2)
    with pytest.raises(ValueError, match="mixture"):
        m(torch.zeros(1, 1, 100), e, t)
    with pytest.raises(ValueError, match="enrol"):
        m(torch.zeros(1, 100), e[..., :100], t)


# ------------------------------------------------------------------- shared body, AV variant

AE_KEYS_DEPTH1 = [
    "input_conv.weight", "input_conv.bias", "input_norm.weight", "input_norm.bias",
    "encoder.0.0.weight", "encoder.0.0.bias", "encoder.0.2.weight", "encoder.0.2.bias",
    "decoder.0.0.weight", "decoder.0.0.bias", "decoder.0.2.weight", "decoder.0.2.bias",
    *[
        f"transformer.layers.0.{n}"
        for n in (
            "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
            "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
            "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
        )
    ],
    "head.weight", "head.bias",
    "enrol_adapter.conv1.weight", "enrol_adapter.conv1.bias", "enrol_adapter.norm.weight",
    "enrol_adapter.norm.bias", "enrol_adapter.conv2.weight", "enrol_adapter.conv2.bias",
    "enrol_type_embed.weight",
]  # fmt: skip


def test_ae_state_dict_keys_are_unchanged_by_the_shared_body() -> None:
    """Checkpoints of voicevector_ae written before the AE/AV split still load key for key."""
    m = VoiceVectorAE(
        VoiceVectorConfig(
            hidden=8, depth=1, heads=4, transformer_layers=1, ffn_dim=16, emb_dim=4, enrol_hidden=8
        )
    )
    assert list(m.state_dict()) == AE_KEYS_DEPTH1


TINY_AV = dict(hidden=8, depth=3, transformer_layers=1, heads=4, ffn_dim=64, lip_dim=16)


@pytest.fixture(scope="module")
def av_model() -> VoiceVectorAV:
    torch.manual_seed(0)
    return VoiceVectorAV(VoiceVectorAVConfig(**TINY_AV)).eval()


def test_av_size_registry_and_layout() -> None:
    full = VoiceVectorAV(VoiceVectorAVConfig())
    total = sum(p.numel() for p in full.parameters())
    assert 19.5e6 < total < 20.4e6  # the AE body + a 512->768 video stem
    assert MODEL_REGISTRY.get("voicevector_av") is VoiceVectorAV
    keys = set(full.state_dict())
    assert not any(k.startswith(("enrol", "input_conv", "input_norm")) for k in keys)
    assert {"video_adapter.conv.weight", "video_adapter.norm.weight"} <= keys
    assert full.transformer.layers[0].norm_first and full.num_frames(16000) == 25
    assert "bottleneck_norm.weight" in keys and full.bottleneck_norm.num_groups == 1
    assert full.max_seconds() == pytest.approx(30.0)  # 1500 audio tokens; video allows 120 s


def test_av_output_shape_and_lip_conditioning(av_model: VoiceVectorAV) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16000, generator=g) * 0.1
    lip = torch.randn(2, 25, 16, generator=g)
    with torch.no_grad():
        y = av_model(x, lip)
        again = av_model(x, lip)
        other = av_model(x, torch.randn(2, 25, 16, generator=g))
        alone = av_model(x[1:], lip[1:])
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(y, again)
    # the lip stream steers the estimate (weakly in an untrained tiny net: ~3e-5 relative)
    assert (y - other).abs().max() > 1e-6 * y.abs().max()
    torch.testing.assert_close(alone, y[1:], atol=1e-5, rtol=1e-4)  # items are independent
    with pytest.raises(ValueError, match="needs 25 lip frames"):
        av_model(x, lip[:, :24])
    with pytest.raises(ValueError, match=r"\(2, F, 16\)"):
        av_model(x, lip[..., :8])


def test_av_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    m = VoiceVectorAV(VoiceVectorAVConfig(**TINY_AV))
    x = torch.randn(2, 3200) * 0.1
    y = m(x, torch.randn(2, 5, 16))
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_av_positions_and_bottleneck_norm_follow_upstream(av_model: VoiceVectorAV) -> None:
    """Upstream voiceFormerAV: GroupNorm(1, d) on the bottleneck, then audio token i + pe[i] and
    lip frame j + pe[j // 2] (PositionalEncoding2 with resample=2 upsamples the table x2)."""
    seen = {}

    def keep(name):
        return lambda mod, args, out: seen.__setitem__(name, out)

    hooks = [
        av_model.encoder[-1].register_forward_hook(keep("enc")),
        av_model.bottleneck_norm.register_forward_hook(keep("norm")),
        av_model.video_adapter.register_forward_hook(keep("video")),
        av_model.transformer.register_forward_pre_hook(lambda mod, args: seen.update(src=args[0])),
    ]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6400, generator=g)  # 0.4 s: 10 lip frames, 320 audio tokens (depth 3)
    try:
        with torch.no_grad():
            av_model(x, torch.randn(2, 10, 16, generator=g))
    finally:
        for h in hooks:
            h.remove()
    enc, norm, src = seen["enc"], seen["norm"], seen["src"]
    tokens = norm.shape[-1]
    flat = enc.flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / (
        flat.var(1, unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    torch.testing.assert_close(norm.flatten(1), expected, atol=1e-4, rtol=1e-4)
    pe = av_model.pos_enc.pe
    torch.testing.assert_close(
        src[:, :tokens] - norm.transpose(1, 2), pe[:tokens].expand(2, -1, -1)
    )
    video_pe = pe[torch.arange(10) // 2]
    torch.testing.assert_close(src[:, tokens:] - seen["video"], video_pe.expand(2, -1, -1))


def test_av_length_limit_counts_video_positions() -> None:
    """A U-Net with under half a token per lip frame is limited by the video table (2 max_len
    frames), not the audio one; the message gives the limit in seconds."""
    cfg = VoiceVectorAVConfig(
        hidden=1, depth=7, heads=2, transformer_layers=1, ffn_dim=8, lip_dim=4, max_len=10
    )
    m = VoiceVectorAV(cfg).eval()  # 51200 / 4**7 = 3.125 tokens/s: audio limit 3.2 s
    assert m.max_seconds() == pytest.approx(0.8)  # 20 frames of 40 ms
    with torch.no_grad():
        assert m(torch.randn(1, 12800), torch.randn(1, 20, 4)).shape == (1, 12800)
        with pytest.raises(ValueError, match="at most 0.80 s"):
            m(torch.randn(1, 12801), torch.randn(1, 21, 4))

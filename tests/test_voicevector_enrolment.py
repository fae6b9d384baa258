"""VoiceVector enrolment nets (``voicevector_embedding_v`` / ``_av`` / ``_iv``) and the
composites (``voicevector_vem`` / ``_avem`` / ``_ivem``): shapes, the x2 lip positions, input
errors, the reference's default size, the frozen enrolment net, checkpoint loading, and the
reference-layout round trip through ``speechkit-convert-voicevector`` (whose ``ECAPA.*`` keys
come from a state dict written by the real SpeechBrain package, ``tests/data/speechbrain_ecapa``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from speechkit import components
from speechkit.cli import convert_voicevector
from speechkit.errors import CheckpointError, ConfigError
from speechkit.interop.speechbrain_ecapa import convert_speechbrain_ecapa
from speechkit.models.voicevector import VoiceVectorAE, VoiceVectorConfig
from speechkit.models.voicevector_composite import VoiceVectorComposite
from speechkit.models.voicevector_enrolment import (
    VoiceVectorEmbeddingAV,
    VoiceVectorEmbeddingAVConfig,
    VoiceVectorEmbeddingConfig,
    VoiceVectorEmbeddingV,
)
from speechkit.registry import MODEL_REGISTRY
from tests.test_voicevector_interop import reference_layout

components.import_all()

HEAD = dict(
    lip_dim=6,
    face_dim=5,
    out_dim=8,
    proj_dim=8,
    ecapa_channels=[16, 16, 16, 16, 48],
    ecapa_attention_channels=8,
    ecapa_res2net_scale=4,
    ecapa_se_channels=8,
)
LIP_NET = dict(HEAD, d_model=16, heads=2, ffn_dim=12, transformer_layers=2, max_len=50)
# hidden 1, depth 5, stride 4: the reference's 50 tokens/s (2 per lip frame) with d_model 16
AV_NET = dict(HEAD, hidden=1, depth=5, d_model=16, heads=2, ffn_dim=12, transformer_layers=2)
SEP = dict(hidden=4, depth=3, transformer_layers=2, heads=2, ffn_dim=12, max_len=400, emb_dim=8)
SEP["enrol_hidden"] = 6
NETS = {"v": LIP_NET, "av": AV_NET, "iv": LIP_NET}
COMPOSITE = {"v": "voicevector_vem", "av": "voicevector_avem", "iv": "voicevector_ivem"}
FIXTURE = Path(__file__).with_name("data") / "speechbrain_ecapa" / "embedding_model.ckpt"


def net(kind: str, **over) -> torch.nn.Module:
    return MODEL_REGISTRY.build({"_name": f"voicevector_embedding_{kind}", **NETS[kind], **over})


def inputs(b: int, frames: int, seed: int = 0, n: int | None = None) -> dict:
    """lip / audio / face for ``b`` clips (or (b, n) enrolment sets) of ``frames`` frames."""
    g = torch.Generator().manual_seed(seed)
    lead = (b,) if n is None else (b, n)
    return {
        "lip": torch.randn(*lead, frames, 6, generator=g),
        "audio": 0.1 * torch.randn(*lead, frames * 640, generator=g),
        "face": torch.randn(*lead, 3, 5, generator=g),
    }


@pytest.mark.parametrize("kind", ["v", "av", "iv"])
def test_shapes_registry_and_unused_inputs(kind):
    torch.manual_seed(0)
    model = net(kind).eval()
    x = inputs(3, 10)
    with torch.no_grad():
        out = model(**x)
        if kind == "v":  # unused inputs may be None
            assert torch.equal(model(lip=x["lip"], audio=None, face=None), out)
    assert out.shape == (3, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.no_grad():  # one clip alone gives its row of the batch (eval: no batch coupling)
        alone = model(**{k: v[1:2] for k, v in x.items()})
    torch.testing.assert_close(alone, out[1:2], rtol=1e-4, atol=1e-5)
    # the clip matters
    with torch.no_grad():
        other = model(**inputs(3, 10, seed=1))
    assert not torch.allclose(other, out)


def test_lip_positions_follow_upstream():
    """V: lip frame j at pe[j // 2] (upstream's x2 nearest-upsampled table); IV: pe[j]; AV: the
    4 s-style geometry gives 2 audio tokens per lip frame, and the ECAPA head sees only them."""
    torch.manual_seed(0)
    lip = torch.randn(1, 7, 6)
    for kind, upsample in (("v", 2), ("iv", 1)):
        model = net(kind).eval()
        with torch.no_grad():
            pos = model.lip_tokens(lip) - model.video_adapter(lip)
        pe = model.pos_enc.pe
        for j in range(7):
            torch.testing.assert_close(pos[0, j], pe[j // upsample], rtol=0, atol=1e-6)
    model = net("av").eval()
    seen = []
    model.speaker_head.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    with torch.no_grad():
        model(**inputs(2, 9))
    assert seen == [torch.Size([2, 18, 16])]  # 9 frames x 640 samples -> 18 tokens of 20 ms


def test_bad_inputs_are_one_line_errors():
    torch.manual_seed(0)
    v, av, iv = net("v").eval(), net("av").eval(), net("iv").eval()
    x = inputs(2, 10)
    cases = [
        (v, dict(lip=x["lip"][0]), "expected lip features of shape (B, F >= 1, 6)"),
        (v, dict(lip=torch.randn(2, 10, 7)), "got (2, 10, 7)"),
        (v, dict(lip=x["lip"].long()), "lip must be a float tensor"),
        (v, dict(lip=x["lip"][:, :3]), "3 lip frames; the ECAPA head needs at least 5"),
        (v, dict(lip=torch.randn(1, 101, 6)), "101 lip frames; the positional encoding allows"),
        (iv, dict(lip=torch.randn(1, 51, 6), face=x["face"][:1]), "allows at most 50"),
        (av, dict(lip=x["lip"]), "needs the enrolment audio (2, 6400)"),
        (
            av,
            dict(lip=x["lip"], audio=x["audio"][:, :-1]),
            "10 lip frames need audio of shape (2, 6400) (640 samples per frame at 16000 Hz)",
        ),
        (iv, dict(lip=x["lip"]), "needs face embeddings (B, K, 5)"),
        (iv, dict(lip=x["lip"], face=torch.randn(2, 3, 4)), "expected face embeddings"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(ValueError) as e:
            model(**kwargs)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="must equal the last encoder width"):
        net("av", hidden=2)
    with pytest.raises(ConfigError, match="divisible by heads 3"):
        net("v", heads=3)


def test_default_size_is_the_reference():
    model = VoiceVectorEmbeddingV(VoiceVectorEmbeddingConfig())
    cfg = model.cfg
    assert (cfg.lip_dim, cfg.d_model, cfg.heads, cfg.ffn_dim, cfg.transformer_layers) == (
        512,
        768,
        8,
        532,
        3,
    )
    assert (cfg.proj_dim, cfg.out_dim, cfg.ecapa_channels) == (384, 192, [1024] * 4 + [3072])
    ecapa = sum(p.numel() for p in model.speaker_head.ecapa.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 22.0e6 < ecapa < 22.6e6  # "about 22 M for the ECAPA head alone"
    assert 33.0e6 < total < 33.3e6
    assert VoiceVectorEmbeddingAVConfig().d_model == 768
    # the AV net's U-Net geometry: 4 s of audio -> 200 tokens (50 per second)
    av = VoiceVectorEmbeddingAV.__mro__[1]  # shares VoiceVectorAV's encoder code
    assert av.__name__ == "VoiceVectorAV" and not VoiceVectorEmbeddingAV.has_decoder


# -- composites -------------------------------------------------------------------------------
def composite(kind: str, **over) -> VoiceVectorComposite:
    return MODEL_REGISTRY.build(
        {"_name": COMPOSITE[kind], "separation": SEP, "enrolment": NETS[kind], **over}
    )


def batch(kind: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    clips = inputs(2, 10, seed=seed, n=3)
    out = {
        "mixture": torch.randn(2, 3200, generator=g),
        "enrol_type": torch.tensor([[1, 0, 1], [1, 1, 0]]),
        "enrol_mask": torch.tensor([[True, True, False], [True, False, False]]),
        "enrol_lip": clips["lip"],
    }
    if kind == "av":
        out["enrol_audio"] = clips["audio"]
    if kind == "iv":
        out["enrol_face"] = clips["face"]
    return out


@pytest.mark.parametrize("kind", ["v", "av", "iv"])
def test_composite_enrolment_net_is_frozen(kind):
    torch.manual_seed(0)
    model = composite(kind)
    model.train()
    assert model.separation.training and not model.enrolment.training
    assert not any(m.training for m in model.enrolment.modules())
    assert not any(p.requires_grad for p in model.enrolment.parameters())
    before = {k: v.clone() for k, v in model.enrolment.state_dict().items()}
    sep_before = {k: v.clone() for k, v in model.separation.state_dict().items()}
    # the trainer's optimizer: trainable parameters only (speechkit/trainer/trainer.py)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len(list(model.separation.parameters()))
    opt = torch.optim.Adam(params, lr=1e-2)
    b = batch(kind)
    est = model(**b)
    assert est.shape == (2, 3200)
    est.abs().mean().backward()
    opt.step()
    assert all(p.grad is None for p in model.enrolment.parameters())
    after = model.enrolment.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics too
    assert any(not torch.equal(sep_before[k], v) for k, v in model.separation.state_dict().items())
    # vectors: the frozen net's output on the real clips, zeros on padded ones
    model.eval()
    with torch.no_grad():
        vectors = model.embed(
            b["enrol_type"],
            b["enrol_mask"],
            b["enrol_lip"],
            b.get("enrol_audio"),
            b.get("enrol_face"),
        )
        direct = model.enrolment(
            lip=b["enrol_lip"][0, :2],
            audio=b["enrol_audio"][0, :2] if kind == "av" else None,
            face=b["enrol_face"][0, :2] if kind == "iv" else None,
        )
    assert vectors.shape == (2, 3, 8) and not vectors[~b["enrol_mask"]].any()
    torch.testing.assert_close(vectors[0, :2], direct, rtol=1e-4, atol=1e-5)


def test_composite_input_errors():
    torch.manual_seed(0)
    model = composite("av").eval()
    b = batch("av")
    for drop, message in (("enrol_audio", "needs enrol_audio"), ("enrol_lip", "needs enrol_lip")):
        with pytest.raises(ValueError, match=message):
            model(**{k: v for k, v in b.items() if k != drop})
    with pytest.raises(ValueError, match=r"enrol_lip must start with \(B, N\) = \(2, 3\)"):
        model(**dict(b, enrol_lip=b["enrol_lip"][:, :2]))
    with pytest.raises(ValueError, match=r"enrol_mask must be \(2, 3\)"):
        model(**dict(b, enrol_mask=b["enrol_mask"][:, :2]))
    with pytest.raises(ConfigError, match="separation.emb_dim .8. must equal"):
        composite("v", enrolment=dict(LIP_NET, out_dim=4))


def _save(path: Path, model: torch.nn.Module, name: str, cfg: dict, task: str) -> Path:
    state = {
        "cfg": {"task": {"_name": task}, "model": {"_name": name, **cfg}},
        "model": model.state_dict(),
    }
    torch.save(state, path)
    return path


def test_enrolment_checkpoint_and_separation_init(tmp_path):
    torch.manual_seed(0)
    trained = net("v").eval()
    with torch.no_grad():  # a "trained" net: non-trivial BatchNorm statistics
        for m in trained.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    distill = "voicevector_enrolment_distillation"
    ckpt = _save(tmp_path / "v.pt", trained, "voicevector_embedding_v", LIP_NET, distill)
    ae = VoiceVectorAE(VoiceVectorConfig(**SEP))
    ae_ckpt = _save(tmp_path / "ae.pt", ae, "voicevector_ae", SEP, "target_speaker_separation")
    model = composite("v", enrolment_checkpoint=str(ckpt), separation_init=str(ae_ckpt)).eval()
    for k, v in trained.state_dict().items():
        assert torch.equal(model.enrolment.state_dict()[k], v), k
    for k, v in ae.state_dict().items():
        assert torch.equal(model.separation.state_dict()[k], v), k
    x = inputs(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed(torch.ones(2, 1, dtype=torch.long), None, x["lip"][:, None]),
            trained(x["lip"])[:, None],
        )
    # a composite checkpoint is an enrolment source too (its enrolment.* weights)
    comp_cfg = {"separation": SEP, "enrolment": LIP_NET}
    comp = _save(
        tmp_path / "vem.pt", model, "voicevector_vem", comp_cfg, "target_speaker_separation"
    )
    again = composite("v", enrolment_checkpoint=str(comp), separation_init=str(comp))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())

    # refused, in one line naming the file
    iv = _save(tmp_path / "iv.pt", net("iv"), "voicevector_embedding_iv", LIP_NET, distill)
    bigger = dict(LIP_NET, d_model=32)
    wide = _save(tmp_path / "wide.pt", net("v", d_model=32), "voicevector_embedding_v", bigger, "t")
    cases = [
        (dict(enrolment_checkpoint=str(iv)), "holds a 'voicevector_embedding_iv' model"),
        (dict(enrolment_checkpoint=str(wide)), "model.enrolment.d_model=16 (checkpoint: 32)"),
        (dict(enrolment_checkpoint=str(tmp_path / "no.pt")), "checkpoint not found"),
        (dict(separation_init=str(ckpt)), "holds a 'voicevector_embedding_v' model"),
    ]
    for over, message in cases:
        with pytest.raises(CheckpointError) as e:
            composite("v", **over)
        text = str(e.value)
        assert message in text and "\n" not in text, text
        assert str(next(iter(over.values()))) in text


# -- converter round trip ------------------------------------------------------------------------
def sb_ecapa() -> dict[str, torch.Tensor]:
    """A SpeechBrain ``ECAPA_TDNN`` state dict written by the real package (80 -> 32)."""
    return torch.load(FIXTURE, weights_only=True)


ECAPA_FIXTURE = dict(  # its architecture (tests/data/speechbrain_ecapa/manifest.json)
    proj_dim=80,
    out_dim=32,
    ecapa_channels=[64, 64, 64, 64, 192],
    ecapa_attention_channels=32,
    ecapa_res2net_scale=8,
    ecapa_se_channels=16,
)

_REFERENCE_NAMES = (  # speechkit prefix -> upstream EmbeddingV2 / AV2 / IV2 prefix
    ("video_adapter.conv.", "adaptive_layer.0.0."),
    ("video_adapter.norm.", "adaptive_layer.0.1."),
    ("face_adapter.conv.", "face_embedding_adaptive_layer.0.0."),
    ("face_adapter.norm.", "face_embedding_adaptive_layer.0.1."),
    ("face_type_embed.", "face_positional_embedding."),
    ("speaker_head.proj.", "linear_layers.0.0."),
    ("bottleneck_norm.", "norm_layers.0.0."),
    ("transformer.layers.", "transformer.transformer_encoder.layers."),
    ("head.", "transformer.decoder."),
)


def enrolment_reference_layout(model: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """An enrolment net under the upstream names (written independently of the converter); its
    ECAPA part is the SpeechBrain fixture, which the speechkit net must hold already."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("speaker_head.ecapa."):
            continue
        for ours, theirs in _REFERENCE_NAMES:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        out[key] = value.clone()
    out.update({"ECAPA." + k: v for k, v in sb_ecapa().items()})
    pe = model.pos_enc.pe[:, None, :].clone()
    if kind == "iv":
        out["transformer.pos_encoder.pe"] = pe
    else:  # both tables are registered upstream, the video one upsampled x2 (nearest)
        out["transformer.pos_encoder_aud.pe"] = pe
        out["transformer.pos_encoder_vid.pe"] = pe.repeat_interleave(2, dim=0)
    if kind == "av":  # EmbeddingAV2 builds a decoder it never runs
        out["decoder.0.0.weight"] = torch.randn(32, 16, 1)
        out["decoder.4.2.weight"] = torch.randn(1, 1, 8)
    return out


@pytest.mark.parametrize("kind", ["v", "av", "iv"])
def test_reference_composite_round_trip(kind, tmp_path, capsys):
    torch.manual_seed(0)
    enrol = dict(NETS[kind], **ECAPA_FIXTURE)
    source = composite(kind, enrolment=enrol, separation=dict(SEP, emb_dim=32)).eval()
    ecapa_state, _ = convert_speechbrain_ecapa(sb_ecapa())
    source.enrolment.speaker_head.ecapa.load_state_dict(ecapa_state)
    namespace = f"{kind}_speaker_embedding"
    ref = {"speaker_separation." + k: v for k, v in reference_layout(source.separation).items()}
    ref.update(
        {
            f"{namespace}.{k}": v
            for k, v in enrolment_reference_layout(source.enrolment, kind).items()
        }
    )
    torch.save(ref, tmp_path / f"{kind}em.pth")
    out = tmp_path / f"{kind}em.pt"
    argv = ["--input", str(tmp_path / f"{kind}em.pth"), "--output", str(out), "--heads", "2"]
    assert convert_voicevector.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"enrolment net: {namespace}.* -> enrolment.* (voicevector_embedding_{kind}" in printed
    assert f"to {COMPOSITE[kind]}: hidden=4 depth=3" in printed
    state = torch.load(out, weights_only=True)
    cfg = state["cfg"]["model"]
    assert cfg["_name"] == COMPOSITE[kind] and cfg["enrolment"]["proj_dim"] == 80
    converted = MODEL_REGISTRY.build(cfg)
    converted.load_state_dict(state["model"])
    converted.eval()
    for field in dataclasses.fields(source.cfg.enrolment):
        if field.name != "_name" and (kind == "iv" or field.name != "face_dim"):
            mine = getattr(source.cfg.enrolment, field.name)
            assert getattr(converted.cfg.enrolment, field.name) == mine, field.name
    b = batch(kind)
    with torch.no_grad():
        assert torch.equal(converted(**b), source(**b))
    # the strict map names a key it does not know
    bad = dict(ref, **{f"{namespace}.ECAPA.blocks.9.extra.weight": torch.zeros(1)})
    torch.save(bad, tmp_path / "bad.pth")
    argv = ["--input", str(tmp_path / "bad.pth"), "--output", str(tmp_path / "bad.pt")]
    assert convert_voicevector.main([*argv, "--heads", "2"]) == 2
    err = capsys.readouterr().err
    assert f"unmapped reference keys {namespace}.ECAPA.blocks.9.extra.weight" in err
    assert err.count("\n") == 1


def test_reference_file_as_separation_init(tmp_path):
    torch.manual_seed(0)
    ae = VoiceVectorAE(VoiceVectorConfig(**SEP))
    torch.save(
        {"state_dict": {"net." + k: v for k, v in reference_layout(ae).items()}},
        tmp_path / "ae.ckpt",
    )
    model = composite("v", separation_init=str(tmp_path / "ae.ckpt"))
    assert all(torch.equal(model.separation.state_dict()[k], v) for k, v in ae.state_dict().items())

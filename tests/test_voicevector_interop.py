"""VoiceVector reference checkpoints (``ae.ckpt`` Lightning file, raw ``.pth``, composite
``avem``-style file, the ``voicevectorav`` net) -> speechkit ``voicevector_ae`` /
``voicevector_av``: same outputs, strict key checks, and the converted file runs through
``speechkit-separate`` on a real mixture."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import convert_voicevector, separate
from speechkit.inference.separation import Separator, load_enrolment_npy
from speechkit.interop.voicevector import convert_voicevector_file, save_converted
from speechkit.models.voicevector import (
    VoiceVectorAE,
    VoiceVectorAV,
    VoiceVectorAVConfig,
    VoiceVectorConfig,
)
from speechkit.trainer.checkpoint import load_finetune_weights

TINY = dict(
    hidden=4, depth=3, growth=2, transformer_layers=2, heads=2, ffn_dim=12, max_len=400, emb_dim=8
)
TINY_AE = dict(TINY, enrol_hidden=6)
SPEECH = "speech/librispeech_test_other"


def reference_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """speechkit weights under the reference ``VoiceFormerAE`` / ``VoiceFormerAV`` names (written
    independently of the converter: decoder levels in the reference's front-inserted order, PE
    tables included)."""
    depth = model.cfg.depth
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"decoder\.(\d+)\.(.+)$", key)
        if m:
            key = f"decoder.{depth - 1 - int(m.group(1))}.{m.group(2)}"
        key = key.replace("input_conv.", "norm_layers.0.0.").replace(
            "input_norm.", "norm_layers.0.1."
        )
        key = key.replace("bottleneck_norm.", "norm_layers.0.0.")  # AV: bottleneck GroupNorm
        key = key.replace("enrol_adapter.conv1.", "adaptive_layer.0.0.")
        key = key.replace("enrol_adapter.norm.", "adaptive_layer.0.1.")
        key = key.replace("enrol_adapter.conv2.", "adaptive_layer.0.2.")
        key = key.replace("video_adapter.conv.", "adaptive_layer.0.0.")
        key = key.replace("video_adapter.norm.", "adaptive_layer.0.1.")
        key = key.replace("enrol_type_embed.", "positive_negative_embedding.")
        key = key.replace("transformer.layers.", "transformer.transformer_encoder.layers.")
        key = key.replace("head.", "transformer.decoder.")
        out[key] = value.clone()
    pe = model.pos_enc.pe[:, None, :].clone()  # (max_len, 1, d_model), persistent upstream
    if isinstance(model, VoiceVectorAV):
        out["transformer.pos_encoder_aud.pe"] = pe
        # PositionalEncoding2(resample=2): the table upsampled x2 along time, 2 max_len rows
        up = torch.nn.functional.interpolate(pe.permute(2, 1, 0), scale_factor=2, mode="nearest")
        out["transformer.pos_encoder_vid.pe"] = up.permute(2, 1, 0).contiguous()
    else:
        out["transformer.pos_encoder.pe"] = pe
    return out


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = VoiceVectorAE(VoiceVectorConfig(**TINY_AE)).eval()
    ref = reference_layout(model)
    # the layout matches the reference's: decoder.0 is the deepest level (d_model -> 2 d_model)
    d = model.d_model
    assert tuple(ref["decoder.0.0.weight"].shape) == (2 * d, d, 1)
    assert tuple(ref["decoder.2.2.weight"].shape) == (4, 1, 8)
    return model, ref


def outputs(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(2, 3000, generator=g)
    enrol = torch.randn(2, 3, 8, generator=g)
    kind = torch.tensor([[1, 0, 1], [1, 1, 0]])
    with torch.no_grad():
        return model(mix, enrol, kind)


def load_converted(path) -> VoiceVectorAE:
    state = torch.load(path, weights_only=True)
    assert state["cfg"]["task"]["_name"] == "target_speaker_separation"
    cfg = dict(state["cfg"]["model"])
    assert cfg.pop("_name") == "voicevector_ae"
    model = VoiceVectorAE(VoiceVectorConfig(**cfg)).eval()
    model.load_state_dict(state["model"])
    return model


def test_lightning_ckpt_converts_to_identical_outputs(source, tmp_path, capsys):
    model, ref = source
    ckpt = {
        "state_dict": {"net." + k: v for k, v in ref.items()},
        "epoch": 41,
        "global_step": 12345,
        "pytorch-lightning_version": "2.0.2",
        # hyper-parameters pickle objects outside the allow-list: read as inert placeholders
        "hyper_parameters": {"optimizer": functools.partial(torch.optim.Adam, lr=3e-4)},
    }
    torch.save(ckpt, tmp_path / "ae.ckpt")
    out = tmp_path / "ae.pt"
    argv = ["--input", str(tmp_path / "ae.ckpt"), "--output", str(out), "--heads", "2"]
    assert convert_voicevector.main(argv) == 0
    printed = capsys.readouterr().out
    assert "depth=3" in printed and "transformer_layers=2" in printed and "max_len=400" in printed
    converted = load_converted(out)
    for k in TINY_AE:
        assert getattr(converted.cfg, k) == TINY_AE[k], k
    assert torch.equal(outputs(converted), outputs(model))
    # fine-tuning path: load_finetune_weights accepts it for a voicevector_ae run
    fresh = VoiceVectorAE(VoiceVectorConfig(**TINY_AE))
    run_cfg = {"model": dict(torch.load(out, weights_only=True)["cfg"]["model"])}
    load_finetune_weights(out, fresh, torch.nn.Module(), run_cfg)
    assert torch.equal(outputs(fresh.eval()), outputs(model))
    # an existing output is not replaced without --overwrite
    assert convert_voicevector.main(argv) == 2
    assert "exists" in capsys.readouterr().err


def test_raw_pth_and_composite_files(source, tmp_path, capsys):
    model, ref = source
    torch.save(ref, tmp_path / "raw.pth")  # raw state dict, no net. prefix
    ckpt, report = convert_voicevector_file(tmp_path / "raw.pth", {"heads": 2})
    assert not report.enrolment and report.dropped == ["transformer.pos_encoder.pe"]
    save_converted(ckpt, tmp_path / "raw.pt")
    assert torch.equal(outputs(load_converted(tmp_path / "raw.pt")), outputs(model))

    composite = {"speaker_separation." + k: v for k, v in ref.items()}
    # a composite's separation net alone (Lightning prefix) converts to voicevector_ae
    torch.save({"state_dict": {"net." + k: v for k, v in composite.items()}}, tmp_path / "c.ckpt")
    ckpt, report = convert_voicevector_file(tmp_path / "c.ckpt", {"heads": 2})
    assert report.variant == "speaker_separation" and report.model == "voicevector_ae"
    save_converted(ckpt, tmp_path / "c.pt")
    assert torch.equal(outputs(load_converted(tmp_path / "c.pt")), outputs(model))
    # an incomplete enrolment net is refused with the missing key named (complete composites:
    # tests/test_voicevector_enrolment.py)
    composite["av_speaker_embedding.adaptive_layer.0.0.weight"] = torch.randn(16, 512, 1)
    composite["av_speaker_embedding.ECAPA.fc.conv.weight"] = torch.randn(192, 3072, 1)
    torch.save(composite, tmp_path / "avem3.pth")
    out = tmp_path / "avem.pt"
    argv = ["--input", str(tmp_path / "avem3.pth"), "--output", str(out), "--heads", "2"]
    assert convert_voicevector.main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "(av_speaker_embedding.*): missing key 'linear_layers.0.0.weight'" in err
    assert err.count("\n") == 1


def test_bad_keys_and_shapes_are_named(source, tmp_path, capsys):
    _, ref = source

    def convert(state, name):
        torch.save(state, tmp_path / name)
        out = tmp_path / (name + ".pt")
        code = convert_voicevector.main(["--input", str(tmp_path / name), "--output", str(out)])
        assert code == 2 and not out.exists()
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / name) in err
        return err

    err = convert(dict(ref, **{"refine.conv.weight": torch.zeros(3)}), "extra.pth")
    assert "unmapped reference keys refine.conv.weight" in err
    missing = {k: v for k, v in ref.items() if not k.startswith("transformer.decoder.")}
    err = convert(missing, "missing.pth")
    assert "speechkit keys not filled head.bias, head.weight" in err
    bad = dict(ref, **{"positive_negative_embedding.weight": torch.zeros(3, 16)})
    assert "shape mismatches positive_negative_embedding.weight (3, 16)" in convert(bad, "s.pth")
    composite = {"speaker_separation." + k: v for k, v in ref.items()}
    err = convert(dict(composite, **{"x.y": torch.zeros(1)}), "c.pth")
    assert "keys outside 'speaker_separation.*'" in err and "x.y" in err
    err = convert({"state_dict": {"net.foo": torch.zeros(1)}}, "foo.ckpt")
    assert "no encoder.0.0.weight" in err
    err = convert({"state_dict": {"net.encoder.0.0.weight": "not a tensor"}}, "str.ckpt")
    assert "not tensors" in err
    torch.save(ref, tmp_path / "ok.pth")
    argv = ["--input", str(tmp_path / "ok.pth"), "--output", str(tmp_path / "ok.pt")]
    assert convert_voicevector.main([*argv, "--heads", "3"]) == 2  # 16 not divisible by 3
    assert "inferred config" in capsys.readouterr().err
    (tmp_path / "text.pth").write_text("hello")
    out = tmp_path / "text.pt"
    assert (
        convert_voicevector.main(["--input", str(tmp_path / "text.pth"), "--output", str(out)]) == 2
    )
    assert "not a torch checkpoint" in capsys.readouterr().err


TINY_AV = dict({k: v for k, v in TINY.items() if k != "emb_dim"}, lip_dim=6)


def av_outputs(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(2, 3000, generator=g)
    with torch.no_grad():
        return model(mix, torch.randn(2, 5, 6, generator=g))


def test_reference_av_net_converts_to_identical_outputs(tmp_path, capsys):
    torch.manual_seed(0)
    av = VoiceVectorAV(VoiceVectorAVConfig(**TINY_AV)).eval()
    with torch.no_grad():  # non-trivial bottleneck GroupNorm affine, so a wrong map shows
        av.bottleneck_norm.weight.uniform_(0.5, 1.5)
        av.bottleneck_norm.bias.uniform_(-0.5, 0.5)
    ref = reference_layout(av)
    assert tuple(ref["norm_layers.0.0.weight"].shape) == (av.d_model,)
    assert tuple(ref["adaptive_layer.0.0.weight"].shape) == (av.d_model, 6, 1)
    assert len(ref["transformer.pos_encoder_vid.pe"]) == 2 * TINY["max_len"]
    assert not any(k.startswith(("positive_negative", "norm_layers.0.1")) for k in ref)
    torch.save({"state_dict": {"net." + k: v for k, v in ref.items()}}, tmp_path / "av.ckpt")
    out = tmp_path / "av.pt"
    argv = ["--input", str(tmp_path / "av.ckpt"), "--output", str(out), "--heads", "2"]
    assert convert_voicevector.main(argv) == 0
    printed = capsys.readouterr().out
    assert "VoiceVector av separation net -> voicevector_av" in printed
    assert "to voicevector_av: hidden=4 depth=3" in printed
    state = torch.load(out, weights_only=True)
    cfg = dict(state["cfg"]["model"])
    assert cfg.pop("_name") == "voicevector_av" and cfg["lip_dim"] == 6
    converted = VoiceVectorAV(VoiceVectorAVConfig(**cfg)).eval()
    converted.load_state_dict(state["model"])
    assert torch.equal(av_outputs(converted), av_outputs(av))
    # a video table that is not the x2 nearest-upsampled sinusoid (frame j at pe[2j]) is refused
    bad = dict(
        ref, **{"transformer.pos_encoder_vid.pe": ref["transformer.pos_encoder_aud.pe"][::2]}
    )
    torch.save(bad, tmp_path / "bad.pth")
    argv = ["--input", str(tmp_path / "bad.pth"), "--output", str(tmp_path / "bad.pt")]
    assert convert_voicevector.main(argv) == 2
    err = capsys.readouterr().err
    assert "transformer.pos_encoder_vid.pe is not the standard sinusoidal table upsampled x2" in err


def test_converted_checkpoint_runs_through_speechkit_separate(source, shared_data, tmp_path):
    model, ref = source
    torch.save({"state_dict": {"net." + k: v for k, v in ref.items()}}, tmp_path / "ae.ckpt")
    ckpt, _ = convert_voicevector_file(tmp_path / "ae.ckpt", {"heads": 2})
    save_converted(ckpt, tmp_path / "ae.pt")
    target, rate = sf.read(shared_data / SPEECH / "1688/1688-142285-0008.wav", dtype="float32")
    other, _ = sf.read(shared_data / SPEECH / "367/367-130732-0000.wav", dtype="float32")
    n = int(1.2 * rate)  # longer than one 0.5 s model chunk: exercises the chunking
    mix = target[:n] + 0.5 * other[:n]
    sf.write(tmp_path / "mix.wav", mix, rate)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pos.npy", rng.standard_normal((2, 8)).astype(np.float32))
    np.save(tmp_path / "neg.npy", rng.standard_normal(8).astype(np.float32))
    out = tmp_path / "est.wav"
    argv = ["--checkpoint", str(tmp_path / "ae.pt"), "--mixture", str(tmp_path / "mix.wav")]
    argv += ["--positive", str(tmp_path / "pos.npy"), "--negative", str(tmp_path / "neg.npy")]
    assert separate.main([*argv, "--out", str(out), "--device", "cpu", "--overlap", "0.1"]) == 0
    est, est_rate = sf.read(out, dtype="float32")
    assert est_rate == rate and est.shape == (n,) and np.isfinite(est).all()
    # the same estimate as the source model gives through the same Separator
    sep = Separator(model, device="cpu", overlap_seconds=0.1)
    pos = load_enrolment_npy(tmp_path / "pos.npy", 8)
    neg = load_enrolment_npy(tmp_path / "neg.npy", 8)
    expected, _ = sep.separate_file(tmp_path / "mix.wav", [pos], [neg])
    np.testing.assert_allclose(est, expected, rtol=0, atol=1e-6)
    assert np.abs(est).max() > 0

"""syncnet_trainer checkpoints (research/sv_syncnet_enh.md section 2.6) into speechkit."""

from __future__ import annotations

import pickle

import pytest
import torch

from speechkit.errors import CheckpointError
from speechkit.interop.syncnet import convert_syncnet_trainer
from speechkit.interop.voxceleb_trainer import save_converted
from speechkit.models.syncnet import SyncNetConfig, SyncNetFBank, audio_samples_for_frames
from speechkit.trainer.checkpoint import load_checkpoint_file


def reference_state(embed_dim: int = 64) -> dict[str, torch.Tensor]:
    """A state dict with syncnet_trainer's names: ``__S__`` model (random weights, perturbed BN
    statistics), its torchaudio buffers, ``__L__`` loss scales."""
    torch.manual_seed(0)
    net = SyncNetFBank(SyncNetConfig(embed_dim=embed_dim))
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            v = 1.0 + 0.1 * torch.rand_like(v)
        elif k.endswith("running_mean"):
            v = 0.1 * torch.randn_like(v)
        state["__S__." + k] = v.clone()
    state["__S__.torchfb.spectrogram.window"] = torch.hann_window(400)
    state["__S__.torchfb.mel_scale.fb"] = torch.rand(257, 40)
    state.update({f"__L__.{k}": torch.tensor(v) for k, v in (("wI", 9.0), ("bI", -4.0))})
    state.update({f"__L__.{k}": torch.tensor(v) for k, v in (("wC", 11.0), ("bC", -6.0))})
    return state


def test_reference_file_converts_and_runs(tmp_path):
    state = reference_state()
    path = tmp_path / "model000000500.model"
    torch.save({"module." + k: v for k, v in state.items()}, path)  # a DDP-saved file
    ckpt = convert_syncnet_trainer(path, temporal_stride=2, input_scale=32768.0)
    assert ckpt["cfg"]["model"]["embed_dim"] == 64 and ckpt["cfg"]["model"]["temporal_stride"] == 2
    assert ckpt["converted_from"]["dropped_keys"] == [
        "__S__.torchfb.mel_scale.fb",
        "__S__.torchfb.spectrogram.window",
    ]
    for key, value in state.items():
        if key.startswith("__S__.") and not key.startswith("__S__.torchfb."):
            assert torch.equal(ckpt["model"][key[6:]], value), key
    assert {k: float(v) for k, v in ckpt["criterion"].items()} == {
        "wI": 9.0,
        "bI": -4.0,
        "wC": 11.0,
        "bC": -6.0,
    }

    out = tmp_path / "syncnet.pt"
    save_converted(ckpt, out)
    loaded = load_checkpoint_file(out)
    model = SyncNetFBank(
        SyncNetConfig(**{k: v for k, v in loaded["cfg"]["model"].items() if k != "_name"})
    )
    model.load_state_dict(loaded["model"])
    model.eval()
    assert model.input_scale == 32768.0
    # the recorded scale matters only where the log-mel's +1e-6 floor does: at speech level the
    # instance norm removes it, for very quiet input it does not
    unscaled = SyncNetFBank(SyncNetConfig(embed_dim=64)).eval()
    unscaled.load_state_dict(loaded["model"])
    with torch.no_grad():
        for level, close in ((0.1, True), (1e-6, False)):
            wav = level * torch.randn(2, audio_samples_for_frames(8))
            a, b = model.log_mel(wav), unscaled.log_mel(wav)
            assert torch.allclose(a, b, atol=1e-3) == close, level
        emb = model.embed_identity(0.1 * torch.randn(2, audio_samples_for_frames(8)))
    assert emb.shape == (2, 64) and torch.isfinite(emb).all()


def test_script_converts_and_refuses_to_overwrite(tmp_path, capsys):
    from speechkit.cli import convert_syncnet_trainer as script

    src, out = tmp_path / "model.model", tmp_path / "out.pt"
    torch.save(reference_state(), src)
    assert script.main(["--input", str(src), "--output", str(out)]) == 0
    assert "embed_dim 64, temporal_stride 2, input_scale 32768" in capsys.readouterr().out
    assert load_checkpoint_file(out)["cfg"]["criterion"]["_name"] == "syncnet"
    assert script.main(["--input", str(src), "--output", str(out)]) == 2
    assert "exists (pass --overwrite)" in capsys.readouterr().err
    assert (
        script.main(["--input", str(tmp_path / "nope.model"), "--output", str(tmp_path / "x.pt")])
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_bad_files_are_refused(tmp_path):
    state = reference_state()
    missing = {k: v for k, v in state.items() if not k.startswith("__S__.netfcface.3")}
    path = tmp_path / "missing.model"
    torch.save(missing, path)
    with pytest.raises(CheckpointError, match=r"missing __S__\.netfcface\.3\.(weight|bias)"):
        convert_syncnet_trainer(path)

    v2 = {k[6:]: v for k, v in state.items() if k.startswith("__S__.net")}  # unprefixed
    path = tmp_path / "syncnet_v2.model"
    torch.save(v2, path)
    with pytest.raises(CheckpointError, match="syncnet_v2"):
        convert_syncnet_trainer(path)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.model"
    with open(path, "wb") as f:
        pickle.dump({"__S__.x": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load"):
        convert_syncnet_trainer(path)

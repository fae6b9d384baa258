"""SpeechBrain ECAPA-TDNN weights converted to ``ecapa_tdnn_speechbrain`` give SpeechBrain's vectors.

The fixture ``tests/data/speechbrain_ecapa/`` was written by the real ``speechbrain`` package
(``tests/make_speechbrain_ecapa_fixture.py``, its manifest names the version): a small
``ECAPA_TDNN`` with random weights and non-trivial BatchNorm statistics, and the embeddings that
SpeechBrain's ``EncoderClassifier.encode_batch`` (Fbank -> sentence mean norm -> model) gives for
three real utterances of ``../shared/data``. These tests convert the state dict and embed the same
files through speechkit's own loading and embedding code, without importing speechbrain.

Opt-in: with ``SPEECHKIT_SPEECHBRAIN_PYTHON`` set to an interpreter that has ``speechbrain``
(it needs torchaudio, which must not go into speechkit's environment), a fresh fixture at the
``spkrec-ecapa-voxceleb`` size (channels 1024/3072, 192-d) is generated and compared too::

    python3 -m venv /work/side/sb && /work/side/sb/bin/pip install speechbrain  # + torch, torchaudio
    SPEECHKIT_SPEECHBRAIN_PYTHON=/work/side/sb/bin/python pytest tests/test_speechbrain_ecapa.py

speechbrain imports torchaudio at start-up but its Fbank and ECAPA_TDNN use none of it. A
torchaudio built for another torch (e.g. 2.11 with torch 2.13) fails to load its compiled
extension; moving ``torchaudio/lib/*.so`` out of that side environment lets it import without
the extension, which is enough here. The opt-in run takes about 30 s on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.cli.convert_speechbrain_ecapa import main as convert_main
from speechkit.data.audio import read_audio
from speechkit.errors import CheckpointError, ConfigError
from speechkit.inference.speaker_embedding import SpeakerEmbedding, extract_embeddings
from speechkit.interop.speechbrain_ecapa import (
    convert_speechbrain_ecapa,
    convert_speechbrain_ecapa_file,
    load_speechbrain_state_dict,
    save_converted,
)
from speechkit.models.ecapa_tdnn_speechbrain import (
    ECAPATDNNSpeechBrain,
    ECAPATDNNSpeechBrainConfig,
    SpeechBrainECAPAHead,
)
from speechkit.modules.speechbrain_fbank import SpeechBrainFbank

FIXTURE = Path(__file__).with_name("data") / "speechbrain_ecapa"
GENERATOR = Path(__file__).with_name("make_speechbrain_ecapa_fixture.py")
TOLERANCE = 1e-4  # max abs difference of the embeddings


def _manifest(folder: Path, data: Path) -> list[Path]:
    """The fixture's utterances as paths under ``data``, their sha256 checked."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    paths = []
    for item in manifest["utterances"]:
        path = data / item["path"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == item["sha256"], f"{path} changed since the fixture was written"
        paths.append(path)
    return paths


def _assert_same_embeddings(folder: Path, data: Path, tmp_path: Path) -> None:
    """Convert ``folder``'s checkpoint, save, reload and embed as dump_embeddings does."""
    paths = _manifest(folder, data)
    expected = np.load(folder / "embeddings.npy")
    out = tmp_path / "converted.pt"
    save_converted(convert_speechbrain_ecapa_file(folder / "embedding_model.ckpt"), out)
    model = SpeakerEmbedding.from_checkpoint(out).model
    assert isinstance(model, ECAPATDNNSpeechBrain)
    got = extract_embeddings(
        model, [str(p) for p in paths], torch.device("cpu"), eval_frames=0, normalize=False
    )
    for i, path in enumerate(paths):
        emb = got[str(path)].numpy()
        assert emb.shape == (1, expected.shape[1])
        diff = float(np.abs(emb[0] - expected[i]).max())
        assert diff < TOLERANCE, f"{path.name}: max abs difference {diff:.2e}"
    # the embeddings are distinct and not trivially small: the comparison means something
    assert float(np.abs(expected).max()) > 0.5
    assert float(np.abs(expected[0] - expected[1]).max()) > 0.1


def test_converted_checkpoint_gives_speechbrain_embeddings(shared_data, tmp_path):
    _assert_same_embeddings(FIXTURE, shared_data, tmp_path)


def test_frontend_matches_speechbrain_fbank_and_sentence_norm(shared_data):
    path = _manifest(FIXTURE, shared_data)[0]
    expected = np.load(FIXTURE / "features.npy")  # (T, 80)
    wav = torch.from_numpy(read_audio(str(path), 16000))[None]
    feats = SpeechBrainFbank(n_mels=80)(wav)[0].T.numpy()
    assert feats.shape == expected.shape == (1 + wav.shape[1] // 160, 80)
    assert float(np.abs(feats - expected).max()) < 1e-4
    assert np.allclose(feats.mean(axis=0), 0.0, atol=1e-4)  # sentence mean normalisation


def test_config_is_read_from_the_weights():
    _, cfg = convert_speechbrain_ecapa(
        load_speechbrain_state_dict(FIXTURE / "embedding_model.ckpt")
    )
    assert cfg["_name"] == "ecapa_tdnn_speechbrain"
    assert cfg["channels"] == [64, 64, 64, 64, 192]
    assert cfg["kernel_sizes"] == [5, 3, 3, 3, 1]
    assert (cfg["attention_channels"], cfg["se_channels"], cfg["res2net_scale"]) == (32, 16, 8)
    assert (cfg["n_mels"], cfg["embed_dim"], cfg["global_context"]) == (80, 32, True)


def test_unknown_and_missing_keys_are_named():
    state = load_speechbrain_state_dict(FIXTURE / "embedding_model.ckpt")
    extra = dict(state)
    extra["blocks.1.se_block.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 unmapped source key\(s\): blocks\.1\.se_block"):
        convert_speechbrain_ecapa(extra, where="ecapa.ckpt")
    short = {k: v for k, v in state.items() if k != "asp.conv.conv.bias"}
    with pytest.raises(
        CheckpointError, match=r"ecapa\.ckpt: .*missing speechkit key\(s\): pooling\.proj\.bias"
    ):
        convert_speechbrain_ecapa(short, where="ecapa.ckpt")
    with pytest.raises(CheckpointError, match=r"'mfa\.conv\.conv\.weight' is absent"):
        convert_speechbrain_ecapa({k: v for k, v in state.items() if not k.startswith("mfa.")})
    with pytest.raises(CheckpointError, match="not tensors"):
        convert_speechbrain_ecapa({**state, "epoch": 3})


def test_dilations_are_needed_beyond_five_layers():
    state = load_speechbrain_state_dict(FIXTURE / "embedding_model.ckpt")
    four = {k: v for k, v in state.items() if not k.startswith("blocks.3.")}
    with pytest.raises(CheckpointError, match="give 4 of them"):
        convert_speechbrain_ecapa(four)
    # with dilations the architecture is read, and the mfa width no longer fits: shape error
    with pytest.raises(CheckpointError, match=r"shape mismatch.*mfa\.conv\.conv\.weight"):
        convert_speechbrain_ecapa(four, dilations=[1, 2, 3, 1])


def test_cli_writes_a_loadable_checkpoint_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "sb.pt"
    src = str(FIXTURE / "embedding_model.ckpt")
    assert convert_main(["--input", src, "--output", str(out)]) == 0
    assert "all keys mapped" in capsys.readouterr().out
    model = SpeakerEmbedding.from_checkpoint(out).model
    assert model.cfg.channels == [64, 64, 64, 64, 192]
    assert convert_main(["--input", src, "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    torch.save({"layer.weight": torch.zeros(2)}, bad)
    assert convert_main(["--input", str(bad), "--output", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "convert_speechbrain_ecapa: error:" in err and "blocks.0.conv.conv.weight" in err
    assert not (tmp_path / "x.pt").exists()


def test_model_rejects_inconsistent_config():
    with pytest.raises(ConfigError, match="kernel sizes must be odd"):
        ECAPATDNNSpeechBrain(ECAPATDNNSpeechBrainConfig(kernel_sizes=[5, 3, 4, 3, 1]))
    with pytest.raises(ConfigError, match="same length"):
        ECAPATDNNSpeechBrain(ECAPATDNNSpeechBrainConfig(dilations=[1, 2, 3]))
    with pytest.raises(ConfigError, match="not divisible by res2net_scale"):
        ECAPATDNNSpeechBrain(ECAPATDNNSpeechBrainConfig(channels=[60, 60, 60, 60, 180]))


def test_model_trains_and_head_takes_other_features():
    torch.manual_seed(0)
    small = dict(channels=[32, 32, 32, 96], kernel_sizes=[5, 3, 3, 1], dilations=[1, 2, 3, 1])
    cfg = ECAPATDNNSpeechBrainConfig(n_mels=40, embed_dim=16, se_channels=8, **small)
    model = ECAPATDNNSpeechBrain(cfg).train()
    wav = 0.1 * torch.randn(3, 8000)
    out = model(wav)
    assert out.shape == (3, 16)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(k.startswith("frontend.") for k in model.state_dict())  # no front-end state
    # the bare network on other frame features (VoiceVector's enrolment heads take 384-d)
    head = SpeechBrainECAPAHead(384, embed_dim=192, se_channels=8, **small).eval()
    assert head(torch.randn(2, 384, 50)).shape == (2, 192)
    with pytest.raises(ValueError, match=r"expected a \(B, L\) waveform"):
        model(wav[0])


SPEECHBRAIN_PYTHON = os.environ.get("SPEECHKIT_SPEECHBRAIN_PYTHON")


@pytest.mark.skipif(
    not SPEECHBRAIN_PYTHON,
    reason="opt-in: set SPEECHKIT_SPEECHBRAIN_PYTHON to an interpreter with speechbrain "
    "(it needs torchaudio, which cannot go into speechkit's environment)",
)
def test_speechbrain_default_size_fresh_fixture(shared_data, tmp_path):
    folder = tmp_path / "fixture"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(
        [SPEECHBRAIN_PYTHON, str(GENERATOR), "--out", str(folder), "--data", str(shared_data)]
        + ["--size", "default", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_speechbrain_state_dict(folder / "embedding_model.ckpt")
    _, cfg = convert_speechbrain_ecapa(state)
    assert cfg["channels"] == [1024, 1024, 1024, 1024, 3072] and cfg["embed_dim"] == 192
    _assert_same_embeddings(folder, shared_data, tmp_path)

"""``speechkit-extract`` and ``speechkit-hubert-labels dump`` on every layer of a full (tiny,
random) ContentVec checkpoint: the speaker-conditioned layers take ``--spk-emb FILE.npy`` or a
speaker looked up in a ``spk2info.dict``, and refuse to run without one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import hubert_labels
from speechkit.cli.extract import main as extract_main
from speechkit.data.manifest import write_manifest
from speechkit.interop.fairseq import save_fairseq_checkpoint
from tests.test_contentvec_template import _spk2info, contentvec

LAYERS = 5  # 3 ordinary + 2 speaker-conditioned (tests.test_contentvec_template.CV)
SPEAKERS = ("spk_a", "spk_b")
PATHS = ["sub/spk_a/c1/u1.wav", "sub/spk_b/c1/u2.wav", "sub/spk_a/c2/u3.wav"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A fairseq ContentVec checkpoint, a 3-utterance manifest (speaker = path component 1),
    a spk2info of its two speakers and one speaker embedding as .npy."""
    d = tmp_path_factory.mktemp("cv_cli")
    model = contentvec()
    ckpt = save_fairseq_checkpoint(model, None, d / "cv.pt")
    rng = np.random.default_rng(0)
    wavs = []
    for rel, n in zip(PATHS, (6000, 4500, 7200)):
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(d / rel, wav, 16000, subtype="FLOAT")
        wavs.append(torch.from_numpy(wav))
    write_manifest(d / "dev.tsv", d, PATHS, [len(w) for w in wavs])
    speakers = {s: rng.standard_normal(6).astype(np.float32) for s in SPEAKERS}
    _spk2info(d / "spk2info.dict", speakers)
    np.save(d / "emb.npy", speakers["spk_b"])
    return {"dir": d, "ckpt": ckpt, "model": model, "wavs": wavs, "speakers": speakers}


def _direct(setup, wav: torch.Tensor, layer: int, spk: str) -> np.ndarray:
    emb = torch.from_numpy(setup["speakers"][spk])[None]
    with torch.no_grad():
        x, _ = setup["model"].extract_features(wav[None], output_layer=layer, spk_emb=emb)
    return x[0].numpy()


def _read(out) -> list[np.ndarray]:
    feats = np.load(out / "dev_0_1.npy")
    lens = [int(n) for n in (out / "dev_0_1.len").read_text().split()]
    return np.split(feats, np.cumsum(lens)[:-1])


def _extract(setup, out: str, *extra: str) -> int:
    d = setup["dir"]
    argv = ["--checkpoint", str(setup["ckpt"]), "--manifest", str(d / "dev.tsv")]
    return extract_main([*argv, "--out", str(d / out), "--batch-size", "2", *extra])


def test_every_layer_with_one_embedding_file(setup):
    d = setup["dir"]
    for layer in range(1, LAYERS + 1):
        assert (
            _extract(setup, f"emb{layer}", "--layer", str(layer), "--spk-emb", str(d / "emb.npy"))
            == 0
        )
        for wav, got in zip(setup["wavs"], _read(d / f"emb{layer}")):
            np.testing.assert_allclose(
                got, _direct(setup, wav, layer, "spk_b"), rtol=1e-5, atol=1e-5
            )


def test_speakers_from_spk2info_per_utterance_or_named(setup):
    d = setup["dir"]
    table = ["--spk2info", str(d / "spk2info.dict")]
    assert _extract(setup, "own", "--layer", "5", *table) == 0
    own = [p.split("/")[1] for p in PATHS]  # spk_a, spk_b, spk_a
    for wav, spk, got in zip(setup["wavs"], own, _read(d / "own")):
        np.testing.assert_allclose(got, _direct(setup, wav, 5, spk), rtol=1e-5, atol=1e-5)
    # one named speaker for all; the old key=value form takes the same options
    legacy = [f"checkpoint={setup['ckpt']}", f"manifest={d / 'dev.tsv'}", "layer=4"]
    legacy += [f"out={d / 'named'}", f"spk2info={d / 'spk2info.dict'}", "speaker=spk_a"]
    assert extract_main(legacy) == 0
    for wav, got in zip(setup["wavs"], _read(d / "named")):
        np.testing.assert_allclose(got, _direct(setup, wav, 4, "spk_a"), rtol=1e-5, atol=1e-5)


def test_conditioned_layer_errors_name_the_fix(setup, capsys):
    d = setup["dir"]
    capsys.readouterr()
    assert _extract(setup, "none", "--layer", "4") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechkit.extract: error: layer 4 of ") and len(err.splitlines()) == 1
    assert "is speaker-conditioned" in err and "--spk-emb FILE.npy" in err and "--spk2info" in err
    # the ordinary layers need no speaker
    assert _extract(setup, "plain", "--layer", "3") == 0
    # a wrongly sized embedding, an unknown speaker, a speaker of no manifest entry
    np.save(d / "bad.npy", np.zeros(5, np.float32))
    assert _extract(setup, "x", "--layer", "4", "--spk-emb", str(d / "bad.npy")) == 2
    assert "bad.npy: an array of shape (5,); expected one (6,) vector" in capsys.readouterr().err
    table = ["--spk2info", str(d / "spk2info.dict")]
    assert _extract(setup, "x", "--layer", "4", *table, "--speaker", "nobody") == 2
    assert "speaker 'nobody' not found" in capsys.readouterr().err
    assert _extract(setup, "x", "--layer", "4", *table, "--speaker-path-index", "2") == 2
    err = capsys.readouterr().err
    assert f"dev.tsv:2 ({PATHS[0]}): speaker 'c1' (path component 2) is not in" in err
    assert _extract(setup, "x", "--layer", "4", "--speaker", "spk_a") == 2
    assert "give --spk2info" in capsys.readouterr().err
    assert not (d / "x").exists() and not (d / "none").exists()


def test_hubert_labels_dump_of_a_conditioned_layer(setup):
    d = setup["dir"]
    argv = ["dump", "--manifest", str(d / "dev.tsv"), "--feat-dir", str(d / "hl"), "--layer", "5"]
    argv += ["--feature", "hubert", "--checkpoint", str(setup["ckpt"])]
    assert hubert_labels.main(argv) == 2  # no speaker embedding
    assert hubert_labels.main([*argv, "--spk-emb", str(d / "emb.npy")]) == 0
    info = json.loads((d / "hl" / "dev_0_1.json").read_text())
    assert info["layer"] == 5 and info["spk_emb"] == str(d / "emb.npy")
    for wav, got in zip(setup["wavs"], _read(d / "hl")):
        np.testing.assert_allclose(got, _direct(setup, wav, 5, "spk_b"), rtol=1e-5, atol=1e-5)

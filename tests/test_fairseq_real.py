"""fairseq itself loads the checkpoints ``save_fairseq_checkpoint`` writes, with the same features.

Opt-in: fairseq 0.12 cannot be installed in speechkit's environment (Python 3.11, recent torch),
so this test runs fairseq in a side interpreter, ``$SPEECHKIT_FAIRSEQ_PYTHON`` (else the current
one), and is skipped, saying so, when ``import fairseq`` fails there. A side environment that
works on Python 3.11 (outside the repository)::

    python3 -m venv /work/side/fairseq
    /work/side/fairseq/bin/pip install "setuptools<70" wheel cython "numpy<2" torch==2.13.0
    /work/side/fairseq/bin/pip install --no-build-isolation fairseq-fixed==0.12.3.1
    SPEECHKIT_FAIRSEQ_PYTHON=/work/side/fairseq/bin/python pytest tests/test_fairseq_real.py

ContentVec: fairseq has neither the reference's ``contentvec_pretraining`` task nor its
``contentvec`` model (auspicious3000/contentvec copies its files over fairseq); with
``SPEECHKIT_CONTENTVEC_REFERENCE=FILE.py``, a file that registers them (the reference's
``contentvec.py``, ``wav2vec2_1.py``, ``cond_layer_norm.py`` and task, kept outside the
repository), the reference's own model is loaded from a speechkit file and compared too.

The CI-side check that every written config has fairseq's groups and keys is
``tests/test_fairseq_checkpoint.py::test_written_config_has_every_fairseq_group_and_key``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.interop import fairseq as fairseq_io
from speechkit.models.hubert import (
    HubertConfig,
    HubertModel,
    hubert_base_config,
    hubert_large_config,
)

FAIRSEQ_PYTHON = os.environ.get("SPEECHKIT_FAIRSEQ_PYTHON") or sys.executable
CHECK_SCRIPT = Path(__file__).with_name("fairseq_real_check.py")
TOLERANCE = 1e-5


def _fairseq_version() -> str | None:
    try:
        proc = subprocess.run(
            [FAIRSEQ_PYTHON, "-c", "import fairseq; print(fairseq.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 else None


FAIRSEQ_VERSION = _fairseq_version()
pytestmark = pytest.mark.skipif(
    FAIRSEQ_VERSION is None,
    reason=f"fairseq is not importable by {FAIRSEQ_PYTHON} (set SPEECHKIT_FAIRSEQ_PYTHON to an "
    "interpreter with fairseq 0.12; it cannot be installed in speechkit's environment)",
)

DEMO = dict(  # the hubert_demo preset's size
    conv_feature_layers="[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2",
    encoder_layers=2,
    encoder_embed_dim=96,
    encoder_ffn_embed_dim=192,
    encoder_attention_heads=4,
    final_dim=32,
    conv_pos=16,
    conv_pos_groups=4,
    num_classes=[36],
    label_rate=100.0,
)


def _models() -> dict[str, tuple[HubertModel, list[int | None]]]:
    """Randomly initialised Base, Large (2 of its 24 layers, full width) and demo-size HuBERT,
    with the layers compared (None: the final output)."""
    torch.manual_seed(0)
    large = hubert_large_config(encoder_layers=2)
    return {
        "base": (HubertModel(hubert_base_config()).eval(), [None, 6]),
        "large": (HubertModel(large).eval(), [None, 1]),
        "demo": (HubertModel(HubertConfig(**DEMO)).eval(), [None, 1]),
    }


def _run_fairseq(
    tmp_path: Path, items: list[dict], wav: np.ndarray, imports: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    np.save(tmp_path / "wav.npy", wav)
    spec = {"input": str(tmp_path / "wav.npy"), "data_dir": str(tmp_path), "checkpoints": items}
    spec["imports"] = list(imports)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "fairseq_features.npz"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(
        [FAIRSEQ_PYTHON, str(CHECK_SCRIPT), str(tmp_path / "spec.json"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_fairseq_loads_written_hubert_checkpoints_with_identical_features(tmp_path):
    models = _models()
    wav = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32) * 0.1
    items = []
    for name, (model, layers) in models.items():
        path = fairseq_io.save_fairseq_checkpoint(model, None, tmp_path / f"{name}.pt")
        normalize = model.cfg.extractor_mode == "layer_norm"
        items.append({"name": name, "path": str(path), "layers": layers, "normalize": normalize})
    got = _run_fairseq(tmp_path, items, wav)

    errors = {k: str(v) for k, v in got.items() if k.endswith("/error")}
    assert not errors, errors
    source = torch.from_numpy(wav)
    for name, (model, layers) in models.items():
        for layer in layers:
            with torch.no_grad():
                ours, _ = model.extract_features(source, output_layer=layer)
            for route in ("ensemble", "w2v_path"):
                theirs = torch.from_numpy(got[f"{name}/{route}/{layer}"])
                assert theirs.shape == ours.shape, (name, route, layer)
                diff = (theirs - ours).abs().max().item()
                assert diff <= TOLERANCE, (name, route, layer, diff)


def test_fairseq_refuses_stub_groups(tmp_path, monkeypatch):
    """The check can fail: with the general groups written as empty stubs (as before), fairseq
    0.12 refuses the file on both routes with the error users reported."""
    stubs = {g: (None if v is None else {"_name": None}) for g, v in
             fairseq_io.FAIRSEQ_DEFAULT_GROUPS.items()}  # fmt: skip
    monkeypatch.setattr(fairseq_io, "FAIRSEQ_DEFAULT_GROUPS", stubs)
    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**DEMO)).eval()
    path = fairseq_io.save_fairseq_checkpoint(model, None, tmp_path / "stub.pt")
    wav = np.zeros((1, 8000), np.float32)
    got = _run_fairseq(tmp_path, [{"name": "stub", "path": str(path), "layers": [None]}], wav)
    for route in ("ensemble", "w2v_path"):
        assert "print_alignment" in str(got[f"stub/{route}/error"]), route


def test_fairseq_reads_written_contentvec_checkpoint(tmp_path):
    """fairseq 0.12 reads a ContentVec file (its loader's config upgrade reads the general
    groups). Building the model needs the reference's ``contentvec`` task and model, which are
    not in fairseq but in the reference's fork (auspicious3000/contentvec, copied over fairseq):
    not checked here."""
    from speechkit.models.contentvec import ContentVecConfig, ContentVecModel

    torch.manual_seed(0)
    model = ContentVecModel(ContentVecConfig(**DEMO, encoder_layers_1=1, spk_dim=8)).eval()
    path = fairseq_io.save_fairseq_checkpoint(model, None, tmp_path / "contentvec.pt")
    item = {"name": "cv", "path": str(path), "layers": [], "routes": ["read"]}
    got = _run_fairseq(tmp_path, [item], np.zeros((1, 400), np.float32))
    assert "cv/read/error" not in got, str(got.get("cv/read/error"))
    assert str(got["cv/read/model_name"]) == "contentvec"


def test_stored_defaults_equal_the_installed_fairseq():
    """``speechkit/interop/fairseq_defaults.py`` is what tests/make_fairseq_defaults.py
    reads from the fairseq installed in the side interpreter (rerun it if this fails)."""
    from speechkit.interop.fairseq_defaults import FAIRSEQ_DEFAULT_GROUPS

    script = Path(__file__).resolve().with_name("make_fairseq_defaults.py")
    code = (
        "import json, runpy, sys; "
        f"ns = runpy.run_path({str(script)!r}); "
        "sys.stdout.write(json.dumps(ns['fairseq_groups']()))"
    )
    proc = subprocess.run([FAIRSEQ_PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == FAIRSEQ_DEFAULT_GROUPS


CONTENTVEC_REFERENCE = os.environ.get("SPEECHKIT_CONTENTVEC_REFERENCE")


@pytest.mark.skipif(
    not CONTENTVEC_REFERENCE,
    reason="SPEECHKIT_CONTENTVEC_REFERENCE is not set: a .py file that registers the ContentVec "
    "reference's contentvec_pretraining task and contentvec model in fairseq (the reference "
    "copies its files over fairseq; fairseq itself has neither)",
)
def test_contentvec_reference_loads_written_checkpoint_with_identical_features(tmp_path):
    """The ContentVec reference's own model, built by fairseq's loader from a speechkit file
    (weights loaded strictly), gives speechkit's features (joint conditional-norm statistics,
    as the reference; its CondLayerNorm has a fixed 256-d speaker input)."""
    from speechkit.models.contentvec import ContentVecConfig, ContentVecModel

    torch.manual_seed(0)
    cfg = ContentVecConfig(**DEMO, encoder_layers_1=2, spk_dim=256, cond_layer_norm_joint=True)
    model = ContentVecModel(cfg).eval()
    with torch.no_grad():  # conditional norms away from their identity initialisation
        for name, param in model.named_parameters():
            if "_ln." in name:
                param.add_(0.02 * torch.randn_like(param))
    path = fairseq_io.save_fairseq_checkpoint(model, None, tmp_path / "contentvec.pt")
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((2, 16000)) * 0.1).astype(np.float32)
    spk = rng.standard_normal((2, 256)).astype(np.float32)
    np.save(tmp_path / "spk.npy", spk)
    layers = [None, 2, 3]  # the last plain layer and the conditioned ones
    item = {"name": "cv", "path": str(path), "layers": layers, "routes": ["ensemble"]}
    item["spk"] = str(tmp_path / "spk.npy")
    got = _run_fairseq(tmp_path, [item], wav, imports=(CONTENTVEC_REFERENCE,))
    assert "cv/ensemble/error" not in got, str(got.get("cv/ensemble/error"))
    for layer in layers:
        with torch.no_grad():
            ours, _ = model.extract_features(
                torch.from_numpy(wav), output_layer=layer, spk_emb=torch.from_numpy(spk)
            )
        theirs = torch.from_numpy(got[f"cv/ensemble/{layer}"])
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max().item() <= TOLERANCE, layer

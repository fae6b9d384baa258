"""Load speechkit-written checkpoints with fairseq itself and dump their features.

Run by ``tests/test_fairseq_real.py`` with an interpreter that has fairseq 0.12 (fairseq cannot
be installed in speechkit's environment); never imported by speechkit or collected by pytest::

    PYTHON_WITH_FAIRSEQ tests/fairseq_real_check.py SPEC.json OUT.npz

``SPEC.json``: ``{"input": "wav.npy", "data_dir": DIR, "checkpoints": [{"name": ..., "path":
..., "layers": [null, 1, ...], "routes": [...], "normalize": false}, ...]}``, ``wav.npy`` a
(B, S) float32 batch. For every checkpoint and model route it writes ``OUT.npz`` entries
``<name>/<route>/<layer>`` with fairseq's ``extract_features(wav, mask=False,
output_layer=layer)`` output, (B, T, C) float32; a route that fails writes
``<name>/<route>/error`` with the exception's last line instead, so the test can show what
fairseq said. Routes:

* ``ensemble``: ``checkpoint_utils.load_model_ensemble_and_task([path])`` (inference);
* ``w2v_path``: ``fairseq.models.hubert.hubert_asr.HubertEncoder`` with ``w2v_path=path``
  (the fine-tuning route; ``HubertAsrConfig`` at its defaults, dropouts off in eval mode);
* ``read``: only ``checkpoint_utils.load_checkpoint_to_cpu(path)`` (fairseq's reader with its
  config upgrade, which reads the general groups); writes ``<name>/read/model_name``.

ContentVec: fairseq has no ``contentvec`` task or model; the reference (auspicious3000/
contentvec) copies its own files over fairseq. ``"imports": [FILE.py, ...]`` in the spec are
executed first (e.g. a file that registers the reference's ``contentvec_pretraining`` task and
``contentvec`` model), and an item with ``"spk": "spk.npy"`` ((B, D) float32 speaker
embeddings) is run as the reference's ``extract_features(wav, spk_emb, ...)``.

fairseq's ``checkpoint_utils`` calls ``torch.load`` without ``weights_only``; torch >= 2.6
defaults it to True, which refuses fairseq's pickled ``Dictionary``, so it is set to False here
(for the files this test has just written).
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback

import numpy as np
import torch

_torch_load = torch.load


def _load_full(*args, **kwargs):
    kwargs.setdefault("weights_only", False)
    return _torch_load(*args, **kwargs)


torch.load = _load_full


def _features(
    model, wav: torch.Tensor, layers: list[int | None], spk: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    model.eval()
    extra = () if spk is None else (spk,)
    out = {}
    with torch.no_grad():
        for layer in layers:
            x, _ = model.extract_features(
                wav, *extra, padding_mask=None, mask=False, output_layer=layer
            )
            out[str(layer)] = x.float().numpy()
    return out


def ensemble_route(path: str):
    from fairseq import checkpoint_utils

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([path])
    return models[0]


class _FinetuneTask:
    """The fine-tuning task's side of ``HubertEncoder``: no output dictionary (no CTC head)."""

    target_dictionary = None

    def state_dict(self):
        return {}


def w2v_path_route(path: str, normalize: bool, data_dir: str):
    from fairseq.models.hubert.hubert_asr import HubertAsrConfig, HubertEncoder

    cfg = HubertAsrConfig(w2v_path=path, normalize=normalize, data=data_dir)
    return HubertEncoder(cfg, _FinetuneTask()).w2v_model


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    wav = torch.from_numpy(np.load(spec["input"]))
    for path in spec.get("imports", []):
        runpy.run_path(path)
    results: dict[str, np.ndarray] = {}
    for item in spec["checkpoints"]:
        builders = {
            "ensemble": lambda it=item: ensemble_route(it["path"]),
            "w2v_path": lambda it=item: w2v_path_route(
                it["path"], bool(it.get("normalize", False)), spec["data_dir"]
            ),
        }
        for route in item.get("routes", ["ensemble", "w2v_path"]):
            key = f"{item['name']}/{route}"
            try:
                if route == "read":
                    from fairseq import checkpoint_utils

                    state = checkpoint_utils.load_checkpoint_to_cpu(item["path"])
                    results[f"{key}/model_name"] = np.array(str(state["cfg"].model._name))
                    continue
                spk = torch.from_numpy(np.load(item["spk"])) if item.get("spk") else None
                feats = _features(builders[route](), wav, item["layers"], spk)
            except Exception as e:  # report what fairseq said, per route
                last = traceback.format_exception_only(type(e), e)[-1].strip()
                results[f"{key}/error"] = np.array(last)
                continue
            for layer, x in feats.items():
                results[f"{key}/{layer}"] = x
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

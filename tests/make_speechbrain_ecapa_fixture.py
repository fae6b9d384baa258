#!/usr/bin/env python
"""Write a SpeechBrain ECAPA-TDNN reference fixture: random weights, real speech, embeddings.

Run with an interpreter that has the ``speechbrain`` package (it needs torchaudio, which must not
go into speechkit's environment)::

    python tests/make_speechbrain_ecapa_fixture.py --out tests/data/speechbrain_ecapa \\
        --data ../shared/data [--size small|default] [--seed 0]

It builds ``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`` with random weights (``--size
default`` is the ``spkrec-ecapa-voxceleb`` size: channels [1024, 1024, 1024, 1024, 3072],
192-d; ``small`` is a ~0.5 MB model with other attention/SE widths so that a converter has to
read them from the weights), gives every BatchNorm non-trivial running statistics (those of the
speech below, then perturbed) and affine parameters, saves the state dict as SpeechBrain's
``embedding_model.ckpt`` is saved (a plain ``torch.save`` of ``state_dict()``), and embeds
:data:`UTTERANCES` through SpeechBrain's own ``EncoderClassifier.encode_batch`` with the
``spkrec-ecapa-voxceleb`` modules: ``Fbank(n_mels=80)`` -> ``InputNormalization(norm_type=
"sentence", std_norm=False)`` -> ``embedding_model`` (eval mode, one utterance per call).

Writes into ``--out``: ``embedding_model.ckpt``, ``embeddings.npy`` (N, D) float32 (row i =
``UTTERANCES[i]``), ``features.npy`` (T, 80) float32, the mean-normalised Fbank of
``UTTERANCES[0]``, and ``manifest.json`` (versions, model arguments, files with their sha256).

Exit status: 0 ok, 2 bad input (a message on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch

UTTERANCES = (
    "speech/librispeech_test_other/367/367-130732-0000.wav",
    "speech/voxceleb1_mini/id10001/1zcIwhmdeo4/00001.wav",
    "speech/librispeech_train_clean_100_cohort/1034-121119-0000.wav",
)
"""Files embedded, relative to the shared data folder (real speech, 16 kHz mono)."""

SIZES = {
    "small": dict(
        channels=[64, 64, 64, 64, 192],
        lin_neurons=32,
        attention_channels=32,
        se_channels=16,
        res2net_scale=8,
    ),
    "default": dict(  # spkrec-ecapa-voxceleb's hyperparams.yaml
        channels=[1024, 1024, 1024, 1024, 3072],
        lin_neurons=192,
        attention_channels=128,
        se_channels=128,
        res2net_scale=8,
    ),
}
N_MELS = 80


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write the fixture into")
    p.add_argument("--data", required=True, help="the shared data folder (holds speech/)")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def read_wav(path: Path) -> np.ndarray:
    """(L,) float32 in [-1, 1] of a 16 kHz mono file; SystemExit(2) naming the file otherwise."""
    if not path.is_file():
        raise SystemExit(f"make_speechbrain_ecapa_fixture: error: {path}: not found")
    wav, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    if rate != 16000 or wav.ndim != 1:
        raise SystemExit(
            f"make_speechbrain_ecapa_fixture: error: {path}: {rate} Hz, shape {wav.shape}; "
            "expected 16 kHz mono"
        )
    return wav


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.BatchNorm1d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]


@torch.no_grad()
def randomise_batchnorms(model, features: list[torch.Tensor], gen: torch.Generator) -> None:
    """Running stats of every BatchNorm from ``features`` ((1, T, 80) each; one train-mode batch
    of their common first frames), then perturbed, and random affine parameters: none of them is at its init value."""
    bns = _batchnorms(model)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.weight.copy_(0.6 + 0.8 * torch.rand(bn.weight.shape, generator=gen))
        bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
    model.train()
    frames = min(f.shape[1] for f in features)  # one batch (asp_bn needs B > 1 in train mode)
    model(torch.cat([f[:, :frames] for f in features]))
    for bn in bns:
        bn.running_mean.add_(0.05 * torch.randn(bn.running_mean.shape, generator=gen))
        bn.running_var.mul_(0.8 + 0.4 * torch.rand(bn.running_var.shape, generator=gen))
        bn.momentum = 0.1
    model.eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import speechbrain
    from speechbrain.inference.classifiers import EncoderClassifier
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    data, out = Path(args.data), Path(args.out)
    wavs = [read_wav(data / rel) for rel in UTTERANCES]
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    kwargs = dict(input_size=N_MELS, **SIZES[args.size])
    model = ECAPA_TDNN(**kwargs)

    compute_features = Fbank(n_mels=N_MELS)
    mean_var_norm = InputNormalization(norm_type="sentence", std_norm=False)
    with torch.no_grad():
        feats = [
            mean_var_norm(compute_features(torch.from_numpy(w)[None]), torch.ones(1)) for w in wavs
        ]
    randomise_batchnorms(model, feats, gen)

    encoder = EncoderClassifier(
        modules={
            "compute_features": compute_features,
            "mean_var_norm": mean_var_norm,
            "embedding_model": model,
        },
        hparams={"device": "cpu"},
    )
    encoder.eval()
    with torch.no_grad():
        emb = [encoder.encode_batch(torch.from_numpy(w)[None]).reshape(-1) for w in wavs]
    embeddings = torch.stack(emb).numpy().astype(np.float32)
    if not np.isfinite(embeddings).all():
        raise SystemExit("make_speechbrain_ecapa_fixture: error: non-finite embeddings")

    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "embedding_model.ckpt")
    np.save(out / "embeddings.npy", embeddings)
    np.save(out / "features.npy", feats[0][0].numpy().astype(np.float32))
    manifest = {
        "speechbrain_version": speechbrain.__version__,
        "torch_version": torch.__version__,
        "size": args.size,
        "seed": args.seed,
        "model_kwargs": kwargs,
        "pipeline": "EncoderClassifier.encode_batch: Fbank(n_mels=80) -> InputNormalization("
        "norm_type='sentence', std_norm=False) -> ECAPA_TDNN (eval)",
        "utterances": [
            {"path": rel, "sha256": hashlib.sha256((data / rel).read_bytes()).hexdigest()}
            for rel in UTTERANCES
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(UTTERANCES)} embeddings of {embeddings.shape[1]} dims")
    return 0


if __name__ == "__main__":
    sys.exit(main())

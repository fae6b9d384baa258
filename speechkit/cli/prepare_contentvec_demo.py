"""Prepare the HuBERT / ContentVec README demo: manifests, MFCC k-means labels and spk2info.

    speechkit-prepare-contentvec-demo [--out demo_data/contentvec] [--shared PATH] \\
        [--n-clusters 32] [--speaker-checkpoint SPEAKER_MODEL.pt] [--max-utterances N]

Audio: ``../shared/data/lists/pretrain_manifest.tsv`` (318 real utterances: LibriSpeech
test-other, a 211-speaker train-clean-100 cohort, VoxCeleb1) when the shared test data is
there, else the utterances of ``demo_data/train_list.txt`` written by
``scripts/prepare_demo_data.py`` (run it first). Every ``--valid-every``-th entry goes to
``valid.tsv``, the rest to ``train.tsv`` (roots are absolute paths; nothing is copied).

Then, into ``--out``:

* ``labels/``: ``scripts/hubert_labels.py all`` with 39-dim MFCC features, ``--n-clusters``
  k-means units learned on train (fast k-means settings), ``{train,valid}.km`` at 100 Hz and
  ``dict.km.txt``;
* ``spk2info.dict``: ``scripts/make_spk2info.py`` over both manifests (speaker = path component
  2: ``speech/<corpus>/<speaker>/...``; the cohort's one-file speakers are keyed by file name),
  with the speakers' sex from the corpora's ``speakers.tsv`` / ``SPEAKERS.TXT`` (pitch ranges of
  the "Change gender" perturbation).

Speaker embeddings: with ``--speaker-checkpoint`` (a speechkit speaker model, e.g. the
``sv_demo`` run's ``runs/sv_demo/checkpoint_best.pt``) they are that model's. Without it a
RANDOMLY INITIALISED ResNetSE34L (``speaker_model_random.pt``) is used so that the demo runs
in a few minutes: its embeddings are deterministic functions of the audio but carry no trained
speaker information, so the demo exercises ContentVec's machinery (conditional layer norm,
two views, contrastive loss), not its speaker disentanglement.

Exit status: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechkit.atomic import atomic_write_text
from speechkit.cli import hubert_labels, make_spk2info
from speechkit.cli.paths import DEMO_DATA, find_shared_data
from speechkit.data.manifest import read_manifest, write_manifest
from speechkit.data.spk2info import speaker_from_path
from speechkit.errors import DataError, SpeechkitError

SHARED_MANIFEST = "lists/pretrain_manifest.tsv"
SPEAKER_PATH_INDEX = 2
FAST_KMEANS = ["--n-init", "2", "--max-iter", "20", "--km-batch-size", "4096"]


def find_shared(explicit: str | None) -> Path | None:
    """The shared test-data folder (``--shared``, ``$SPEECHKIT_SHARED_DATA``, ../shared/data).

    Raises:
        DataError: the folder named by ``--shared`` lacks the pretraining manifest.
    """
    found = find_shared_data(SHARED_MANIFEST, explicit)
    if found is None and explicit:
        raise DataError(f"--shared {explicit}: {SHARED_MANIFEST} not found there")
    return found


def source_entries(shared: Path | None, demo_data: Path) -> tuple[Path, list[str], list[int]]:
    """(audio root, relative paths, sizes in samples) of the demo's utterances.

    Raises:
        DataError: neither the shared manifest nor ``demo_data/train_list.txt`` exists.
    """
    if shared is not None:
        m = read_manifest(shared / SHARED_MANIFEST, root_override=shared)
        return shared, list(m.paths), [int(n) for n in m.sizes]
    train_list = demo_data / "train_list.txt"
    if not train_list.is_file():
        raise DataError(
            f"{train_list} not found and no shared data: run scripts/prepare_demo_data.py first"
        )
    root = (demo_data / "data").resolve()
    paths, sizes = [], []
    for number, line in enumerate(train_list.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{train_list}:{number}: expected 'speaker path', got {line!r}")
        paths.append(fields[1])
        sizes.append(int(sf.info(str(root / fields[1])).frames))
    return root, paths, sizes


def speaker_sex(root: Path, paths: list[str]) -> dict[str, str]:
    """``{speaker key: "M" | "F"}`` from ``speakers.tsv`` files (shared data) or LibriSpeech's
    ``SPEAKERS.TXT``; a key ``<spk>-<chapter>-<utt>.wav`` (one-file speakers) uses ``<spk>``."""
    sex: dict[str, str] = {}
    for table in root.glob("speech/*/speakers.tsv"):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) >= 2 and fields[1] in ("M", "F"):
                sex[fields[0]] = fields[1]
    for table in root.glob("*/SPEAKERS.TXT"):
        for line in table.read_text(errors="replace").splitlines():
            fields = [f.strip() for f in line.split("|")]
            if not line.startswith(";") and len(fields) >= 2 and fields[1] in ("M", "F"):
                sex[fields[0]] = fields[1]
    out = {}
    for p in paths:
        key = speaker_from_path(p, SPEAKER_PATH_INDEX)
        spk = key if key in sex else key.split("-")[0]
        if spk in sex:
            out[key] = sex[spk]
    return out


def random_speaker_model(path: Path, embed_dim: int, seed: int) -> Path:
    """Write a randomly initialised ResNetSE34L speaker-model checkpoint (see the docstring)."""
    from speechkit import components
    from speechkit.registry import MODEL_REGISTRY
    from speechkit.trainer.checkpoint import atomic_torch_save

    components.import_all()
    torch.manual_seed(seed)
    cfg = {"_name": "resnet_se34l", "n_mels": 40, "encoder_type": "SAP", "embed_dim": embed_dim}
    model = MODEL_REGISTRY.build(cfg)
    atomic_torch_save(
        {"cfg": {"model": cfg}, "model": model.state_dict(), "note": "random init, untrained"},
        path,
    )
    return path


def prepare(args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = find_shared(args.shared)
    root, paths, sizes = source_entries(shared, Path(args.demo_data).resolve())
    if args.max_utterances and args.max_utterances < len(paths):
        picks = np.linspace(0, len(paths) - 1, args.max_utterances).round().astype(int)
        paths, sizes = [paths[i] for i in picks], [sizes[i] for i in picks]
    is_valid = np.arange(len(paths)) % args.valid_every == args.valid_every // 2
    splits = {}
    for split, take in (("train", ~is_valid), ("valid", is_valid)):
        idx = np.flatnonzero(take)
        write_manifest(
            out / f"{split}.tsv", str(root), [paths[i] for i in idx], [sizes[i] for i in idx]
        )
        splits[split] = int(len(idx))
    t0 = time.perf_counter()
    labels = out / "labels"
    argv = ["all", "--manifest", str(out / "train.tsv"), "--valid-manifest", str(out / "valid.tsv")]
    argv += ["--feature", "mfcc", "--n-clusters", str(args.n_clusters), "--out", str(labels)]
    argv += [*FAST_KMEANS, "--seed", str(args.seed)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if hubert_labels.main(argv) != 0:
        raise SpeechkitError("the label pipeline failed (see above)")
    t_labels = time.perf_counter() - t0

    t0 = time.perf_counter()
    checkpoint = args.speaker_checkpoint
    if checkpoint is None:
        checkpoint = random_speaker_model(
            out / "speaker_model_random.pt", args.speaker_embed_dim, args.seed
        )
    sex = speaker_sex(root, paths)
    sex_file = out / "speaker_sex.txt"
    atomic_write_text(sex_file, "".join(f"{k} {v}\n" for k, v in sorted(sex.items())))
    argv = ["--manifest", str(out / "train.tsv"), "--valid-manifest", str(out / "valid.tsv")]
    argv += ["--checkpoint", str(checkpoint), "--out", str(out / "spk2info.dict")]
    argv += ["--speaker-path-index", str(SPEAKER_PATH_INDEX), "--speaker-sex", str(sex_file)]
    argv += ["--utterances-per-speaker", "5", "--max-seconds", str(args.max_seconds)]
    argv += ["--device", "cpu"]
    if make_spk2info.main(argv) != 0:
        raise SpeechkitError("make_spk2info failed (see above)")
    info = {
        "source": str(shared / SHARED_MANIFEST) if shared else str(root),
        "audio_root": str(root),
        "utterances": splits,
        "n_clusters": args.n_clusters,
        "label_rate": 100,
        "speaker_checkpoint": str(checkpoint),
        "speaker_model_trained": args.speaker_checkpoint is not None,
        "speaker_path_index": SPEAKER_PATH_INDEX,
        "seconds": {"labels": round(t_labels, 1), "spk2info": round(time.perf_counter() - t0, 1)},
    }
    atomic_write_text(out / "info.json", json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEMO_DATA / "contentvec"))
    p.add_argument("--shared", help="shared test-data folder (default ../shared/data)")
    p.add_argument("--demo-data", default=str(DEMO_DATA), help="prepare_demo_data output")
    p.add_argument("--n-clusters", type=int, default=32)
    p.add_argument("--valid-every", type=int, default=10, help="every N-th utterance -> valid")
    p.add_argument("--max-utterances", type=int, help="use N utterances spread over the list")
    p.add_argument("--speaker-checkpoint", help="trained speechkit speaker model (else random)")
    p.add_argument("--speaker-embed-dim", type=int, default=64, help="random model's size")
    p.add_argument("--max-seconds", type=float, default=4.0, help="audio per spk2info utterance")
    p.add_argument("--threads", type=int, default=1, help="k-means threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.valid_every < 2 or args.n_clusters < 2:
        print(
            "prepare_contentvec_demo: error: need --valid-every >= 2, --n-clusters >= 2",
            file=sys.stderr,
        )
        return 2
    try:
        info = prepare(args)
    except SpeechkitError as e:
        print(f"prepare_contentvec_demo: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    if not info["speaker_model_trained"]:
        print(
            "note: spk2info embeddings come from an UNTRAINED speaker model (no speaker "
            "information); pass --speaker-checkpoint for real ones",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

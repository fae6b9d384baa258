"""HuBERT k-means labels: dump features, learn k-means, write frame labels (fairseq simple_kmeans).

    # everything for a manifest in one command (k-means learned on train, labels for both)
    speechkit-hubert-labels all --manifest train.tsv [--valid-manifest valid.tsv] \\
        --feature mfcc --n-clusters 100 --out labels/
    speechkit-hubert-labels all --manifest train.tsv --feature hubert \\
        --checkpoint it1/checkpoint_best.pt --layer 6 --n-clusters 500 --out labels_it2/

    # or step by step, sharded as fairseq (run one dump per rank, e.g. as a slurm array)
    speechkit-hubert-labels dump --manifest train.tsv --feature mfcc \\
        --nshard 4 --rank 0 --feat-dir feats/
    speechkit-hubert-labels learn --feat-dir feats/ --split train --nshard 4 \\
        --km km.npy --n-clusters 100 [--percent 0.1] [--seed 0]
    speechkit-hubert-labels label --feat-dir feats/ --split train --nshard 4 \\
        --km km.npy --lab-dir labels/ [--rank R]

Steps (fairseq ``examples/hubert/simple_kmeans``: ``dump_mfcc_feature.py``,
``dump_hubert_feature.py``, ``learn_kmeans.py``, ``dump_km_label.py``):

* ``dump``: 39-dim MFCC + deltas + delta-deltas at 100 Hz (iteration 1, ``--feature mfcc``) or
  one layer of a HuBERT / ContentVec checkpoint at 50 Hz (iteration 2, ``--feature hubert``),
  written as ``{split}_{rank}_{nshard}.npy`` (frames concatenated) + ``.len`` (frames per
  utterance) + ``.json`` (what the features are). Shard r of n covers manifest entries
  ``[round(N r / n), round(N (r + 1) / n))``.
* ``learn``: scikit-learn ``MiniBatchKMeans`` with the reference's settings (k-means++,
  max_iter 100, batch 10000, tol 0, max_no_improvement 100, n_init 20, reassignment_ratio 0,
  init_size None); ``--percent p`` trains on a random ``ceil(p * n)`` utterances of each shard
  (p < 0: all). The seed drives one ``numpy.random.RandomState`` used for the sampling and then
  handed to scikit-learn, which reproduces the reference's ``np.random.seed(seed)`` draws.
  The result is saved as the CENTROIDS ``km.npy`` (K, D) float32 plus ``km.json`` metadata,
  not as a joblib pickle: loading a pickle executes code, so a shared k-means file would be a
  way to run arbitrary code on every machine that reads it; ``.npy`` is read with
  ``allow_pickle=False``.
* ``label``: nearest centroid, ``argmin_k ||x||^2 - 2 x.c_k + ||c_k||^2`` in torch (chunked;
  rows whose two best distances are within float32 rounding are re-decided in float64, so the
  result is the exact argmin). Writes ``{split}.km`` (all shards, one line of space-separated
  cluster ids per manifest line; ``--rank R`` writes ``{split}_{R}_{nshard}.km`` only) and
  ``dict.km.txt`` (``"<k> 1"`` for k = 0 .. K-1).

Utterances shorter than one frame (400 samples) give an empty label line, so the ``.km`` file
always has one line per manifest entry (fairseq's "number of labels does not match" error
otherwise). Label rate for the model config: 100 Hz for MFCC labels, 50 Hz for HuBERT features.

Exit status: 0 ok, 2 bad input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechkit.atomic import atomic_save_npy, atomic_write_text
from speechkit.cli.extract import add_speaker_args, speakers_of
from speechkit.data.manifest import read_manifest
from speechkit.errors import ConfigError, DataError, SpeechkitError
from speechkit.inference.feature_dump import dump_features, shard_range
from speechkit.inference.speaker_conditioning import SpeakerConditioning
from speechkit.modules.mfcc import mfcc_delta_features

logger = logging.getLogger("hubert_labels")

MFCC_RATE = 16000
KMEANS_DEFAULTS = {
    "init": "k-means++",
    "max_iter": 100,
    "batch_size": 10000,
    "tol": 0.0,
    "max_no_improvement": 100,
    "n_init": 20,
    "reassignment_ratio": 0.0,
    "init_size": None,
    "compute_labels": False,
}
"""fairseq ``learn_kmeans.py``'s MiniBatchKMeans settings."""


# ----------------------------------------------------------------------------------------------
# dump
class Featurizer:
    """A feature type for ``dump``: ``mfcc`` (39-dim, 100 Hz) or ``hubert`` (one layer, 50 Hz).

    Build it once and reuse it for every shard and split (the checkpoint is loaded once).

    Args:
        feature: ``"mfcc"`` or ``"hubert"``.
        checkpoint, layer: the HuBERT / ContentVec checkpoint and 1-based layer (``hubert``).
        device, max_chunk: see ``HubertFeatureExtractor``.
        speakers: the speaker embeddings of ContentVec's speaker-conditioned layers
            (``SpeakerConditioning``; needed for those layers only).

    Raises:
        ConfigError: unknown feature, ``hubert`` without checkpoint / layer, layer out of range,
            a speaker-conditioned layer without ``speakers``.
        CheckpointError: unreadable checkpoint. DataError: unreadable speaker embedding/table.
    """

    def __init__(
        self,
        feature: str = "mfcc",
        checkpoint: str | None = None,
        layer: int | None = None,
        device: str = "cpu",
        max_chunk: int = 1_600_000,
        speakers: SpeakerConditioning | None = None,
    ):
        self.feature = feature
        self.speakers = speakers or SpeakerConditioning()
        if feature == "mfcc":
            if self.speakers.given:
                raise ConfigError("--spk-emb / --spk2info apply to --feature hubert only")
            self.info: dict[str, Any] = {"feature": "mfcc", "dim": 39, "frame_rate": 100.0}
            self.sample_rate = MFCC_RATE
            self.extractor = None
        elif feature == "hubert":
            if checkpoint is None or layer is None:
                raise ConfigError("--feature hubert needs --checkpoint and --layer")
            from speechkit.inference.hubert_features import HubertFeatureExtractor

            self.speakers.validate()
            ex = HubertFeatureExtractor.from_checkpoint(
                checkpoint, device=device, max_chunk=max_chunk, spk2info=self.speakers.spk2info
            )
            self.speakers.bind(ex, layer)
            self.extractor, self.layer, self.sample_rate = ex, int(layer), ex.sample_rate
            self.info = {
                "feature": "hubert",
                "checkpoint": str(checkpoint),
                "layer": int(layer),
                "dim": ex.embed_dim,
                "frame_rate": ex.frame_rate,
                "normalize": ex.normalize,
                "max_chunk": max_chunk,
                **self.speakers.describe(),
            }
        else:
            raise ConfigError(f"--feature must be 'mfcc' or 'hubert', got {feature!r}")

    def check_manifest(self, manifest, start: int, end: int) -> None:
        """Every entry ``[start, end)`` has a speaker embedding when one is needed (DataError
        naming the manifest line otherwise)."""
        if self.extractor is not None:
            self.speakers.check_manifest(manifest, start, end, self.extractor)

    def __call__(self, wavs: list[np.ndarray], paths: list[str]) -> list[torch.Tensor]:
        """(L_i,) float32 waveforms at ``sample_rate`` and their manifest paths -> (T_i, dim)
        features."""
        if self.extractor is None:
            return [mfcc_delta_features(w, MFCC_RATE) for w in wavs]
        return self.extractor.features_batch(wavs, self.layer, self.speakers.spk_emb(paths))


def dump(
    manifest_path: str | Path,
    feat_dir: str | Path,
    featurizer: Featurizer,
    nshard: int = 1,
    rank: int = 0,
    split: str | None = None,
    root: str | None = None,
    batch_size: int = 8,
) -> Path:
    """Dump one shard's features (``.npy``, ``.len``, ``.json``); returns the ``.npy`` path.

    Raises:
        ConfigError: bad shard. DataError: unreadable manifest or audio.
    """
    manifest = read_manifest(manifest_path, root_override=root)
    split = split or Path(manifest_path).stem
    start, end = shard_range(len(manifest), nshard, rank)
    featurizer.check_manifest(manifest, start, end)
    files = dump_features(
        manifest,
        featurizer,
        feat_dir,
        split,
        sample_rate=featurizer.sample_rate,
        nshard=nshard,
        rank=rank,
        batch_size=batch_size,
        desc=f"dump {featurizer.feature} {split} {rank}/{nshard}",
    )
    info = dict(featurizer.info, manifest=str(manifest_path), split=split)
    info.update(first=start, count=end - start)
    atomic_write_text(Path(feat_dir) / f"{split}_{rank}_{nshard}.json", json.dumps(info, indent=1))
    return files[0]


# ----------------------------------------------------------------------------------------------
# features on disk
def load_shard(feat_dir: str | Path, split: str, rank: int, nshard: int):
    """Memory-map shard features: returns ((N, D) float32 array, (U,) int64 frame counts).

    Raises:
        DataError: missing files, or ``.len`` counts that do not sum to the ``.npy`` rows.
    """
    base = Path(feat_dir) / f"{split}_{rank}_{nshard}"
    npy, lens = base.with_suffix(".npy"), base.with_suffix(".len")
    for p in (npy, lens):
        if not p.is_file():
            raise DataError(f"{p}: feature shard not found (run the dump step first)")
    feats = np.load(npy, mmap_mode="r", allow_pickle=False)
    try:
        lengths = np.array([int(x) for x in lens.read_text().split()], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{lens}: expected one integer frame count per line ({e})") from None
    if feats.ndim != 2 or int(lengths.sum()) != feats.shape[0]:
        raise DataError(
            f"{npy}: shape {feats.shape} does not match {lens} (sum of counts "
            f"{int(lengths.sum())}); expected (sum of counts, D)"
        )
    return feats, lengths


def load_training_features(
    feat_dir: str | Path, split: str, nshard: int, percent: float, rng: np.random.RandomState
) -> np.ndarray:
    """Concatenate the shards' features; with ``0 <= percent`` keep ``ceil(percent * U)``
    random utterances per shard (fairseq ``learn_kmeans.py``). Returns (N, D) float32."""
    parts = []
    for rank in range(nshard):
        feats, lengths = load_shard(feat_dir, split, rank, nshard)
        if percent < 0:
            parts.append(np.asarray(feats, dtype=np.float32))
            continue
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        n = int(math.ceil(len(lengths) * percent))
        chosen = rng.choice(len(lengths), n, replace=False)
        parts += [np.asarray(feats[offsets[i] : offsets[i + 1]], np.float32) for i in chosen]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------------------------
# k-means
class KMeansLabeler:
    """Nearest-centroid assignment with torch, exact to the float64 argmin.

    Distances ``||x||^2 - 2 x C^T + ||c||^2`` are computed in float32 on ``device`` in chunks of
    ``chunk_size`` rows (the reference's formula). Rows whose best and second-best distances are
    closer than a float32 rounding bound are recomputed in float64 on the CPU; ties go to the
    lowest cluster id (as ``numpy.argmin``).

    Args:
        centroids: (K, D) array.
        device: torch device for the float32 pass.
        chunk_size: rows per matmul.
    """

    def __init__(self, centroids: np.ndarray, device: str = "cpu", chunk_size: int = 65536):
        c = np.asarray(centroids)
        if c.ndim != 2 or c.shape[0] < 1:
            raise ConfigError(f"centroids must be (K, D) with K >= 1, got shape {c.shape}")
        self.device = torch.device(device)
        self.c64 = torch.from_numpy(c.astype(np.float64))
        self.c = self.c64.float().to(self.device)
        self.cc = self.c.square().sum(1)
        self.c_norm_max = float(self.c64.norm(dim=1).max())
        self.chunk_size = chunk_size
        dim = c.shape[1]
        self.rel_tol = 16.0 * math.sqrt(dim) * float(torch.finfo(torch.float32).eps)

    @property
    def n_clusters(self) -> int:
        return self.c.shape[0]

    def __call__(self, x: np.ndarray | torch.Tensor, return_distance: bool = False):
        """x: (N, D) -> (N,) int64 cluster ids (and (N,) float32 squared distances)."""
        n = x.shape[0]
        if x.ndim != 2 or (n and x.shape[1] != self.c.shape[1]):
            raise DataError(
                f"features of shape {tuple(x.shape)} for {tuple(self.c.shape)} centroids"
            )
        labels = np.empty(n, dtype=np.int64)
        dists = np.empty(n, dtype=np.float32)
        for s in range(0, n, self.chunk_size):
            chunk = x[s : s + self.chunk_size]
            if not torch.is_tensor(chunk):  # copy: memory-mapped shards are read-only
                chunk = torch.from_numpy(np.array(chunk, dtype=np.float32))
            xb = chunk.float().to(self.device)
            xx = xb.square().sum(1, keepdim=True)
            d = xx - 2.0 * (xb @ self.c.t()) + self.cc
            if self.n_clusters == 1:
                idx, best = torch.zeros(len(xb), dtype=torch.long), d[:, 0]
            else:
                top = d.topk(2, dim=1, largest=False)
                idx, best = top.indices[:, 0].clone(), top.values[:, 0]
                scale = (xx.squeeze(1).sqrt() + self.c_norm_max).square()
                unsure = (top.values[:, 1] - top.values[:, 0]) <= self.rel_tol * scale
                if bool(unsure.any()):
                    rows = xb[unsure].cpu().double()
                    exact = (rows[:, None, :] - self.c64[None]).square().sum(-1)
                    idx[unsure] = exact.argmin(1).to(idx.device)
            labels[s : s + len(xb)] = idx.cpu().numpy()
            dists[s : s + len(xb)] = best.clamp_min(0).cpu().numpy()
        return (labels, dists) if return_distance else labels


def learn(
    feat_dir: str | Path,
    split: str,
    nshard: int,
    km_path: str | Path,
    n_clusters: int,
    percent: float = -1.0,
    seed: int = 0,
    verbose: bool = False,
    threads: int | None = None,
    **kmeans_overrides: Any,
) -> np.ndarray:
    """Learn k-means on dumped features and save ``km.npy`` (K, D) + ``km.json``.

    Args:
        feat_dir, split, nshard: the dumped shards.
        km_path: output centroids (``.npy``; the metadata goes next to it as ``.json``).
        n_clusters: K.
        percent: utterance fraction per shard (< 0: all).
        seed: seeds the sampling and scikit-learn.
        verbose: scikit-learn's progress output.
        threads: OpenMP / BLAS threads for scikit-learn (None: its default, all cores). On a
            shared, busy machine 1 is often much faster: idle-spinning OpenMP threads stall
            every mini-batch step.
        kmeans_overrides: MiniBatchKMeans settings to change (``n_init``, ``max_iter``,
            ``batch_size``, ...), for quick runs; defaults are ``KMEANS_DEFAULTS``.

    Returns:
        The (K, D) float32 centroids.

    Raises:
        ConfigError: fewer frames than clusters, unknown k-means setting.
        DataError: missing or inconsistent shards.
    """
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    unknown = set(kmeans_overrides) - set(KMEANS_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown MiniBatchKMeans settings {sorted(unknown)}")
    settings = {**KMEANS_DEFAULTS, **kmeans_overrides}
    rng = np.random.RandomState(seed)
    feats = load_training_features(feat_dir, split, nshard, percent, rng)
    if feats.shape[0] < n_clusters:
        raise ConfigError(
            f"{feat_dir}/{split}: {feats.shape[0]} frames for {n_clusters} clusters; need at "
            "least as many frames as clusters (raise --percent or use more data)"
        )
    logger.info("k-means: %d frames of dim %d, K=%d", feats.shape[0], feats.shape[1], n_clusters)
    t0 = time.time()
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=rng, verbose=int(verbose), **settings)
    with threadpool_limits(limits=threads):
        km.fit(feats)
    centroids = km.cluster_centers_.astype(np.float32)
    _, dist = KMeansLabeler(centroids)(feats, return_distance=True)
    inertia = float(dist.astype(np.float64).mean())
    logger.info("k-means done in %.1f s, inertia per frame %.4f", time.time() - t0, inertia)
    km_path = Path(km_path)
    atomic_save_npy(km_path, centroids)
    info_file = Path(feat_dir) / f"{split}_0_{nshard}.json"
    meta = {
        "format": "speechkit k-means centroids (K, D) float32, nearest-centroid assignment",
        "n_clusters": n_clusters,
        "dim": int(centroids.shape[1]),
        "n_frames": int(feats.shape[0]),
        "inertia_per_frame": inertia,
        "seed": seed,
        "percent": percent,
        "feat_dir": str(feat_dir),
        "split": split,
        "nshard": nshard,
        "minibatch_kmeans": settings,
        "sklearn_version": __import__("sklearn").__version__,
        "features": json.loads(info_file.read_text()) if info_file.is_file() else None,
    }
    atomic_write_text(km_path.with_suffix(".json"), json.dumps(meta, indent=1))
    return centroids


def load_centroids(km_path: str | Path) -> np.ndarray:
    """Read ``km.npy`` without unpickling. Raises DataError for a missing / malformed file."""
    km_path = Path(km_path)
    if not km_path.is_file():
        raise DataError(f"{km_path}: k-means centroids not found (run the learn step first)")
    try:
        c = np.load(km_path, allow_pickle=False)
    except ValueError as e:
        raise DataError(
            f"{km_path}: not a plain .npy array ({e}); expected (K, D) centroids (joblib "
            "pickles from fairseq's learn_kmeans.py are not loaded: they can execute code)"
        ) from None
    if c.ndim != 2:
        raise DataError(f"{km_path}: expected (K, D) centroids, got shape {c.shape}")
    return c.astype(np.float32)


def write_dict(lab_dir: str | Path, n_clusters: int) -> Path:
    """Write ``dict.km.txt`` with ``"<k> 1"`` for k = 0 .. K-1; returns its path."""
    path = Path(lab_dir) / "dict.km.txt"
    atomic_write_text(path, "".join(f"{k} 1\n" for k in range(n_clusters)))
    return path


def label(
    feat_dir: str | Path,
    split: str,
    nshard: int,
    km_path: str | Path,
    lab_dir: str | Path,
    rank: int | None = None,
    device: str = "cpu",
) -> Path:
    """Label every frame of the shards; writes ``{split}.km`` (or one shard's file with
    ``rank``) and ``dict.km.txt`` in ``lab_dir``. Returns the ``.km`` path."""
    from tqdm import tqdm

    centroids = load_centroids(km_path)
    labeler = KMeansLabeler(centroids, device=device)
    ranks = range(nshard) if rank is None else [rank]
    name = f"{split}.km" if rank is None else f"{split}_{rank}_{nshard}.km"
    out = Path(lab_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:  # streamed, renamed into place at the end
            for r in ranks:
                feats, lengths = load_shard(feat_dir, split, r, nshard)
                offsets = np.concatenate([[0], np.cumsum(lengths)])
                bar = tqdm(total=len(lengths), desc=f"label {split} {r}/{nshard}", disable=None)
                u0 = 0
                while u0 < len(lengths):  # whole utterances, about chunk_size frames at a time
                    u1 = np.searchsorted(offsets, offsets[u0] + labeler.chunk_size, "right") - 1
                    u1 = min(max(int(u1), u0 + 1), len(lengths))
                    ids = labeler(feats[offsets[u0] : offsets[u1]])
                    for u in range(u0, u1):
                        seg = ids[offsets[u] - offsets[u0] : offsets[u + 1] - offsets[u0]]
                        f.write(" ".join(map(str, seg.tolist())) + "\n")
                    bar.update(u1 - u0)
                    u0 = u1
                bar.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    write_dict(lab_dir, labeler.n_clusters)
    return out


# ----------------------------------------------------------------------------------------------
def run_all(args: argparse.Namespace) -> dict[str, Path]:
    """dump (train [+ valid]) -> learn on train -> label both; returns ``{split: .km path}``."""
    out = Path(args.out)
    feat_dir = Path(args.feat_dir) if args.feat_dir else out / "feat"
    manifests = [args.manifest] + ([args.valid_manifest] if args.valid_manifest else [])
    splits = [Path(m).stem for m in manifests]
    if len(set(splits)) != len(splits):
        raise ConfigError(f"train and valid manifests have the same file stem {splits[0]!r}")
    featurizer = _featurizer(args)
    for m, split in zip(manifests, splits):
        for r in range(args.nshard):
            dump(m, feat_dir, featurizer, args.nshard, r, split, args.root, args.batch_size)
    km_path = out / "km.npy"
    learn(
        feat_dir,
        splits[0],
        args.nshard,
        km_path,
        args.n_clusters,
        args.percent,
        args.seed,
        verbose=args.verbose,
        threads=args.threads,
        **_kmeans_overrides(args),
    )
    result = {}
    for m, split in zip(manifests, splits):
        km_file = label(feat_dir, split, args.nshard, km_path, out, device=args.device)
        n_lines = len(km_file.read_text().splitlines())
        n_entries = len(read_manifest(m, root_override=args.root))
        if n_lines != n_entries:
            raise DataError(f"{km_file}: {n_lines} label lines for {n_entries} entries in {m}")
        result[split] = km_file
    return result


def _featurizer(args: argparse.Namespace) -> Featurizer:
    return Featurizer(
        args.feature, args.checkpoint, args.layer, args.device, args.max_chunk, speakers_of(args)
    )


def _kmeans_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("n_init", "max_iter", "km_batch_size", "max_no_improvement", "init_size")
    out = {}
    for n in names:
        value = getattr(args, n, None)
        if value is not None:
            out["batch_size" if n == "km_batch_size" else n] = value
    return out


def _add_dump_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feature", choices=["mfcc", "hubert"], default="mfcc")
    p.add_argument("--checkpoint", help="HuBERT / ContentVec checkpoint (--feature hubert)")
    p.add_argument("--layer", type=int, help="1-based layer (fairseq output_layer)")
    p.add_argument("--root", help="audio root replacing the manifest's first line")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass")
    p.add_argument("--max-chunk", type=int, default=1_600_000, help="samples per chunk")
    add_speaker_args(p)


def _add_kmeans_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-clusters", type=int, required=True)
    p.add_argument("--percent", type=float, default=-1.0, help="utterance fraction (<0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-init", type=int, help="default 20")
    p.add_argument("--max-iter", type=int, help="default 100")
    p.add_argument("--km-batch-size", type=int, help="MiniBatchKMeans batch, default 10000")
    p.add_argument("--max-no-improvement", type=int, help="default 100")
    p.add_argument("--init-size", type=int, help="default None (3 * batch size)")
    p.add_argument("--verbose", action="store_true", help="scikit-learn progress output")
    p.add_argument("--threads", type=int, help="scikit-learn threads (default: all cores)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="features of one shard")
    d.add_argument("--manifest", required=True)
    d.add_argument("--feat-dir", required=True)
    d.add_argument("--split", help="default: the manifest's file stem")
    d.add_argument("--nshard", type=int, default=1)
    d.add_argument("--rank", type=int, default=0)
    _add_dump_args(d)
    lr = sub.add_parser("learn", help="k-means on dumped features")
    lr.add_argument("--feat-dir", required=True)
    lr.add_argument("--split", required=True)
    lr.add_argument("--nshard", type=int, default=1)
    lr.add_argument("--km", required=True, help="output centroids .npy")
    _add_kmeans_args(lr)
    lb = sub.add_parser("label", help="nearest-centroid labels")
    lb.add_argument("--feat-dir", required=True)
    lb.add_argument("--split", required=True)
    lb.add_argument("--nshard", type=int, default=1)
    lb.add_argument("--rank", type=int, help="label one shard only")
    lb.add_argument("--km", required=True)
    lb.add_argument("--lab-dir", required=True)
    lb.add_argument("--device", default="cpu")
    a = sub.add_parser("all", help="dump + learn + label for a manifest")
    a.add_argument("--manifest", required=True, help="training manifest (k-means is learned here)")
    a.add_argument("--valid-manifest", help="also label this manifest")
    a.add_argument("--out", required=True, help="labels, dict.km.txt, km.npy / km.json")
    a.add_argument("--feat-dir", help="feature folder (default OUT/feat)")
    a.add_argument("--nshard", type=int, default=1, help="feature shards (run one after another)")
    _add_dump_args(a)
    _add_kmeans_args(a)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "dump":
            path = dump(
                args.manifest,
                args.feat_dir,
                _featurizer(args),
                args.nshard,
                args.rank,
                args.split,
                args.root,
                args.batch_size,
            )
            print(f"wrote {path}")
        elif args.command == "learn":
            c = learn(
                args.feat_dir,
                args.split,
                args.nshard,
                args.km,
                args.n_clusters,
                args.percent,
                args.seed,
                verbose=args.verbose,
                threads=args.threads,
                **_kmeans_overrides(args),
            )
            print(f"wrote {args.km} ({c.shape[0]} centroids of dim {c.shape[1]})")
        elif args.command == "label":
            path = label(
                args.feat_dir,
                args.split,
                args.nshard,
                args.km,
                args.lab_dir,
                args.rank,
                args.device,
            )
            print(f"wrote {path}")
        else:
            for split, path in run_all(args).items():
                print(f"{split}: {path}")
    except SpeechkitError as e:
        print(f"hubert_labels: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

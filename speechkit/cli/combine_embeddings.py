"""Multi-utterance targets: one vector per speaker (and per session) from dumped embeddings.

    speechkit-combine-embeddings --emb-dir emb/ --list lists/train.txt [--list ...] \\
        --out targets/ [--mode norm_mean_norm|norm_mean|mean_norm] [--level speaker|session|both]
    speechkit-combine-embeddings --emb-dir emb/voxceleb1 --speaker-dirs --out targets/

Input: ``speaker path`` lists (paths relative to ``--emb-dir``, ``.wav`` read as ``.npy``), or
with ``--speaker-dirs`` every sub-folder of ``--emb-dir`` as one speaker and every ``.npy``
below it as its utterances (the reference's ``spk/video/utt.npy`` layout).

Per utterance u = the mean of its crop embeddings. Modes (Dorika0203/proj_2022NC
``m_comb_embs.py``):

* ``norm_mean_norm`` (default): L2-normalise each u, average, L2-normalise the mean.
* ``norm_mean``: the reference's type "B" ("avg-norm-avg"): L2-normalise each u, average; no
  final normalisation.
* ``mean_norm``: the reference's type "C" ("avg-avg-norm"): average the un-normalised u, then
  L2-normalise. **Bug fixed**: the reference normalises the last utterance's vector instead of
  the speaker mean, so its type C target is one utterance; here it is the mean.

Output: ``<out>/<speaker>.npy`` (speaker level) and/or ``<out>/<speaker>/<session>.npy``
(session level; the session is the LibriSpeech chapter or the file's folder, e.g. the VoxCeleb
video, see ``--session-rule``), each (D,) float32, written atomically; ``<out>/targets.tsv``
lists ``speaker session num_utterances file`` (session ``-`` at speaker level).

Exit status: 0 ok, 2 bad input (``combine_embeddings: error: ...``: a missing ``.npy`` with its
list line, a wrong dimension, an empty speaker folder, a zero mean vector).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from speechkit.atomic import atomic_save_npy
from speechkit.data.embedding_dataset import (
    SESSION_RULES,
    check_speaker_id,
    crop_mean,
    embedding_path,
    l2_normalize,
    load_embedding,
    session_of,
    target_path,
)
from speechkit.data.lists import read_list_fields
from speechkit.errors import DataError, SpeechkitError

MODES = ("norm_mean_norm", "norm_mean", "mean_norm")


def combine(vectors: np.ndarray, mode: str, what: str = "speaker") -> np.ndarray:
    """Combine utterance crop means (N, D) into one (D,) float64 target with ``mode``.

    Raises:
        ValueError: an unknown mode.
        DataError: no utterances, or a zero vector to normalise (``what`` is named).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise DataError(f"{what}: no utterances to combine (an empty speaker)")
    if mode == "mean_norm":
        return l2_normalize(vectors.mean(axis=0), what)
    unit = np.stack([l2_normalize(v, what) for v in vectors])
    mean = unit.mean(axis=0)
    return mean if mode == "norm_mean" else l2_normalize(mean, what)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--emb-dir", required=True, help="dump_embeddings.py --out folder")
    p.add_argument("--list", action="append", default=[], help="'speaker path' list (repeatable)")
    p.add_argument(
        "--speaker-dirs",
        action="store_true",
        help="no list: each sub-folder of --emb-dir is a speaker",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=MODES, default="norm_mean_norm")
    p.add_argument("--level", choices=("speaker", "session", "both"), default="speaker")
    p.add_argument("--session-rule", choices=SESSION_RULES, default="auto")
    p.add_argument("--embed-dim", type=int, default=None, help="expected D (default: the first)")
    return p.parse_args(argv)


def collect(args: argparse.Namespace) -> dict[str, list[tuple[str, str]]]:
    """Speaker -> [(path relative to --emb-dir, where)] from the lists or the folder tree."""
    emb_dir = Path(args.emb_dir)
    utts: dict[str, list[tuple[str, str]]] = {}
    if args.speaker_dirs:
        if args.list:
            raise DataError("give either --list or --speaker-dirs, not both")
        if not emb_dir.is_dir():
            raise DataError(f"--emb-dir {emb_dir}: not a folder")
        for spk_dir in sorted(p for p in emb_dir.iterdir() if p.is_dir()):
            files = sorted(spk_dir.rglob("*.npy"))
            if not files:
                raise DataError(f"{spk_dir}: speaker folder has no .npy files (an empty speaker)")
            utts[spk_dir.name] = [(str(f.relative_to(emb_dir)), str(f)) for f in files]
        if not utts:
            raise DataError(f"--emb-dir {emb_dir}: no speaker sub-folders")
        return utts
    if not args.list:
        raise DataError("give --list (one or more 'speaker path' lists) or --speaker-dirs")
    for lst in args.list:
        for lineno, (speaker, path) in read_list_fields(lst, (2,), "speaker_id path"):
            where = f"{lst}:{lineno}"
            check_speaker_id(speaker, where)
            utts.setdefault(speaker, []).append((embedding_path(path), where))
    return utts


def run(args: argparse.Namespace) -> dict[str, int]:
    emb_dir, out = Path(args.emb_dir), Path(args.out)
    utts = collect(args)
    dim, first = args.embed_dim, None
    rows = []
    levels = ("speaker", "session") if args.level == "both" else (args.level,)
    for speaker, items in utts.items():
        means = []
        unique: dict[str, str] = {}
        for rel, where in items:  # a file listed twice counts once
            unique.setdefault(rel, where)
        for rel, where in unique.items():
            array = load_embedding(emb_dir / rel, where, dim, first)
            if dim is None:
                dim, first = int(array.shape[-1]), str(emb_dir / rel)
            means.append((session_of(rel, args.session_rule), crop_mean(array, emb_dir / rel)))
        if "speaker" in levels:
            vec = combine(np.stack([m for _, m in means]), args.mode, f"speaker {speaker!r}")
            path = atomic_save_npy(target_path(out, speaker), vec.astype(np.float32))
            rows.append((speaker, "-", len(means), path))
        if "session" in levels:
            sessions: dict[str, list[np.ndarray]] = {}
            for session, m in means:
                sessions.setdefault(session, []).append(m)
            for session, ms in sessions.items():
                what = f"speaker {speaker!r} session {session!r}"
                check_speaker_id(session, what)
                vec = combine(np.stack(ms), args.mode, what)
                path = atomic_save_npy(target_path(out, speaker, session), vec.astype(np.float32))
                rows.append((speaker, session, len(ms), path))
    out.mkdir(parents=True, exist_ok=True)
    index = out / "targets.tsv"
    tmp = out / ".targets.tsv.partial"
    tmp.write_text(
        f"# mode={args.mode} dim={dim}\n"
        + "".join(f"{s}\t{sess}\t{n}\t{os.path.relpath(p, out)}\n" for s, sess, n, p in rows),
        encoding="utf-8",
    )
    os.replace(tmp, index)
    n_sessions = sum(1 for r in rows if r[1] != "-")
    print(
        f"{len(utts)} speakers, {sum(len(v) for v in utts.values())} utterances -> "
        f"{len(rows) - n_sessions} speaker and {n_sessions} session targets "
        f"({args.mode}, D={dim}) in {out}"
    )
    return {"speakers": len(utts), "targets": len(rows)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"combine_embeddings: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a speaker model on a trial list: EER, minDCF, score file and DET curve.

    speechkit-eval-eer --checkpoint runs/sv/checkpoint_best.pt \\
        --test-list voxceleb1_test.txt --test-path data/voxceleb1/wav \\
        [--eval-frames 400 --num-eval 10] [--scoring cosine|crop_distance|syncnet_reference] \\
        [--cohort-list cohort.txt --cohort-path ROOT --top-k 300 --cohort-level speaker] \\
        [--scores scores.txt] [--det-plot det.png]

Each file of the trial list is embedded once (batched). Every listed file is checked before any
embedding is computed. Scores are cosine similarities of the mean crop embeddings (default) or
voxceleb_trainer's negative mean crop distance; ``--cohort-list`` adds adaptive symmetric score
normalisation (AS-norm, Matejka et al. 2017); the cohort is one L2-normalised mean embedding per
cohort speaker (wespeaker's VoxCeleb recipe; ``--cohort-level utterance`` uses every file). Works with speechkit checkpoints and with
voxceleb_trainer checkpoints converted by ``scripts/convert_voxceleb_trainer.py``.

Audio input: files at another rate than the model's 16 kHz are resampled with soxr and
multi-channel files averaged to mono, each with a WARNING naming the file; a file with NaN/inf
samples, or a checkpoint that is not a speaker model (HuBERT, ContentVec ...), is refused.

Exit status: 0 ok, 2 bad input (one line ``eval_eer: error: FILE[:LINE]: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from speechkit.data.lists import read_list_fields, read_train_list
from speechkit.errors import SpeechkitError
from speechkit.inference.speaker_embedding import (
    SCORING,
    SpeakerEmbedding,
    extract_embeddings,
    score_trials,
)
from speechkit.metrics.score_norm import as_norm
from speechkit.metrics.scoring import read_trial_list, write_score_file
from speechkit.metrics.verification import evaluate_scores, plot_det_curve
from speechkit.trainer.checkpoint import load_checkpoint_file

# voxceleb_trainer's test_normalize flag per loss: only the prototypical loss scores raw vectors
NO_TEST_NORMALIZE = {"proto"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--test-list", required=True, help="'label path1 path2' per line")
    p.add_argument("--test-path", default=".", help="folder the trial paths are relative to")
    p.add_argument("--eval-frames", type=int, default=300, help="crop in frames; 0 = whole file")
    p.add_argument("--num-eval", type=int, default=10)
    p.add_argument(
        "--scoring",
        choices=SCORING,
        default="cosine",
        help="cosine: cosine of the mean crop embeddings (default, the better one); "
        "crop_distance: voxceleb_trainer's -mean crop distance; syncnet_reference: "
        "syncnet_trainer's mean cosine over all crop pairs, the rule that reproduces its "
        "released EER 20.4348 (use with --eval-frames 200 --num-eval 10)",
    )
    p.add_argument(
        "--normalize",
        choices=["auto", "yes", "no"],
        default="auto",
        help="L2-normalise crop embeddings (auto: as the training loss did)",
    )
    p.add_argument("--cohort-list", help="'speaker path' list for AS-norm")
    p.add_argument("--cohort-path", default=None, help="root of the cohort list (default: test)")
    p.add_argument("--top-k", type=int, default=300, help="AS-norm cohort size per side")
    p.add_argument(
        "--cohort-level",
        choices=("speaker", "utterance"),
        default="speaker",
        help="AS-norm cohort: one mean embedding per speaker (wespeaker) or one per file",
    )
    p.add_argument("--scores", help="write 'score label path1 path2' lines here")
    p.add_argument("--det-plot", help="write a DET curve PNG here")
    p.add_argument("--batch-files", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def trial_lines(test_list: str, resolve) -> dict[str, str]:
    """``{resolved path: "trials.txt:LINE"}`` of each file's first trial line (for messages)."""
    where: dict[str, str] = {}
    with open(test_list, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) < 2 or fields[0].startswith("#"):
                continue
            for p in fields[-2:]:
                where.setdefault(str(resolve(p)), f"{test_list}:{number}")
    return where


def cohort_lines(cohort_list: str, root: str) -> dict[str, str]:
    """``{path as read_train_list resolves it: "cohort.txt:LINE"}`` (for messages)."""
    base = os.path.abspath(root)
    return {
        os.path.normpath(os.path.join(base, fields[1])): f"{cohort_list}:{number}"
        for number, fields in reversed(read_list_fields(cohort_list, (2,), "speaker_id path"))
    }


def run(args: argparse.Namespace) -> dict[str, float]:
    trials = read_trial_list(args.test_list, args.test_path)
    if not trials.has_labels:
        raise SpeechkitError(f"{args.test_list}: EER needs 'label path1 path2' lines")
    files = [str(trials.resolve(p)) for p in trials.unique_paths()]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SpeechkitError(
            f"{args.test_list}: {len(missing)} of {len(files)} files not found under "
            f"{args.test_path}; first: {', '.join(missing[:5])}"
        )
    if args.cohort_list and args.scoring != "cosine":
        raise SpeechkitError("--cohort-list (AS-norm) needs --scoring cosine")
    cohort: list[tuple[str, str]] = []  # (speaker, path)
    if args.cohort_list:  # checked before anything is embedded
        cohort_root = args.cohort_path or args.test_path
        cohort = read_train_list(args.cohort_list, cohort_root, check_exists=True)
        cohort_files = sorted({p for _, p in cohort})

    state = load_checkpoint_file(args.checkpoint)
    crit = ((state.get("cfg") or {}).get("criterion") or {}).get("_name")
    normalize = {"yes": True, "no": False}.get(args.normalize, crit not in NO_TEST_NORMALIZE)
    device = torch.device(args.device)
    model = SpeakerEmbedding.from_checkpoint(args.checkpoint, device=device).model
    where = trial_lines(args.test_list, trials.resolve)

    t0 = time.perf_counter()
    emb = extract_embeddings(
        model,
        files,
        device,
        eval_frames=args.eval_frames,
        num_eval=args.num_eval,
        normalize=normalize,
        batch_files=args.batch_files,
        num_workers=args.num_workers,
        where=where,
    )
    p1 = [str(trials.resolve(p)) for p in trials.paths1]
    p2 = [str(trials.resolve(p)) for p in trials.paths2]
    scores = score_trials(emb, p1, p2, args.scoring)
    print(
        f"embedded {len(files)} files in {time.perf_counter() - t0:.1f}s; "
        f"scored {len(scores)} trials ({args.scoring})"
    )

    if args.cohort_list:
        cemb = extract_embeddings(
            model,
            cohort_files,
            device,
            eval_frames=args.eval_frames,
            num_eval=args.num_eval,
            normalize=normalize,
            batch_files=args.batch_files,
            num_workers=args.num_workers,
            where=cohort_lines(args.cohort_list, cohort_root),
        )
        emb_all = {**emb, **cemb}

        def mean_emb(paths):
            return F.normalize(torch.stack([emb_all[p].mean(0) for p in paths]), dim=-1)

        if args.cohort_level == "speaker":
            files_of: dict[str, list[str]] = {}
            for speaker, path in cohort:
                files_of.setdefault(speaker, []).append(path)
            # mean of each speaker's L2-normalised file embeddings, re-normalised
            cohort_emb = F.normalize(
                torch.stack([mean_emb(files).mean(0) for files in files_of.values()]), dim=-1
            )
        else:
            cohort_emb = mean_emb(cohort_files)
        n_cohort = cohort_emb.shape[0]
        if n_cohort < 2:
            raise SpeechkitError(
                f"{args.cohort_list}: AS-norm needs a cohort of 2 or more {args.cohort_level}s"
            )
        top_k = min(args.top_k, n_cohort)
        scores = np.asarray(
            as_norm(scores, mean_emb(p1), mean_emb(p2), cohort_emb, top_k=top_k),
            dtype=np.float64,
        )
        print(f"AS-norm with a cohort of {n_cohort} {args.cohort_level}s, top-{top_k}")

    result = evaluate_scores(scores, trials.labels)
    print(
        f"EER {result.eer:.4f}% | minDCF(p=0.05) {result.min_dcf_005:.4f} | "
        f"minDCF(p=0.01) {result.min_dcf_001:.4f} | {len(scores)} trials"
    )
    if args.scores:
        write_score_file(args.scores, scores, trials.labels, trials.paths1, trials.paths2)
        print(f"scores -> {args.scores}")
    if args.det_plot:
        plot_det_curve({Path(args.checkpoint).name: (scores, trials.labels)}, args.det_plot)
        print(f"DET curve -> {args.det_plot}")
    return {"eer": result.eer, "min_dcf_005": result.min_dcf_005, "min_dcf_001": result.min_dcf_001}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"eval_eer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

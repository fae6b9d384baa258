"""Dump speaker embeddings: one ``.npy`` per utterance, mirroring the audio paths.

    speechkit-dump-embeddings --checkpoint runs/sv/checkpoint_best.pt \\
        --list lists/train.txt [--list lists/cohort.txt] --root DATA --out emb/ \\
        [--eval-frames 400 --num-eval 10] [--normalize] [--batch-files 8]

Lists hold ``speaker path`` (train list), ``label path1 path2`` (trial list) or ``path`` lines,
paths relative to ``--root``; ``DATA/a/b.wav`` is written to ``emb/a/b.npy``. Each file holds
the crop embeddings (num_eval, D) float32, un-normalised unless ``--normalize`` (the
reference, Dorika0203/proj_2022NC ``m_gen_embs.py``, saves raw (10, 512) crops of 400 frames).

Resumable: files already in ``--out`` are skipped, so an interrupted run is restarted with the
same command. A file is written to a temporary name, fsynced and renamed, so a partly written
``.npy`` never remains. ``--out``/``dump_info.json`` records the checkpoint hash and crop
settings; a resumed run with other settings is refused (the folder would mix two models).

Audio input: files at another rate than the model's 16 kHz are resampled with soxr and
multi-channel files averaged to mono, each with a WARNING naming the file; a file with NaN/inf
samples (list line and file named) or a checkpoint that is not a speaker model is refused, and
nothing of that chunk is written.

Exit status: 0 ok, 2 bad input (``dump_embeddings: error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from speechkit.atomic import atomic_save_npy
from speechkit.data.embedding_dataset import embedding_path
from speechkit.data.lists import read_list_fields
from speechkit.errors import CheckpointError, DataError, SpeechkitError
from speechkit.inference.speaker_embedding import SpeakerEmbedding, extract_embeddings

INFO_FILE = "dump_info.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="speechkit speaker-model checkpoint")
    p.add_argument(
        "--list",
        action="append",
        required=True,
        help="'speaker path', 'label path1 path2' or 'path' lines (repeatable)",
    )
    p.add_argument("--root", default=".", help="folder the list paths are relative to")
    p.add_argument("--out", required=True, help="output folder (mirrors the list paths)")
    p.add_argument(
        "--eval-frames",
        type=int,
        default=400,
        help="crop length in 10 ms frames; 0 = whole utterance (one crop)",
    )
    p.add_argument("--num-eval", type=int, default=10, help="evenly spaced crops per file")
    p.add_argument("--normalize", action="store_true", help="L2-normalise each crop embedding")
    p.add_argument("--batch-files", type=int, default=8, help="files per forward pass")
    p.add_argument(
        "--chunk-files",
        type=int,
        default=256,
        help="files embedded between writes (the unit of resumption)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def list_paths(lists: list[str]) -> list[tuple[str, str]]:
    """Unique relative audio paths of all lists with ``list:line`` of their first mention.

    Raises:
        DataError: a missing/empty list, a line of 4+ fields, an absolute path or one leaving
            the root (``..``), naming the list and line.
    """
    seen: dict[str, str] = {}
    for lst in lists:
        for lineno, fields in read_list_fields(lst, (1, 2, 3), "speaker path | label p1 p2"):
            paths = fields[-2:] if len(fields) == 3 else fields[-1:]
            for rel in paths:
                norm = os.path.normpath(rel)
                if os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
                    raise DataError(
                        f"{lst}:{lineno}: path {rel!r} must be relative to --root and stay "
                        "inside it (the output mirrors it)"
                    )
                seen.setdefault(norm, f"{lst}:{lineno}")
    return list(seen.items())


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_info(out: Path, info: dict) -> None:
    """Write ``dump_info.json``, or refuse when the folder was dumped with other settings."""
    path = out / INFO_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable ({e}); remove it or use another --out") from None
        diff = {k: (old.get(k), v) for k, v in info.items() if old.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise DataError(
                f"{out} holds embeddings dumped with other settings ({shown}); use a new --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{INFO_FILE}.partial"
    tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_settings(eval_frames: int, num_eval: int, batch_files: int, chunk_files: int) -> None:
    """Raises DataError unless ``eval_frames >= 0`` and the counts are >= 1."""
    if eval_frames < 0 or num_eval < 1 or batch_files < 1 or chunk_files < 1:
        raise DataError(
            "--eval-frames must be >= 0 and --num-eval, --batch-files, --chunk-files >= 1"
        )


def check_listed_files(entries: list[tuple[str, str]], root: Path) -> None:
    """Raises DataError naming (up to 5 of) the listed files missing under ``root``."""
    missing = [f"{where}: {root / rel}" for rel, where in entries if not (root / rel).is_file()]
    if missing:
        more = f" ... ({len(missing)} in all)" if len(missing) > 5 else ""
        raise DataError(
            f"{len(missing)} listed audio file(s) not found (is --root right?): "
            f"{'; '.join(missing[:5])}{more}"
        )


def load_speaker_model(checkpoint: str, device: torch.device) -> tuple[nn.Module, dict]:
    """The speaker model ``(B, L) -> (B, D)`` of ``checkpoint`` in eval mode, and the facts that
    identify it in ``dump_info.json`` (the file's SHA-256).

    Raises:
        CheckpointError: missing or unreadable file, or not a speaker model.
    """
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    model = SpeakerEmbedding.from_checkpoint(checkpoint, device=device).model.eval()
    return model, {"checkpoint_sha256": _sha256(checkpoint)}


def dump_embeddings(
    model: nn.Module,
    model_info: dict,
    entries: list[tuple[str, str]],
    root: Path,
    out: Path,
    device: torch.device,
    eval_frames: int = 400,
    num_eval: int = 10,
    normalize: bool = False,
    batch_files: int = 8,
    chunk_files: int = 256,
) -> dict[str, int]:
    """Write ``out/<rel path>.npy`` (num_crops, D) float32 for every entry not yet dumped.

    Args:
        model: a speaker model ``(B, L) -> (B, D)`` (``load_speaker_model``).
        model_info: facts identifying the model, recorded in ``dump_info.json`` with the crop
            settings (a resumed run with other facts is refused).
        entries: ``(relative audio path, "list:LINE")`` (``list_paths``).
        root: the audio root. out: the output folder. device: where the model runs.
        eval_frames, num_eval: crops of 10 ms frames per file (0: the whole utterance).
        normalize: L2-normalise each crop embedding. batch_files: files per forward pass.
        chunk_files: files embedded before their ``.npy`` are written.

    Returns:
        ``{"listed", "dumped", "skipped"}`` file counts.

    Raises:
        DataError: bad settings, listed files missing under ``root``, unreadable audio, or an
            ``out`` dumped with other settings.
    """
    check_settings(eval_frames, num_eval, batch_files, chunk_files)
    check_listed_files(entries, root)
    info = {
        **model_info,
        "eval_frames": eval_frames,
        "num_eval": num_eval if eval_frames > 0 else 1,
        "normalize": bool(normalize),
    }
    todo = [rel for rel, _ in entries if not (out / embedding_path(rel)).is_file()]
    print(
        f"{len(entries)} files listed, {len(entries) - len(todo)} already dumped, "
        f"{len(todo)} to embed"
    )
    check_info(out, info)
    where = {str(root / rel): line for rel, line in entries}  # "list:LINE" for messages
    t0 = time.perf_counter()
    done = 0
    for start in range(0, len(todo), chunk_files):
        chunk = todo[start : start + chunk_files]
        emb = extract_embeddings(
            model,
            [str(root / rel) for rel in chunk],
            device,
            eval_frames=eval_frames,
            num_eval=num_eval,
            normalize=normalize,
            batch_files=batch_files,
            where=where,
        )
        for rel in chunk:
            atomic_save_npy(out / embedding_path(rel), emb[str(root / rel)].numpy())
        done += len(chunk)
        print(f"  {done}/{len(todo)} files ({time.perf_counter() - t0:.1f}s)", flush=True)
    return {"listed": len(entries), "dumped": done, "skipped": len(entries) - len(todo)}


def run(args: argparse.Namespace) -> dict[str, int]:
    """The command: ``parse_args``'s options -> ``dump_embeddings``'s counts (lists and files
    are checked before the model is loaded)."""
    check_settings(args.eval_frames, args.num_eval, args.batch_files, args.chunk_files)
    entries = list_paths(args.list)
    root, device = Path(args.root), torch.device(args.device)
    check_listed_files(entries, root)
    model, model_info = load_speaker_model(args.checkpoint, device)
    return dump_embeddings(
        model,
        model_info,
        entries,
        root,
        Path(args.out),
        device,
        eval_frames=args.eval_frames,
        num_eval=args.num_eval,
        normalize=args.normalize,
        batch_files=args.batch_files,
        chunk_files=args.chunk_files,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"dump_embeddings: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

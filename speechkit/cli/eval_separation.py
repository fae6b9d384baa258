"""Evaluate a target-speaker separation checkpoint on a folder in VoiceVector's test layout.

    speechkit-eval-separation --checkpoint runs/tss/checkpoint_best.pt --data test_dir \\
        [--csv scores.csv] [--metrics bss_sdr,pesq,stoi] [--save-estimates out_dir]

The folder holds, per item ``ID``: ``ID_mix.wav`` (the mixture), ``ID_target.wav`` (the clean
target, same length), and what tells the model whom to extract: ``ID_embedding.npy`` for
``voicevector_ae`` (the target's enrolment: one (D,) vector or (N, D) rows, each row one
positive vector, L2-normalised here) or ``ID_feat.npy`` for ``voicevector_av`` (the target's lip
features, (frames, lip_dim) at 25 fps, 640 samples per frame at 16 kHz, within
``speechkit.data.lip_features``' tolerance of the mixture's length). The other file is not used,
which the command says.

Composite checkpoints (``voicevector_vem`` / ``voicevector_avem`` / ``voicevector_ivem``,
trained or converted from the reference's ``vem.pth`` / ``avem3.pth`` / ``ivem.pth``) take
enrolment clips of the target instead, numbered ``K = 0, 1, ...`` (each clip one positive,
in K order):

* ``ID_enrolK_feat.npy``: the clip's lip features (frames, lip_dim) at 25 fps (all three);
* ``ID_enrolK.wav``: the clip's audio (``voicevector_avem``; the lip frames are fitted to it
  within ``speechkit.data.lip_features``' tolerance);
* ``ID_enrolK_face/``: a folder of the clip's face embeddings, one ``.npy`` per face
  (``voicevector_ivem``; ``speechkit.data.face_embeddings``).

Each clip is embedded by the checkpoint's frozen enrolment net in windows of its training length
(``speechkit.inference.clip_enrolment``); ``ID_embedding.npy`` / ``ID_feat.npy`` are then not
used. An item without any ``ID_enrolK_feat.npy``, or a clip without its audio / face folder, is an
error naming the missing file.

Every item is checked before the model runs. Audio at another rate than the model's is resampled
(a WARNING names the file); long mixtures are separated in overlapping chunks
(``speechkit.inference.separation``).

Metrics per item (``speechkit.metrics.separation``): SI-SDR, SDR (the plain SNR the VoiceVector
code reports), and with ``--metrics`` (default all three) museval-style BSS-Eval v4 SDR over 1 s
windows, wide-band PESQ and STOI (the last two need ``pip install 'speechkit[separation]'``);
each also for the unprocessed mixture and as the improvement over it. Prints a table (mean and
median over items, NaN items left out and counted) and writes one CSV row per item.

Exit status: 0 ok, 2 bad input (one line ``eval_separation: error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from speechkit.data.audio import read_audio, write_audio
from speechkit.data.embedding_table import l2_normalize, load_embedding
from speechkit.errors import ConfigError, DataError, SpeechkitError
from speechkit.inference.separation import Separator
from speechkit.metrics.separation import (
    EXTRA_METRICS,
    check_metric_names,
    extra_scores,
    si_sdr,
    snr,
)

BASE_METRICS = ("si_sdr", "sdr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="target_speaker_separation checkpoint")
    p.add_argument("--data", required=True, help="folder of ID_mix.wav, ID_target.wav, ...")
    p.add_argument("--csv", help="per-item scores (default: DATA/separation_scores.csv)")
    p.add_argument(
        "--metrics",
        default=",".join(EXTRA_METRICS),
        help="comma-separated extra metrics among bss_sdr, pesq, stoi ('' for none)",
    )
    p.add_argument("--save-estimates", help="write ID_estimate.wav files here")
    p.add_argument("--chunk", type=float, default=0.0, help="chunk seconds (default: the limit)")
    p.add_argument("--overlap", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def find_items(folder: str, cue: str = "_embedding.npy") -> tuple[list[str], int]:
    """Sorted item ids of ``folder`` and the number of unused cue files (``ID_feat.npy`` when
    ``cue`` is ``_embedding.npy``, else ``ID_embedding.npy``).

    Raises:
        DataError: not a folder, no ``*_mix.wav``, or an item without its target / ``cue`` file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder (expected ID_mix.wav, ID_target.wav, ...)")
    ids = sorted(p.name[: -len("_mix.wav")] for p in root.glob("*_mix.wav"))
    if not ids:
        raise DataError(f"{folder}: no ID_mix.wav files (VoiceVector test layout expected)")
    for i in ids:
        for suffix in ("_target.wav", cue):
            if not (root / f"{i}{suffix}").is_file():
                raise DataError(f"{root / (i + suffix)}: missing (item {i} has a _mix.wav)")
    other = "_feat.npy" if cue == "_embedding.npy" else "_embedding.npy"
    unused = sum((root / f"{i}{other}").is_file() for i in ids)
    return ids, unused


def find_clip_items(folder: str, inputs: str) -> tuple[list[str], dict[str, list], int]:
    """Sorted item ids of ``folder`` in the enrolment-clip layout (module docstring), each
    item's clips ``[(lip .npy, audio .wav or None, face folder or None), ...]`` in K order, and
    the number of unused ``ID_embedding.npy`` / ``ID_feat.npy`` files.

    Args:
        folder: the test folder.
        inputs: the composite's enrolment inputs, ``v`` / ``av`` / ``iv``.

    Raises:
        DataError: not a folder, no ``*_mix.wav``, an item without its target or without
            ``ID_enrol0_feat.npy``, a clip without its ``ID_enrolK.wav`` (``av``) or
            ``ID_enrolK_face/`` folder (``iv``); the missing path is named.
    """
    root = Path(folder)
    ids, _ = find_items(folder, "_mix.wav")  # checks the folder, the mixtures and targets
    names = {p.name for p in root.iterdir()}
    clips: dict[str, list] = {}
    for i in ids:
        pattern = re.compile(re.escape(i) + r"_enrol(\d+)_feat\.npy")
        ks = sorted(int(m.group(1)) for n in names if (m := pattern.fullmatch(n)))
        if not ks:
            raise DataError(
                f"{root / (i + '_enrol0_feat.npy')}: missing (item {i} has a _mix.wav; a "
                "composite checkpoint takes the target's enrolment clips ID_enrolK_feat.npy)"
            )
        clips[i] = []
        for k in ks:
            audio = root / f"{i}_enrol{k}.wav" if inputs == "av" else None
            face = root / f"{i}_enrol{k}_face" if inputs == "iv" else None
            if audio is not None and not audio.is_file():
                raise DataError(
                    f"{audio}: missing (voicevector_avem needs the audio of {i}_enrol{k}_feat.npy)"
                )
            if face is not None and not face.is_dir():
                raise DataError(
                    f"{face}: missing (voicevector_ivem needs the face-embedding folder of "
                    f"{i}_enrol{k}_feat.npy)"
                )
            clips[i].append((root / f"{i}_enrol{k}_feat.npy", audio, face))
    unused = sum((root / f"{i}{s}").is_file() for i in ids for s in ("_embedding.npy", "_feat.npy"))
    return ids, clips, unused


def load_positives(path: Path, emb_dim: int) -> list[torch.Tensor]:
    """Rows of ``ID_embedding.npy`` ((D,) or (N, D)) as L2-normalised (D,) vectors."""
    array = load_embedding(path, "the test folder", emb_dim)
    rows = array.reshape(-1, array.shape[-1]).astype(np.float64)
    return [torch.from_numpy(l2_normalize(r, str(path)).astype(np.float32)) for r in rows]


def score_item(
    est: np.ndarray, mix: np.ndarray, ref: np.ndarray, names: tuple[str, ...], rate: int, item: str
) -> dict[str, float]:
    """``m``, ``m_mix`` and ``mi`` for SI-SDR, SDR (SNR) and the extra ``names``."""
    e, m, r = (torch.from_numpy(x.astype(np.float64)) for x in (est, mix, ref))
    row: dict[str, float] = {}
    for name, fn in (("si_sdr", si_sdr), ("sdr", snr)):
        row[name], row[f"{name}_mix"] = float(fn(e, r)), float(fn(m, r))
        row[f"{name}i"] = row[name] - row[f"{name}_mix"]
    row.update(extra_scores(est, mix, ref, names, rate, item=item))
    return row


def summary_table(rows: list[dict[str, float]], metrics: tuple[str, ...]) -> str:
    """Mean / median of each metric, its mixture value and improvement (NaNs left out)."""
    head = f"{'metric':<8} {'mean':>8} {'median':>8} {'mixture':>8} {'impr.':>8} {'impr.med':>8}  n"
    lines = [head, "-" * len(head)]
    for m in metrics:
        vals = np.array([r[m] for r in rows], dtype=np.float64)
        mix = np.array([r[f"{m}_mix"] for r in rows], dtype=np.float64)
        imp = np.array([r[f"{m}i"] for r in rows], dtype=np.float64)
        ok = np.isfinite(vals) & np.isfinite(mix)
        if not ok.any():
            lines.append(f"{m:<8} {'nan':>8} {'nan':>8} {'nan':>8} {'nan':>8} {'nan':>8}  0")
            continue
        lines.append(
            f"{m:<8} {vals[ok].mean():8.3f} {np.median(vals[ok]):8.3f} {mix[ok].mean():8.3f} "
            f"{imp[ok].mean():8.3f} {np.median(imp[ok]):8.3f}  {int(ok.sum())}"
            + (f" ({int((~ok).sum())} NaN)" if (~ok).any() else "")
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    try:
        names = check_metric_names(args.metrics.split(","), "--metrics")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name, module in (("pesq", "pesq"), ("stoi", "pystoi")):
        if name in names:
            try:
                __import__(module)
            except ImportError:
                raise ConfigError(
                    f"--metrics {name} needs the '{module}' package: pip install "
                    f"'speechkit[separation]' (or leave {name} out of --metrics)"
                ) from None
    if not Path(args.data).is_dir():
        raise DataError(f"{args.data}: not a folder (expected ID_mix.wav, ID_target.wav, ...)")
    sep = Separator.from_checkpoint(
        args.checkpoint, device=args.device, chunk_seconds=args.chunk, overlap_seconds=args.overlap
    )
    if sep.is_composite:
        ids, clip_files, unused = find_clip_items(args.data, sep.clip_inputs)
    else:
        cue = "_feat.npy" if sep.is_av else "_embedding.npy"
        ids, unused = find_items(args.data, cue)
    root = Path(args.data)
    rate = sep.sample_rate
    items = []
    for i in ids:  # every item checked before the model runs
        mix = read_audio(root / f"{i}_mix.wav", rate)
        ref = read_audio(root / f"{i}_target.wav", rate)
        if mix.shape != ref.shape:
            raise DataError(
                f"{root / (i + '_target.wav')}: {len(ref)} samples, but {i}_mix.wav has "
                f"{len(mix)} (at {rate} Hz); expected the same length"
            )
        if sep.is_av:
            cond = {"lip": sep.load_lip(root / f"{i}_feat.npy", len(mix))}
        elif sep.is_composite:
            lips, audios, faces = zip(*clip_files[i])
            clips = sep.read_clips(
                lips, [a for a in audios if a is not None], [f for f in faces if f is not None]
            )
            cond = {"clips": clips}
        else:
            cond = {"positives": load_positives(root / f"{i}_embedding.npy", sep.emb_dim)}
        items.append((i, mix, ref, cond))
    if unused and sep.is_composite:
        print(
            f"note: {unused} ID_embedding.npy / ID_feat.npy file(s) not used ({sep.name} uses "
            "the ID_enrolK clips)"
        )
    elif unused and sep.is_av:
        print(f"note: {unused} ID_embedding.npy file(s) not used (voicevector_av uses ID_feat.npy)")
    elif unused:
        print(f"note: {unused} ID_feat.npy file(s) not used (voicevector_ae is audio-only)")
    if args.save_estimates:
        os.makedirs(args.save_estimates, exist_ok=True)

    t0 = time.perf_counter()
    rows = []
    for i, mix, ref, cond in items:
        if "clips" in cond:  # the frozen enrolment net: one vector per clip, all positives
            cond = {"positives": sep.clip_vectors(cond["clips"])}
        est = sep.separate(torch.from_numpy(mix), **cond).numpy()
        if args.save_estimates:
            write_audio(Path(args.save_estimates) / f"{i}_estimate.wav", est, rate, "FLOAT")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = score_item(est, mix, ref, names, rate, item=i)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        rows.append({"id": i, "seconds": len(mix) / rate, **row})
    elapsed = time.perf_counter() - t0

    out_csv = args.csv or str(root / "separation_scores.csv")
    keys = ["id", "seconds"] + [
        k for m in (*BASE_METRICS, *names) for k in (m, f"{m}_mix", f"{m}i")
    ]
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for r in rows:
            writer.writerow(
                [r["id"]]
                + [
                    "nan" if isinstance(r[k], float) and math.isnan(r[k]) else f"{r[k]:.6f}"
                    for k in keys[1:]
                ]
            )
    print(f"{len(rows)} items from {args.data} in {elapsed:.1f}s")
    print(summary_table(rows, (*BASE_METRICS, *names)))
    print(f"per-item scores -> {out_csv}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"eval_separation: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

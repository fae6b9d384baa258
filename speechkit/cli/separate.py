"""Separate a target speaker from a mixture with a trained VoiceVector model (``voicevector_ae``
with enrolment vectors, ``voicevector_av`` with the target's lip features, or a composite
``voicevector_vem`` / ``_avem`` / ``_ivem`` with enrolment clips).

    speechkit-separate --checkpoint runs/tss/checkpoint_best.pt --mixture mix.wav \\
        --positive alice_1.npy --positive alice_2.wav [--negative bob.npy] \\
        [--speaker-checkpoint sv.pt] --out alice.wav [--chunk 20 --overlap 1]
    speechkit-separate --checkpoint runs/tss_av/checkpoint_best.pt --mixture clip.wav \\
        --lip clip.npy --out alice.wav
    speechkit-separate --checkpoint vem.pt --mixture mix.wav --enrol-lip alice_1.npy \\
        alice_2.npy [--negative-lip bob.npy] --out alice.wav
    speechkit-separate --checkpoint avem.pt --mixture mix.wav --enrol-lip alice.npy \\
        --enrol-audio alice.wav [--negative-lip bob.npy --negative-audio bob.wav] --out alice.wav
    speechkit-separate --checkpoint ivem.pt --mixture mix.wav --enrol-lip alice.npy \\
        --enrol-face alice_faces/ --out alice.wav

Enrolment (``--positive`` at least once, ``--negative`` optional, each repeatable): ``.npy``
vectors from ``scripts/dump_embeddings.py`` ((K, D) crops or (D,); mean then L2-normalised) or
enrolment audio files embedded by ``--speaker-checkpoint`` (the speaker model the separation
model's training vectors came from). Audio-visual checkpoints take ``--lip`` instead: a
``.npy`` of (frames, lip_dim) features at 25 fps (``speechkit-dump-lip-features``), frame ``j``
covering mixture samples ``[640 j, 640 (j + 1))`` at 16 kHz, within
``speechkit.data.lip_features``' tolerance of the mixture's length (``--lip-tolerance``); their
chunks and overlaps are whole lip frames. ``--lip`` with an audio-only checkpoint, or enrolment
with an audio-visual one, is an error.

Composite checkpoints (trained ``voicevector_vem`` / ``_avem`` / ``_ivem``, or the reference's
``vem.pth`` / ``avem3.pth`` / ``ivem.pth`` converted by ``speechkit-convert-voicevector``) take
enrolment clips instead of vectors: ``--enrol-lip`` (positives, at least one) and
``--negative-lip`` (optional) list lip-feature ``.npy`` files ((frames, lip_dim), 25 fps), each
one clip; ``avem`` also needs the audio of each clip (``--enrol-audio`` / ``--negative-audio``,
the same count and order as the lip files; resampled to 16 kHz with a WARNING; the lip frames
are fitted to it within ``--lip-tolerance``), ``ivem`` a face-embedding folder of ``*.npy``
files per clip (``--enrol-face`` / ``--negative-face``). The frozen enrolment net embeds each
clip in windows of the length it was trained on (4 s unless the checkpoint's
``task.enrol_segment`` says otherwise) and averages them
(``speechkit.inference.clip_enrolment``); the vectors then enrol the separation net like
``--positive`` / ``--negative`` vectors. A combination that does not fit the checkpoint (audio
or faces for a model that takes none, a missing or unpaired one, vectors or ``--lip`` for a
composite, clips for a non-composite) is an error naming what was expected.

The mixture may have any length and sample rate: it is resampled to the model's rate (a WARNING
names the file) and the estimate written back at the input's rate and length (32-bit float WAV
by default). Audio longer than the model's positional limit (30 s for the paper's sizes) is
separated in overlapping chunks with raised-cosine cross-fades, the same enrolment for every
chunk (``speechkit.inference.separation``).

Exit status: 0 ok, 2 bad input (one line ``separate: error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time

import soundfile as sf
import torch

from speechkit.data.audio import write_audio
from speechkit.data.lip_features import DEFAULT_TOLERANCE
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.inference.clip_enrolment import check_clip_counts
from speechkit.inference.separation import Separator, load_enrolment

CLIP_OPTIONS = {
    "positive": ("--enrol-lip", "--enrol-audio", "--enrol-face"),
    "negative": ("--negative-lip", "--negative-audio", "--negative-face"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="target_speaker_separation checkpoint")
    p.add_argument("--mixture", required=True, help="audio file (any rate, any length)")
    p.add_argument(
        "--positive",
        action="append",
        default=[],
        help="target enrolment (voicevector_ae): a .npy vector or an audio file (repeatable)",
    )
    p.add_argument("--lip", help="target lip features (voicevector_av): (frames, dim) .npy")
    p.add_argument(
        "--lip-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted |frames - samples / 640| (lip frames)",
    )
    p.add_argument(
        "--negative", action="append", default=[], help="interferer enrolment (repeatable)"
    )
    p.add_argument("--speaker-checkpoint", help="speaker model that embeds enrolment audio")
    clip = "composites (voicevector_vem / _avem / _ivem): "
    for kind, (lip, audio, face) in CLIP_OPTIONS.items():
        who = "target" if kind == "positive" else "interferer"
        extend = dict(action="extend", nargs="+", default=[])
        p.add_argument(
            lip, metavar="NPY", help=f"{clip}{who} enrolment clips' lip features", **extend
        )
        p.add_argument(
            audio, metavar="AUDIO", help=f"avem: the {lip} clips' audio, in order", **extend
        )
        p.add_argument(face, metavar="DIR", help=f"ivem: the {lip} clips' face folders", **extend)
    p.add_argument("--out", required=True, help="output audio file (.wav, .flac ...)")
    p.add_argument(
        "--chunk", type=float, default=0.0, help="chunk seconds (default: the model's limit)"
    )
    p.add_argument("--overlap", type=float, default=1.0, help="chunk overlap in seconds")
    p.add_argument("--batch-chunks", type=int, default=2, help="chunks per forward pass")
    p.add_argument("--subtype", default="FLOAT", help="libsndfile subtype (FLOAT, PCM_16 ...)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if args.subtype not in sf.available_subtypes():
        raise ConfigError(
            f"--subtype {args.subtype}: not a libsndfile subtype; expected e.g. FLOAT, PCM_16, "
            "PCM_24"
        )
    sep = Separator.from_checkpoint(
        args.checkpoint,
        device=args.device,
        chunk_seconds=args.chunk,
        overlap_seconds=args.overlap,
        batch_chunks=args.batch_chunks,
    )
    clip_given = [o for opts in CLIP_OPTIONS.values() for o in opts if _option(args, o)]
    if sep.is_composite:
        pos, neg = composite_enrolment(args, sep)
    elif clip_given:
        raise ConfigError(
            f"{clip_given[0]}: {args.checkpoint} is a {sep.name} checkpoint; enrolment clips "
            "are for the composites voicevector_vem / voicevector_avem / voicevector_ivem"
        )
    elif sep.is_av:
        if args.positive or args.negative:
            raise ConfigError(
                f"{args.checkpoint}: an audio-visual (voicevector_av) checkpoint takes --lip, "
                "not --positive / --negative"
            )
        if not args.lip:
            raise ConfigError(
                f"{args.checkpoint}: an audio-visual (voicevector_av) checkpoint needs --lip "
                "FILE.npy (the target's lip features)"
            )
        pos, neg = [], []
    else:
        if args.lip:
            raise ConfigError(
                f"--lip {args.lip}: {args.checkpoint} is an audio-only (voicevector_ae) "
                "checkpoint; give --positive enrolment instead"
            )
        if not args.positive:
            raise ConfigError(
                f"{args.checkpoint}: an audio-enrolment (voicevector_ae) checkpoint needs at "
                "least one --positive"
            )
        pos = load_enrolment(args.positive, sep.emb_dim, args.speaker_checkpoint, args.device)
        neg = load_enrolment(args.negative, sep.emb_dim, args.speaker_checkpoint, args.device)
    t0 = time.perf_counter()
    est, rate = sep.separate_file(
        args.mixture, pos, neg, lip=args.lip, lip_tolerance=args.lip_tolerance
    )
    write_audio(args.out, est, rate, subtype=args.subtype)
    if sep.is_av:
        cue = f"lip features {args.lip}"
    elif sep.is_composite:
        cue = f"{len(pos)} positive and {len(neg)} negative enrolment clip(s)"
    else:
        cue = f"{len(pos)} positive and {len(neg)} negative vector(s)"
    print(
        f"separated {len(est) / rate:.2f} s at {rate} Hz with {cue} in "
        f"{time.perf_counter() - t0:.1f}s -> {args.out}"
    )


def composite_enrolment(args: argparse.Namespace, sep: Separator) -> tuple[list, list]:
    """Positive and negative vectors of the enrolment-clip options, checked against the
    composite checkpoint (ConfigError naming the options and what the model expects)."""
    kind = f"a {sep.name} checkpoint"
    for opt, given in (("--positive", args.positive), ("--negative", args.negative)):
        if given:
            raise ConfigError(
                f"{opt}: {args.checkpoint} is {kind}; it takes enrolment clips (--enrol-lip "
                "FILE.npy ..., --negative-lip ...), not vectors"
            )
    if args.lip:
        raise ConfigError(
            f"--lip {args.lip}: {args.checkpoint} is {kind} (audio-only mixture); give the "
            "target's enrolment clips with --enrol-lip"
        )
    extra = {"av": " with --enrol-audio AUDIO ...", "iv": " with --enrol-face DIR ..."}
    if not args.enrol_lip:
        raise ConfigError(
            f"{args.checkpoint}: {kind} needs at least one --enrol-lip FILE.npy (the target's "
            f"enrolment clip lip features){extra.get(sep.clip_inputs, '')}"
        )
    groups = []
    for names in CLIP_OPTIONS.values():  # all checked before any file is read
        lips, audios, faces = (_option(args, o) for o in names)
        check_clip_counts(
            sep.name, sep.clip_inputs, len(lips), len(audios), len(faces), names, args.checkpoint
        )
        groups.append((lips, audios, faces))
    pos, neg = (
        sep.embed_clips(lips, audios, faces, args.lip_tolerance) if lips else []
        for lips, audios, faces in groups
    )
    return pos, neg


def _option(args: argparse.Namespace, option: str) -> list[str]:
    """The values of ``--some-option``."""
    return getattr(args, option[2:].replace("-", "_"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"separate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

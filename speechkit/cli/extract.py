"""Dump one layer's features of a HuBERT / ContentVec checkpoint for every utterance of a manifest.

    speechkit-extract --checkpoint ckpt.pt --layer 9 --manifest train.tsv --out feats/ \\
        [--batch-size 8] [--device cpu] [--max-chunk 1600000] [--per-utterance] [--split train] \\
        [--nshard 1] [--rank 0] [--root DIR] [--normalize auto|true|false] \\
        [--spk-emb FILE.npy | --spk2info FILE [--speaker ID] [--speaker-path-index 1]]

(also ``python -m speechkit.extract ...``). The older ``key=value`` form (``checkpoint=ckpt.pt
layer=9 manifest=train.tsv out=feats/ batch_size=8 per_utterance=true``) is still accepted: each
``key=value`` is read as ``--key value`` (underscores as dashes); an unknown key is an error that
names the closest known one.

Output (fairseq ``examples/hubert/simple_kmeans/dump_hubert_feature.py`` layout; see
``speechkit.inference.feature_dump``), for shard ``rank`` of ``nshard``:
``{split}_{rank}_{nshard}.npy`` (float32 (sum T_i, C)) and ``.len`` (frames per utterance),
``split`` defaulting to the manifest's file stem; with ``--per-utterance`` one
``out/<manifest path>.npy`` ((T_i, C)) per utterance. Files appear atomically.

ContentVec: the layers after the ordinary ones (13 .. 15 of a full ContentVec Base checkpoint) are
conditioned on a speaker embedding: ``--spk-emb FILE.npy`` (one (D,) vector for all utterances),
``--spk2info FILE --speaker ID`` (that speaker's embedding), or ``--spk2info FILE`` alone (each
utterance's speaker is path component ``--speaker-path-index`` of its manifest path; every one
is checked before any audio is read). Asking for such a layer without them is an error that says
so; the ordinary layers need nothing.

Audio input: every file's frame count must equal the manifest's ``num_samples`` and its samples
must be finite (else exit 2 naming the manifest line and the file); a file at another rate than
the model's 16 kHz is resampled with soxr and a multi-channel file averaged to mono, each with a
WARNING naming the file.

Exit status: 0 ok, 2 bad input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from speechkit.data.manifest import read_manifest
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.inference.feature_dump import dump_features, shard_range
from speechkit.inference.speaker_conditioning import SpeakerConditioning

__all__ = ["add_speaker_args", "build_parser", "legacy_key_values", "main", "run", "speakers_of"]

PROG = "speechkit.extract"
"""Prefix of the one-line error messages."""


def _parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def _parse_auto_bool(value: str) -> bool | None:
    return None if value.strip().lower() in ("auto", "none", "null") else _parse_bool(value)


def add_speaker_args(p: argparse.ArgumentParser) -> None:
    """The ContentVec speaker options (``speechkit.inference.speaker_conditioning``)."""
    g = p.add_argument_group("ContentVec speaker-conditioned layers")
    g.add_argument("--spk-emb", metavar="FILE.npy", help="one (D,) speaker embedding for all")
    g.add_argument("--spk2info", metavar="FILE", help="speaker table (spk2info.dict)")
    g.add_argument("--speaker", metavar="ID", help="use this spk2info speaker for all")
    g.add_argument(
        "--speaker-path-index",
        type=int,
        default=1,
        metavar="N",
        help="without --speaker: the speaker id is path component N of each manifest path",
    )


def speakers_of(args: argparse.Namespace) -> SpeakerConditioning:
    """The ``SpeakerConditioning`` of the options of ``add_speaker_args`` (validated)."""
    cond = SpeakerConditioning(
        emb_file=args.spk_emb,
        spk2info=args.spk2info,
        speaker=args.speaker,
        speaker_path_index=args.speaker_path_index,
    )
    cond.validate()
    return cond


def build_parser() -> argparse.ArgumentParser:
    called = Path(sys.argv[0]).name
    p = argparse.ArgumentParser(
        prog=called if called.startswith("speechkit-") else "python -m speechkit.extract",
        description=__doc__.splitlines()[0],
        epilog="Old form: key=value arguments (checkpoint=... layer=...), read as --key value.",
    )
    p.add_argument("--checkpoint", required=True, help="HuBERT / ContentVec checkpoint")
    p.add_argument("--layer", type=int, required=True, help="1-based (fairseq output_layer)")
    p.add_argument("--manifest", required=True, help="fairseq .tsv manifest")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-chunk", type=int, default=1_600_000, help="samples per chunk")
    p.add_argument(
        "--per-utterance",
        type=_parse_bool,
        nargs="?",
        const=True,
        default=False,
        help="one .npy per utterance",
    )
    p.add_argument("--split", help="output prefix (default: the manifest's file stem)")
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--root", help="audio root replacing the manifest's first line")
    p.add_argument(
        "--normalize",
        type=_parse_auto_bool,
        default=None,
        metavar="auto|true|false",
        help="waveform normalisation (auto: as the checkpoint says)",
    )
    add_speaker_args(p)
    return p


def legacy_key_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Rewrite the old ``key=value`` arguments as ``--key=value`` (underscores as dashes).

    An argument is read as ``key=value`` when it does not start with ``-``, holds ``=`` and is
    not the value of the option before it.

    Raises:
        ConfigError: an unknown key (with the closest known one) or a key given twice.
    """
    options = {
        s[2:].replace("-", "_"): a
        for s, a in parser._option_string_actions.items()
        if s.startswith("--") and s != "--help"
    }
    out: list[str] = []
    seen: set[str] = set()
    takes_value = False
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not takes_value and not arg.startswith("-") and sep and key.isidentifier():
            if key not in options:
                close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"unknown key {key!r}{hint}; valid keys: {', '.join(options)}")
            if key in seen:
                raise ConfigError(f"key {key!r} given twice")
            seen.add(key)
            out.append(f"--{key.replace('_', '-')}={value}")
            takes_value = False
            continue
        out.append(arg)
        action = parser._option_string_actions.get(arg) if arg.startswith("-") else None
        takes_value = action is not None and action.nargs != 0 and action.nargs != "?"
    return out


def run(args: argparse.Namespace) -> list[Path]:
    """Run the extraction described by ``build_parser()``'s result; returns the files written.

    Raises:
        ConfigError: bad batch size, shard, layer or speaker options (see ``SpeakerConditioning``).
        CheckpointError, DataError: unreadable checkpoint, manifest, audio or speaker table.
    """
    from speechkit.inference.hubert_features import HubertFeatureExtractor

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    speakers = speakers_of(args)
    manifest = read_manifest(args.manifest, root_override=args.root)
    start, end = shard_range(len(manifest), args.nshard, args.rank)
    extractor = HubertFeatureExtractor.from_checkpoint(
        args.checkpoint,
        device=args.device,
        max_chunk=args.max_chunk,
        normalize=args.normalize,
        spk2info=speakers.spk2info,
    )
    layer = args.layer
    speakers.bind(extractor, layer)
    speakers.check_manifest(manifest, start, end, extractor)
    split = args.split or Path(args.manifest).stem
    return dump_features(
        manifest,
        lambda wavs, paths: extractor.features_batch(wavs, layer, speakers.spk_emb(paths)),
        args.out,
        split,
        sample_rate=extractor.sample_rate,
        nshard=args.nshard,
        rank=args.rank,
        batch_size=args.batch_size,
        per_utterance=args.per_utterance,
        desc=f"layer {layer}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``speechkit-extract`` / ``python -m speechkit.extract``; returns the exit
    status (argparse's usage errors exit with status 2 themselves)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(legacy_key_values(argv, parser))
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = run(args)
    except SpeechkitError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    n = sum(1 for f in files if f.suffix == ".npy")
    print(f"wrote {n} .npy file(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pack a speaker-verification train list or a HuBERT manifest into tar shards.

    speechkit-pack-shards --train-list lists/vox2_dev.txt --root data/vox2/wav OUT_DIR \\
        [--shard-size 1GB]
    speechkit-pack-shards --manifest data/train.tsv --labels labels/train.km OUT_DIR \\
        [--label-rates 50] [--min-samples 32000] [--max-samples 250000] [--root-override DIR]

Writes ``OUT_DIR/shard-000000.tar ...`` of about ``--shard-size`` bytes each and, last,
``OUT_DIR/shards.json`` (shard names, sample counts, speakers or label streams, for a manifest the
total audio). Each utterance is ``<key>.json`` (speaker or labels, num_samples, original path)
plus ``<key>.wav`` (the file's bytes as stored); the layout is described in
:mod:`speechkit.data.shards` and read by :class:`speechkit.data.shard_dataset.ShardDataset`.
The shards follow wespeaker's ``tools/make_shard_list.py`` (webdataset tar layout), written with
Python's ``tarfile``.

Every file is written atomically (temporary file, then rename), so an interrupted run leaves no
half shard and no index; run it again. A malformed list or manifest line, a label file of
another length, mismatched audio/label durations (``--label-rates``) and missing audio (all
reported at once) are found before anything is written; an unreadable file, a wrong sample rate or
a header length that disagrees with the manifest stops the run while packing, before the index
is written. Each error is one line naming the file and line.

Exit status: 0 done; 2 bad input or an output that cannot be written (message on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys

from speechkit.data.shards import pack_manifest, pack_train_list, parse_size
from speechkit.errors import SpeechkitError

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pack_shards",
        description="Pack a train list or a manifest into tar shards for streaming training.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-list", help="voxceleb_trainer list: 'speaker_id relative/path.wav'")
    src.add_argument(
        "--manifest", help="fairseq manifest (.tsv): root line, 'path<TAB>num_samples'"
    )
    p.add_argument("out_dir", help="output folder for shard-*.tar and shards.json")
    p.add_argument("--root", help="folder the train list's paths are relative to (train list)")
    p.add_argument("--labels", nargs="*", default=[], help="label files, one line per entry")
    p.add_argument(
        "--label-rates",
        nargs="*",
        type=float,
        help="labels per second of each label file; checks audio/label durations (0.1 s)",
    )
    p.add_argument("--root-override", help="replaces the manifest's root line")
    p.add_argument("--min-samples", type=int, help="leave out manifest entries shorter than this")
    p.add_argument("--max-samples", type=int, help="leave out manifest entries longer than this")
    p.add_argument("--shard-size", default="1GB", help="target shard size (1GB, 500MB, 64MiB)")
    p.add_argument("--sample-rate", type=int, default=16000, help="required rate of every file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shards.json")
    args = p.parse_args(argv)
    if args.train_list and not args.root:
        p.error("--train-list needs --root (the folder its paths are relative to)")
    if args.train_list and (
        args.labels or args.label_rates or args.min_samples or args.max_samples
    ):
        p.error("--labels, --label-rates, --min-samples and --max-samples need --manifest")
    return args


def run(args: argparse.Namespace) -> None:
    """Pack as ``args`` say and log a summary line.

    Raises:
        SpeechkitError: bad input (``DataError``/``ConfigError``) or output (``OutputError``).
    """
    size = parse_size(args.shard_size)
    if args.train_list:
        index = pack_train_list(
            args.train_list, args.root, args.out_dir, size, args.sample_rate, args.overwrite
        )
        extra = f"{len(index.speakers)} speakers"
    else:
        index = pack_manifest(
            args.manifest,
            args.out_dir,
            args.labels,
            args.label_rates,
            args.root_override,
            size,
            args.sample_rate,
            args.min_samples,
            args.max_samples,
            args.overwrite,
        )
        hours = (index.total_audio_samples or 0) / index.sample_rate / 3600
        extra = f"{hours:.2f} h of audio, label streams {index.label_streams}"
    print(
        f"pack_shards: {index.num_samples} samples in {len(index.shards)} shards, {extra}: "
        f"{index.path}"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"pack_shards: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

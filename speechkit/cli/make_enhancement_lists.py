"""Train and test lists for speaker-embedding enhancement, seeded and balanced.

    speechkit-make-enhancement-lists --list lists/train.txt [--list ...] \\
        --out-dir lists/enh --name train [--formats normal,test,triplet,distribution] \\
        [--seed 1] [--trials-per-utterance 4] [--category session|block --block-size 5] \\
        [--emb-dir emb/]

Reads ``speaker path`` lists and writes ``<out-dir>/<name>_<format>_list.txt`` in the four
formats of Dorika0203/proj_2022NC ``m_gen_list.py``,
paths with ``.npy`` instead of the audio suffix:

* ``normal``: ``speaker_id file``, every utterance, in list order.
* ``test``: ``label file1 file2``. For every utterance up to ``--trials-per-utterance`` random
  partners of its speaker and up to ``--trials-per-utterance`` random utterances of other
  speakers (a one-utterance speaker still gets non-target trials); repeated pairs are
  dropped, then the larger side is subsampled so the list has as many target as non-target
  trials; shuffled.
* ``triplet``: ``speaker_id file other_speaker_id``, the other speaker drawn uniformly.
* ``distribution``: ``speaker_id file1 file2 same_flag``. Per speaker, flag 1 pairs are
  consecutive files of one category (files 0-1, 2-3 ... of each); flag 0 pairs are drawn
  repeatedly from the smallest and the largest category with files left; the larger side is
  subsampled so every speaker has as many of each. Speakers with one category give no pairs.
  ``--category session`` uses the recording session (LibriSpeech chapter, VoxCeleb video: the
  reference's category); ``--category block`` uses consecutive blocks of ``--block-size`` files
  of the speaker, a proxy for corpora where every speaker has one session.

Every format draws from its own ``random.Random`` seeded from ``--seed``, so the same command
gives the same files. Exit status: 0 ok, 2 bad input (``make_enhancement_lists: error: ...``).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from speechkit.data.embedding_dataset import (
    LIST_FORMATS,
    SESSION_RULES,
    ListEntry,
    check_speaker_id,
    embedding_path,
    session_of,
    write_enhancement_list,
)
from speechkit.data.lists import read_list_fields
from speechkit.errors import DataError, SpeechkitError

Utterances = dict[str, list[str]]


def read_utterances(lists: list[str], emb_dir: str | None = None) -> Utterances:
    """Speaker -> ``.npy`` paths (list order, repeats dropped) of ``speaker path`` lists.

    Raises:
        DataError: a malformed list line, a bad speaker id, or with ``emb_dir`` a missing
            ``.npy`` (list and line named).
    """
    utts: Utterances = {}
    for lst in lists:
        for lineno, (speaker, path) in read_list_fields(lst, (2,), "speaker_id path"):
            check_speaker_id(speaker, f"{lst}:{lineno}")
            npy = embedding_path(path)
            if emb_dir is not None and not (Path(emb_dir) / npy).is_file():
                raise DataError(f"{lst}:{lineno}: embedding file not found: {Path(emb_dir) / npy}")
            files = utts.setdefault(speaker, [])
            if npy not in files:
                files.append(npy)
    return utts


def normal_entries(utts: Utterances) -> list[ListEntry]:
    """Every utterance as ``speaker file``."""
    return [ListEntry((f,), s) for s, files in utts.items() for f in files]


def test_entries(utts: Utterances, rng: random.Random, per_utterance: int) -> list[ListEntry]:
    """Balanced ``label file1 file2`` trials (see the module docstring).

    Raises:
        DataError: fewer than two speakers, or no speaker with two utterances.
    """
    speakers = list(utts)
    if len(speakers) < 2 or not any(len(f) > 1 for f in utts.values()):
        raise DataError(
            "a test list needs at least 2 speakers and a speaker with 2 or more utterances"
        )
    same: dict[tuple[str, str], None] = {}
    diff: dict[tuple[str, str], None] = {}
    everyone = [(s, f) for s in speakers for f in utts[s]]
    for speaker, files in utts.items():
        n_others = len(everyone) - len(files)
        for i, f in enumerate(files):
            partners = files[:i] + files[i + 1 :]
            for g in rng.sample(partners, min(per_utterance, len(partners))):
                same.setdefault(tuple(sorted((f, g))), None)
            # other speakers' files by rejection: O(per_utterance) per file, not O(N)
            picked: set[str] = set()
            while len(picked) < min(per_utterance, n_others):
                other, g = rng.choice(everyone)
                if other != speaker:
                    picked.add(g)
            for g in sorted(picked):
                diff.setdefault(tuple(sorted((f, g))), None)
    n = min(len(same), len(diff))
    trials = [(1, p) for p in rng.sample(list(same), n)] + [
        (0, p) for p in rng.sample(list(diff), n)
    ]
    rng.shuffle(trials)
    return [ListEntry(pair, flag=label) for label, pair in trials]


def triplet_entries(utts: Utterances, rng: random.Random) -> list[ListEntry]:
    """``speaker file other_speaker`` with the other speaker drawn uniformly.

    Raises:
        DataError: fewer than two speakers.
    """
    speakers = list(utts)
    if len(speakers) < 2:
        raise DataError("a triplet list needs at least 2 speakers")
    entries = []
    for speaker, files in utts.items():
        others = [s for s in speakers if s != speaker]
        entries += [ListEntry((f,), speaker, other_speaker=rng.choice(others)) for f in files]
    return entries


def categories_of(
    files: list[str], category: str, block_size: int, session_rule: str
) -> dict[str, list[str]]:
    """Category -> files of one speaker, in file order."""
    cats: dict[str, list[str]] = {}
    for i, f in enumerate(files):
        key = session_of(f, session_rule) if category == "session" else str(i // block_size)
        cats.setdefault(key, []).append(f)
    return cats


def distribution_entries(
    utts: Utterances,
    rng: random.Random,
    category: str = "session",
    block_size: int = 5,
    session_rule: str = "auto",
) -> list[ListEntry]:
    """Balanced same/cross-category pairs per speaker (see the module docstring).

    Raises:
        DataError: no speaker has files in two categories.
    """
    entries = []
    for speaker, files in utts.items():
        cats = categories_of(files, category, block_size, session_rule)
        same = [(fs[i], fs[i + 1]) for fs in cats.values() for i in range(0, len(fs) - 1, 2)]
        pools = {c: rng.sample(fs, len(fs)) for c, fs in cats.items()}
        diff = []
        while len(diff) < len(same):
            left = sorted((c for c in pools if pools[c]), key=lambda c: (len(pools[c]), c))
            if len(left) < 2:
                break
            diff.append((pools[left[0]].pop(), pools[left[-1]].pop()))
        n = min(len(same), len(diff))
        keep = sorted(rng.sample(range(len(same)), n))
        entries += [ListEntry(same[i], speaker, flag=1) for i in keep]
        entries += [ListEntry(p, speaker, flag=0) for p in diff[:n]]
    if not entries:
        raise DataError(
            f"no speaker has files in two {category} categories, so there are no cross-"
            f"{category} pairs; with one session per speaker use --category block"
        )
    return entries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--list", action="append", required=True, help="'speaker path' list (repeatable)"
    )
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", required=True, help="output prefix: <name>_<format>_list.txt")
    p.add_argument(
        "--formats",
        default=",".join(LIST_FORMATS),
        help=f"comma-separated subset of {','.join(LIST_FORMATS)}",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--trials-per-utterance", type=int, default=4)
    p.add_argument("--category", choices=("session", "block"), default="session")
    p.add_argument("--block-size", type=int, default=5)
    p.add_argument("--session-rule", choices=SESSION_RULES, default="auto")
    p.add_argument("--emb-dir", default=None, help="check that every .npy exists here")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Path]:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in LIST_FORMATS]
    if bad or not formats:
        raise DataError(f"--formats {args.formats!r}: expected a subset of {LIST_FORMATS}")
    if args.trials_per_utterance < 1 or args.block_size < 2:
        raise DataError("--trials-per-utterance must be >= 1 and --block-size >= 2")
    utts = read_utterances(args.list, args.emb_dir)
    written = {}
    for fmt in formats:
        rng = random.Random(args.seed * len(LIST_FORMATS) + LIST_FORMATS.index(fmt))
        if fmt == "normal":
            entries = normal_entries(utts)
        elif fmt == "test":
            entries = test_entries(utts, rng, args.trials_per_utterance)
        elif fmt == "triplet":
            entries = triplet_entries(utts, rng)
        else:
            entries = distribution_entries(
                utts, rng, args.category, args.block_size, args.session_rule
            )
        path = Path(args.out_dir) / f"{args.name}_{fmt}_list.txt"
        written[fmt] = write_enhancement_list(path, fmt, entries)
        print(f"{fmt}: {len(entries)} lines -> {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except SpeechkitError as e:
        print(f"make_enhancement_lists: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

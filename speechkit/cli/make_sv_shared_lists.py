"""Write the train list of the ``sv_shared_aam`` preset from ``../shared/data``.

    speechkit-make-sv-shared-lists [--data ../shared/data] [--out demo_data/sv_shared]

Every labelled speaker of the shared data goes into ``OUT/train_list.txt``
(``speaker_id relative/path.wav``, paths relative to ``--data``): the 211 one-utterance
LibriSpeech train-clean-100 cohort speakers (``lists/cohort_list.txt``), the LibriSpeech
test-other speakers (``lists/librispeech_test_other_train_all.txt``), the 2 VoxCeleb1 speakers
(``lists/voxceleb1_mini_train_list.txt``) and the HuBERT reference utterance's speaker
(``ls6313``), EXCEPT every speaker with a file in the held-out trial list (``--trials``, default
``lists/split_test_trials.txt``: test-other speakers 2609, 3005, 3080 and 3331). The trial list
itself is used in place (the preset's ``task.test_list``). A speaker is identified by its list
label; a trial file's speaker is the label its path has in the train lists.

Exit status: 0 ok, 2 bad input (one ``make_sv_shared_lists: error: ...`` line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechkit.cli.paths import DEMO_DATA, find_shared_data
from speechkit.data.lists import read_train_list
from speechkit.errors import SpeechkitError
from speechkit.metrics.scoring import read_trial_list

SOURCES = (
    "lists/cohort_list.txt",
    "lists/librispeech_test_other_train_all.txt",
    "lists/voxceleb1_mini_train_list.txt",
)
EXTRA = (("ls6313", "speech/hubert_reference/6313-76958-0021.wav"),)


def build_lists(data: Path, trials: Path) -> tuple[list[tuple[str, str]], set[str]]:
    """``(train items, held-out speakers)``: every listed (speaker, relative path) of the shared
    data whose speaker has no file in ``trials``.

    Raises:
        DataError: a missing list or audio file, or a trial file of unknown speaker.
    """
    items: list[tuple[str, str]] = []
    for name in SOURCES:
        for speaker, path in read_train_list(data / name, data, check_exists=True):
            items.append((speaker, str(Path(path).relative_to(data))))
    for speaker, rel in EXTRA:
        if not (data / rel).is_file():
            raise SpeechkitError(f"{data / rel}: file not found; expected the shared data")
        items.append((speaker, rel))
    speaker_of = {path: speaker for speaker, path in items}
    trial_list = read_trial_list(trials, data)
    unknown = [p for p in trial_list.unique_paths() if p not in speaker_of]
    if unknown:
        raise SpeechkitError(
            f"{trials}: {len(unknown)} trial files have no speaker in the train lists "
            f"(first: {unknown[0]}); expected files of {', '.join(SOURCES)}"
        )
    held_out = {speaker_of[p] for p in trial_list.unique_paths()}
    return [(s, p) for s, p in items if s not in held_out], held_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", help="shared data folder (default: ../shared/data, see speechkit.cli.paths)"
    )
    p.add_argument("--trials", default=None, help="held-out trial list (default: split_test)")
    p.add_argument("--out", default=str(DEMO_DATA / "sv_shared"))
    args = p.parse_args(argv)
    data = find_shared_data(SOURCES[0], args.data)
    if data is None:
        where = args.data or "../shared/data ($SPEECHKIT_SHARED_DATA)"
        print(f"make_sv_shared_lists: error: {where}: {SOURCES[0]} not found", file=sys.stderr)
        return 2
    trials = Path(args.trials) if args.trials else data / "lists/split_test_trials.txt"
    try:
        items, held_out = build_lists(data, trials)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_list.txt").write_text("".join(f"{s} {p}\n" for s, p in items))
    except (SpeechkitError, OSError) as e:
        print(f"make_sv_shared_lists: error: {e}", file=sys.stderr)
        return 2
    n_spk = len({s for s, _ in items})
    print(
        f"{out / 'train_list.txt'}: {len(items)} utterances of {n_spk} speakers "
        f"(held out for {trials.name}: {', '.join(sorted(held_out))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prepare the data of the README demo: a 10-speaker train list and a balanced trial list.

With ``../shared/data`` (the project's real test data) present, the demo uses its LibriSpeech
test-other speakers and lists directly (a symlink, nothing is copied). Otherwise it downloads
LibriSpeech ``test-other`` (328 MB, OpenSLR SLR12) with a progress bar, checks the publisher's
MD5, extracts it and builds the same kind of lists: ``--speakers`` speakers x
``--utterances`` utterances, every same-speaker pair as a target trial and as many
different-speaker pairs drawn with ``random.Random(seed)``.

Output (``--out``, default ``demo_data/``)::

    demo_data/data -> audio root (symlink to shared/data, or the extracted LibriSpeech)
    demo_data/train_list.txt   speaker_id relative/path   (relative to demo_data/data)
    demo_data/trials.txt       label path1 path2

Usage: ``speechkit-prepare-demo-data [--out demo_data] [--shared PATH] [--download]``
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

from speechkit.cli.paths import DEMO_DATA, find_shared_data

LIBRISPEECH_URL = "https://www.openslr.org/resources/12/test-other.tar.gz"
LIBRISPEECH_MD5 = "fb5a50374b501bb3bac4815ee91d3135"  # openslr.org/resources/12/md5sum.txt
SHARED_TRAIN = "lists/librispeech_test_other_train_all.txt"
SHARED_TRIALS = "lists/librispeech_test_other_trials_all.txt"


class PrepareError(Exception):
    pass


def find_shared(explicit: str | None) -> Path | None:
    """The shared test data (``speechkit.cli.paths``), or None; PrepareError when the folder
    named by ``--shared`` lacks it."""
    found = find_shared_data(SHARED_TRAIN, explicit)
    if found is None and explicit:
        raise PrepareError(f"--shared {explicit}: {SHARED_TRAIN} not found there")
    return found


def download(url: str, dest: Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` (resumes nothing; a finished, verified file is reused)."""
    if dest.is_file() and file_md5(dest) == md5:
        print(f"{dest} already downloaded and verified")
        return dest
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PrepareError(f"download of {url} failed: {e}") from None
    got = file_md5(tmp)
    if got != md5:
        tmp.unlink()
        raise PrepareError(
            f"checksum mismatch for {url}: md5 {got}, expected {md5}; "
            "the partial file was removed, run again"
        )
    os.replace(tmp, dest)
    return dest


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def extract(archive: Path, into: Path) -> Path:
    """Extract the archive (only regular files and folders inside ``into``)."""
    done = into / ".extracted"
    if not done.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        done.touch()
    roots = sorted(into.glob("LibriSpeech/*/"))
    if not roots:
        raise PrepareError(f"{archive} holds no LibriSpeech/<subset>/ folder")
    return into


def librispeech_lists(root: Path, speakers: int, utterances: int, seed: int):
    """Train list and trials from an extracted LibriSpeech tree under ``root``."""
    by_spk: dict[str, list[str]] = {}
    for flac in sorted(root.glob("LibriSpeech/*/*/*/*.flac")):
        by_spk.setdefault(flac.parts[-3], []).append(str(flac.relative_to(root)))
    chosen = sorted((s for s, f in by_spk.items() if len(f) >= utterances), key=int)[:speakers]
    if len(chosen) < 2:
        raise PrepareError(
            f"{root}: need 2 speakers with {utterances} utterances, found {len(chosen)}"
        )
    train = [(f"ls{s}", p) for s in chosen for p in by_spk[s][:utterances]]
    return train, balanced_trials(train, seed)


def balanced_trials(train: list[tuple[str, str]], seed: int) -> list[tuple[int, str, str]]:
    """All same-speaker pairs plus as many different-speaker pairs (data/README's recipe)."""
    rng = random.Random(seed)
    target = [(1, a[1], b[1]) for a, b in itertools.combinations(train, 2) if a[0] == b[0]]
    nontarget_all = [(0, a[1], b[1]) for a, b in itertools.combinations(train, 2) if a[0] != b[0]]
    trials = target + rng.sample(nontarget_all, min(len(target), len(nontarget_all)))
    rng.shuffle(trials)
    return trials


def link(target: Path, name: Path) -> None:
    if name.is_symlink() or name.exists():
        if name.is_symlink() and name.resolve() == target.resolve():
            return
        if name.is_symlink() or name.is_file():
            name.unlink()
        else:
            shutil.rmtree(name)
    name.symlink_to(target, target_is_directory=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEMO_DATA))
    p.add_argument("--shared", default=None, help="shared data folder (default ../shared/data)")
    p.add_argument("--download", action="store_true", help="download even if shared data exists")
    p.add_argument("--url", default=LIBRISPEECH_URL)
    p.add_argument("--md5", default=LIBRISPEECH_MD5)
    p.add_argument("--speakers", type=int, default=10)
    p.add_argument("--utterances", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        shared = None if args.download else find_shared(args.shared)
        if shared is not None:
            link(shared, out / "data")
            shutil.copyfile(shared / SHARED_TRAIN, out / "train_list.txt")
            shutil.copyfile(shared / SHARED_TRIALS, out / "trials.txt")
            print(f"demo data: {shared} (shared test data) -> {out}")
            return 0
        archive = download(args.url, out / "downloads" / Path(args.url).name, args.md5)
        root = extract(archive, out / "librispeech")
        train, trials = librispeech_lists(root, args.speakers, args.utterances, args.seed)
        link(root, out / "data")
        (out / "train_list.txt").write_text("".join(f"{s} {p}\n" for s, p in train))
        (out / "trials.txt").write_text("".join(f"{lab} {a} {b}\n" for lab, a, b in trials))
        print(f"demo data: {len(train)} utterances, {len(trials)} trials -> {out}")
        return 0
    except PrepareError as e:
        print(f"prepare_demo_data: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

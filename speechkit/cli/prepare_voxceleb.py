"""Prepare VoxCeleb1/2 for speaker verification: 16 kHz WAVs, a train list and trial lists.

    speechkit-prepare-voxceleb --root data/voxceleb2/dev/aac \\
        --out-root data/voxceleb2/dev/wav --train-list lists/vox2_dev.txt --workers 8
    speechkit-prepare-voxceleb --root data/voxceleb1/wav \\
        --trials veri_test2.txt list_test_all2.txt list_test_hard2.txt --trials-dir lists/

Input: an extracted VoxCeleb tree ``<root>/<speaker_id>/<youtube_id>/<utterance>.{wav,m4a}``
(VoxCeleb1 ships WAV, VoxCeleb2 AAC in ``.m4a``). Every file gets a 16 kHz mono 16-bit WAV at
``<out-root>/<speaker_id>/<youtube_id>/<utterance>.wav``:

* ``.m4a`` (and any other container) is decoded with PyAV, trimmed to the container's declared
  duration, averaged to mono and resampled with soxr when it is not 16 kHz;
* a ``.wav`` already under ``--out-root`` is used in place; with another ``--out-root`` a 16 kHz
  mono 16-bit WAV is hard-linked (copied across file systems), others are converted.

Outputs that exist are skipped (``--overwrite`` redoes them), and every write goes to a temporary
file renamed into place, so an interrupted run is simply started again. Files are converted by
``--workers`` processes with a progress bar.

``--train-list`` writes voxceleb_trainer's ``speaker_id relative/path.wav`` lines (relative to
``--out-root``, sorted). ``--trials`` takes official trial lists: ``veri_test2.txt`` (Vox1-O) and
the Vox1-E / Vox1-H lists ``list_test_all2.txt`` / ``list_test_hard2.txt`` (and their uncleaned
versions) are already ``label path1 path2``; each is checked (labels 0/1, every file present
under ``--out-root``; ``.m4a`` paths become ``.wav``) and written to ``--trials-dir``. Vox1-E/H
use all VoxCeleb1 speakers, so dev and test must be extracted into the same ``--root``.

Exit status: 0 done; 2 bad input, failed conversions or missing trial files (message on stderr;
what was converted is kept, and the train list lists the files that succeeded).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.atomic import atomic_link, atomic_write_text
from speechkit.data.audio import audio_info, resample_waveform, write_audio
from speechkit.errors import DataError, SpeechkitError

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".m4a")
TREE = "<root>/<speaker_id>/<youtube_id>/<utterance>.wav|.m4a"


@dataclass(frozen=True)
class Job:
    """One file to prepare: ``source`` (absolute) -> ``target`` (absolute 16 kHz WAV)."""

    source: Path
    target: Path
    overwrite: bool = False


@dataclass(frozen=True)
class Result:
    """What :func:`prepare_file` did: status ``converted``, ``linked``, ``in_place``,
    ``exists`` or ``failed`` (with ``message``)."""

    job: Job
    status: str
    message: str = ""


# ------------------------------------------------------------------------------------------------
# scanning


def scan_tree(root: Path) -> list[Path]:
    """Audio files ``<speaker>/<video>/<utterance>.{wav,m4a}`` under ``root``, relative, sorted.

    Raises:
        DataError: ``root`` is missing or not a folder, or holds no audio at that depth (the
            message shows what it found instead).
    """
    if not root.exists():
        raise DataError(f"--root {root} does not exist; expected an extracted VoxCeleb tree {TREE}")
    if not root.is_dir():
        raise DataError(f"--root {root} is not a folder; expected {TREE}")
    found: list[Path] = []
    elsewhere: list[str] = []
    for speaker in sorted(os.scandir(root), key=lambda e: e.name):
        if not speaker.is_dir() or speaker.name.startswith("."):
            continue
        for video in sorted(os.scandir(speaker.path), key=lambda e: e.name):
            if not video.is_dir():
                if video.name.lower().endswith(AUDIO_SUFFIXES):
                    elsewhere.append(f"{speaker.name}/{video.name}")
                continue
            for utt in os.scandir(video.path):
                if utt.is_file() and utt.name.lower().endswith(AUDIO_SUFFIXES):
                    if not utt.name.startswith("."):
                        found.append(Path(speaker.name, video.name, utt.name))
                elif utt.is_dir() and len(elsewhere) < 3:
                    elsewhere.append(f"{speaker.name}/{video.name}/{utt.name}/")
    if not found:
        hint = f" (found instead: {', '.join(elsewhere[:3])})" if elsewhere else ""
        raise DataError(f"--root {root}: no .wav or .m4a files at {TREE}{hint}")
    return sorted(found)


def make_jobs(root: Path, out_root: Path, files: Iterable[Path], overwrite: bool) -> list[Job]:
    """One :class:`Job` per relative path: target = ``out_root/<path>.wav``."""
    return [Job(root / f, out_root / f.with_suffix(".wav"), overwrite) for f in files]


# ------------------------------------------------------------------------------------------------
# decoding and writing


def decode_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any container PyAV (FFmpeg) reads.

    The decoded samples are trimmed to the stream's declared duration when the container gives
    one (the AAC encoder pads the last frame).

    Returns:
        ``(samples (C, L) float32, sample_rate in Hz)``.

    Raises:
        DataError: PyAV missing, an unreadable / corrupt file, or no audio stream.
    """
    try:
        import av
    except ImportError:
        raise DataError(f"{path}: decoding needs PyAV: pip install av") from None
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(f"{path}: the file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
            rate = None
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    rate = out.sample_rate
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
            declared = None
            if stream.duration and stream.time_base and rate:
                declared = int(round(float(stream.duration * stream.time_base) * rate))
    except av.error.FFmpegError as e:
        raise DataError(f"{path}: cannot decode audio with PyAV/FFmpeg ({e})") from None
    if not chunks or rate is None:
        raise DataError(f"{path}: the audio stream holds no samples")
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if declared is not None and 0 < declared < samples.shape[1]:
        samples = samples[:, :declared]
    return samples, int(rate)


def to_wav(source: Path, target: Path) -> None:
    """Decode ``source``, mix to mono, resample to 16 kHz (soxr) and write a 16-bit WAV
    atomically (temporary file + rename).

    Raises:
        DataError: the source cannot be decoded.
    """
    samples, rate = decode_with_pyav(source)
    mono = samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]
    wav = resample_waveform(np.ascontiguousarray(mono), rate, SAMPLE_RATE)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_audio(target, np.clip(wav, -1.0, 32767 / 32768), SAMPLE_RATE, subtype="PCM_16")


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy across file systems), atomically."""
    atomic_link(source, target)


def _is_16k_mono_pcm16(path: Path) -> bool:
    import soundfile as sf

    info = audio_info(path)
    return (
        info.sample_rate == SAMPLE_RATE
        and info.channels == 1
        and sf.info(str(path)).subtype == "PCM_16"
    )


def prepare_file(job: Job) -> Result:
    """Produce ``job.target`` from ``job.source``; never raises (failures are a Result)."""
    try:
        if job.source.resolve() == job.target.resolve():
            return Result(job, "in_place")
        if job.target.exists() and not job.overwrite:
            return Result(job, "exists")
        if job.source.suffix.lower() == ".wav" and _is_16k_mono_pcm16(job.source):
            link_or_copy(job.source, job.target)
            return Result(job, "linked")
        to_wav(job.source, job.target)
        return Result(job, "converted")
    except Exception as e:  # one bad file must not stop a million-file run; reported at the end
        return Result(job, "failed", str(e) or type(e).__name__)


def run_jobs(jobs: list[Job], workers: int, progress: bool = True) -> Iterator[Result]:
    """Run :func:`prepare_file` over ``jobs`` (in order), in ``workers`` processes when > 1."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="file", desc="prepare", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                yield prepare_file(job)
                bar.update()
            return
        chunk = max(1, min(64, len(jobs) // (workers * 4)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(prepare_file, jobs, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------
# lists


def train_list_lines(paths: Iterable[Path], exclude: set[str] = frozenset()) -> list[str]:
    """``speaker_id relative/path.wav`` lines (the speaker is the first path component), sorted."""
    lines = [f"{p.parts[0]} {p.as_posix()}" for p in sorted(paths) if p.parts[0] not in exclude]
    return lines


@dataclass
class TrialList:
    """A checked trial list: ``lines`` to write, the files it needs and the trials dropped."""

    lines: list[str]
    paths: list[str]
    dropped: int = 0


def read_trials(path: Path, prefix: str = "") -> TrialList:
    """Parse an official VoxCeleb trial list (``label path1 path2`` or ``path1 path2``).

    ``.m4a`` paths become ``.wav``, ``prefix`` is prepended, a leading ``./`` is removed.

    Raises:
        DataError: missing / unreadable file, no trials, a line (named by number) with another
            field count than the first, or a label other than 0 / 1.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"trial list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read trial list {path}: {e}") from None
    lines, paths = [], []
    fields_per_line = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3) or (fields_per_line and len(fields) != fields_per_line):
            expected = "'label path1 path2' (or 'path1 path2')"
            raise DataError(
                f"{path}:{lineno}: expected {expected} like the first trial line, got {raw!r}"
            )
        fields_per_line = len(fields)
        if len(fields) == 3 and fields[0] not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: label must be 0 or 1, got {fields[0]!r}")
        pair = [_trial_path(f, prefix) for f in fields[-2:]]
        paths += pair
        lines.append(" ".join(fields[:-2] + pair))
    if not lines:
        raise DataError(f"trial list {path} has no trials")
    return TrialList(lines, paths)


def _trial_path(text: str, prefix: str) -> str:
    if text.startswith("./"):
        text = text[2:]
    if text.lower().endswith(".m4a"):
        text = text[:-4] + ".wav"
    return prefix + text


def check_trials(
    trials: TrialList, source: Path, audio_root: Path, skip_missing: bool
) -> TrialList:
    """Check every file of ``trials`` exists under ``audio_root``; drop those trials or raise.

    Raises:
        DataError: missing files without ``skip_missing``, with the count, examples and, when
            whole speakers are missing, the Vox1-E/H hint.
    """
    missing = {p for p in dict.fromkeys(trials.paths) if not (audio_root / p).is_file()}
    if not missing:
        return trials
    if skip_missing:
        kept = [line for line in trials.lines if not any(p in missing for p in line.split()[-2:])]
        return TrialList(
            kept, [p for line in kept for p in line.split()[-2:]], len(trials.lines) - len(kept)
        )
    speakers = {p.split("/", 1)[0] for p in missing}
    absent = sorted(s for s in speakers if not (audio_root / s).is_dir())
    hint = ""
    if absent:
        hint = (
            f"; {len(absent)} speaker folder(s) are absent (e.g. {', '.join(absent[:3])}): "
            "Vox1-E/H lists use VoxCeleb1 dev and test, extract both into one --root"
        )
    examples = ", ".join(sorted(missing)[:3])
    raise DataError(
        f"{source}: {len(missing)} file(s) not found under {audio_root} (e.g. {examples}){hint}; "
        "--skip-missing-trials drops those trials"
    )


# ------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help=f"extracted VoxCeleb tree {TREE}")
    p.add_argument("--out-root", help="where the 16 kHz WAVs go (default: --root)")
    p.add_argument("--train-list", help="write 'speaker_id relative/path.wav' lines here")
    p.add_argument("--trials", nargs="+", default=[], help="official trial lists to convert")
    p.add_argument(
        "--trials-dir",
        help="folder for converted trial lists (default: the train list's folder, else --out-root)",
    )
    p.add_argument("--trial-prefix", default="", help="prefix added to every trial path")
    p.add_argument(
        "--skip-missing-trials",
        action="store_true",
        help="drop trials whose files are missing instead of failing",
    )
    p.add_argument(
        "--exclude-trial-speakers",
        action="store_true",
        help="leave the speakers of --trials out of the train list",
    )
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    out_root = Path(args.out_root) if args.out_root else root
    files = scan_tree(root)
    speakers = {f.parts[0] for f in files}
    print(f"{len(files)} audio files of {len(speakers)} speakers under {root}")

    trial_lists: list[tuple[Path, TrialList]] = []
    for name in args.trials:
        trial_lists.append((Path(name), read_trials(Path(name), args.trial_prefix)))

    jobs = make_jobs(root, out_root, files, args.overwrite)
    counts: dict[str, int] = {}
    failed: list[Result] = []
    done: list[Path] = []
    for result in run_jobs(jobs, args.workers, progress=not args.no_progress):
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.status == "failed":
            failed.append(result)
        else:
            done.append(result.job.target.relative_to(out_root))
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" -> {out_root}")

    if args.train_list:
        exclude = set()
        if args.exclude_trial_speakers:
            exclude = {p.split("/", 1)[0] for _, t in trial_lists for p in t.paths}
        lines = train_list_lines(done, exclude)
        if not lines:
            raise DataError("the train list would be empty (every speaker excluded or failed)")
        atomic_write_text(Path(args.train_list), "\n".join(lines) + "\n")
        n_spk = len({line.split(" ", 1)[0] for line in lines})
        print(
            f"train list -> {args.train_list} ({len(lines)} files, {n_spk} speakers"
            f"{f', {len(exclude & speakers)} trial speakers excluded' if exclude else ''})"
        )

    if trial_lists:
        default_dir = Path(args.train_list).parent if args.train_list else out_root
        trials_dir = Path(args.trials_dir) if args.trials_dir else default_dir
        for source, trials in trial_lists:
            checked = check_trials(trials, source, out_root, args.skip_missing_trials)
            target = trials_dir / source.name
            if target.resolve() == source.resolve():
                raise DataError(
                    f"{target}: the converted list would replace the official one; "
                    "pass another --trials-dir"
                )
            atomic_write_text(target, "\n".join(checked.lines) + "\n")
            dropped = f", {checked.dropped} dropped (missing files)" if checked.dropped else ""
            print(f"trials -> {target} ({len(checked.lines)} trials{dropped})")

    if failed:
        shown = "\n".join(f"  {r.job.source}: {r.message}" for r in failed[:10])
        more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise SpeechkitError(
            f"{len(failed)} file(s) failed (the others are kept; run again "
            f"to retry):\n{shown}{more}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SpeechkitError as e:
        print(f"prepare_voxceleb: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

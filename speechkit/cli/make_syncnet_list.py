"""Make a SyncNet training list: ``<video.mp4> <audio.wav> <offset> <num_frames>`` per clip.

    speechkit-make-syncnet-list --mp4-dir data/voxceleb2/dev/mp4 \\
        --wav-dir data/voxceleb2/dev/wav --txt-dir data/voxceleb2/dev/txt \\
        --root data/voxceleb2/dev --out data/syncnet_train_list.txt --workers 8
    speechkit-make-syncnet-list --video-list ../shared/data/lists/video_list.txt \\
        --root ../shared/data --out runs/syncnet_demo/list.txt

Follows joonson/syncnet_trainer's ``makeFileList.py``:

* ``--mp4-dir`` scans ``<mp4-dir>/<speaker>/<video>/<clip>.mp4`` (the VoxCeleb2 layout). The
  audio is ``<wav-dir>/<same path>.wav`` and the offset file ``<txt-dir>/<same path>.txt``
  (both default to ``--mp4-dir``). Extract the WAVs first (16 kHz mono), e.g. with
  ``ffmpeg -i clip.mp4 -vn -ac 1 -ar 16000 -c:a pcm_s16le clip.wav``.
* ``--video-list`` takes ``video.mp4 audio.wav`` lines relative to ``--root``; the offset file
  is the video's path with ``.txt`` (under ``--txt-dir`` when given).
* The offset is the 3rd token of line 3 of the VoxCeleb2 ``.txt`` (``Offset : N``); without a
  ``.txt`` it is ``--default-offset`` (0).
* Frames are counted by demuxing the video stream (``speechkit.data.video.video_info``). A clip
  is skipped when that count differs from the container's declared count (the reference
  compares OpenCV's count with the header's), when the video is not 25 fps or cannot be read,
  when the WAV is not 16 kHz, and when ``|len(wav) / 640 - frames| > --max-diff`` (1 frame).
  Every skipped clip is named with its reason: one stderr line per clip (``skipped
  <list:line or video>: <reason>: <detail>``, e.g. the video's frame rate; the first
  ``--show-skipped`` (50) of them, then a count) and, in full, in ``<out>.skipped.tsv``
  (``source<TAB>reason<TAB>detail`` per clip; removed when nothing is skipped).

Paths are written relative to ``--root`` (absolute where a file is not under it). The list is
written atomically. Exit status: 0 done; 2 bad input (a missing folder, a malformed list or
``.txt`` line, a listed file that does not exist: the message names the file and line), or no
clip left to write.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from speechkit.atomic import atomic_write_text
from speechkit.data.audio import audio_info
from speechkit.data.lists import read_list_fields
from speechkit.data.video import video_info
from speechkit.errors import DataError, SpeechkitError

PROG = "make_syncnet_list"
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
TREE = "<mp4-dir>/<speaker>/<video>/<clip>.mp4"


@dataclass(frozen=True)
class Clip:
    """One candidate: absolute files, and where it came from (``source`` for messages)."""

    video: Path
    audio: Path
    txt: Path | None
    source: str


@dataclass(frozen=True)
class Checked:
    """What :func:`check_clip` found: ``reason`` is empty for a kept clip."""

    clip: Clip
    offset: int
    num_frames: int
    reason: str = ""
    detail: str = ""


def read_offset(txt: Path) -> int:
    """The AV offset on line 3 of a VoxCeleb2 ``.txt`` (``Offset : N``, 3rd token).

    Raises:
        DataError: unreadable file, or line 3 is not ``Offset : <integer>`` (names file:3).
    """
    try:
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"{txt}: cannot read the offset file ({e})") from None
    line = lines[2] if len(lines) >= 3 else ""
    fields = line.split()
    if not line.startswith("Offset") or len(fields) < 3:
        raise DataError(f"{txt}:3: expected 'Offset : N' (VoxCeleb2 .txt), got {line.strip()!r}")
    try:
        return int(fields[2])
    except ValueError:
        raise DataError(f"{txt}:3: the offset must be an integer, got {fields[2]!r}") from None


def scan_mp4_dir(mp4_dir: Path, wav_dir: Path, txt_dir: Path) -> list[Clip]:
    """Clips ``*/*/*.mp4`` under ``mp4_dir`` (sorted) with their WAV and ``.txt`` paths.

    Raises:
        DataError: a missing folder, no ``.mp4`` at that depth, or a missing WAV (all are
            checked; the count and the first few are named).
    """
    if not mp4_dir.is_dir():
        raise DataError(f"--mp4-dir {mp4_dir} is not a folder; expected {TREE}")
    videos = sorted(mp4_dir.glob("*/*/*.mp4"))
    if not videos:
        raise DataError(f"--mp4-dir {mp4_dir}: no .mp4 files at {TREE}")
    clips = []
    for video in videos:
        rel = video.relative_to(mp4_dir)
        txt = txt_dir / rel.with_suffix(".txt")
        clips.append(Clip(video, wav_dir / rel.with_suffix(".wav"), txt, str(video)))
    missing = [c.audio for c in clips if not c.audio.is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise DataError(
            f"--wav-dir {wav_dir}: {len(missing)} of {len(clips)} WAV files not found "
            f"(first: {shown}); extract the audio first (16 kHz mono WAV)"
        )
    return clips


def read_video_list(path: Path, root: Path, txt_dir: Path | None) -> list[Clip]:
    """Clips of ``video.mp4 audio.wav`` lines (relative to ``root``).

    Raises:
        DataError: a missing or malformed list, or listed files that do not exist (file:line).
    """
    rows = read_list_fields(path, (2,), "video.mp4 audio.wav")
    clips = []
    for number, (video, audio) in rows:
        where = f"{path}:{number}"
        for name in (video, audio):
            if not (root / name).is_file():
                raise DataError(f"{where}: {root / name} not found (is --root right?)")
        txt = (txt_dir / video if txt_dir else root / video).with_suffix(".txt")
        clips.append(Clip(root / video, root / audio, txt, where))
    return clips


def check_clip(clip: Clip, default_offset: int, max_diff: float, fps: float) -> Checked:
    """Offset, frame count and the reference's skip rules for one clip; never raises for a
    bad media file (that is a skip reason), only for a malformed ``.txt``."""
    offset = (
        read_offset(clip.txt) if clip.txt is not None and clip.txt.is_file() else default_offset
    )
    try:
        info = video_info(clip.video, expected_fps=fps)
    except DataError as e:
        reason = "frame rate" if "frame rate" in str(e) else "unreadable video"
        return Checked(clip, offset, 0, reason, str(e))
    if info.declared_frames and info.declared_frames != info.num_frames:
        return Checked(
            clip,
            offset,
            info.num_frames,
            "frame count",
            f"{clip.video}: {info.num_frames} frames counted, the container declares "
            f"{info.declared_frames}",
        )
    try:
        audio = audio_info(clip.audio)
    except DataError as e:
        return Checked(clip, offset, info.num_frames, "unreadable audio", str(e))
    if audio.sample_rate != SAMPLE_RATE:
        return Checked(
            clip,
            offset,
            info.num_frames,
            "sample rate",
            f"{clip.audio}: {audio.sample_rate} Hz, expected {SAMPLE_RATE}",
        )
    diff = audio.frames / SAMPLES_PER_FRAME - info.num_frames
    if abs(diff) > max_diff:
        return Checked(
            clip,
            offset,
            info.num_frames,
            "length mismatch",
            f"{clip.audio}: {audio.frames} samples = {audio.frames / SAMPLES_PER_FRAME:.2f} "
            f"frames of 640, the video has {info.num_frames} (|diff| {abs(diff):.2f} > "
            f"{max_diff:g})",
        )
    return Checked(clip, offset, info.num_frames)


def _check_star(args: tuple) -> Checked:
    return check_clip(*args)


def relative(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies under it, else absolute (symlinks are kept:
    a linked tree keeps its own names)."""
    absolute = os.path.abspath(path)
    if root is not None:
        base = os.path.abspath(root)
        if os.path.commonpath([absolute, base]) == base:
            return os.path.relpath(absolute, base)
    return absolute


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"scripts/{PROG}.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mp4-dir", type=Path, help=f"VoxCeleb2 video tree {TREE}")
    src.add_argument("--video-list", type=Path, help="'video.mp4 audio.wav' lines (--root)")
    p.add_argument("--wav-dir", type=Path, help="WAV tree mirroring --mp4-dir (default: it)")
    p.add_argument("--txt-dir", type=Path, help="VoxCeleb2 .txt tree (default: next to videos)")
    p.add_argument("--root", type=Path, help="paths are read / written relative to it")
    p.add_argument("--out", type=Path, required=True, help="the list to write")
    p.add_argument("--default-offset", type=int, default=0, help="offset without a .txt (0)")
    p.add_argument(
        "--max-diff", type=float, default=1.0, help="max |len(wav)/640 - frames| (1, reference)"
    )
    p.add_argument("--fps", type=float, default=25.0, help="required video frame rate (25)")
    p.add_argument("--workers", type=int, default=1, help="processes counting frames")
    p.add_argument(
        "--show-skipped",
        type=int,
        default=50,
        help="skipped clips named on stderr (all of them are in <out>.skipped.tsv)",
    )
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.video_list is not None:
        root = args.root if args.root is not None else Path(".")
        clips = read_video_list(args.video_list, root, args.txt_dir)
    else:
        root = args.root
        mp4_dir = args.mp4_dir
        clips = scan_mp4_dir(mp4_dir, args.wav_dir or mp4_dir, args.txt_dir or mp4_dir)
    jobs = [(c, args.default_offset, args.max_diff, args.fps) for c in clips]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_check_star, jobs, chunksize=64))
    else:
        results = [_check_star(j) for j in jobs]
    kept = [r for r in results if not r.reason]
    skipped: dict[str, list[Checked]] = {}
    for r in results:
        if r.reason:
            skipped.setdefault(r.reason, []).append(r)
    bad = [r for r in results if r.reason]
    for r in bad[: max(args.show_skipped, 0)]:
        print(f"{PROG}: skipped {r.clip.source}: {r.reason}: {r.detail}", file=sys.stderr)
    if len(bad) > max(args.show_skipped, 0):
        print(
            f"{PROG}: ... {len(bad) - max(args.show_skipped, 0)} more skipped clip(s) not shown",
            file=sys.stderr,
        )
    for reason, items in sorted(skipped.items()):
        print(f"{PROG}: skipped {len(items)} clip(s): {reason}", file=sys.stderr)
    skipped_file = Path(f"{args.out}.skipped.tsv")
    if bad:
        atomic_write_text(
            skipped_file,
            "".join(f"{r.clip.source}\t{r.reason}\t{' '.join(r.detail.split())}\n" for r in bad),
        )
        print(f"{PROG}: the skipped clips and reasons -> {skipped_file}", file=sys.stderr)
    elif skipped_file.exists():
        skipped_file.unlink()  # a stale list from an earlier run would mislead
    if not kept:
        raise DataError(f"no clip passed the checks ({len(results)} read); nothing written")
    lines = [
        f"{relative(r.clip.video, root)} {relative(r.clip.audio, root)} {r.offset} {r.num_frames}"
        for r in kept
    ]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    total = sum(len(v) for v in skipped.values())
    print(f"{args.out}: {len(kept)} clips ({total} skipped of {len(results)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SpeechkitError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

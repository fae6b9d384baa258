"""SyncNet audio-visual training data: lists of talking-face clips and aligned audio/video crops.

Follows joonson/syncnet_trainer (``DatasetLoader.py`` / ``dataLoader.py``; list format of
``makeFileList.py``). A list line is ``<video.mp4> <audio.wav> <offset> <num_frames>`` as written
by ``scripts/make_syncnet_list.py``: paths relative to a root folder (or absolute), ``offset`` the
audio-visual offset in video frames (VoxCeleb2's ``Offset : N``) and ``num_frames`` the video's
frame count at 25 fps. A two-field line ``<video.mp4> <audio.wav>`` is also accepted: offset 0
and the frames counted when the list is read (a few milliseconds per clip: fine for demos, use
the list maker for VoxCeleb2).

Alignment: one video frame is 640 audio samples (16 kHz / 25 fps) and 4 audio frames of 10 ms.
For a crop of ``max_frames`` video frames starting at ``start``:

* audio = samples ``[640 * start, 640 * start + 4 * max_frames * 160 + 240)`` (32,240 samples
  for 50 frames: 200 log-mel frames after the front-end drops its first and last frame);
* video = frames ``[start + offset - 1, start + offset - 1 + max_frames)``;
* ``start`` ~ U[2 - min(offset, 0), num_frames - max(offset, 0) - (max_frames + 2)] (inclusive),
  or the middle of that range in eval mode.

A clip is used when ``num_frames - |offset| >= max_frames + 4``. Randomness comes from
``np.random.default_rng([seed, epoch, index])`` per item, so an epoch is reproducible on any
worker layout and resumable mid-epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from speechkit.data.audio import audio_info, read_audio
from speechkit.data.lists import check_files_exist, read_list_fields
from speechkit.data.video import DEFAULT_FPS, read_video_frames, video_info
from speechkit.errors import DataError

__all__ = [
    "SAMPLES_PER_FRAME",
    "SyncNetClip",
    "SyncNetDataset",
    "audio_crop_samples",
    "crop_positions",
    "read_syncnet_list",
    "start_range",
]

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640
"""Audio samples per video frame: 16000 Hz / 25 fps."""
LIST_FORMAT = "video.mp4 audio.wav offset num_frames"


@dataclass(frozen=True)
class SyncNetClip:
    """One list entry.

    Attributes:
        video, audio: resolved paths (root joined).
        offset: audio-visual offset in video frames (positive: the video frames used are later
            than the audio, as in the reference's ``start + offset - 1``).
        num_frames: video frames (25 fps).
        line: 1-based line in the list file (for error messages).
    """

    video: str
    audio: str
    offset: int
    num_frames: int
    line: int


def _int_field(path: str, number: int, value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(
            f"{path}:{number}: {name} must be an integer, got {value!r} (expected '{LIST_FORMAT}')"
        ) from None


def read_syncnet_list(
    path: str | os.PathLike,
    root: str | os.PathLike = ".",
    check_exists: bool = True,
    expected_fps: float | None = DEFAULT_FPS,
) -> list[SyncNetClip]:
    """Read a SyncNet list (``scripts/make_syncnet_list.py`` format).

    Args:
        path: the list; lines ``video audio offset num_frames`` (or ``video audio``: offset 0,
            frames counted here with ``speechkit.data.video.video_info``).
        root: folder relative paths are joined to (absolute paths are kept).
        check_exists: check every listed file exists (all are checked, then one error).
        expected_fps: frame rate required of videos counted for two-field lines.

    Returns:
        The clips in list order.

    Raises:
        DataError: a missing or empty list, a line with a wrong field count, a non-integer
            offset or frame count, ``num_frames <= 0``, or missing files (``file:line``).
    """
    path = os.fspath(path)
    rows = read_list_fields(path, (2, 4), LIST_FORMAT)
    root = os.fspath(root)
    clips = []
    for number, fields in rows:
        video = os.path.join(root, fields[0])
        audio = os.path.join(root, fields[1])
        if len(fields) == 4:
            offset = _int_field(path, number, fields[2], "offset")
            frames = _int_field(path, number, fields[3], "num_frames")
            if frames <= 0:
                raise DataError(f"{path}:{number}: num_frames must be positive, got {frames}")
        else:
            offset = 0
            frames = -1
        clips.append(SyncNetClip(video, audio, offset, frames, number))
    if check_exists:
        check_files_exist(path, [(c.line, c.video) for c in clips])
        check_files_exist(path, [(c.line, c.audio) for c in clips])
    counted = []
    for c in clips:
        if c.num_frames < 0:
            try:
                n = video_info(c.video, expected_fps).num_frames
            except DataError as e:
                raise DataError(f"{path}:{c.line}: {e}") from None
            c = SyncNetClip(c.video, c.audio, c.offset, n, c.line)
        counted.append(c)
    return counted


def start_range(num_frames: int, offset: int, max_frames: int) -> tuple[int, int]:
    """Inclusive range of crop starts (in video frames) of the reference's loader.

    ``first = 2 - min(offset, 0)``, ``last = num_frames - max(offset, 0) - (max_frames + 2)``;
    empty (``last < first``) unless ``num_frames - |offset| >= max_frames + 4``.
    """
    first = 2 - min(offset, 0)
    last = num_frames - max(offset, 0) - (max_frames + 2)
    return first, last


def audio_crop_samples(max_frames: int) -> int:
    """Audio samples of a crop: ``4 * max_frames * 160 + 240`` (32,240 for 50 frames)."""
    return 4 * max_frames * 160 + 240


def crop_positions(start: int, offset: int, max_frames: int) -> tuple[int, int, int]:
    """Where a crop reads: ``(audio_start, audio_length, video_start)``.

    ``audio_start = 640 * start`` samples, ``audio_length = audio_crop_samples(max_frames)``,
    ``video_start = start + offset - 1`` frames.
    """
    return SAMPLES_PER_FRAME * start, audio_crop_samples(max_frames), start + offset - 1


class SyncNetDataset(Dataset):
    """Aligned audio / face-video crops of talking-face clips (syncnet_trainer's loader).

    Items: ``{"id": int, "audio": (S,) float32 in [-1, 1] at 16 kHz, "video": (3, T, H, W)
    float32 0-255 BGR}`` with ``S = 4 * max_frames * 160 + 240`` and ``T = max_frames``;
    ``collater`` stacks them to ``{"id": (B,), "audio": (B, S), "video": (B, 3, T, H, W)}``.

    Args:
        clips: list entries (``read_syncnet_list``); clips shorter than ``max_frames + 4 +
            |offset|`` frames are dropped (``num_dropped``).
        max_frames: video frames per crop.
        seed: base seed of the per-item generators (the task sets ``common.seed``).
        eval_mode: fixed crops (the middle of the start range) instead of random ones.
        image_size: resize frames to ``image_size x image_size`` pixels; ``None`` keeps them.
        expected_fps: frame rate required of the videos.
        list_path: the list file, named in error messages.

    Raises:
        DataError: no clip is long enough (at construction); at ``__getitem__`` a video or WAV
            that is unreadable, too short for the listed frame count, or a WAV not at 16 kHz
            (messages name the file and the list line).
    """

    def __init__(
        self,
        clips: list[SyncNetClip],
        max_frames: int = 50,
        seed: int = 0,
        eval_mode: bool = False,
        image_size: int | None = None,
        expected_fps: float | None = DEFAULT_FPS,
        list_path: str = "<list>",
    ):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = int(max_frames)
        self.clips = [c for c in clips if c.num_frames - abs(c.offset) >= max_frames + 4]
        self.num_dropped = len(clips) - len(self.clips)
        self.list_path = list_path
        if not self.clips:
            raise DataError(
                f"{list_path}: no clip has num_frames - |offset| >= max_frames + 4 = "
                f"{max_frames + 4} frames ({len(clips)} clips); lower max_frames"
            )
        self.seed = seed
        self.epoch = 0
        self.eval_mode = eval_mode
        self.image_size = image_size
        self.expected_fps = expected_fps

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops ``__getitem__`` draws."""
        self.epoch = int(epoch)

    @property
    def num_audio_samples(self) -> int:
        """S, the audio samples of every item."""
        return audio_crop_samples(self.max_frames)

    def crop_start(self, index: int) -> int:
        """The crop start (video frames) of item ``index`` in the current epoch."""
        clip = self.clips[index]
        first, last = start_range(clip.num_frames, clip.offset, self.max_frames)
        if self.eval_mode:
            return (first + last) // 2
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(first, last, endpoint=True))

    def _where(self, clip: SyncNetClip) -> str:
        return f"{self.list_path}:{clip.line}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        start = self.crop_start(index)
        audio_start, length, video_start = crop_positions(start, clip.offset, self.max_frames)
        try:
            info = audio_info(clip.audio)
            if info.sample_rate != SAMPLE_RATE:
                raise DataError(
                    f"{clip.audio}: sample rate is {info.sample_rate} Hz, expected "
                    f"{SAMPLE_RATE} Hz (640 samples per 25 fps video frame)"
                )
            if info.frames < audio_start + length:
                raise DataError(
                    f"{clip.audio}: holds too few samples for the listed {clip.num_frames} "
                    f"frames (needed {audio_start + length}, it has {info.frames}); remake the "
                    "list with scripts/make_syncnet_list.py"
                )
            wav = read_audio(
                clip.audio, SAMPLE_RATE, resample=False, start=audio_start, frames=length
            )
            frames = read_video_frames(
                clip.video, video_start, self.max_frames, self.expected_fps, self.image_size
            )
        except DataError as e:
            raise DataError(f"{self._where(clip)}: {e}") from None
        video = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
        return {"id": index, "audio": torch.from_numpy(wav), "video": torch.from_numpy(video)}

    def collater(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items: ``{"id": (B,) int64, "audio": (B, S), "video": (B, 3, T, H, W)}``.

        Raises:
            DataError: the items' frames differ in size (a list mixing clip sizes needs
                ``image_size``).
        """
        if not samples:
            return {}
        sizes = {tuple(s["video"].shape[-2:]) for s in samples}
        if len(sizes) > 1:
            raise DataError(
                f"{self.list_path}: clips of different frame sizes {sorted(sizes)} in one batch; "
                "set task.image_size (e.g. 224) to resize them"
            )
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "audio": torch.stack([s["audio"] for s in samples]),
            "video": torch.stack([s["video"] for s in samples]),
        }

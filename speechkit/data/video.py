"""Video file I/O with PyAV (FFmpeg): frame counts, frame rate and BGR frame crops.

The SyncNet trainer (joonson/syncnet_trainer ``dataLoader.py::get_frames``) decodes its
VoxCeleb2 face crops with OpenCV, which yields BGR uint8 frames; ``read_video_frames`` returns
the same layout (``(T, H, W, 3)`` uint8, channels B, G, R) so a model trained here sees what the
reference's saw. VoxCeleb2 clips are 224x224 at 25 fps, and the list maker pairs each frame with
640 samples of 16 kHz audio (16000 / 25), so a frame rate other than the expected one is an
error rather than something to resample silently.

Frame indices are 0-based positions in presentation order. A frame's index is computed from its
timestamp, ``round((pts - stream.start_time) * time_base * fps)``, which is what makes seeking
possible: a crop that starts late in a long clip seeks to the key frame at or before it and
decodes only from there (VoxCeleb2 clips have a key frame every 250 frames or so).

Errors are ``speechkit.errors.DataError`` naming the file: missing, not a video / corrupt, no
video stream, a wrong frame rate, or a crop beyond the last frame.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from speechkit.data.audio import check_media_file
from speechkit.errors import DataError

__all__ = ["VideoInfo", "read_video_frames", "video_info", "DEFAULT_FPS"]

DEFAULT_FPS = 25.0
"""The frame rate VoxCeleb2 (and the SyncNet list format's 640 samples per frame) assumes."""

FPS_TOLERANCE = 0.01
"""Largest accepted difference (frames per second) between a stream's rate and the expected."""

SEEK_MIN_FRAMES = 50
"""Crops starting before this frame are decoded from the file's start (a seek costs more)."""


class VideoInfo(NamedTuple):
    """Facts of a file's first video stream.

    Attributes:
        num_frames: frames counted by demuxing every video packet (no decoding); see
            ``video_info`` for why this, not the header, is the count used.
        fps: average frame rate in frames per second (``stream.average_rate``).
        width, height: frame size in pixels.
        declared_frames: the container's own frame count (``stream.frames``; 0 when the
            container does not store one).
    """

    num_frames: int
    fps: float
    width: int
    height: int
    declared_frames: int

    @property
    def duration(self) -> float:
        """Length in seconds (``num_frames / fps``)."""
        return self.num_frames / self.fps if self.fps else 0.0


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a declared dependency
        raise DataError("reading video needs PyAV: pip install av") from None
    return av


def _open(path: str, expected_fps: float | None):
    """(container, first video stream, its frame rate); the caller closes the container.

    Raises:
        DataError: not openable, no video stream, or a frame rate other than ``expected_fps``.
    """
    av = _av()
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot open the video ({e}); expected a video file") from None
    try:
        if not container.streams.video:
            raise DataError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        fps = _stream_fps(path, stream)
        _check_fps(path, fps, expected_fps)
    except DataError:
        container.close()
        raise
    return container, stream, fps


def _stream_fps(path: str, stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise DataError(f"{path}: the video stream declares no frame rate")
    return Fraction(rate)


def _check_fps(path: str, fps: Fraction, expected_fps: float | None) -> None:
    if expected_fps is not None and abs(float(fps) - expected_fps) > FPS_TOLERANCE:
        raise DataError(
            f"{path}: video frame rate is {float(fps):.3f} fps, expected {expected_fps:g} fps "
            f"(re-encode it, e.g. ffmpeg -i IN -r {expected_fps:g} OUT.mp4)"
        )


def video_info(path: str | os.PathLike, expected_fps: float | None = DEFAULT_FPS) -> VideoInfo:
    """Frame count, frame rate and size of a file's first video stream.

    The count is the number of non-empty video packets the demuxer returns (each packet of an
    MP4/H.264 stream holds one frame), so the whole file is read but nothing is decoded (a few
    milliseconds for a VoxCeleb2 clip). The header's count (``declared_frames``) is reported but
    not trusted: containers can declare a wrong count (the reference's list maker compares an
    OpenCV count with the header's and drops clips where they differ; the list maker here
    reports them, see ``scripts/make_syncnet_list.py``).

    Args:
        path: a video file FFmpeg reads (``.mp4``, ``.avi``, ``.mkv`` ...).
        expected_fps: required frame rate in frames per second; ``None`` accepts any.

    Returns:
        ``VideoInfo(num_frames, fps, width, height, declared_frames)``.

    Raises:
        DataError: the file is missing, cannot be demuxed (corrupt, not a video), has no video
            stream or no frames, or its frame rate differs from ``expected_fps``.
    """
    path = check_media_file(path, "video")
    av = _av()
    container, stream, fps = _open(path, expected_fps)
    try:
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
        except av.error.FFmpegError as e:
            raise DataError(f"{path}: cannot read the video stream ({e}); corrupt file?") from None
        info = VideoInfo(
            num_frames=count,
            fps=float(fps),
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            declared_frames=int(stream.frames or 0),
        )
    finally:
        container.close()
    if info.num_frames == 0:
        raise DataError(f"{path}: the video stream holds no frames")
    return info


def _frame_index(frame, stream, fps: Fraction, fallback: int) -> int:
    """0-based presentation index of a decoded frame (from its timestamp)."""
    pts = frame.pts
    if pts is None or stream.time_base is None:
        return fallback
    origin = stream.start_time or 0
    return int(round((pts - origin) * stream.time_base * fps))


def read_video_frames(
    path: str | os.PathLike,
    start: int = 0,
    num_frames: int | None = None,
    expected_fps: float | None = DEFAULT_FPS,
    size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode ``num_frames`` consecutive frames from frame ``start`` as BGR uint8.

    The channel order is B, G, R as OpenCV's ``VideoCapture.read`` (the reference's decoder)
    returns it. A ``start`` at or beyond ``SEEK_MIN_FRAMES`` seeks to the key frame at or before
    it and decodes from there; a seek that lands after the wanted frame (a broken index) falls
    back to decoding from the start, so the result never depends on the seek.

    Args:
        path: a video file FFmpeg reads.
        start: first frame (0-based, >= 0).
        num_frames: frames to return; ``None`` reads to the end.
        expected_fps: required frame rate (frames per second); ``None`` accepts any.
        size: resize every frame to ``size x size`` (or ``(height, width)``) pixels with
            FFmpeg's area averaging; ``None`` keeps the stored size (224x224 for VoxCeleb2).

    Returns:
        (T, H, W, 3) uint8, ``T = num_frames`` (or the frames from ``start`` to the end).

    Raises:
        DataError: the file is missing or corrupt, has no video stream, has a frame rate other
            than ``expected_fps``, or holds fewer than ``start + num_frames`` frames (or none
            from ``start``). ``ValueError`` for a negative ``start`` or ``num_frames``.
    """
    if start < 0 or (num_frames is not None and num_frames < 0):
        raise ValueError(f"start and num_frames must be >= 0, got {start}, {num_frames}")
    path = check_media_file(path, "video")
    if num_frames == 0:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    if isinstance(size, int):
        size = (size, size)
    av = _av()
    container, stream, fps = _open(path, expected_fps)
    try:
        frames = None
        try:
            if start >= SEEK_MIN_FRAMES and stream.time_base:
                frames = _decode_range(container, stream, fps, start, num_frames, size, seek=True)
            if frames is None:
                if start >= SEEK_MIN_FRAMES:
                    container.seek(0, stream=stream)
                frames = _decode_range(container, stream, fps, start, num_frames, size, seek=False)
        except av.error.FFmpegError as e:
            raise DataError(f"{path}: cannot decode the video ({e}); corrupt file?") from None
    finally:
        container.close()
    if not frames or (num_frames is not None and len(frames) < num_frames):
        want = "to the end" if num_frames is None else f"{num_frames} frames"
        raise DataError(
            f"{path}: asked for {want} from frame {start}, but the video has only "
            f"{start + len(frames or [])} frames"
        )
    return np.stack(frames)


def _decode_range(container, stream, fps, start, num_frames, size, seek) -> list | None:
    """Frames ``[start, start + num_frames)`` as (H, W, 3) BGR arrays; ``None`` when a seek
    overshot ``start`` (the caller then decodes from the beginning)."""
    if seek:
        origin = stream.start_time or 0
        target = origin + int(Fraction(start) / fps / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)
    out: list[np.ndarray] = []
    position = -1
    first = True
    for frame in container.decode(stream):
        position = _frame_index(frame, stream, fps, position + 1)
        if first and seek and position > start:
            return None
        first = False
        if position < start:
            continue
        if size is None:
            image = frame.to_ndarray(format="bgr24")
        else:
            image = frame.reformat(
                width=size[1], height=size[0], format="bgr24", interpolation="AREA"
            ).to_ndarray()
        out.append(image)
        if num_frames is not None and len(out) >= num_frames:
            break
    return out

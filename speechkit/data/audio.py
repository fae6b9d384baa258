"""Audio file I/O: decode with soundfile (libsndfile), resample with soxr, write atomically.

Audio inside speechkit is float32 in [-1, 1] at 16 kHz (DESIGN.md). ``read_audio`` returns that
layout whatever the file holds (int16/int24/float WAV, FLAC, OGG; any channel count; any sample
rate), and turns every failure into a ``speechkit.errors.DataError`` that names the file.

Every decoded file is checked for NaN / infinite samples (one ``np.isfinite`` pass; such a file
is refused with ``DataError``, never passed on to a model). Averaging channels to mono and
resampling are logged as WARNINGs naming the file; whether a command converts or refuses a
wrong rate is its own policy (README, "Audio input policy"): training datasets refuse a rate
other than the model's, inference and feature tools resample.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid
from typing import BinaryIO, NamedTuple

import numpy as np
import soundfile as sf
import soxr

from speechkit.data.wav import plain_wav_info, read_plain_wav
from speechkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "AudioInfo",
    "audio_info",
    "check_finite",
    "read_audio",
    "resample_waveform",
    "write_audio",
]

# soundfile raises LibsndfileError (a RuntimeError subclass) for unreadable files; older
# releases raise a plain RuntimeError.
_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


class AudioInfo(NamedTuple):
    """Header facts of an audio file (read without decoding the samples).

    Attributes:
        frames: number of samples per channel.
        sample_rate: in Hz.
        channels: number of channels.
    """

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def check_media_file(path: str | os.PathLike, kind: str = "audio") -> str:
    """``path`` as a string when it is an existing regular file.

    Raises:
        DataError: ``"<path>: <kind> file not found"`` or ``"<path>: not a regular file
            (expected a(n) <kind> file)"``.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # one system call (the data workers call this per read)
    except (OSError, ValueError):
        raise DataError(f"{path}: {kind} file not found") from None
    if not stat.S_ISREG(mode):
        article = "an" if kind[:1] in "aeiou" else "a"
        raise DataError(f"{path}: not a regular file (expected {article} {kind} file)")
    return path


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of an audio file.

    Args:
        path: audio file (any format libsndfile reads: WAV, FLAC, OGG ...).

    Returns:
        ``AudioInfo(frames, sample_rate, channels)``.

    Raises:
        DataError: the file is missing or libsndfile cannot parse its header.
    """
    path = check_media_file(path)
    try:
        fast = plain_wav_info(path)  # header parsed in Python: about 20x cheaper than sf.info
    except OSError:
        fast = None  # libsndfile reports it
    if fast is not None:
        return AudioInfo(*fast)
    try:
        info = sf.info(path)
    except _DECODE_ERRORS as e:
        raise DataError(
            f"{path}: cannot read the audio header ({e}); expected an audio file libsndfile "
            "can decode (WAV, FLAC, OGG ...)"
        ) from e
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def resample_waveform(
    wav: np.ndarray, orig_rate: int | float, target_rate: int | float
) -> np.ndarray:
    """Resample with soxr (quality "HQ"), keeping float32.

    Args:
        wav: (L,) or (L, C) samples.
        orig_rate, target_rate: in Hz.

    Returns:
        (L', ...) float32 with ``L' ~= round(L * target_rate / orig_rate)``.
    """
    if orig_rate == target_rate:
        return wav
    out = soxr.resample(wav, orig_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


_MAX_WARNED_FILES = 20
"""Conversion warnings name at most this many files per kind and process (then one summary)."""
_warned: dict[str, set[str]] = {"channels": set(), "rate": set()}


def _warn_conversion(kind: str, path: str, message: str) -> None:
    """Log ``message`` once per file and kind in this process, for the first files only."""
    seen = _warned[kind]
    if path in seen or len(seen) > _MAX_WARNED_FILES:
        return
    seen.add(path)
    if len(seen) > _MAX_WARNED_FILES:
        logger.warning(
            "more files need the same conversion (%s); not listed one by one any more",
            "downmix to mono" if kind == "channels" else "resampling",
        )
        return
    logger.warning(message)


def check_finite(
    wav: np.ndarray, path: str | os.PathLike, sample_rate: int | None = None, offset: int = 0
) -> None:
    """Raise ``DataError`` when ``wav`` holds NaN or +-inf samples.

    Args:
        wav: (L,) or (L, C) decoded samples.
        path: the file they came from (named in the message).
        sample_rate: the samples' rate in Hz, to give the first bad sample's time.
        offset: file position (samples) of ``wav[0]``, for a partial read.

    Raises:
        DataError: ``"<path>: N non-finite sample(s) (NaN/inf), the first at sample I (T s);
            expected finite audio"``.
    """
    if wav.dtype.kind in "iu" or np.isfinite(wav).all():  # integer PCM is always finite
        return
    bad = ~np.isfinite(wav)
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(1, bad.ndim)))
    first = int(np.argmax(bad)) + offset
    at = f" ({first / sample_rate:.3f} s)" if sample_rate else ""
    raise DataError(
        f"{os.fspath(path)}: {int(bad.sum())} non-finite sample(s) (NaN/inf), the first at "
        f"sample {first}{at}; expected finite audio (float samples in [-1, 1])"
    )


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = 16000,
    mono: bool = True,
    resample: bool = True,
    start: int = 0,
    frames: int = -1,
    *,
    warn: bool = True,
    convert_hint: str = "",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode an audio file to float32 in [-1, 1] (integer PCM is scaled by 1/32768 etc.).

    Conversions are never silent: averaging several channels to mono and resampling each log a
    WARNING naming the file (once per file and process, for the first 20 files of each kind;
    ``warn=False`` for callers that document the conversion themselves).

    Args:
        path: audio file.
        sample_rate: wanted rate in Hz; ``None`` keeps the file's rate.
        mono: average the channels and return (L,); ``False`` returns (L, C).
        resample: when the file's rate differs from ``sample_rate``, resample it with soxr
            (quality "HQ"); ``False`` makes a different rate an error instead.
        start, frames: read only ``frames`` samples (``-1``: to the end) from sample ``start``,
            both counted at the FILE's rate (seeking reads only that part of a WAV/FLAC file).
        warn: log the conversions (channels averaged, rate changed).
        convert_hint: replaces `` (resampling is disabled)`` at the end of the wrong-rate error
            of ``resample=False`` (say why and how to convert).
        out: a C-contiguous float32 (L,) array (e.g. a row of a batch buffer) that a mono,
            plain 16-bit / float WAV of exactly L samples at ``sample_rate`` is decoded into,
            saving an allocation and a copy; it is then the array returned. Any other file
            returns a new array and leaves ``out`` alone or partly written: compare with
            ``is`` and copy.

    Returns:
        (L,) float32 (or (L, C) when ``mono=False``). Float files are returned unclipped.

    Raises:
        DataError: the file is missing, cannot be decoded (corrupt, not audio), holds no samples
            (in the requested range), holds NaN or infinite samples, or has the wrong rate with
            ``resample=False``. The message names the file.
    """
    path = check_media_file(path)
    return decode_audio(
        path,
        path,
        sample_rate,
        mono,
        resample,
        start,
        frames,
        warn=warn,
        convert_hint=convert_hint,
        out=out,
    )


def _read_plain_wav(
    source: str | os.PathLike | BinaryIO, start: int, frames: int, out: np.ndarray | None
) -> tuple[np.ndarray, int] | None:
    """A plain 16-bit / float WAV parsed with numpy (the same samples as libsndfile, faster:
    :mod:`speechkit.data.wav`); None for anything else, with a file object rewound."""
    if isinstance(source, (str, os.PathLike)):
        try:
            return read_plain_wav(source, start, frames, out)
        except OSError:
            return None  # libsndfile reports it
    begin = source.tell()
    fast = read_plain_wav(source, start, frames, out)
    if fast is None:
        source.seek(begin)
    return fast


def decode_audio(
    source: str | os.PathLike | BinaryIO,
    where: str,
    sample_rate: int | None = 16000,
    mono: bool = True,
    resample: bool = True,
    start: int = 0,
    frames: int = -1,
    *,
    warn: bool = True,
    convert_hint: str = "",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`read_audio` for an already checked path or a file object (e.g. the bytes of a tar
    member in a ``BytesIO``); ``where`` names the source in messages and warnings. Same
    arguments, returns and errors as :func:`read_audio` (without the missing-file check).
    """
    try:
        wav, file_rate = _read_plain_wav(source, start, frames, out) or sf.read(
            source, dtype="float32", always_2d=True, start=start, frames=frames
        )
    except _DECODE_ERRORS as e:
        raise DataError(
            f"{where}: cannot decode audio ({e}); expected an audio file libsndfile can decode "
            "(WAV, FLAC, OGG ...)"
        ) from e
    if wav.shape[0] == 0:
        part = "" if start == 0 and frames < 0 else f" from sample {start} (frames={frames})"
        raise DataError(f"{where}: the audio file holds no samples{part}")
    check_finite(wav, where, file_rate, offset=start)
    if sample_rate is not None and file_rate != sample_rate and not resample:
        raise DataError(
            f"{where}: sample rate is {file_rate} Hz, expected {sample_rate} Hz"
            + (convert_hint or " (resampling is disabled)")
        )
    if mono and wav.shape[1] > 1:
        if warn:
            _warn_conversion(
                "channels",
                where,
                f"{where}: {wav.shape[1]} channels, averaged to mono (expected mono audio)",
            )
        wav = wav.mean(axis=1, dtype=np.float32)
    elif mono:
        wav = wav[:, 0]
    if sample_rate is not None and file_rate != sample_rate:
        if warn:
            _warn_conversion(
                "rate",
                where,
                f"{where}: sample rate {file_rate} Hz, resampled to {sample_rate} Hz with soxr "
                "(convert the data once to avoid this cost on every read)",
            )
        wav = resample_waveform(wav, file_rate, sample_rate)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if out is not None and wav.shape == out.shape and np.may_share_memory(wav, out):
        return out  # decoded in place (same shape and overlapping: the same samples)
    return wav


def write_audio(
    path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str | None = None
) -> None:
    """Write audio atomically: a temporary file in the same folder, fsync, then ``os.replace``.

    A crash while writing never leaves a truncated file under ``path``.

    Args:
        path: output file; the format comes from its extension (``.wav``, ``.flac`` ...).
        wav: (L,) or (L, C) samples, float in [-1, 1] (or integer PCM).
        sample_rate: in Hz.
        subtype: libsndfile subtype (``"PCM_16"``, ``"FLOAT"`` ...); ``None`` is the format's
            default (16-bit PCM for WAV and FLAC).

    Raises:
        DataError: the extension names no format libsndfile writes.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lstrip(".").upper()
    if ext not in sf.available_formats():
        raise DataError(
            f"{path}: cannot infer the audio format from the extension; expected one of "
            f"{sorted(f.lower() for f in sf.available_formats())}"
        )
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    # O_EXCL: never clobber another writer's temporary file; mode 0o666 honours the umask
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            sf.write(f, np.asarray(wav), sample_rate, subtype=subtype, format=ext)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

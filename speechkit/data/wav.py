"""A fast reader for the plain WAV files that speech corpora hold (16-bit PCM, 32-bit float).

Decoding a one-second 16 kHz WAV through ``soundfile`` costs about 250 us, almost all of it
Python and cffi overhead around libsndfile (the samples themselves take about 20 us to convert),
which made decoding, not reading, the main per-utterance cost of the data workers. This module
parses the RIFF header itself and converts the samples with numpy, for the two sample formats
that VoxCeleb, LibriSpeech (once converted), MUSAN and the RIR corpora use. Everything else
(other sample formats, RF64, truncated or odd files, FLAC, OGG) is left to libsndfile: the
reader returns ``None`` and :func:`speechkit.data.audio.decode_audio` falls back.

The samples equal libsndfile's float32 reading exactly: 16-bit PCM is ``int16 * 2**-15`` (as
libsndfile normalises ``short`` to ``float``) and 32-bit float samples are returned as stored.

Format: Microsoft RIFF WAVE (``fmt `` chunk with format tag 1 = PCM, 3 = IEEE float, or 0xFFFE =
WAVE_FORMAT_EXTENSIBLE whose sub-format GUID starts with one of those tags), chunks word-aligned.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

__all__ = ["PCM16_SCALE", "exact_pcm16", "plain_wav_info", "read_plain_wav", "read_plain_wav_crop"]

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_DTYPES = {(_PCM, 16): np.dtype("<i2"), (_FLOAT, 32): np.dtype("<f4")}
PCM16_SCALE = 2.0**-15
"""16-bit PCM sample -> float audio in [-1, 1) (exact: a power of 2)."""
_SCALE_16 = np.float32(PCM16_SCALE)
_MAX_CHUNKS = 64  # a plain file has a handful (fmt, LIST, fact, data)


def _header(f: BinaryIO) -> tuple[np.dtype, int, int, int, int] | None:
    """``(dtype, channels, rate, data offset in f, frames)`` of a plain WAV starting at the
    file's current position, else None."""
    base = f.tell()
    head = f.read(12)
    if len(head) != 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt = None
    pos = base + 12
    for _ in range(_MAX_CHUNKS):
        chunk = f.read(8)
        if len(chunk) != 8:
            return None
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16:
                return None
            data = f.read(min(size, 40))
            if len(data) < 16:
                return None
            tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", data[:16])
            if tag == _EXTENSIBLE:
                if len(data) < 26:
                    return None
                tag = struct.unpack("<H", data[24:26])[0]
            dtype = _DTYPES.get((tag, bits))
            if dtype is None or channels < 1 or rate < 1 or block != channels * dtype.itemsize:
                return None
            fmt = (dtype, channels, rate)
        elif cid == b"data":
            if fmt is None:
                return None
            dtype, channels, rate = fmt
            end = f.seek(0, io.SEEK_END)
            block = channels * dtype.itemsize
            if size > end - body or size % block:
                return None  # truncated or ragged: libsndfile decides what it holds
            return dtype, channels, rate, body, size // block
        pos = body + size + (size & 1)
        f.seek(pos)
    return None


def exact_pcm16(wav: np.ndarray) -> np.ndarray | None:
    """``wav / PCM16_SCALE`` as int16 when that is exact for every sample (16-bit audio, as
    decoded), else ``None`` (fractions of a step, values outside [-1, 1 - 2**-15], NaN)."""
    scaled = wav.astype(np.float64) / PCM16_SCALE
    with np.errstate(invalid="ignore"):  # NaN / out-of-range casts fail the comparison below
        as_int = scaled.astype(np.int16)
    return as_int if np.array_equal(as_int, scaled) else None


def plain_wav_info(source: str | os.PathLike | BinaryIO) -> tuple[int, int, int] | None:
    """``(frames, sample rate in Hz, channels)`` of a complete 16-bit PCM or 32-bit float WAV
    (what ``soundfile.info`` reports for it), read from the header alone; ``None`` for any other
    file (the caller then asks libsndfile). ``OSError`` from opening ``source`` propagates."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return plain_wav_info(f)
    info = _header(source)
    if info is None:
        return None
    _, channels, rate, _, frames = info
    return frames, rate, channels


def read_plain_wav(
    source: str | os.PathLike | BinaryIO,
    start: int = 0,
    frames: int = -1,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, int] | None:
    """Read a 16-bit PCM or 32-bit float WAV like ``soundfile.read(dtype="float32",
    always_2d=True, start=start, frames=frames)``.

    Args:
        source: a path, or a seekable binary file object positioned at the WAV's first byte
            (on ``None`` it is left anywhere: seek back before handing it to libsndfile).
        start: first frame to read (``0 <= start < frames in the file``).
        frames: frames to read from ``start`` (``-1``: to the end; more than remain: to the end).
        out: a C-contiguous float32 (L,) array to convert a one-channel file's samples into
            when exactly L frames are read (the result is then a view of ``out``: no new array);
            otherwise ignored.

    Returns:
        ``((L, C) float32, sample rate in Hz)``, or ``None`` when the file is not a complete
        plain WAV of those formats or ``start`` is outside it (the caller then uses libsndfile,
        which also produces the error messages for broken files). Raises nothing for a bad
        file; ``OSError`` from opening ``source`` propagates.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return read_plain_wav(f, start, frames, out)
    info = _header(source)
    if info is None:
        return None
    dtype, channels, rate, offset, total = info
    if not 0 <= start < total:
        return None
    count = total - start if frames < 0 else min(frames, total - start)
    return _samples(source, info, start, count, out), rate


def read_plain_wav_crop(
    path: str | os.PathLike,
    num_frames: int,
    sample_rate: int,
    draw_start: Callable[[int], int],
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, int] | None:
    """A training crop in one open: for a complete plain mono WAV at ``sample_rate`` holding
    more than ``num_frames`` frames, ``start = draw_start(frames in the file)``, then
    ``num_frames`` frames from there (what :func:`read_plain_wav` would read at that start).

    Args:
        out: as for :func:`read_plain_wav`, or an int16 (num_frames,) array that a 16-bit
            file's raw samples are copied into (unscaled: ``sample * 2**-15`` is the audio).

    Returns:
        ``((num_frames,) float32, start)`` (int16 when read into an int16 ``out``), or
        ``None`` WITHOUT calling ``draw_start`` for any other file (other formats, rates or
        channel counts, or not longer than the crop: the caller takes its general path, which
        also reports the errors). ``OSError`` from
        opening ``path`` propagates.
    """
    with open(path, "rb") as f:
        info = _header(f)
        if info is None:
            return None
        _, channels, rate, _, total = info
        if channels != 1 or rate != sample_rate or total <= num_frames:
            return None
        start = int(draw_start(total))
        if not 0 <= start <= total - num_frames:
            raise ValueError(f"draw_start gave {start} for a crop of {num_frames} of {total}")
        return _samples(f, info, start, num_frames, out, raw16=True)[:, 0], start


def _samples(
    f: BinaryIO,
    info: tuple[np.dtype, int, int, int, int],
    start: int,
    count: int,
    out,
    raw16: bool = False,
) -> np.ndarray:
    """(count, C) float32 frames from ``start`` of the file ``info`` describes; into ``out``
    when it fits: a float32 ``out``, or with ``raw16`` an int16 ``out`` for a 16-bit file (the
    raw samples, unscaled)."""
    dtype, channels, _, offset, _ = info
    f.seek(offset + start * channels * dtype.itemsize)
    nbytes = count * channels * dtype.itemsize
    fits = out is not None and channels == 1 and out.shape == (count,)
    raw_into_out = fits and raw16 and out.dtype == np.int16 and dtype == np.int16
    if raw_into_out and out.flags.c_contiguous:
        # the raw little-endian samples straight into ``out``: no bytes object, no copy
        if f.readinto(memoryview(out).cast("B")) == nbytes:  # always, unless the file shrank
            return out.reshape(count, 1)
        f.seek(offset + start * channels * dtype.itemsize)
    raw = f.read(nbytes)
    samples = np.frombuffer(raw, dtype=dtype).reshape(count, channels)
    if raw_into_out:
        result = out.reshape(count, 1)
        result[...] = samples
        return result
    if fits and out.dtype == np.float32:
        result = out.reshape(count, 1)
    else:
        result = np.empty((count, channels), dtype=np.float32)
    if dtype.kind == "i":  # one pass: int16 -> float32 and the scale (exact, a power of 2)
        np.multiply(samples, _SCALE_16, out=result)
    else:
        result[...] = samples
    return result

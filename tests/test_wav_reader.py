"""speechkit.data.wav (numpy WAV parsing) against libsndfile's reading of the same files."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from speechkit.data.audio import audio_info, read_audio
from speechkit.data.wav import plain_wav_info, read_plain_wav, read_plain_wav_crop
from speechkit.errors import DataError


def reference(path_or_bytes, start=0, frames=-1):
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return sf.read(src, dtype="float32", always_2d=True, start=start, frames=frames)


def wav_bytes(samples, rate, subtype, fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def with_chunk_before_data(data: bytes, cid: bytes, body: bytes) -> bytes:
    """Insert a chunk after ``fmt `` (odd sizes get their pad byte), fixing the RIFF size."""
    i = data.index(b"data")
    pad = b"\0" if len(body) % 2 else b""
    out = data[:i] + cid + struct.pack("<I", len(body)) + body + pad + data[i:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2])
def test_equals_libsndfile(tmp_path, subtype, channels):
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0, 0.4, (3001, channels)), -1, 1).astype(np.float32)
    x[:4, 0] = [-1.0, 1.0, 0.0, -32767 / 32768]
    data = wav_bytes(x, 16000, subtype)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    for start, frames in [(0, -1), (5, 100), (2990, 100), (0, 0), (3000, -1)]:
        want, rate = reference(path, start, frames)
        got, got_rate = read_plain_wav(path, start, frames)
        assert got_rate == rate == 16000 and got.dtype == np.float32
        assert np.array_equal(got, want), (start, frames)
        got_b, _ = read_plain_wav(io.BytesIO(data), start, frames)
        assert np.array_equal(got_b, want)
    info = sf.info(path)
    assert plain_wav_info(path) == (info.frames, info.samplerate, info.channels)
    assert audio_info(path) == (info.frames, info.samplerate, info.channels)


def test_extensible_and_extra_chunks():
    x = np.linspace(-1, 1, 501, dtype=np.float32)[:, None].repeat(3, axis=1)
    data = wav_bytes(x, 8000, "PCM_16", fmt="WAVEX")
    assert struct.unpack("<H", data[20:22])[0] == 0xFFFE
    data = with_chunk_before_data(data, b"LIST", b"INFOISFT\x05\x00\x00\x00odd!\x00")
    want, rate = reference(data)
    got, got_rate = read_plain_wav(io.BytesIO(data))
    assert got_rate == rate == 8000 and np.array_equal(got, want)


def test_other_files_are_left_to_libsndfile(tmp_path):
    x = np.zeros((100, 1), dtype=np.float32)
    assert read_plain_wav(io.BytesIO(wav_bytes(x, 16000, "PCM_24"))) is None
    assert read_plain_wav(io.BytesIO(wav_bytes(x, 16000, "DOUBLE"))) is None
    flac = io.BytesIO()
    sf.write(flac, x, 16000, format="FLAC")
    assert read_plain_wav(io.BytesIO(flac.getvalue())) is None
    good = wav_bytes(x, 16000, "PCM_16")
    assert read_plain_wav(io.BytesIO(good[:-10])) is None  # truncated data chunk
    assert read_plain_wav(io.BytesIO(good[:30])) is None  # cut inside the header
    assert read_plain_wav(io.BytesIO(b"")) is None
    assert read_plain_wav(io.BytesIO(good), start=100) is None  # start past the end
    assert plain_wav_info(io.BytesIO(good[:-10])) is None  # left to soundfile.info


@pytest.mark.parametrize("subtype", ["PCM_24", "PCM_16"])
def test_read_audio_same_with_and_without_fast_path(tmp_path, subtype):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.9, 0.9, 1600).astype(np.float32)
    path = tmp_path / "b.wav"
    sf.write(path, x, 16000, subtype=subtype)
    want = reference(path)[0][:, 0]
    assert np.array_equal(read_audio(path), want)
    assert np.array_equal(read_audio(path, start=7, frames=50), want[7:57])


def test_truncated_file_keeps_libsndfile_behaviour(tmp_path):
    x = np.full(1000, 0.25, dtype=np.float32)
    data = wav_bytes(x, 16000, "PCM_16")
    path = tmp_path / "cut.wav"
    path.write_bytes(data[:-400])  # header says 1000 samples, 800 are there
    got = read_audio(path)
    assert np.array_equal(got, reference(path)[0][:, 0]) and len(got) == 800
    assert audio_info(path).frames == sf.info(path).frames  # libsndfile's answer
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match="junk.wav: cannot decode audio"):
        read_audio(tmp_path / "junk.wav")


def test_non_finite_float_wav_is_refused_with_the_sample(tmp_path):
    x = np.zeros(1600, dtype=np.float32)
    x[800] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"nan.wav: 1 non-finite sample\(s\).*sample 800"):
        read_audio(path)


def test_crop_in_one_open_reads_what_a_partial_read_reads(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.9, 0.9, 3000).astype(np.float32)
    mono, stereo, rate8k = tmp_path / "m.wav", tmp_path / "s.wav", tmp_path / "r.wav"
    sf.write(mono, x, 16000, subtype="PCM_16")
    sf.write(stereo, np.stack([x, x], 1), 16000, subtype="PCM_16")
    sf.write(rate8k, x, 8000, subtype="PCM_16")
    seen = []

    def draw(total):
        seen.append(total)
        return 1234

    row = np.zeros(1000, np.float32)
    wav, start = read_plain_wav_crop(mono, 1000, 16000, draw, out=row)
    assert seen == [3000] and start == 1234 and np.may_share_memory(wav, row)
    assert np.array_equal(row, reference(mono, 1234, 1000)[0][:, 0])
    # other channel counts and rates, files not longer than the crop: None, nothing drawn
    for path, frames, rate in ((stereo, 1000, 16000), (rate8k, 1000, 16000), (mono, 3000, 16000)):
        assert read_plain_wav_crop(path, frames, rate, draw) is None
    assert seen == [3000]
    with pytest.raises(ValueError, match="draw_start gave 2500"):
        read_plain_wav_crop(mono, 1000, 16000, lambda total: 2500)

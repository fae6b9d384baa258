"""Front-ends against independent float64 references: numpy FFT, librosa filters, Kaldi recipe."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.errors import ConfigError
from speechkit.modules.frontend import (
    KaldiFbank,
    LogMelFrontend,
    MelSpectrogram,
    PreEmphasis,
    mel_filterbank,
)

SR = 16000


@pytest.fixture(scope="module")
def speech(shared_data) -> np.ndarray:
    """First utterance of the LibriSpeech test-other train list, float32 in [-1, 1]."""
    first = (shared_data / "lists/librispeech_test_other_train_all.txt").read_text().split("\n")[0]
    wav, sr = sf.read(shared_data / first.split()[1], dtype="float32")
    assert sr == SR and wav.ndim == 1 and len(wav) > SR
    return wav


# ---------------------------------------------------------------- float64 numpy references


def periodic_window(name: str, length: int) -> np.ndarray:
    n = np.arange(length) / length
    a = 0.54 if name == "hamming" else 0.5
    return a - (1 - a) * np.cos(2 * np.pi * n)


def reference_logmel(
    wav: np.ndarray,
    n_mels: int,
    window: str,
    pre_emphasis: float | None,
    norm: str,
    f_min: float = 0.0,
    f_max: float = 8000.0,
) -> np.ndarray:
    """voxceleb_trainer's front-end written with explicit framing and np.fft.rfft, float64."""
    x = wav.astype(np.float64)
    if pre_emphasis is not None:
        x = x - pre_emphasis * np.concatenate([[x[1]], x[:-1]])
    n_fft, win, hop = 512, 400, 160
    padded = np.pad(x, n_fft // 2, mode="reflect")
    frame_window = np.zeros(n_fft)
    frame_window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = periodic_window(window, win)
    num_frames = 1 + len(x) // hop
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(num_frames)])
    power = np.abs(np.fft.rfft(frames * frame_window, axis=1)) ** 2  # (T, 257)
    fb = librosa.filters.mel(
        sr=SR,
        n_fft=n_fft,
        n_mels=n_mels,
        fmin=f_min,
        fmax=f_max,
        htk=True,
        norm=None,
        dtype=np.float64,
    )
    feats = np.log(fb @ power.T + 1e-6)  # (n_mels, T)
    mean = feats.mean(axis=1, keepdims=True)
    if norm == "instance":
        return (feats - mean) / np.sqrt(feats.var(axis=1, keepdims=True) + 1e-5)
    return feats - mean


def reference_kaldi_fbank(wav: np.ndarray, n_mels: int = 80, window: str = "povey") -> np.ndarray:
    """Kaldi compute-fbank-feats (snip_edges, no dither), frame by frame in float64."""
    x = wav.astype(np.float64) * 32768.0
    win, hop, n_fft = 400, 160, 512
    n = np.arange(win)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
    weights = hann**0.85 if window == "povey" else 0.54 - 0.46 * np.cos(2 * np.pi * n / (win - 1))

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(SR / 2)
    delta = (hi - lo) / (n_mels + 1)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(n_fft // 2):
            b = mel(k * SR / n_fft)
            if left < b < right:
                banks[m, k] = (
                    (b - left) / (centre - left) if b <= centre else (right - b) / (right - centre)
                )
    out = []
    for start in range(0, len(x) - win + 1, hop):
        frame = x[start : start + win].copy()
        frame -= frame.mean()
        for j in range(win - 1, 0, -1):
            frame[j] -= 0.97 * frame[j - 1]
        frame[0] -= 0.97 * frame[0]
        spectrum = np.fft.rfft(frame * weights, n=n_fft)
        energies = banks @ (spectrum.real**2 + spectrum.imag**2)
        out.append(np.log(np.maximum(energies, np.finfo(np.float32).eps)))
    return np.array(out)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("n_mels", [40, 64, 80])
def test_mel_filterbank_matches_librosa(n_mels):
    fb = mel_filterbank(257, 0.0, 8000.0, n_mels, SR)
    ref = librosa.filters.mel(
        sr=SR, n_fft=512, n_mels=n_mels, fmin=0, fmax=8000, htk=True, norm=None
    ).T
    assert fb.shape == (257, n_mels) and fb.dtype == torch.float32
    np.testing.assert_allclose(fb.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_mel_filterbank_rejects_bad_range():
    with pytest.raises(ConfigError, match="f_max"):
        mel_filterbank(257, 0.0, 9000.0, 40, SR)


def test_pre_emphasis_reflects_first_sample():
    x = torch.randn(3, 100, dtype=torch.float64)
    y = PreEmphasis(0.97)(x)
    expected = x.clone()
    expected[:, 1:] -= 0.97 * x[:, :-1]
    expected[:, 0] -= 0.97 * x[:, 1]
    assert y.shape == x.shape
    torch.testing.assert_close(y, expected)
    assert PreEmphasis(persistent=False).state_dict() == {}


@pytest.mark.parametrize("length", [16000, 32240, 32399])
def test_mel_spectrogram_frame_count(length):
    out = MelSpectrogram(n_fft=512, win_length=400, hop_length=160, n_mels=40)(
        torch.randn(2, length)
    )
    assert out.shape == (2, 40, 1 + length // 160)
    assert MelSpectrogram().state_dict() == {}  # buffers are non-persistent


@pytest.mark.parametrize(
    "n_mels, window, pre_emphasis, norm, f_min, f_max",
    [
        (40, "hamming", None, "instance", 0.0, 8000.0),  # ResNetSE34L
        (64, "hamming", 0.97, "instance", 0.0, 8000.0),  # ResNetSE34V2
        (40, "hann", None, "instance", 0.0, 8000.0),  # VGGVox40
        (80, "hamming", 0.97, "mean", 20.0, 7600.0),  # ECAPA-TDNN log-mel
    ],
)
def test_logmel_frontend_matches_float64_reference(
    speech, n_mels, window, pre_emphasis, norm, f_min, f_max
):
    frontend = LogMelFrontend(
        n_mels=n_mels, window=window, pre_emphasis=pre_emphasis, norm=norm, f_min=f_min, f_max=f_max
    )
    ours = frontend(torch.from_numpy(speech)[None])[0].numpy()
    ref = reference_logmel(speech, n_mels, window, pre_emphasis, norm, f_min, f_max)
    assert ours.shape == ref.shape == (n_mels, 1 + len(speech) // 160)
    err = np.abs(ours - ref)
    assert err.max() < 3e-4, err.max()
    assert np.median(err) < 2e-6, np.median(err)


def test_logmel_frontend_is_fp32_under_autocast(speech):
    frontend = LogMelFrontend(n_mels=64, pre_emphasis=0.97)
    x = torch.from_numpy(speech[: 2 * SR]).repeat(2, 1)
    plain = frontend(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = frontend(x)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


def test_logmel_instance_norm_statistics(speech):
    out = LogMelFrontend(n_mels=40)(torch.from_numpy(speech)[None])[0].double()
    torch.testing.assert_close(
        out.mean(dim=1), torch.zeros(40, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        out.var(dim=1, unbiased=False), torch.ones(40, dtype=torch.float64), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("window", ["povey", "hamming"])
def test_kaldi_fbank_matches_float64_reference(speech, window):
    wav = speech[: 2 * SR + 123]
    fbank = KaldiFbank(window_type=window).eval()
    ours = fbank(torch.from_numpy(wav)).numpy()
    ref = reference_kaldi_fbank(wav, window=window)
    assert ours.shape == (1, 1 + (len(wav) - 400) // 160, 80)
    assert ref.shape == ours.shape[1:]
    err = np.abs(ours[0] - ref)
    # float32 FFT vs float64: the few low-energy bins lose ~1e-3 in log; the bulk agrees to 1e-6
    assert err.max() < 2e-3, err.max()
    assert np.median(err) < 5e-6, np.median(err)


def test_kaldi_fbank_cmn_and_batch(speech):
    wav = torch.from_numpy(speech[:SR])
    plain = KaldiFbank()(wav)
    cmn = KaldiFbank(cmn=True)(torch.stack([wav, wav.flip(0)]))
    assert cmn.shape == (2, 1 + (SR - 400) // 160, 80)
    torch.testing.assert_close(cmn[0], plain[0] - plain[0].mean(dim=0, keepdim=True))
    torch.testing.assert_close(cmn.mean(dim=1), torch.zeros(2, 80), atol=1e-4, rtol=0)
    assert KaldiFbank().num_frames(399) == 0 and KaldiFbank().num_frames(400) == 1
    with pytest.raises(ValueError, match="fewer than one frame"):
        KaldiFbank()(torch.zeros(399))


def test_kaldi_fbank_dither_only_in_training(speech):
    wav = torch.from_numpy(speech[:SR])
    fbank = KaldiFbank(dither=1.0)
    # eval: no dither at all, the same numbers as a front-end built without it
    torch.testing.assert_close(fbank.eval()(wav), KaldiFbank(dither=0.0)(wav), rtol=0, atol=0)
    fbank.train()
    torch.manual_seed(0)
    first = fbank(wav)
    torch.manual_seed(1)
    assert not torch.equal(first, fbank(wav))  # training: random dither, seed-dependent
    torch.manual_seed(0)
    torch.testing.assert_close(fbank(wav), first, rtol=0, atol=0)
    assert not torch.equal(first, fbank.eval()(wav))

"""Waveform augmentation for speaker training: additive noise, babble, music, reverb, speed.

Follows voxceleb_trainer's ``AugmentWAV`` (clovaai/voxceleb_trainer ``DatasetLoader.py``): per
utterance one choice, uniform over {none, reverb, music, babble, noise}; a choice whose files
are missing is left out of the draw.

* Levels: ``dB(x) = 10 * log10(mean(x**2) + eps)``. A noise is scaled by
  ``sqrt(10 ** ((dB(clean) - dB(noise) - snr) / 10))`` with ``snr`` uniform in the category's
  range, so it lies ``snr`` dB below the clean signal; the scaled noises are summed and added.
  The result is not clipped (it may slightly exceed [-1, 1]).
* ``eps``: the reference adds 1e-4, which dates from when it read int16-scale samples (scipy
  wavfile; research section 1.12, issue #144), where it is negligible. On float samples in
  [-1, 1] (what it reads now, and what speechkit uses) 1e-4 is a -40 dBFS floor, close to real
  speech levels (-20 to -30 dBFS), and the achieved SNR drifts far from the drawn one
  (measured on the shared LibriSpeech crops: one-talker babble drawn in 13-20 dB came out as
  low as 3.6 dB). speechkit's default ``LEVEL_EPS`` is the same floor at int16 scale,
  ``1e-4 / 32768**2``, so the achieved SNR is the drawn one; ``level_eps=REFERENCE_LEVEL_EPS``
  (1e-4) reproduces today's reference exactly.
* Each noise file is randomly cropped to the utterance length (wrap-padded when shorter).
* Babble mixes 3-7 different speech files, each at its own SNR (so the sum lies a few dB
  lower than any one of them: k equal-level talkers add about ``10 * log10(k)`` dB).
* Reverb: full convolution with a randomly chosen RIR normalised to unit energy, truncated to
  the input length (no direct-path alignment, as the reference).
* Optional speed perturbation (wespeaker / Kaldi style, not in voxceleb_trainer), applied first:
  a speed ``s`` drawn uniformly from ``speeds`` resamples with soxr from ``s * sample_rate`` to
  ``sample_rate`` (tempo and pitch both change, length becomes ``L / s``); the result is then
  randomly cropped (``s < 1``) or wrap-padded (``s > 1``) back to ``L``. Labels are NOT changed
  (wespeaker instead treats each speed as a new speaker).

Categories. The reference takes MUSAN's folder names noise / speech / music. speechkit's noise
list gives the category per line (``category path``; a bare ``path`` is ``noise``), so the
shared test data (no MUSAN) has only ``noise``. Babble is built from speech files: the
``speech`` lines of the noise list plus ``babble_files`` (e.g. the training list or the cohort
list, read with ``read_babble_list``).

Randomness comes only from the ``np.random.Generator`` passed in (the dataset derives it from
seed, epoch and utterance indices). Decoded noise/RIR files are cached lazily per process
(so per DataLoader worker) in a bounded LRU cache that is not pickled.

``AugmentConfig.on_device``: the same draws are made in the workers
(``speechkit.data.augment_draws``) and rendered batched on the training device
(``speechkit.data.device_augment``); this module's transforms are then not run.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.signal import fftconvolve

from speechkit.data.audio import read_audio, resample_waveform
from speechkit.data.crop import random_crop, wrap_pad
from speechkit.data.lists import read_list_fields
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError

__all__ = [
    "AUGMENTATIONS",
    "LEVEL_EPS",
    "NOISE_CATEGORIES",
    "REFERENCE_LEVEL_EPS",
    "AugmentConfig",
    "Augmenter",
    "build_augmenter",
    "level_db",
    "read_babble_list",
    "read_noise_list",
    "read_rir_list",
]

NOISE_CATEGORIES = ("noise", "speech", "music")
AUGMENTATIONS = ("none", "reverb", "music", "babble", "noise")
REFERENCE_LEVEL_EPS = 1e-4
LEVEL_EPS = REFERENCE_LEVEL_EPS / 32768**2


def level_db(wav: np.ndarray, eps: float = LEVEL_EPS) -> float:
    """Level in dB, voxceleb_trainer's definition: ``10 * log10(mean(wav**2) + eps)``.

    See the module docstring for ``eps`` (reference 1e-4 at int16 scale; ``LEVEL_EPS`` is that
    value rescaled to float samples in [-1, 1]).
    """
    return float(10.0 * np.log10(np.mean(np.square(wav, dtype=np.float64)) + eps))


def _join(root: str | os.PathLike, rel: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(os.fspath(root)), rel))


def read_noise_list(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, list[str]]:
    """Read a noise list: ``relative/path.wav`` or ``category relative/path.wav`` per line.

    Args:
        path: the list file (opened as given); the paths on its lines are relative to ``root``.
        root: the data folder (absolute paths on the lines are kept).

    Returns:
        ``{category: [absolute paths]}``, categories among ``NOISE_CATEGORIES``
        (``noise`` for lines without one).

    Raises:
        DataError: missing/empty list, more than two fields, or an unknown category (the
            message names the file and line).
    """
    files: dict[str, list[str]] = {}
    for number, fields in read_list_fields(path, (1, 2), "[category] relative/path.wav"):
        category = fields[0] if len(fields) == 2 else "noise"
        if category not in NOISE_CATEGORIES:
            raise DataError(
                f"{os.fspath(path)}:{number}: unknown noise category {category!r}; expected one "
                f"of {list(NOISE_CATEGORIES)} before the path"
            )
        files.setdefault(category, []).append(_join(root, fields[-1]))
    return files


def read_rir_list(path: str | os.PathLike, root: str | os.PathLike) -> list[str]:
    """Read a RIR list: one ``relative/path.wav`` per line.

    Raises:
        DataError: missing/empty list or a line with more than one field (file and line named).
    """
    return [_join(root, f[0]) for _, f in read_list_fields(path, (1,), "relative/path.wav")]


def read_babble_list(path: str | os.PathLike, root: str | os.PathLike) -> list[str]:
    """Read speech files for babble: ``path`` or ``speaker_id path`` lines (a train list works).

    Raises:
        DataError: missing/empty list or a line with more than two fields.
    """
    rows = read_list_fields(path, (1, 2), "[speaker_id] relative/path.wav")
    return [_join(root, f[-1]) for _, f in rows]


class Augmenter:
    """Random noise / babble / music / reverb (and optional speed) augmentation of one crop.

    Args:
        noise_files: ``{category: [paths]}`` with categories in ``NOISE_CATEGORIES``
            (``speech`` files are babble sources).
        rir_files: room impulse responses (a multi-channel file is averaged to one channel).
        babble_files: more speech files for babble.
        noise_snr, speech_snr, music_snr: (low, high) SNR ranges in dB (reference: 0-15,
            13-20, 5-15).
        num_babble: (low, high) inclusive number of speech files per babble (reference 3-7).
        speed_perturb: apply speed perturbation first.
        speeds: speed factors drawn uniformly.
        sample_rate: audio rate in Hz (files at other rates are resampled when read).
        level_eps: the ``eps`` of the level definition (``REFERENCE_LEVEL_EPS`` = 1e-4 to
            reproduce voxceleb_trainer on float audio; see the module docstring).
        cache_mb: per-process budget of the decoded-file cache in MB (float32 samples).

    Raises:
        ConfigError: an unknown category, a range with low > high, or a non-positive speed.
    """

    def __init__(
        self,
        noise_files: dict[str, Sequence[str]] | None = None,
        rir_files: Sequence[str] = (),
        babble_files: Sequence[str] = (),
        noise_snr: tuple[float, float] = (0.0, 15.0),
        speech_snr: tuple[float, float] = (13.0, 20.0),
        music_snr: tuple[float, float] = (5.0, 15.0),
        num_babble: tuple[int, int] = (3, 7),
        speed_perturb: bool = False,
        speeds: Sequence[float] = (0.9, 1.0, 1.1),
        sample_rate: int = 16000,
        level_eps: float = LEVEL_EPS,
        cache_mb: float = 256.0,
    ):
        noise_files = dict(noise_files or {})
        unknown = set(noise_files) - set(NOISE_CATEGORIES)
        if unknown:
            raise ConfigError(
                f"Augmenter: unknown noise categories {sorted(unknown)}; expected "
                f"{list(NOISE_CATEGORIES)}"
            )
        for name, (low, high) in (
            ("noise_snr", noise_snr),
            ("speech_snr", speech_snr),
            ("music_snr", music_snr),
            ("num_babble", num_babble),
        ):
            if low > high:
                raise ConfigError(f"Augmenter: {name} must be (low, high), got ({low}, {high})")
        if num_babble[0] < 1 or any(s <= 0 for s in speeds) or not speeds:
            raise ConfigError(
                f"Augmenter: num_babble must be >= 1 and speeds > 0, got {num_babble}, {speeds}"
            )
        self.sources = {
            "noise": list(noise_files.get("noise", ())),
            "music": list(noise_files.get("music", ())),
            "babble": list(noise_files.get("speech", ())) + list(babble_files),
        }
        self.rir_files = list(rir_files)
        self.snr = {"noise": noise_snr, "babble": speech_snr, "music": music_snr}
        self.num_babble = num_babble
        self.speed_perturb = speed_perturb
        self.speeds = tuple(float(s) for s in speeds)
        self.sample_rate = sample_rate
        self.level_eps = level_eps
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.choices = tuple(
            kind
            for kind in AUGMENTATIONS
            if kind == "none" or (self.rir_files if kind == "reverb" else self.sources[kind])
        )

    # -- pickling: DataLoader workers start with an empty cache -----------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"], state["_cached_bytes"] = OrderedDict(), 0
        return state

    def decode(self, path: str) -> np.ndarray:
        """(L,) float32 samples of a noise / RIR file at ``sample_rate``, mono (not cached)."""
        # noise / RIR corpora come at many rates and channel counts (binaural BRIRs): resampled
        # and averaged to mono as documented (class docstring, README), without a warning each
        return read_audio(path, self.sample_rate, warn=False)

    def load(self, path: str) -> np.ndarray:
        """(L,) float32 samples of a noise / RIR file at ``sample_rate``, mono (cached)."""
        wav = self._cache.get(path)
        if wav is not None:
            self._cache.move_to_end(path)
            return wav
        wav = self.decode(path)
        if wav.nbytes <= self.cache_bytes:
            self._cache[path] = wav
            self._cached_bytes += wav.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return wav

    # -- the transforms --------------------------------------------------------------------
    def speed(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(L,) -> (L,): resample by a random speed factor, then crop / wrap-pad back to L."""
        factor = self.speeds[int(rng.integers(len(self.speeds)))]
        if factor == 1.0:
            return wav
        changed = resample_waveform(wav, self.sample_rate * factor, self.sample_rate)
        if len(changed) > len(wav):
            return random_crop(changed, len(wav), rng)
        return wrap_pad(changed, len(wav))[: len(wav)]

    def reverb(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(L,) -> (L,): convolve with a random unit-energy RIR, keep the first L samples.

        Raises:
            DataError: the RIR file is silent (all zeros).
        """
        path = self.rir_files[int(rng.integers(len(self.rir_files)))]
        rir = self.load(path).astype(np.float64)
        energy = np.sqrt(np.sum(rir**2))
        if energy == 0:
            raise DataError(f"{path}: the RIR is all zeros")
        # float32 FFTs: 1.6x faster than float64, error ~1e-7 of the peak
        unit_rir = (rir / energy).astype(np.float32)
        out = fftconvolve(wav.astype(np.float32, copy=False), unit_rir, mode="full")
        return np.ascontiguousarray(out[: len(wav)], dtype=np.float32)

    def add_noise(self, wav: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        """(L,) -> (L,): add ``kind`` ("noise", "music" or "babble") at random SNRs.

        Each source file is cropped to L, scaled to ``snr`` dB below ``wav`` (level definition
        of ``level_db``), summed and added.
        """
        files = self.sources[kind]
        if kind == "babble":
            count = min(int(rng.integers(self.num_babble[0], self.num_babble[1] + 1)), len(files))
            chosen = rng.choice(len(files), size=count, replace=False)
        else:
            chosen = rng.integers(len(files), size=1)
        clean_db = level_db(wav, self.level_eps)
        low, high = self.snr[kind]
        total = np.zeros(len(wav), dtype=np.float64)
        for i in chosen:
            noise = random_crop(self.load(files[int(i)]), len(wav), rng).astype(np.float64)
            snr = rng.uniform(low, high)
            total += (
                np.sqrt(10.0 ** ((clean_db - level_db(noise, self.level_eps) - snr) / 10.0)) * noise
            )
        return (wav + total).astype(np.float32)

    def apply(self, wav: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
        """Apply one named augmentation (one of ``self.choices``) without speed perturbation.

        Args:
            wav: (L,) float32 samples.
            kind: "none", "reverb", "music", "babble" or "noise".
            rng: the generator.

        Returns:
            (L,) float32.

        Raises:
            ValueError: ``kind`` is not available (unknown, or no files for it).
        """
        if kind not in self.choices:
            raise ValueError(f"augmentation {kind!r} is not available; have {self.choices}")
        if kind == "none":
            return wav
        if kind == "reverb":
            return self.reverb(wav, rng)
        return self.add_noise(wav, kind, rng)

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(L,) float32 -> (L,) float32: optional speed, then one augmentation drawn uniformly
        from ``self.choices``."""
        if self.speed_perturb:
            wav = self.speed(wav, rng)
        return self.apply(wav, self.choices[int(rng.integers(len(self.choices)))], rng)


@dataclass
class AugmentConfig(SpeechkitDataclass):
    """Augmentation settings a task config can embed.

    ``noise_list``, ``rir_list`` and ``babble_list`` are list FILES found like the task's
    ``train_list``: relative to the working directory (absolute paths as given). The audio paths
    on their lines are relative to the task's ``root`` (absolute ones as given), like the lines
    of the train list.
    """

    noise_list: str | None = None
    rir_list: str | None = None
    babble_list: str | None = None
    noise_snr: list[float] = field(default_factory=lambda: [0.0, 15.0])
    speech_snr: list[float] = field(default_factory=lambda: [13.0, 20.0])
    music_snr: list[float] = field(default_factory=lambda: [5.0, 15.0])
    num_babble: list[int] = field(default_factory=lambda: [3, 7])
    speed_perturb: bool = False
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    level_eps: float = LEVEL_EPS
    cache_mb: float = 256.0
    on_device: bool = False
    """Data workers only decode and crop (the speech crop, the drawn noise segments and RIRs)
    and draw what the worker path would draw from the same generator; speed, reverb and the
    noise mixing then run batched on the training device in the task's train step
    (``speechkit.data.device_augment``), equal to the worker path within float tolerance.
    ``false``: the whole augmentation runs in the workers."""
    noise_bank: bool = False
    """With ``on_device``: decode every noise, music, babble and RIR file once, when the
    dataset is built, into one tensor kept on the training device
    (``speechkit.data.noise_bank``); the workers then send each noise segment as (file, start)
    and each RIR as its file index instead of decoding and sending their samples. Costs device
    memory: 2 bytes per sample of 16-bit sources (115 MB per hour at 16 kHz), 4 for float
    ones."""


def _list_file(value: str, key: str, root: str | os.PathLike) -> str:
    """The list file ``value`` of ``task.augmentation.<key>`` (working-directory relative).

    Raises:
        DataError: it does not exist; the message says how it was resolved and, when the same
            name exists under ``root``, which path to give instead.
    """
    if os.path.isfile(value):
        return value
    under_root = _join(root, value)
    hint = (
        f"; {under_root} exists: give task.augmentation.{key}={under_root}"
        if not os.path.isabs(value) and os.path.isfile(under_root)
        else ""
    )
    raise DataError(
        f"{value}: task.augmentation.{key} list file not found (looked in the working directory "
        f"{os.getcwd()}, as for task.train_list; the paths on its lines are relative to "
        f"task.root){hint}"
    )


def build_augmenter(
    cfg: AugmentConfig, root: str | os.PathLike, sample_rate: int = 16000
) -> Augmenter:
    """Read the lists named by ``cfg`` and build an ``Augmenter``.

    The list files are found as given (relative to the working directory, like the task's
    ``train_list``); the audio paths on their lines are relative to ``root``.

    Raises:
        DataError: a list is missing (the message names the path under ``root`` when that one
            exists) or malformed.
        ConfigError: a bad range or speed.
    """
    noise, rir, babble = (
        _list_file(value, key, root) if value else None
        for key, value in (
            ("noise_list", cfg.noise_list),
            ("rir_list", cfg.rir_list),
            ("babble_list", cfg.babble_list),
        )
    )
    return Augmenter(
        noise_files=read_noise_list(noise, root) if noise else None,
        rir_files=read_rir_list(rir, root) if rir else (),
        babble_files=read_babble_list(babble, root) if babble else (),
        noise_snr=tuple(cfg.noise_snr),
        speech_snr=tuple(cfg.speech_snr),
        music_snr=tuple(cfg.music_snr),
        num_babble=tuple(cfg.num_babble),
        speed_perturb=cfg.speed_perturb,
        speeds=tuple(cfg.speeds),
        sample_rate=sample_rate,
        level_eps=cfg.level_eps,
        cache_mb=cfg.cache_mb,
    )

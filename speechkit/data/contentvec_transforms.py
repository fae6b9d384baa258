"""ContentVec's speaker perturbations: Praat "Change gender" (formant shift, pitch shift, pitch
range change) and a random 10-band parametric EQ (auspicious3000/contentvec
``contentvec/data/audio/audio_utils_1.py`` and ``contentvec_dataset.py``).

Training views (each drawn independently):

1. Praat "Change gender" through praat-parselmouth. The pitch is analysed with Praat's
   autocorrelation method, time step ``0.8 / pitch_floor``, in the speaker's
   ``[pitch_floor, pitch_ceiling]``; ``f0_med`` is the median of the voiced frames. Formant shift
   ratio ``r_f ~ U(1, 1.4)``, new pitch median ``f0_med * r_p`` with ``r_p ~ U(1, 2)``, pitch range
   factor ``r_r ~ U(1, 1.5)``, duration factor 1; each ratio is replaced by its reciprocal with
   probability 0.5. If Praat fails or warns (e.g. no voiced frame), the view is the unchanged
   waveform (logged once per process).
2. A random EQ: a low shelf at 60 Hz, 8 peaking filters and a high shelf at 7600 Hz, centres
   geometrically spaced over 60..7600 Hz, ``Q = 2 * (5/2)^u`` with ``u ~ U(0, 1)``, gains
   ``U(-12, 12)`` dB, applied as second-order sections with ``scipy.signal.sosfilt``. The biquads
   are the RBJ "Audio EQ Cookbook" designs (R. Bristow-Johnson).

Validation view 2 is one fixed "Change gender": male speakers to (formant 1.2, median 300 Hz,
range 1.2), female speakers to (0.8, 100 Hz, 0.8).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import parselmouth
from parselmouth.praat import call
from parselmouth.praat import run as run_praat
from scipy.signal import sosfilt

from speechkit.dataclass import SpeechkitDataclass

__all__ = [
    "ContentVecPerturbConfig",
    "PraatTransformError",
    "change_gender",
    "eq_sos",
    "fixed_view",
    "high_shelf_sos",
    "low_shelf_sos",
    "peaking_sos",
    "perturb_view",
    "random_eq",
    "random_eq_params",
    "random_formant_pitch",
    "random_formant_pitch_params",
    "voiced_f0",
]

logger = logging.getLogger(__name__)
_fallback_logged = False


@dataclass
class ContentVecPerturbConfig(SpeechkitDataclass):
    """Ranges of ContentVec's perturbations (defaults: the reference's).

    Ratios are drawn as ``U(1, max)`` and inverted with probability ``invert_prob``.
    """

    formant_pitch: bool = True  # apply Praat "Change gender" to training views
    formant_shift_max: float = 1.4
    pitch_shift_max: float = 2.0  # new pitch median = measured median * ratio
    pitch_range_max: float = 1.5
    invert_prob: float = 0.5
    eq: bool = True  # apply the random EQ to training views
    eq_num_bands: int = 10  # low shelf + (n - 2) peaking + high shelf
    eq_low_hz: float = 60.0
    eq_high_hz: float = 7600.0
    eq_gain_db: float = 12.0  # gains ~ U(-eq_gain_db, eq_gain_db)
    eq_q_min: float = 2.0
    eq_q_max: float = 5.0
    valid_male_formant_shift: float = 1.2
    valid_male_pitch_median: float = 300.0  # Hz
    valid_male_pitch_range: float = 1.2
    valid_female_formant_shift: float = 0.8
    valid_female_pitch_median: float = 100.0  # Hz
    valid_female_pitch_range: float = 0.8


class PraatTransformError(RuntimeError):
    """Praat could not transform a waveform (an error, a warning, or no voiced frame)."""


# -- Praat -------------------------------------------------------------------------------------
def _sound(wav: np.ndarray, sr: float) -> parselmouth.Sound:
    return parselmouth.Sound(np.asarray(wav, dtype=np.float64), sampling_frequency=float(sr))


def _pitch(sound: parselmouth.Sound, pitch_floor: float, pitch_ceiling: float) -> parselmouth.Pitch:
    return sound.to_pitch_ac(
        time_step=0.8 / pitch_floor, pitch_floor=pitch_floor, pitch_ceiling=pitch_ceiling
    )


def voiced_f0(
    wav: np.ndarray, sr: float, pitch_floor: float = 75.0, pitch_ceiling: float = 600.0
) -> np.ndarray:
    """f0 (Hz) of the voiced frames: Praat autocorrelation pitch, time step ``0.8/pitch_floor``.

    Args:
        wav: (L,) waveform.
        sr: sample rate in Hz.
        pitch_floor, pitch_ceiling: analysis range in Hz.

    Returns:
        (F,) float64 f0 of the voiced frames (empty when nothing is voiced).
    """
    f0 = _pitch(_sound(wav, sr), pitch_floor, pitch_ceiling).selected_array["frequency"]
    return f0[f0 > 0]


def _fit_length(out: np.ndarray, length: int) -> np.ndarray:
    out = np.asarray(out, dtype=np.float32).reshape(-1)
    if len(out) >= length:
        return np.ascontiguousarray(out[:length])
    return np.pad(out, (0, length - len(out)))


def _praat_change_gender(
    sound: parselmouth.Sound,
    pitch: parselmouth.Pitch,
    formant_shift_ratio: float,
    new_pitch_median: float,
    pitch_range_factor: float,
    duration_factor: float,
    praat_seed: int | None,
) -> np.ndarray:
    if praat_seed is not None:
        # Praat's generator is global to the process (one per DataLoader worker)
        run_praat(f"random_initializeWithSeedUnsafelyButPredictably ({int(praat_seed)})")
    with warnings.catch_warnings():
        warnings.simplefilter("error", parselmouth.PraatWarning)
        try:
            out = call(
                [sound, pitch],
                "Change gender",
                float(formant_shift_ratio),
                float(new_pitch_median),
                float(pitch_range_factor),
                float(duration_factor),
            )
        except (parselmouth.PraatError, parselmouth.PraatWarning) as e:
            raise PraatTransformError(f"Praat 'Change gender' failed: {e}") from e
    return out.values[0]


def change_gender(
    wav: np.ndarray,
    sr: float,
    formant_shift_ratio: float,
    new_pitch_median: float,
    pitch_range_factor: float,
    duration_factor: float = 1.0,
    pitch_floor: float = 75.0,
    pitch_ceiling: float = 600.0,
    praat_seed: int | None = 0,
) -> np.ndarray:
    """Praat's "Change gender" (PSOLA pitch manipulation + formant shift by resampling).

    Args:
        wav: (L,) waveform in [-1, 1].
        sr: sample rate in Hz.
        formant_shift_ratio: formant frequencies are multiplied by this (1 = unchanged).
        new_pitch_median: the output's median pitch in Hz (0 keeps the pitch).
        pitch_range_factor: the pitch excursions around the median are scaled by this.
        duration_factor: time stretch (1 = unchanged).
        pitch_floor, pitch_ceiling: pitch analysis range in Hz (autocorrelation, time step
            ``0.8 / pitch_floor``, as Praat's own Sound-only "Change gender").
        praat_seed: seeds Praat's random generator first (its overlap-add places unvoiced
            pulses at random), so equal inputs give equal outputs; ``None`` leaves it as is.

    Returns:
        (L',) float32; ``L' = L`` when ``duration_factor == 1`` (cut or zero-padded to L).

    Raises:
        PraatTransformError: Praat raised an error or a warning.
    """
    sound = _sound(wav, sr)
    out = _praat_change_gender(
        sound,
        _pitch(sound, pitch_floor, pitch_ceiling),
        formant_shift_ratio,
        new_pitch_median,
        pitch_range_factor,
        duration_factor,
        praat_seed,
    )
    if duration_factor == 1.0:
        return _fit_length(out, len(wav))
    return np.asarray(out, dtype=np.float32)


def _draw_ratio(rng: np.random.Generator, high: float, invert_prob: float) -> float:
    ratio = rng.uniform(1.0, high)
    return float(1.0 / ratio if rng.random() < invert_prob else ratio)


def random_formant_pitch_params(
    rng: np.random.Generator,
    formant_shift_max: float = 1.4,
    pitch_shift_max: float = 2.0,
    pitch_range_max: float = 1.5,
    invert_prob: float = 0.5,
) -> tuple[float, float, float]:
    """Draw ``(r_f, r_p, r_r)`` in that order, each ``U(1, max)`` inverted w.p. ``invert_prob``.

    Each ratio takes two draws from ``rng``: ``uniform(1, max)`` then ``random()``.
    """
    return (
        _draw_ratio(rng, formant_shift_max, invert_prob),
        _draw_ratio(rng, pitch_shift_max, invert_prob),
        _draw_ratio(rng, pitch_range_max, invert_prob),
    )


def random_formant_pitch(
    wav: np.ndarray,
    sr: float,
    rng: np.random.Generator,
    pitch_floor: float = 75.0,
    pitch_ceiling: float = 600.0,
    formant_shift_max: float = 1.4,
    pitch_shift_max: float = 2.0,
    pitch_range_max: float = 1.5,
    invert_prob: float = 0.5,
) -> np.ndarray:
    """ContentVec's random "Change gender": formant ratio ``r_f``, new median ``f0_med * r_p``,
    range factor ``r_r`` (``random_formant_pitch_params``), duration factor 1. One more draw
    (``rng.integers(2**31)``) seeds Praat's random generator.

    Args:
        wav: (L,) waveform.
        sr: sample rate in Hz.
        rng: source of the ratios.
        pitch_floor, pitch_ceiling: the speaker's analysis range in Hz.

    Returns:
        (L,) float32.

    Raises:
        PraatTransformError: no voiced frame, or Praat failed.
    """
    r_f, r_p, r_r = random_formant_pitch_params(
        rng, formant_shift_max, pitch_shift_max, pitch_range_max, invert_prob
    )
    praat_seed = int(rng.integers(2**31))
    sound = _sound(wav, sr)
    pitch = _pitch(sound, pitch_floor, pitch_ceiling)
    f0 = pitch.selected_array["frequency"]
    if not np.any(f0 > 0):
        raise PraatTransformError("no voiced frame found")
    f0_med = float(np.median(f0[f0 > 0]))
    out = _praat_change_gender(sound, pitch, r_f, f0_med * r_p, r_r, 1.0, praat_seed)
    return _fit_length(out, len(wav))


# -- EQ ----------------------------------------------------------------------------------------
def _common(gain_db, centre_hz, q, sr):
    gain_db, centre_hz, q = np.broadcast_arrays(
        *(np.asarray(x, np.float64) for x in (gain_db, centre_hz, q))
    )
    amp = 10.0 ** (gain_db / 40.0)  # the cookbook's A (square root of the linear gain)
    w0 = 2.0 * np.pi * centre_hz / sr
    alpha = np.sin(w0) / (2.0 * q)
    return amp, np.cos(w0), alpha


def _normalise(b0, b1, b2, a0, a1, a2) -> np.ndarray:
    return np.stack([b0 / a0, b1 / a0, b2 / a0, np.ones_like(a0), a1 / a0, a2 / a0], axis=-1)


def peaking_sos(gain_db, centre_hz, q, sr: float) -> np.ndarray:
    """RBJ cookbook peaking EQ: gain ``gain_db`` at ``centre_hz``, unity far from it.

    Args:
        gain_db, centre_hz, q: scalars or (N,) arrays (dB, Hz, quality factor).
        sr: sample rate in Hz.

    Returns:
        (N, 6) float64 second-order sections ``[b0, b1, b2, 1, a1, a2]`` (``a0`` normalised).
    """
    amp, cos_w0, alpha = _common(gain_db, centre_hz, q, sr)
    return _normalise(
        1 + alpha * amp, -2 * cos_w0, 1 - alpha * amp, 1 + alpha / amp, -2 * cos_w0, 1 - alpha / amp
    ).reshape(-1, 6)


def low_shelf_sos(gain_db, centre_hz, q, sr: float) -> np.ndarray:
    """RBJ cookbook low shelf: ``gain_db`` at DC, 0 dB at Nyquist, half the gain (dB) at
    ``centre_hz``; Q sets the transition slope. Shapes as ``peaking_sos``."""
    amp, cos_w0, alpha = _common(gain_db, centre_hz, q, sr)
    k = 2 * np.sqrt(amp) * alpha
    ap, am = amp + 1, amp - 1
    return _normalise(
        amp * (ap - am * cos_w0 + k),
        2 * amp * (am - ap * cos_w0),
        amp * (ap - am * cos_w0 - k),
        ap + am * cos_w0 + k,
        -2 * (am + ap * cos_w0),
        ap + am * cos_w0 - k,
    ).reshape(-1, 6)


def high_shelf_sos(gain_db, centre_hz, q, sr: float) -> np.ndarray:
    """RBJ cookbook high shelf: 0 dB at DC, ``gain_db`` at Nyquist, half the gain (dB) at
    ``centre_hz``. Shapes as ``peaking_sos``."""
    amp, cos_w0, alpha = _common(gain_db, centre_hz, q, sr)
    k = 2 * np.sqrt(amp) * alpha
    ap, am = amp + 1, amp - 1
    return _normalise(
        amp * (ap + am * cos_w0 + k),
        -2 * amp * (am + ap * cos_w0),
        amp * (ap + am * cos_w0 - k),
        ap - am * cos_w0 + k,
        2 * (am - ap * cos_w0),
        ap - am * cos_w0 - k,
    ).reshape(-1, 6)


def eq_sos(gains_db: np.ndarray, centres_hz: np.ndarray, qs: np.ndarray, sr: float) -> np.ndarray:
    """Cascade of a low shelf (band 0), peaking filters (bands 1..N-2) and a high shelf (N-1).

    Args:
        gains_db, centres_hz, qs: (N,) parameters, N >= 2.
        sr: sample rate in Hz.

    Returns:
        (N, 6) second-order sections for ``scipy.signal.sosfilt``.
    """
    return np.concatenate(
        [
            low_shelf_sos(gains_db[0], centres_hz[0], qs[0], sr),
            peaking_sos(gains_db[1:-1], centres_hz[1:-1], qs[1:-1], sr),
            high_shelf_sos(gains_db[-1], centres_hz[-1], qs[-1], sr),
        ]
    )


def random_eq_params(
    rng: np.random.Generator,
    num_bands: int = 10,
    low_hz: float = 60.0,
    high_hz: float = 7600.0,
    gain_db: float = 12.0,
    q_min: float = 2.0,
    q_max: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the EQ: ``(gains_db, centres_hz, qs)``, each (num_bands,).

    Centres ``geomspace(low_hz, high_hz, num_bands)``; ``qs = q_min * (q_max/q_min)^u`` with
    ``u ~ U(0, 1)`` drawn first, then ``gains ~ U(-gain_db, gain_db)``.
    """
    centres = np.geomspace(low_hz, high_hz, num_bands)
    qs = q_min * (q_max / q_min) ** rng.uniform(0.0, 1.0, size=num_bands)
    gains = rng.uniform(-gain_db, gain_db, size=num_bands)
    return gains, centres, qs


def random_eq(wav: np.ndarray, sr: float, rng: np.random.Generator, **ranges: float) -> np.ndarray:
    """Filter ``wav`` (L,) with a random EQ (``random_eq_params(rng, **ranges)``).

    Returns:
        (L,) float32 (filtered in float64).
    """
    gains, centres, qs = random_eq_params(rng, **ranges)
    sos = eq_sos(gains, centres, qs, sr)
    return sosfilt(sos, np.asarray(wav, dtype=np.float64)).astype(np.float32)


# -- views -------------------------------------------------------------------------------------
def _fallback(wav: np.ndarray, error: Exception, what: str) -> np.ndarray:
    global _fallback_logged
    if not _fallback_logged:
        logger.warning(
            "%s: Praat failed (%s); using the unperturbed waveform (logged once per process)",
            what,
            error,
        )
        _fallback_logged = True
    return np.array(wav, dtype=np.float32)


def perturb_view(
    wav: np.ndarray,
    sr: float,
    pitch_floor: float,
    pitch_ceiling: float,
    rng: np.random.Generator,
    cfg: ContentVecPerturbConfig,
    what: str = "utterance",
) -> np.ndarray:
    """One training view: random "Change gender" (falling back to ``wav``), then random EQ.

    Args:
        wav: (L,) waveform.
        sr: sample rate in Hz.
        pitch_floor, pitch_ceiling: the speaker's analysis range in Hz.
        rng: the view's generator (ratios first, then the EQ).
        cfg: the ranges.
        what: the utterance, named in the fallback log line.

    Returns:
        (L,) float32.
    """
    out = np.asarray(wav, dtype=np.float32)
    if cfg.formant_pitch:
        try:
            out = random_formant_pitch(
                wav,
                sr,
                rng,
                pitch_floor,
                pitch_ceiling,
                cfg.formant_shift_max,
                cfg.pitch_shift_max,
                cfg.pitch_range_max,
                cfg.invert_prob,
            )
        except PraatTransformError as e:
            out = _fallback(wav, e, what)
    if cfg.eq:
        out = random_eq(
            out,
            sr,
            rng,
            num_bands=cfg.eq_num_bands,
            low_hz=cfg.eq_low_hz,
            high_hz=cfg.eq_high_hz,
            gain_db=cfg.eq_gain_db,
            q_min=cfg.eq_q_min,
            q_max=cfg.eq_q_max,
        )
    return out


def fixed_view(
    wav: np.ndarray,
    sr: float,
    pitch_floor: float,
    pitch_ceiling: float,
    is_male: bool,
    cfg: ContentVecPerturbConfig,
    what: str = "utterance",
) -> np.ndarray:
    """Validation view 2: the fixed "Change gender" for the speaker's sex (falls back to
    ``wav``). Returns (L,) float32."""
    if is_male:
        params = (
            cfg.valid_male_formant_shift,
            cfg.valid_male_pitch_median,
            cfg.valid_male_pitch_range,
        )
    else:
        params = (
            cfg.valid_female_formant_shift,
            cfg.valid_female_pitch_median,
            cfg.valid_female_pitch_range,
        )
    try:
        return change_gender(wav, sr, *params, 1.0, pitch_floor, pitch_ceiling, praat_seed=0)
    except PraatTransformError as e:
        return _fallback(wav, e, what)

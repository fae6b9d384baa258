"""Source-separation metrics: SI-SDR, SNR ("SDR" of the MDX challenge) and their improvements.

All functions take an ``estimate`` and a ``reference`` of shape (B, T) (a batch of B signals of T
samples) or (T,) (one signal), compute in float64 and return a (B,) float64 tensor, or a Python
float for 1-D inputs. Values are in dB. Gradients flow through the float64 cast, so the functions
can serve as losses too (:mod:`speechkit.criterions.separation` uses them for its ``si_sdr``
loss option).

Conventions (they change the numbers; report them next to results):

* :func:`si_sdr` follows Le Roux et al., "SDR - half-baked or well done?" (ICASSP 2019). With
  ``zero_mean=True`` (the default, as in Asteroid, torchmetrics and the papers' SI-SNR) both
  signals have their time mean removed first; ``zero_mean=False`` keeps a DC offset in the
  score. The projection and the ratio add ``eps`` (default 1e-8) to numerator and denominator::

      alpha  = (<s_hat, s> + eps) / (||s||^2 + eps)
      target = alpha * s,   noise = s_hat - target
      si_sdr = 10 log10((||target||^2 + eps) / (||noise||^2 + eps))

  So a perfect estimate gives a large but finite value (about ``10 log10(||s||^2 / eps)``), two
  silent signals give 0 dB, and the eps matters for quiet signals (see ears_benchmark issue #2:
  a different eps moves SI-SDR). ``eps=0`` gives the textbook formula (and inf / nan on the
  degenerate cases).
* :func:`snr` is the plain signal-to-noise ratio ``10 log10((||s||^2 + eps) /
  (||s - s_hat||^2 + eps))`` with ``eps=1e-7``: the MDX challenge's ``new_sdr`` that the
  VoiceVector code reports as SDR (the authors' evaluation step). It is **not** the
  ``bss_eval_sources`` SDR of mir_eval / fast_bss_eval / torchmetrics (those allow a 512-tap
  distortion filter and give higher values); it is neither scale-invariant nor zero-mean.
* :func:`bss_sdr_framewise` is BSS-Eval v4 SDR as museval's ``evaluate(..., mode="v4")``
  computes it (Liutkus, Stoter and Ito, "The 2018 Signal Separation Evaluation Campaign", LVA/ICA
  2018; Vincent, Gribonval and Fevotte, IEEE TASLP 2006; upstream ``museval/metrics.py``
  ``bss_eval`` with ``framewise_filters=False``). With one reference its SDR reduces exactly to
  the per-window SNR ``10 log10(||s_w||^2 / ||s_hat_w - s_w||^2)`` (no eps; the distortion
  filters cancel out, see the function's docstring), so it is the windowed form of :func:`snr`.
  Windows of 1 s with 1 s hops by default (the VoiceVector evaluation); a trailing partial
  window is not scored; a window where the reference or the estimate is all zeros is NaN.
  :func:`bss_sdr` is their NaN-ignoring mean.
* Improvements (``si_sdri``, ``sdri``, ``bss_sdri``, ``pesqi``, ``stoii``) are
  ``metric(estimate, reference) - metric(mixture, reference)``: positive when the estimate is
  closer to the reference than the input mixture.
* :func:`pesq_wb` (ITU-T P.862.2 wide-band PESQ, ``pesq`` package) and :func:`stoi` (Taal et
  al., IEEE TASLP 2011, ``pystoi`` package) need the optional extra
  ``pip install speechkit[separation]``. PESQ's ``NoUtterancesError`` (a silent or too quiet
  reference) gives NaN and a :class:`SeparationMetricWarning` naming the item, not an error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch

SI_SDR_EPS = 1e-8
SNR_EPS = 1e-7
EXTRA_METRICS = ("bss_sdr", "pesq", "stoi")
"""Names accepted by :func:`extra_scores` (the costly metrics, off by default in validation)."""


class SeparationMetricWarning(UserWarning):
    """A metric could not be computed for one item (it is reported as NaN)."""


def _check_pair(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    names: tuple[str, str] = ("estimate", "reference"),
) -> None:
    """Raise ValueError unless both are (T,) or (B, T) tensors of the same non-empty shape."""
    for name, x in zip(names, (estimate, reference)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (1, 2):
            raise ValueError(f"{name} must have shape (T,) or (B, T), got {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if estimate.shape != reference.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} shapes differ: {tuple(estimate.shape)} vs "
            f"{tuple(reference.shape)}"
        )


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """(T,) or (B, T) -> (B, T) float64."""
    x = x.to(torch.float64)
    return x.unsqueeze(0) if x.dim() == 1 else x


def _finish(values: torch.Tensor, one_d: bool) -> torch.Tensor | float:
    return float(values[0]) if one_d else values


def si_sdr_batch(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    zero_mean: bool = True,
    eps: float = SI_SDR_EPS,
) -> torch.Tensor:
    """SI-SDR (dB) of (B, T) signals in their own dtype (no float64 cast, no shape checks).

    The differentiable kernel behind :func:`si_sdr`; use it when a float64 cast is unwanted
    (e.g. a float32 loss on an accelerator). Returns (B,).
    """
    if zero_mean:
        estimate = estimate - estimate.mean(dim=-1, keepdim=True)
        reference = reference - reference.mean(dim=-1, keepdim=True)
    dot = (estimate * reference).sum(dim=-1, keepdim=True)
    ref_energy = reference.pow(2).sum(dim=-1, keepdim=True)
    alpha = (dot + eps) / (ref_energy + eps)
    target = alpha * reference
    noise = estimate - target
    return 10.0 * torch.log10((target.pow(2).sum(dim=-1) + eps) / (noise.pow(2).sum(dim=-1) + eps))


def si_sdr(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    zero_mean: bool = True,
    eps: float = SI_SDR_EPS,
) -> torch.Tensor | float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019); see the module docstring for eps.

    Args:
        estimate: (B, T) or (T,) estimated signal(s).
        reference: same shape, the clean reference(s).
        zero_mean: remove each signal's time mean first (default True).
        eps: stabiliser added to the projection's and the ratio's numerator and denominator.

    Returns:
        (B,) float64 tensor, or a float for 1-D inputs.

    Raises:
        ValueError: shapes differ, are not (T,) / (B, T), or are empty.
    """
    _check_pair(estimate, reference)
    values = si_sdr_batch(_as_batch(estimate), _as_batch(reference), zero_mean, eps)
    return _finish(values, estimate.dim() == 1)


def snr(
    estimate: torch.Tensor, reference: torch.Tensor, eps: float = SNR_EPS
) -> torch.Tensor | float:
    """SNR in dB, ``10 log10((||s||^2 + eps) / (||s - s_hat||^2 + eps))`` (MDX ``new_sdr``).

    Reported as ``sdr`` by :func:`separation_scores`. Not BSS-Eval SDR, not scale-invariant,
    no mean removal. Shapes, return type and errors as :func:`si_sdr`.
    """
    _check_pair(estimate, reference)
    est, ref = _as_batch(estimate), _as_batch(reference)
    values = 10.0 * torch.log10(
        (ref.pow(2).sum(dim=-1) + eps) / ((ref - est).pow(2).sum(dim=-1) + eps)
    )
    return _finish(values, estimate.dim() == 1)


def _check_triplet(estimate: torch.Tensor, mixture: torch.Tensor, reference: torch.Tensor) -> None:
    _check_pair(estimate, reference)
    _check_pair(mixture, reference, names=("mixture", "reference"))


def si_sdr_improvement(
    estimate: torch.Tensor,
    mixture: torch.Tensor,
    reference: torch.Tensor,
    zero_mean: bool = True,
    eps: float = SI_SDR_EPS,
) -> torch.Tensor | float:
    """SI-SDRi (dB): ``si_sdr(estimate, reference) - si_sdr(mixture, reference)``.

    All three of the same shape (T,) or (B, T); returns (B,) float64 or a float.
    """
    _check_triplet(estimate, mixture, reference)
    return si_sdr(estimate, reference, zero_mean, eps) - si_sdr(mixture, reference, zero_mean, eps)


def snr_improvement(
    estimate: torch.Tensor, mixture: torch.Tensor, reference: torch.Tensor, eps: float = SNR_EPS
) -> torch.Tensor | float:
    """SDRi in the :func:`snr` sense: ``snr(estimate, reference) - snr(mixture, reference)``."""
    _check_triplet(estimate, mixture, reference)
    return snr(estimate, reference, eps) - snr(mixture, reference, eps)


def separation_scores(
    estimate: torch.Tensor, mixture: torch.Tensor, reference: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-item scores with the default conventions (zero-mean SI-SDR, eps 1e-8; SNR eps 1e-7).

    Args:
        estimate, mixture, reference: same shape, (B, T) or (T,).

    Returns:
        ``{"si_sdr", "si_sdri", "sdr", "sdri"}`` -> (B,) float64 tensors ((1,) for 1-D inputs);
        ``sdr`` is :func:`snr`, ``sdri`` its improvement over the mixture.

    Raises:
        ValueError: shape mismatch or empty input.
    """
    _check_triplet(estimate, mixture, reference)
    est, mix, ref = _as_batch(estimate), _as_batch(mixture), _as_batch(reference)
    si_est = si_sdr(est, ref)
    si_mix = si_sdr(mix, ref)
    sdr_est = snr(est, ref)
    sdr_mix = snr(mix, ref)
    return {
        "si_sdr": si_est,
        "si_sdri": si_est - si_mix,
        "sdr": sdr_est,
        "sdri": sdr_est - sdr_mix,
    }


# ----------------------------------------------------------------------------- BSS-Eval v4 SDR


def _as_numpy_1d(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty (T,) signal, got shape {arr.shape}")
    return arr


def _pair_1d(estimate, reference) -> tuple[np.ndarray, np.ndarray]:
    est = _as_numpy_1d(estimate, "estimate")
    ref = _as_numpy_1d(reference, "reference")
    if est.shape != ref.shape:
        raise ValueError(f"estimate and reference shapes differ: {est.shape} vs {ref.shape}")
    return est, ref


def bss_sdr_framewise(
    estimate: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    sample_rate: int = 16000,
    window: float = 1.0,
    hop: float = 1.0,
) -> np.ndarray:
    """BSS-Eval v4 SDR per window (dB), as museval ``evaluate(mode="v4")`` with one source.

    museval's image decomposition (``_bss_decomp_mtifilt``) splits ``s_hat - s`` into spatial,
    interference and artefact errors with 512-tap distortion filters estimated on the whole
    signal, and its SDR is ``||s_w||^2 / ||e_spat + e_interf + e_artif||^2``. Those three terms
    add up to ``s_hat_w - s_w`` exactly, so the filters cancel out of the SDR (they matter for
    ISR / SIR / SAR only) and the value is the framewise SNR computed here, without any eps.

    Args:
        estimate, reference: (T,) signals (tensors or arrays) at ``sample_rate`` Hz.
        window, hop: in seconds (museval's ``win`` / ``hop`` are these times the rate). A signal
            shorter than one window gives one window over all of it.

    Returns:
        (W,) float64, ``W = floor((T - win + hop) / hop)`` windows (1 when ``T <= win``; a
        trailing partial window is not scored); NaN where the reference or the estimate window
        is all zeros (museval's silent-frame rule), +inf for a perfect window.

    Raises:
        ValueError: not 1-D, empty, different shapes, or a non-positive window / hop.
    """
    est, ref = _pair_1d(estimate, reference)
    win, step = int(round(window * sample_rate)), int(round(hop * sample_rate))
    if win <= 0 or step <= 0:
        raise ValueError(f"window ({window} s) and hop ({hop} s) must be at least one sample")
    n = ref.shape[0]
    count = (n - win + step) // step if win < n else 1
    out = np.full(count, np.nan)
    for i in range(count):
        start, stop = i * step, min(i * step + win, n)
        r, e = ref[start:stop], est[start:stop]
        if not r.any() or not e.any():
            continue
        den = float(np.sum((e - r) ** 2))
        out[i] = np.inf if den == 0 else 10.0 * math.log10(float(np.sum(r**2)) / den)
    return out


def bss_sdr(
    estimate: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    sample_rate: int = 16000,
    window: float = 1.0,
    hop: float = 1.0,
) -> float:
    """Mean over windows of :func:`bss_sdr_framewise`, NaN windows ignored (NaN if all are).

    Shapes and errors as :func:`bss_sdr_framewise`.
    """
    values = bss_sdr_framewise(estimate, reference, sample_rate, window, hop)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


# --------------------------------------------------------------------------------- PESQ / STOI


def _optional(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(
            f"the '{module}' package is needed for this metric; install the optional extra: "
            "pip install 'speechkit[separation]'"
        ) from e


def pesq_wb(
    estimate: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    sample_rate: int = 16000,
    name: str = "item",
) -> float:
    """Wide-band PESQ (ITU-T P.862.2 MOS-LQO, about 1.0 .. 4.64) of one (T,) signal pair.

    Args:
        estimate, reference: (T,) at 16 kHz (the only rate wide-band PESQ defines).
        name: the item named in the warning (e.g. the file id).

    Returns:
        The score, or NaN with a :class:`SeparationMetricWarning` naming ``name`` when PESQ
        finds no utterance in the reference (``NoUtterancesError``: silent or very quiet) or
        the signals are too short (``BufferTooShortError``).

    Raises:
        ImportError: ``pesq`` not installed (names the ``separation`` extra).
        ValueError: ``sample_rate`` is not 16000, or bad shapes (as :func:`bss_sdr_framewise`).
    """
    if sample_rate != 16000:
        raise ValueError(f"wide-band PESQ needs 16000 Hz audio, got {sample_rate} Hz")
    est, ref = _pair_1d(estimate, reference)
    pesq = _optional("pesq")
    try:
        return float(pesq.pesq(sample_rate, ref.astype(np.float32), est.astype(np.float32), "wb"))
    except (pesq.NoUtterancesError, pesq.BufferTooShortError) as e:
        kind = type(e).__name__
        warnings.warn(
            f"{name}: PESQ not computed ({kind}: {e}); reported as NaN",
            SeparationMetricWarning,
            stacklevel=2,
        )
        return math.nan


def stoi(
    estimate: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    sample_rate: int = 16000,
    extended: bool = False,
) -> float:
    """STOI (Taal et al. 2011; ``extended=True``: ESTOI, Jensen and Taal 2016), 0 .. 1.

    ``pystoi`` resamples to its internal 10 kHz itself. Shapes and errors as :func:`pesq_wb`
    (ImportError names the ``separation`` extra); any rate is accepted.
    """
    est, ref = _pair_1d(estimate, reference)
    pystoi = _optional("pystoi")
    return float(pystoi.stoi(ref, est, sample_rate, extended=extended))


# --------------------------------------------------------------------------- combined scoring


def check_metric_names(names: Iterable[str], what: str = "metrics") -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`EXTRA_METRICS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    names = tuple(n for n in names if n)
    unknown = [n for n in names if n not in EXTRA_METRICS]
    if unknown:
        raise ValueError(
            f"{what}: unknown metric(s) {unknown}; expected some of {list(EXTRA_METRICS)}"
        )
    return names


def extra_scores(
    estimate: torch.Tensor | np.ndarray,
    mixture: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    names: Iterable[str] = EXTRA_METRICS,
    sample_rate: int = 16000,
    item: str = "item",
) -> dict[str, float]:
    """The costly metrics of one (T,) item and their improvements over the mixture.

    Args:
        names: some of ``bss_sdr``, ``pesq``, ``stoi``.
        item: named in PESQ warnings.

    Returns:
        For each name ``m``: ``m`` (estimate), ``m_mix`` (mixture) and ``mi`` (their
        difference); e.g. ``bss_sdr``, ``bss_sdr_mix``, ``bss_sdri``. Values may be NaN
        (silent windows everywhere, PESQ without utterances).

    Raises:
        ValueError: unknown names or bad shapes; ImportError: ``pesq``/``pystoi`` missing.
    """
    est = _as_numpy_1d(estimate, "estimate")
    mix = _as_numpy_1d(mixture, "mixture")
    ref = _as_numpy_1d(reference, "reference")
    if not est.shape == mix.shape == ref.shape:
        raise ValueError(
            f"estimate, mixture and reference shapes differ: {est.shape}, {mix.shape}, {ref.shape}"
        )
    funcs = {
        "bss_sdr": lambda x: bss_sdr(x, ref, sample_rate),
        "pesq": lambda x: pesq_wb(x, ref, sample_rate, name=item),
        "stoi": lambda x: stoi(x, ref, sample_rate),
    }
    out: dict[str, float] = {}
    for name in check_metric_names(names):
        value, base = funcs[name](est), funcs[name](mix)
        out[name] = value
        out[f"{name}_mix"] = base
        out[f"{name}i"] = value - base
    return out


def sum_extra_scores(
    estimate: torch.Tensor,
    mixture: torch.Tensor,
    reference: torch.Tensor,
    names: Iterable[str],
    sample_rate: int = 16000,
) -> dict[str, float]:
    """Logging sums of :func:`extra_scores` over a (B, T) batch, for validation.

    Returns ``{m: sum, mi: sum, "m_count": items with a finite m}`` for each name; NaN items
    (e.g. PESQ on a silent reference) are left out of both sum and count. Reduce with
    :func:`reduce_extra_sums`.
    """
    names = check_metric_names(names)
    sums: dict[str, float] = {}
    for name in names:
        sums.update({name: 0.0, f"{name}i": 0.0, f"{name}_count": 0.0})
    for b in range(reference.shape[0]):
        scores = extra_scores(
            estimate[b], mixture[b], reference[b], names, sample_rate, item=f"batch item {b}"
        )
        for name in names:
            if math.isfinite(scores[name]) and math.isfinite(scores[f"{name}i"]):
                sums[name] += scores[name]
                sums[f"{name}i"] += scores[f"{name}i"]
                sums[f"{name}_count"] += 1.0
    return sums


def reduce_extra_sums(sums: dict[str, float]) -> dict[str, float]:
    """Summed :func:`sum_extra_scores` logs -> means ``m`` and ``mi`` (NaN when no item
    counted); names absent from ``sums`` are skipped."""
    out: dict[str, float] = {}
    for name in EXTRA_METRICS:
        if f"{name}_count" in sums:
            count = sums[f"{name}_count"]
            for key in (name, f"{name}i"):
                out[key] = sums[key] / count if count else math.nan
    return out

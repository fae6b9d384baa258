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
  VoiceVector code reports as SDR (research/voicevector_separation.md section 1.8). It is **not**
  BSS-Eval SDR (mir_eval / museval / fast_bss_eval allow a 512-tap distortion filter and give
  higher values); it is neither scale-invariant nor zero-mean.
* Improvements (``si_sdri``, ``sdri``) are ``metric(estimate, reference) - metric(mixture,
  reference)``: positive when the estimate is closer to the reference than the input mixture.

PESQ and STOI wrappers are not provided here: ``pesq`` and ``pystoi`` are not dependencies.
"""

from __future__ import annotations

import torch

SI_SDR_EPS = 1e-8
SNR_EPS = 1e-7


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

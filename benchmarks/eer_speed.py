"""Speed of EER / minDCF on one million trials, next to scikit-learn's ``roc_curve``.

Run from the repository root: ``.venv/bin/python benchmarks/eer_speed.py [--num-trials 1000000]
[--repeats 5] [--quick]``.

Logs (stderr) the best-of-``repeats`` wall time of ``compute_eer``, ``compute_min_dcf`` and
``evaluate_scores`` (EER + two minDCFs from one sort), and of ``sklearn.metrics.roc_curve`` on
the same data (the reference EER computes roc_curve and then an argmin on top of it), and checks
that the EER equals the roc_curve-based one (to 1e-6 %, else exit status 1). Goal: EER < 1 s for
1,000,000 trials.

JSON line: ``evaluate_scores`` seconds on float32 scores rounded to 4 decimals (many ties) vs
roc_curve + argmin on the same scores; ratio < 1 means speechkit is faster.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import device_label, log, report
from sklearn.metrics import roc_curve

from speechkit.metrics.verification import compute_eer, compute_min_dcf, evaluate_scores


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER (%) from ``roc_curve``: the operating point where FNR and FPR are closest."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return max(fpr[i], fnr[i]) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-trials", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100,000 trials, best of 2")
    args = parser.parse_args()
    if args.quick:
        args.num_trials, args.repeats = 100_000, 2

    rng = np.random.default_rng(0)
    n = args.num_trials
    labels = (rng.random(n) < 0.1).astype(np.int64)
    datasets = {
        "float64 scores, distinct": rng.normal(size=n) + 2.5 * labels,
        "float32 scores, 4 decimals (ties)": np.round(rng.normal(size=n) + 2.5 * labels, 4).astype(
            np.float32
        ),
    }
    log(f"{n:,} trials, {int(labels.sum()):,} targets, best of {args.repeats}\n")
    header = f"{'data':36s} {'function':24s} {'speechkit s':>12s} {'sklearn s':>10s} {'ratio':>7s}"
    log(header)
    log("-" * len(header))
    headline = None
    for name, scores in datasets.items():
        t_roc = best_time(lambda s=scores: roc_curve(labels, s), args.repeats)
        t_ref = best_time(lambda s=scores: sklearn_eer(s, labels), args.repeats)
        rows = {
            "compute_eer": (lambda s=scores: compute_eer(s, labels), t_ref),
            "compute_min_dcf": (lambda s=scores: compute_min_dcf(s, labels), t_roc),
            "evaluate_scores": (lambda s=scores: evaluate_scores(s, labels), t_ref),
        }
        for fn_name, (fn, t_sklearn) in rows.items():
            t = best_time(fn, args.repeats)
            log(f"{name:36s} {fn_name:24s} {t:12.3f} {t_sklearn:10.3f} {t / t_sklearn:6.2f}x")
            if fn_name == "evaluate_scores":
                headline = t, t_sklearn
        eer = compute_eer(scores, labels)[0]
        ref = sklearn_eer(scores, labels)
        log(f"{'':36s} EER {eer:.6f}% (roc_curve-based {ref:.6f}%, diff {abs(eer - ref):.1e})")
        if abs(eer - ref) > 1e-6:
            raise SystemExit(f"eer_speed: EER {eer}% differs from roc_curve's {ref}% on {name}")
    log(
        "\nsklearn column: roc_curve + argmin (the reference EER) for compute_eer and "
        "evaluate_scores, roc_curve alone for compute_min_dcf; ratio = speechkit / sklearn."
    )
    report(
        name="eer_speed",
        device=device_label("cpu"),
        config={
            "trials": n,
            "targets": int(labels.sum()),
            "scores": "float32, 4 decimals",
            "repeats": args.repeats,
        },
        figure=headline[0],
        unit="s, best of repeats (lower is better)",
        reference="sklearn.metrics.roc_curve + argmin (EER)",
        reference_figure=headline[1],
    )


if __name__ == "__main__":
    main()

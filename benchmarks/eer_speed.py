"""Speed of EER / minDCF on one million trials, next to scikit-learn's ``roc_curve``.

Run: ``python benchmarks/eer_speed.py [--num-trials 1000000] [--repeats 5]``.

Prints the best-of-``repeats`` wall time of ``compute_eer``, ``compute_min_dcf`` and
``evaluate_scores`` (EER + two minDCFs from one sort), and of ``sklearn.metrics.roc_curve`` alone
on the same data (the reference EER computes roc_curve and then an argmin on top of it), with
the ratio sklearn time / speechkit time. Goal: EER < 1 s for 1,000,000 trials. Also checks that
the EER equals the roc_curve-based one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_curve

from speechkit.metrics.verification import compute_eer, compute_min_dcf, evaluate_scores


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return max(fpr[i], fnr[i]) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-trials", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = args.num_trials
    labels = (rng.random(n) < 0.1).astype(np.int64)
    datasets = {
        "float64 scores, distinct": rng.normal(size=n) + 2.5 * labels,
        "float32 scores, 4 decimals (ties)": np.round(rng.normal(size=n) + 2.5 * labels, 4).astype(
            np.float32
        ),
    }
    print(f"{n:,} trials, {int(labels.sum()):,} targets, best of {args.repeats}\n")
    header = f"{'data':36s} {'function':24s} {'speechkit s':>12s} {'sklearn s':>10s} {'ratio':>7s}"
    print(header)
    print("-" * len(header))
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
            print(f"{name:36s} {fn_name:24s} {t:12.3f} {t_sklearn:10.3f} {t_sklearn / t:6.2f}x")
        eer = compute_eer(scores, labels)[0]
        ref = sklearn_eer(scores, labels)
        print(f"{'':36s} EER {eer:.6f}% (roc_curve-based {ref:.6f}%, diff {abs(eer - ref):.1e})")
    print(
        "\nsklearn column: roc_curve + argmin (the reference EER) for compute_eer and "
        "evaluate_scores, roc_curve alone for compute_min_dcf."
    )


if __name__ == "__main__":
    main()

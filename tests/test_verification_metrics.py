"""EER, minDCF, DET curves, AS-norm, scoring and the trial/score file formats.

References: ``sklearn.metrics.roc_curve`` (the function voxceleb_trainer's EER is built on), a
brute-force O(N * U) count at every threshold, and per-trial float64 loops for AS-norm and the
crop-distance score.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from sklearn.metrics import roc_curve

from speechkit.errors import DataError
from speechkit.metrics.score_norm import as_norm, cohort_stats, s_norm
from speechkit.metrics.scoring import (
    cosine_scores,
    mean_crop_distance_score,
    read_score_file,
    read_trial_list,
    write_score_file,
)
from speechkit.metrics.verification import (
    compute_eer,
    compute_min_dcf,
    det_curve,
    evaluate_scores,
    plot_det_curve,
)

# ----------------------------------------------------------------------------- references


def sklearn_eer(scores, labels, drop_intermediate=True):
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    fnr = 1 - tpr
    i = np.nanargmin(np.absolute(fnr - fpr))
    return max(fpr[i], fnr[i]) * 100, thresholds[i]


def sklearn_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    cost = c_miss * (1 - tpr) * p_target + c_fa * fpr * (1 - p_target)
    i = np.argmin(cost)
    return cost[i] / min(c_miss * p_target, c_fa * (1 - p_target)), thresholds[i]


def brute_force_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    """Count misses and false alarms directly at every candidate threshold (slow, obvious)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets, nontargets = scores[labels == 1], scores[labels == 0]
    best = math.inf
    for t in np.concatenate([np.unique(scores), [math.inf]]):
        p_miss = np.count_nonzero(targets < t) / len(targets)
        p_fa = np.count_nonzero(nontargets >= t) / len(nontargets)
        best = min(best, c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa)
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def random_trials(seed, n, target_fraction=0.5, decimals=None, shift=2.0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < target_fraction).astype(np.int64)
    labels[:2] = (0, 1)  # both classes present
    scores = rng.normal(size=n) + shift * labels
    if decimals is not None:  # coarse quantisation -> many ties across both classes
        scores = np.round(scores, decimals)
    return scores, labels


CASES = [
    # (seed, n, target fraction, decimals)
    (0, 1000, 0.5, None),
    (1, 2000, 0.1, None),
    (2, 3000, 0.02, None),  # unbalanced, as real lists
    (3, 1500, 0.5, 1),  # ties
    (4, 1500, 0.3, 0),  # heavy ties: ~10 distinct values
    (5, 50, 0.5, None),
    (6, 7, 0.4, None),
]

# ----------------------------------------------------------------------------- EER / minDCF


@pytest.mark.parametrize("seed,n,frac,decimals", CASES)
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_eer_matches_sklearn_roc_curve(seed, n, frac, decimals, drop_intermediate):
    scores, labels = random_trials(seed, n, frac, decimals)
    eer, threshold = compute_eer(scores, labels, drop_intermediate=drop_intermediate)
    ref_eer, ref_threshold = sklearn_eer(scores, labels, drop_intermediate)
    assert eer == pytest.approx(ref_eer, abs=1e-9)
    assert threshold == ref_threshold
    assert isinstance(eer, float) and isinstance(threshold, float)


@pytest.mark.parametrize("seed,n,frac,decimals", CASES)
@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.05, 1, 1), (0.01, 1, 1), (0.3, 2, 0.5)])
def test_min_dcf_matches_roc_curve_and_brute_force(seed, n, frac, decimals, p_target, c_miss, c_fa):
    scores, labels = random_trials(seed, n, frac, decimals)
    dcf, threshold = compute_min_dcf(scores, labels, p_target, c_miss, c_fa)
    ref_dcf, ref_threshold = sklearn_min_dcf(scores, labels, p_target, c_miss, c_fa)
    assert dcf == pytest.approx(ref_dcf, abs=1e-9)
    assert threshold == ref_threshold
    if n <= 1500:
        assert dcf == pytest.approx(
            brute_force_min_dcf(scores, labels, p_target, c_miss, c_fa), abs=1e-9
        )
    assert 0.0 <= dcf <= 1.0


def test_eer_with_real_trial_list_labels(shared_data):
    """Labels (and their imbalance) from a real list; scores from a seeded model of a system."""
    trials = read_trial_list(
        shared_data / "lists/librispeech_test_other_trials_all.txt", root=shared_data
    )
    labels = trials.labels
    assert set(np.unique(labels)) == {0, 1}
    rng = np.random.default_rng(7)
    for spread in (0.5, 1.5):
        scores = rng.normal(size=len(labels)) * spread + labels
        scores32 = scores.astype(np.float32)  # float32 input, as a model produces
        for s in (scores, scores32, np.round(scores, 2)):
            assert compute_eer(s, labels) == pytest.approx(sklearn_eer(s, labels), abs=1e-9)
            for p in (0.05, 0.01):
                assert compute_min_dcf(s, labels, p)[0] == pytest.approx(
                    sklearn_min_dcf(s, labels, p)[0], abs=1e-9
                )
        result = evaluate_scores(torch.from_numpy(scores), torch.from_numpy(labels))
        assert result.num_trials == len(labels) and result.num_targets == int(labels.sum())
        assert result.eer == pytest.approx(sklearn_eer(scores, labels)[0], abs=1e-9)
        assert result.min_dcf_005 == pytest.approx(
            sklearn_min_dcf(scores, labels, 0.05)[0], abs=1e-9
        )
        assert result.min_dcf_001 == pytest.approx(
            sklearn_min_dcf(scores, labels, 0.01)[0], abs=1e-9
        )
        assert result.thresholds["eer"] == sklearn_eer(scores, labels)[1]
        assert "EER" in result.summary()


def test_eer_extremes():
    labels = np.array([0, 0, 0, 1, 1])
    assert compute_eer([0.1, 0.2, 0.3, 0.8, 0.9], labels)[0] == 0.0  # separable
    assert compute_min_dcf([0.1, 0.2, 0.3, 0.8, 0.9], labels)[0] == 0.0
    inverted = [0.9, 0.8, 0.7, 0.2, 0.1]
    assert compute_eer(inverted, labels)[0] == pytest.approx(sklearn_eer(inverted, labels)[0])
    assert compute_eer(inverted, labels)[0] == 100.0
    # Every score equal: a single operating point besides "reject all"; EER 100 as sklearn.
    same = np.zeros(5)
    assert compute_eer(same, labels)[0] == pytest.approx(sklearn_eer(same, labels)[0])
    assert compute_min_dcf(same, labels)[0] == pytest.approx(1.0)


def test_det_curve_matches_roc_curve():
    scores, labels = random_trials(11, 800, 0.3, decimals=1)
    fpr, fnr, thresholds = det_curve(scores, labels)
    ref_fpr, ref_tpr, ref_thresholds = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(thresholds, ref_thresholds)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(fnr, 1 - ref_tpr, atol=1e-12)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(fnr) <= 0)


@pytest.mark.parametrize(
    "scores,labels,message",
    [
        ([0.1, 0.2, 0.3], [0, 0, 0], "no target trials"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "no non-target trials"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length: 3 scores, 2 labels"),
        ([0.1, float("nan"), 0.3], [0, 1, 0], "NaN or infinite.*index 1"),
        ([0.1, float("inf"), 0.3], [0, 1, 0], "NaN or infinite"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "labels must be 0.*got 2 at trial index 2"),
        ([], [], "no target trials"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
    ],
)
def test_invalid_trials_raise(scores, labels, message):
    for fn in (compute_eer, compute_min_dcf, det_curve, evaluate_scores):
        with pytest.raises(ValueError, match=message):
            fn(scores, labels)


def test_min_dcf_rejects_bad_costs():
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.9], [0, 1], p_target=1.0)
    with pytest.raises(ValueError, match="positive"):
        compute_min_dcf([0.1, 0.9], [0, 1], c_fa=0)


def test_plot_det_curve_writes_png(tmp_path):
    good = random_trials(1, 5000, 0.1, shift=3.0)
    bad = random_trials(2, 5000, 0.1, shift=1.0)
    path = plot_det_curve({"good": good, "bad": bad}, tmp_path / "plots" / "det.png", title="test")
    assert path.exists() and path.stat().st_size > 1000
    image = imread(path)
    assert image.shape == (600, 600, 4)
    rgb = image[..., :3]
    # Non-white drawing, including saturated curve colours (default cycle blue and orange).
    assert (rgb.min(axis=2) < 0.5).mean() > 0.01
    assert ((rgb.max(axis=2) - rgb.min(axis=2)) > 0.3).sum() > 200
    assert [p.name for p in path.parent.iterdir()] == ["det.png"]  # no temporary file left
    with pytest.raises(ValueError, match="at least one curve"):
        plot_det_curve({}, tmp_path / "empty.png")


# ----------------------------------------------------------------------------- score norm


def loop_as_norm(scores, enrol, test, cohort, top_k, ddof=0):
    """Per-trial float64 reference: sort each side's cohort scores, keep the top K."""

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    enrol, test, cohort = unit(enrol), unit(test), unit(cohort)
    out = np.empty(len(scores))
    for i, s in enumerate(scores):
        sides = []
        for emb in (enrol[i], test[i]):
            c = np.sort(cohort @ emb)[::-1]
            c = c if top_k is None else c[:top_k]
            sides.append((s - c.mean()) / c.std(ddof=ddof))
        out[i] = 0.5 * (sides[0] + sides[1])
    return out


@pytest.mark.parametrize("top_k,unbiased", [(5, False), (20, True), (None, False), (1000, False)])
def test_as_norm_matches_loop(top_k, unbiased):
    rng = np.random.default_rng(3)
    n, d, c = 37, 16, 50
    enrol, test = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    cohort = rng.normal(size=(c, d)) * rng.uniform(0.5, 2, size=(c, 1))  # not unit length
    scores = cosine_scores(torch.from_numpy(enrol), torch.from_numpy(test)).numpy()
    out = as_norm(scores, enrol, test, cohort, top_k=top_k, unbiased=unbiased, chunk_size=8)
    assert out.dtype == torch.float64 and out.shape == (n,)
    ref = loop_as_norm(scores, enrol, test, cohort, top_k, ddof=1 if unbiased else 0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)
    if top_k is None:
        np.testing.assert_allclose(
            s_norm(scores, enrol, test, cohort, unbiased=unbiased).numpy(),
            ref,
            rtol=1e-10,
            atol=1e-10,
        )


def test_cohort_stats_float32_chunking_and_errors():
    rng = np.random.default_rng(4)
    emb = torch.from_numpy(rng.normal(size=(10, 8)).astype(np.float32))
    cohort = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32))
    mean_a, std_a = cohort_stats(emb, cohort, top_k=7, chunk_size=3)
    mean_b, std_b = cohort_stats(emb.double(), cohort.double(), top_k=7, chunk_size=100)
    assert mean_a.dtype == torch.float32
    torch.testing.assert_close(mean_a.double(), mean_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std_a.double(), std_b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="top_k must be >= 2"):
        cohort_stats(emb, cohort, top_k=1)
    with pytest.raises(ValueError, match="embedding size"):
        cohort_stats(emb, cohort[:, :4])
    with pytest.raises(ValueError, match="at least 2"):
        cohort_stats(emb, cohort[:1])
    with pytest.raises(ValueError, match="must be"):
        as_norm(torch.zeros(3), emb, emb, cohort)


# ----------------------------------------------------------------------------- scoring


def test_cosine_scores_match_numpy():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(20, 12)), rng.normal(size=(20, 12))
    ref = np.einsum("nd,nd->n", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(
        cosine_scores(torch.from_numpy(a), torch.from_numpy(b)).numpy(), ref, rtol=1e-12
    )
    with pytest.raises(ValueError, match="N, D"):
        cosine_scores(torch.zeros(3, 4), torch.zeros(3, 5))


@pytest.mark.parametrize("normalize", [True, False])
def test_mean_crop_distance_score_matches_loop(normalize):
    rng = np.random.default_rng(6)
    crops1, crops2 = rng.normal(size=(9, 10, 16)), rng.normal(size=(9, 7, 16))
    got = mean_crop_distance_score(torch.from_numpy(crops1), torch.from_numpy(crops2), normalize)
    for i in range(9):
        x, y = crops1[i], crops2[i]
        if normalize:
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            y = y / np.linalg.norm(y, axis=1, keepdims=True)
        dist = [np.sqrt(((p - q) ** 2).sum()) for p in x for q in y]
        assert got[i].item() == pytest.approx(-np.mean(dist), rel=1e-12)
        single = mean_crop_distance_score(
            torch.from_numpy(crops1[i]), torch.from_numpy(crops2[i]), normalize
        )
        assert single.ndim == 0 and single.item() == pytest.approx(got[i].item(), rel=1e-12)
    with pytest.raises(ValueError, match="agree in N and D"):
        mean_crop_distance_score(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))


# ----------------------------------------------------------------------------- file formats


def test_score_file_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    scores = rng.normal(size=25) * 1e-3
    labels = rng.integers(0, 2, size=25)
    paths1 = [f"id{i:05d}/a/{i:05d}.wav" for i in range(25)]
    paths2 = [f"id{i:05d}/b/{i:05d}.wav" for i in range(25)]
    path = write_score_file(tmp_path / "out" / "scores.txt", scores, labels, paths1, paths2)
    first = path.read_text().splitlines()[0].split()
    assert first[1:] == [str(labels[0]), paths1[0], paths2[0]]
    back = read_score_file(path)
    np.testing.assert_array_equal(back.scores, scores)  # exact: repr round trip
    np.testing.assert_array_equal(back.labels, labels)
    assert back.paths1 == paths1 and back.paths2 == paths2
    assert os.listdir(path.parent) == ["scores.txt"]

    unlabelled = write_score_file(
        tmp_path / "blind.txt", torch.from_numpy(scores), None, paths1, paths2
    )
    back = read_score_file(unlabelled)
    assert back.labels is None and len(unlabelled.read_text().splitlines()[0].split()) == 3
    np.testing.assert_array_equal(back.scores, scores)

    with pytest.raises(ValueError, match="whitespace"):
        write_score_file(tmp_path / "x.txt", [0.5], [1], ["a b.wav"], ["c.wav"])
    with pytest.raises(ValueError, match="differ in length"):
        write_score_file(tmp_path / "x.txt", [0.5, 0.1], [1], ["a.wav"], ["c.wav"])
    assert not (tmp_path / "x.txt").exists()


def test_read_trial_list_real(shared_data):
    trials = read_trial_list(shared_data / "lists/voxceleb1_mini_trials.txt", root=shared_data)
    assert len(trials) == 12 and trials.has_labels
    assert trials.labels.dtype == np.int64 and set(trials.labels.tolist()) == {0, 1}
    unique = trials.unique_paths()
    assert len(unique) == len(set(trials.paths1) | set(trials.paths2))
    assert all(trials.resolve(p).is_file() for p in unique)
    # Same speaker folder <=> label 1 (VoxCeleb ids are the first folder below the dataset).
    for label, p1, p2 in zip(trials.labels, trials.paths1, trials.paths2):
        assert label == (p1.split("/")[2] == p2.split("/")[2])


def test_read_trial_list_unlabelled_and_errors(tmp_path):
    blind = tmp_path / "blind.txt"
    blind.write_text("# comment\na.wav b.wav\n\nc.wav d.wav\n")
    trials = read_trial_list(blind)
    assert trials.labels is None and not trials.has_labels
    assert trials.paths1 == ["a.wav", "c.wav"] and trials.paths2 == ["b.wav", "d.wav"]
    assert trials.resolve("a.wav").name == "a.wav"

    cases = {
        "1 a.wav b.wav\n0\n": r"bad\.txt:2: .*expected 'label path1 path2'.*got 1 fields",
        "1 a.wav b.wav\n0 a.wav\n": r"bad\.txt:2: 2 fields, but the first trial line has 3",
        "1 a.wav b.wav\n0 a.wav c.wav x\n": r"bad\.txt:2: .*got 4 fields",
        "1 a.wav b.wav\n1 a.wav c.wav\n2 a.wav d.wav\n": r"bad\.txt:3: label must be 0 or 1.*'2'",
        "1 a.wav b.wav\nyes a.wav c.wav\n": r"bad\.txt:2: label must be 0 or 1",
        "a.wav b.wav\n1 a.wav c.wav\n": r"bad\.txt:2: 3 fields, but the first trial line has 2",
        "\n# only a comment\n": r"has no trials",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            read_trial_list(bad)
    with pytest.raises(DataError, match="trial list not found"):
        read_trial_list(tmp_path / "missing.txt")

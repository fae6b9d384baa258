"""Speaker-verification losses against direct float64 loop computations, plus the criterion
contract (batch checks, logging, checkpoint key names, margin ramp, training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

import speechkit.criterions.speaker_classification as sc
import speechkit.criterions.speaker_metric_learning as sm
from speechkit.criterions.speaker_losses import equal_error_rate
from speechkit.errors import ConfigError, DataError
from speechkit.registry import CRITERION_REGISTRY

ALL_NAMES = [
    "softmax",
    "amsoftmax",
    "aamsoftmax",
    "ge2e",
    "proto",
    "angleproto",
    "triplet",
    "softmaxproto",
]
D, C = 6, 5


class _Task:
    num_classes = C
    embed_dim = D


def _build(name: str, task=_Task(), **overrides):
    return CRITERION_REGISTRY.build({"_name": name, **overrides}, task)


# ------------------------------------------------------------------------------------------
# independent float64 references (explicit loops)


def _ref_ce(rows: list[list[float]], targets: list[int]) -> float:
    total = 0.0
    for row, t in zip(rows, targets):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        total += log_z - row[t]
    return total / len(rows)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / (math.sqrt(np.dot(u, u)) * math.sqrt(np.dot(v, v))))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _ref_angleproto(x: np.ndarray, w: float, b: float) -> float:
    n_spk, m = x.shape[:2]
    rows = []
    for i in range(n_spk):
        row = []
        for j in range(n_spk):
            anchor = sum(x[j, k] for k in range(1, m)) / (m - 1)
            row.append(w * _cos(x[i, 0], anchor) + b)
        rows.append(row)
    return _ref_ce(rows, list(range(n_spk)))


# ------------------------------------------------------------------------------------------
# classification heads


def test_softmax_head_matches_loop():
    torch.manual_seed(0)
    head = sc.SoftmaxHead(D, C).double()
    x = torch.randn(9, D, dtype=torch.float64)
    y = torch.randint(0, C, (9,))
    out = head(x, y)
    weight, bias = _np(head.fc.weight), _np(head.fc.bias)
    xn = _np(x)
    rows = [
        [sum(weight[c, d] * xn[n, d] for d in range(D)) + bias[c] for c in range(C)]
        for n in range(9)
    ]
    assert out.loss.item() == pytest.approx(_ref_ce(rows, y.tolist()), rel=1e-10)
    expected_correct = sum(int(np.argmax(r) == t) for r, t in zip(rows, y.tolist()))
    assert int(out.correct) == expected_correct and out.total == 9


def test_amsoftmax_head_matches_loop():
    torch.manual_seed(1)
    m, s = 0.35, 12.0
    head = sc.AMSoftmaxHead(D, C, margin=m, scale=s).double()
    assert tuple(head.W.shape) == (D, C)  # transposed layout of the reference
    x = torch.randn(10, D, dtype=torch.float64)
    y = torch.randint(0, C, (10,))
    out = head(x, y)
    weight, xn = _np(head.W), _np(x)
    rows = [
        [s * (_cos(xn[n], weight[:, c]) - (m if c == y[n] else 0.0)) for c in range(C)]
        for n in range(10)
    ]
    assert out.loss.item() == pytest.approx(_ref_ce(rows, y.tolist()), rel=1e-10)
    expected_correct = sum(int(np.argmax(r) == t) for r, t in zip(rows, y.tolist()))
    assert int(out.correct) == expected_correct


def _ref_aam_target(cos: float, m: float, easy: bool) -> tuple[float, str]:
    theta = math.acos(min(1.0, max(-1.0, cos)))
    if easy:
        return (math.cos(theta + m), "phi") if cos > 0 else (cos, "plain")
    if theta < math.pi - m:  # cos > cos(pi - m)
        return math.cos(theta + m), "phi"
    return cos - math.sin(m) * m, "fallback"  # sin(pi - m) = sin(m)


def _with_cosine(w: torch.Tensor, cos: float, noise: torch.Tensor) -> torch.Tensor:
    """A vector at cosine ``cos`` to ``w``."""
    w_hat = w / w.norm()
    ortho = noise - (noise @ w_hat) * w_hat
    return cos * w_hat + math.sqrt(1 - cos * cos) * ortho / ortho.norm()


@pytest.mark.parametrize("easy_margin", [False, True])
def test_aamsoftmax_head_matches_loop_in_both_branches(easy_margin):
    torch.manual_seed(2)
    m, s = 0.4, 20.0
    head = sc.AAMSoftmaxHead(D, C, margin=m, scale=s, easy_margin=easy_margin).double()
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    x = torch.randn(8, D, dtype=torch.float64)
    # target cosines on both sides of each branch point: cos(pi - m) = -0.921 and 0
    with torch.no_grad():
        for n, cos in enumerate([-0.99, -0.95, -0.9, -0.3, 0.2, 0.8]):
            x[n] = _with_cosine(head.weight[y[n]], cos, torch.randn(D, dtype=torch.float64))
    out = head(x, y)
    weight, xn = _np(head.weight), _np(x)
    rows, branches = [], []
    for n in range(8):
        row = []
        for c in range(C):
            cos = _cos(xn[n], weight[c])
            if c == int(y[n]):
                value, branch = _ref_aam_target(cos, m, easy_margin)
                branches.append(branch)
            else:
                value = cos
            row.append(s * value)
        rows.append(row)
    expected_branches = {"phi", "plain"} if easy_margin else {"phi", "fallback"}
    assert set(branches) == expected_branches  # both branches are exercised
    np.testing.assert_allclose(_np(out.logits), np.array(rows), rtol=1e-9, atol=1e-9)
    assert out.loss.item() == pytest.approx(_ref_ce(rows, y.tolist()), rel=1e-10)


# ------------------------------------------------------------------------------------------
# metric heads


def test_angleproto_head_matches_loop_and_uses_utterance_zero_as_query():
    torch.manual_seed(3)
    head = sm.AngleProtoHead(init_w=7.5, init_b=-2.0).double()
    x = torch.randn(5, 4, D, dtype=torch.float64)
    out = head(x)
    assert out.loss.item() == pytest.approx(_ref_angleproto(_np(x), 7.5, -2.0), rel=1e-10)
    # anchor = mean of utterances 1..M-1: their order does not matter; utterance 0 does
    permuted = x[:, [0, 3, 1, 2], :]
    assert head(permuted).loss.item() == pytest.approx(out.loss.item(), rel=1e-12)
    swapped = x[:, [1, 0, 2, 3], :]
    assert abs(head(swapped).loss.item() - out.loss.item()) > 1e-6
    # one logit spelled out
    xn = _np(x)
    anchor_2 = xn[2, 1:].mean(axis=0)
    assert out.logits[1, 2].item() == pytest.approx(7.5 * _cos(xn[1, 0], anchor_2) - 2.0)


def test_ge2e_head_matches_loop_with_self_exclusion():
    torch.manual_seed(4)
    w, b = 9.0, -4.0
    head = sm.GE2EHead(init_w=w, init_b=b).double()
    n_spk, m = 4, 3
    x = torch.randn(n_spk, m, D, dtype=torch.float64)
    out = head(x)
    xn = _np(x)
    rows, targets, clamped = [], [], 0
    for k in range(n_spk):
        for i in range(m):
            row = []
            for j in range(n_spk):
                if j == k:
                    others = [xn[k, u] for u in range(m) if u != i]
                    centroid = sum(others) / len(others)
                else:
                    centroid = sum(xn[j, u] for u in range(m)) / m
                cos = _cos(xn[k, i], centroid)
                clamped += cos < 1e-6
                row.append(w * max(cos, 1e-6) + b)
            rows.append(row)
            targets.append(k)
    assert clamped > 0  # the clamp at 1e-6 is exercised
    np.testing.assert_allclose(_np(out.logits), np.array(rows), rtol=1e-10, atol=1e-10)
    assert out.loss.item() == pytest.approx(_ref_ce(rows, targets), rel=1e-10)
    # the own-speaker logit differs from the one with the utterance included in the centroid
    inclusive = w * max(_cos(xn[1, 2], xn[1].mean(axis=0)), 1e-6) + b
    assert abs(out.logits[1 * m + 2, 1].item() - inclusive) > 1e-4


def test_proto_head_matches_loop():
    torch.manual_seed(5)
    head = sm.ProtoHead()
    assert head.test_normalize is False
    x = torch.randn(5, 3, D, dtype=torch.float64)
    out = head(x)
    xn = _np(x)
    rows = [
        [-sum((xn[i, 0, d] - xn[j, 1:, d].mean()) ** 2 for d in range(D)) for j in range(5)]
        for i in range(5)
    ]
    assert out.loss.item() == pytest.approx(_ref_ce(rows, list(range(5))), rel=1e-10)
    assert int(out.correct) == sum(int(np.argmax(r) == i) for i, r in enumerate(rows))


def test_softmaxproto_head_is_softmax_over_2b_plus_angleproto():
    torch.manual_seed(6)
    head = sm.SoftmaxProtoHead(D, C, init_w=8.0, init_b=-3.0).double()
    x = torch.randn(4, 2, D, dtype=torch.float64)
    y = torch.tensor([3, 0, 4, 1])
    out = head(x, y)
    weight, bias = _np(head.softmax.fc.weight), _np(head.softmax.fc.bias)
    xn = _np(x)
    rows, targets = [], []
    for spk in range(4):
        for u in range(2):
            rows.append([float(weight[c] @ xn[spk, u]) + bias[c] for c in range(C)])
            targets.append(int(y[spk]))
    expected = _ref_ce(rows, targets) + _ref_angleproto(xn, 8.0, -3.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert out.total == 8
    assert int(out.correct) == sum(int(np.argmax(r) == t) for r, t in zip(rows, targets))


# ------------------------------------------------------------------------------------------
# triplet: mining, loss, EER


def _similarity(x: np.ndarray) -> np.ndarray:
    a = x[:, 0] / np.linalg.norm(x[:, 0], axis=1, keepdims=True)
    p = x[:, 1] / np.linalg.norm(x[:, 1], axis=1, keepdims=True)
    n = len(x)
    return np.array([[-sum((a[i] - p[j]) ** 2) for j in range(n)] for i in range(n)])


def test_triplet_loss_and_eer_match_loop():
    torch.manual_seed(7)
    head = sm.TripletHead(margin=0.3, hard_rank=2, hard_prob=0.5)
    x = torch.randn(8, 2, D, dtype=torch.float64)
    out = head(x, generator=torch.Generator().manual_seed(11))
    sim = _similarity(_np(x))
    negatives = head.mine_negatives(torch.from_numpy(sim), torch.Generator().manual_seed(11))
    d_pos = [-sim[i, i] for i in range(8)]
    d_neg = [-sim[i, int(negatives[i])] for i in range(8)]
    expected = sum(max(0.0, dp - dn + 0.3) for dp, dn in zip(d_pos, d_neg)) / 8
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    scores = -np.array(d_pos + d_neg)
    labels = np.r_[np.ones(8), np.zeros(8)]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    best = np.argmin(np.abs((1 - tpr) - fpr))
    assert out.eer == pytest.approx(100 * max(fpr[best], 1 - tpr[best]))
    assert out.correct is None


def _random_similarity(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, n)))


def test_triplet_rank_mining_hardest_and_top_k():
    sim = _random_similarity(8, 0)
    hardest = sm.TripletHead(hard_rank=0, hard_prob=1.0)
    picks = hardest.mine_negatives(sim, torch.Generator().manual_seed(0))
    for i in range(8):
        others = [j for j in range(8) if j != i]
        assert int(picks[i]) == max(others, key=lambda j: float(sim[i, j]))
    top3 = sm.TripletHead(hard_rank=2, hard_prob=1.0)
    g = torch.Generator().manual_seed(1)
    seen = [set() for _ in range(8)]
    for _ in range(150):
        for i, j in enumerate(top3.mine_negatives(sim, g).tolist()):
            seen[i].add(j)
    for i in range(8):
        others = sorted((j for j in range(8) if j != i), key=lambda j: -float(sim[i, j]))
        assert seen[i] == set(others[:3])
    # hard_rank beyond the batch is capped instead of failing
    big = sm.TripletHead(hard_rank=50, hard_prob=1.0).mine_negatives(sim, g)
    assert all(int(big[i]) != i for i in range(8))


def test_triplet_random_mining_covers_all_other_speakers():
    sim = _random_similarity(6, 1)
    head = sm.TripletHead(hard_rank=0, hard_prob=0.0)
    g = torch.Generator().manual_seed(2)
    seen = [set() for _ in range(6)]
    for _ in range(200):
        for i, j in enumerate(head.mine_negatives(sim, g).tolist()):
            seen[i].add(j)
    assert all(seen[i] == set(range(6)) - {i} for i in range(6))


def test_triplet_semi_hard_mining():
    margin = 0.5
    sim = _random_similarity(8, 3)
    sim.fill_diagonal_(0.2)
    sim[5, :5] = sim[5, 6:] = -5.0  # row 5 has no semi-hard candidate
    head = sm.TripletHead(margin=margin, hard_rank=-1)
    g = torch.Generator().manual_seed(3)
    rows_with_candidates = 0
    for _ in range(50):
        picks = head.mine_negatives(sim, g)
        for i in range(8):
            candidates = [j for j in range(8) if 0.2 - margin < float(sim[i, j]) < 0.2]
            rows_with_candidates += bool(candidates)
            if candidates:
                assert int(picks[i]) in candidates
            else:
                assert int(picks[i]) != i
    assert 0 < rows_with_candidates < 50 * 8  # both cases occur


def test_triplet_mining_uses_global_rng_reproducibly():
    sim = _random_similarity(10, 4)
    head = sm.TripletHead(hard_rank=3, hard_prob=0.5)
    torch.manual_seed(123)
    first = head.mine_negatives(sim)
    torch.manual_seed(123)
    assert torch.equal(first, head.mine_negatives(sim))


def test_equal_error_rate_matches_threshold_sweep():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)  # with ties
    eer = equal_error_rate(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    best = np.argmin(np.abs((1 - tpr) - fpr))
    assert eer == pytest.approx(100 * max(fpr[best], 1 - tpr[best]))
    # brute force over thresholds (accept score >= t), starting from "accept nothing"
    pos, neg = scores[labels == 1], scores[labels == 0]
    best_gap, best_eer = 2.0, None
    for t in [np.inf, *sorted(set(scores), reverse=True)]:
        far = float(np.mean(neg >= t))
        frr = float(np.mean(pos < t))
        if abs(frr - far) < best_gap:
            best_gap, best_eer = abs(frr - far), 100 * max(far, frr)
    assert eer == pytest.approx(best_eer)
    with pytest.raises(DataError):
        equal_error_rate(scores, np.ones(60))


# ------------------------------------------------------------------------------------------
# margin ramp


def test_scheduled_margin_values():
    f = sc.scheduled_margin
    for kind in ("linear", "exp"):
        assert f(0, 0.2, 100, 300, kind) == 0.0
        assert f(99, 0.2, 100, 300, kind) == 0.0
        assert f(100, 0.2, 100, 300, kind) == pytest.approx(0.0, abs=1e-12)
        assert f(300, 0.2, 100, 300, kind) == 0.2
        assert f(10_000, 0.2, 100, 300, kind) == 0.2
    assert f(150, 0.2, 100, 300, "linear") == pytest.approx(0.05)
    # exponential: margin * (1 - 1e-3 ** t)
    for u in (150, 200, 299):
        t = (u - 100) / 200
        assert f(u, 0.2, 100, 300, "exp") == pytest.approx(0.2 * (1 - 10 ** (-3 * t)), abs=1e-6)
    assert f(0, 0.2, 0, 0) == 0.2  # no ramp
    with pytest.raises(ConfigError, match="margin_warmup_start <= margin_warmup_end"):
        f(0, 0.2, 300, 100)
    with pytest.raises(ConfigError, match="'exp' or 'linear'"):
        f(0, 0.2, 0, 10, "cosine")


def test_aamsoftmax_criterion_follows_margin_ramp():
    torch.manual_seed(8)
    crit = _build(
        "aamsoftmax",
        margin=0.2,
        scale=10.0,
        margin_warmup_start=100,
        margin_warmup_end=300,
        margin_warmup_type="linear",
    )
    assert crit.head.margin == 0.0
    model = torch.nn.Linear(16, D)
    sample = {"audio": torch.randn(4, 1, 16), "label": torch.tensor([0, 1, 2, 3])}
    with torch.no_grad():
        emb = model(sample["audio"].reshape(4, 16))
    reference = sc.AAMSoftmaxHead(D, C, margin=0.0, scale=10.0)
    reference.weight.data.copy_(crit.head.weight.data)
    for updates, margin in ((50, 0.0), (200, 0.1), (400, 0.2)):
        crit.set_num_updates(updates)
        assert crit.head.margin == pytest.approx(margin)
        loss, _, log = crit(model, sample)
        reference.set_margin(margin)
        assert loss.item() == pytest.approx(reference(emb, sample["label"]).loss.item(), rel=1e-5)
        assert log["margin"] == pytest.approx(margin)
    with pytest.raises(ConfigError):
        _build("aamsoftmax", margin_warmup_start=5, margin_warmup_end=2)


# ------------------------------------------------------------------------------------------
# criterion contract


class _CountingModel(torch.nn.Module):
    def __init__(self, length: int = 16):
        super().__init__()
        self.proj = torch.nn.Linear(length, D)
        self.calls = 0

    def forward(self, audio):
        self.calls += 1
        return self.proj(audio)


@pytest.mark.parametrize(
    "name, m, message",
    [
        (
            "angleproto",
            1,
            "angleproto needs nPerSpeaker >= 2 utterances per speaker in a batch, "
            "got M=1; set task.n_per_speaker=2",
        ),
        ("ge2e", 1, "ge2e needs nPerSpeaker >= 2 utterances per speaker in a batch, got M=1"),
        ("proto", 1, "proto needs nPerSpeaker >= 2 utterances per speaker in a batch, got M=1"),
        (
            "triplet",
            3,
            "triplet needs nPerSpeaker == 2 utterances per speaker in a batch, "
            "got M=3; set task.n_per_speaker=2",
        ),
        ("triplet", 1, "triplet needs nPerSpeaker == 2 utterances per speaker in a batch, got M=1"),
        (
            "softmaxproto",
            3,
            "softmaxproto needs nPerSpeaker == 2 utterances per speaker in a batch, got M=3",
        ),
    ],
)
def test_utterances_per_speaker_checked_before_the_model_runs(name, m, message):
    crit = _build(name)
    model = _CountingModel()
    sample = {"audio": torch.randn(3, m, 16), "label": torch.tensor([0, 1, 2])}
    with pytest.raises(ConfigError) as excinfo:
        crit(model, sample)
    assert message in str(excinfo.value)
    assert model.calls == 0


@pytest.mark.parametrize("name", ALL_NAMES)
def test_criterion_forward_gradients_and_logging(name):
    torch.manual_seed(9)
    crit = _build(name)
    model = _CountingModel()
    sample = {"audio": torch.randn(4, 2, 16), "label": torch.tensor([4, 0, 2, 1])}
    torch.manual_seed(10)
    loss, sample_size, log = crit(model, sample)
    assert model.calls == 1 and sample_size == 1 and loss.dim() == 0
    # the criterion applies its head to model(audio.reshape(B*M, L)).reshape(B, M, D)
    with torch.no_grad():
        emb = model.proj(sample["audio"].reshape(8, 16)).reshape(4, 2, D)
        torch.manual_seed(10)
        if name in ("softmax", "amsoftmax", "aamsoftmax"):
            head_out = crit.head(emb.reshape(8, D), sample["label"].repeat_interleave(2))
        else:
            head_out = crit.head(emb, sample["label"])
    assert loss.item() == pytest.approx(head_out.loss.item(), rel=1e-6)
    expected_keys = {"loss", "sample_size", "nsentences"}
    expected_keys |= {"eer"} if name == "triplet" else {"correct", "total"}
    expected_keys |= {"margin"} if name == "aamsoftmax" else set()
    assert set(log) == expected_keys
    assert log["nsentences"] == 8 and log["loss"] == pytest.approx(loss.item())
    if name != "triplet":
        assert log["total"] == {"angleproto": 4, "proto": 4}.get(name, 8)
        assert 0 <= log["correct"] <= log["total"]
    loss.backward()
    assert model.proj.weight.grad is not None and model.proj.weight.grad.abs().sum() > 0
    for pname, param in crit.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


def test_classification_criterion_repeats_labels_per_utterance():
    torch.manual_seed(11)
    crit = _build("softmax")
    model = _CountingModel()
    audio = torch.randn(3, 3, 16)
    label = torch.tensor([2, 0, 4])
    loss, _, log = crit(model, {"audio": audio, "label": label})
    with torch.no_grad():
        logits = crit.head.fc(model.proj(audio.reshape(9, 16)))
    targets = [2, 2, 2, 0, 0, 0, 4, 4, 4]
    assert loss.item() == pytest.approx(_ref_ce(logits.tolist(), targets), rel=1e-5)
    assert log["total"] == 9


def test_criterion_under_autocast_runs_the_head_in_float32():
    torch.manual_seed(12)
    crit = _build("aamsoftmax")
    model = _CountingModel()
    sample = {"audio": torch.randn(4, 1, 16), "label": torch.tensor([0, 1, 2, 3])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = crit(model, sample)
        emb = model(sample["audio"].reshape(4, 16))
    assert emb.dtype == torch.bfloat16 and loss.dtype == torch.float32
    expected = crit.head(emb.float().detach(), sample["label"]).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


REFERENCE_KEYS = {
    "softmax": {"fc.weight": (C, D), "fc.bias": (C,)},
    "amsoftmax": {"W": (D, C)},
    "aamsoftmax": {"weight": (C, D)},
    "angleproto": {"w": (), "b": ()},
    "ge2e": {"w": (), "b": ()},
    "proto": {},
    "triplet": {},
    "softmaxproto": {
        "softmax.fc.weight": (C, D),
        "softmax.fc.bias": (C,),
        "angleproto.w": (),
        "angleproto.b": (),
    },
}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_state_dict_uses_reference_loss_keys(name):
    crit = _build(name)
    state = crit.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == REFERENCE_KEYS[name]
    # a voxceleb_trainer checkpoint's __L__.* entries load after stripping the prefix
    reference = {f"__L__.{k}": torch.randn(shape) for k, shape in REFERENCE_KEYS[name].items()}
    crit.load_state_dict({k[len("__L__.") :]: v for k, v in reference.items()}, strict=True)
    for key, value in crit.state_dict().items():
        assert torch.equal(value, reference[f"__L__.{key}"])
    # nested (as in the trainer's model+criterion wrapper) and with the head. prefix
    wrapper = torch.nn.Module()
    wrapper.criterion = crit
    nested = wrapper.state_dict()
    assert set(nested) == {f"criterion.{k}" for k in REFERENCE_KEYS[name]}
    wrapper.load_state_dict(nested, strict=True)
    crit.load_state_dict({f"head.{k}": v for k, v in state.items()}, strict=True)
    # optimisers still see every parameter
    assert len(list(crit.parameters())) == len(REFERENCE_KEYS[name])


def test_test_normalize_flags():
    flags = {name: _build(name).test_normalize for name in ALL_NAMES}
    assert flags == {name: name != "proto" for name in ALL_NAMES}


def test_sizes_come_from_config_or_task():
    class OtherTask:
        num_classes = 7
        embed_dim = 3

    crit = _build("aamsoftmax", task=OtherTask())
    assert tuple(crit.head.weight.shape) == (7, 3)
    crit = _build("softmaxproto", task=OtherTask(), num_classes=4, embed_dim=2)
    assert tuple(crit.head.softmax.fc.weight.shape) == (4, 2)
    with pytest.raises(ConfigError, match="needs num_classes"):
        _build("softmax", task=None, embed_dim=4)
    with pytest.raises(ConfigError, match="needs embed_dim"):
        _build("amsoftmax", task=None, num_classes=4)
    assert isinstance(_build("angleproto", task=None), sm.AngleProtoCriterion)


def test_bad_batches_give_clear_errors():
    crit = _build("softmax")
    model = _CountingModel()
    with pytest.raises(DataError, match=r"\(B speakers, M utterances, L samples\)"):
        crit(model, {"audio": torch.randn(4, 16), "label": torch.tensor([0, 1, 2, 3])})
    with pytest.raises(DataError, match="labels must lie in"):
        crit(model, {"audio": torch.randn(2, 1, 16), "label": torch.tensor([0, C])})
    wrong_dim = torch.nn.Linear(16, D + 1)
    with pytest.raises(ConfigError, match="7-dim embeddings but embed_dim=6"):
        crit(wrong_dim, {"audio": torch.randn(2, 1, 16), "label": torch.tensor([0, 1])})
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        _build("triplet")(model, {"audio": torch.randn(1, 2, 16), "label": torch.tensor([0])})


def test_config_defaults_and_overrides():
    crit = _build("triplet", hard_rank=-1, margin=0.25)
    assert (crit.head.hard_rank, crit.head.margin, crit.head.hard_prob) == (-1, 0.25, 0.5)
    aam = _build("aamsoftmax")
    assert (aam.head.margin, aam.head.scale, aam.head.easy_margin) == (0.1, 30.0, False)
    proto = _build("angleproto", init_w=3.0)
    assert (proto.head.w.item(), proto.head.b.item()) == (3.0, -5.0)


def test_reduce_metrics_averages_eer_and_margin():
    logs = [
        {"loss": 2.0, "sample_size": 1, "nsentences": 8, "eer": 10.0},
        {"loss": 1.0, "sample_size": 1, "nsentences": 8, "eer": 30.0},
    ]
    sums = {k: sum(log[k] for log in logs) for k in logs[0]}
    out = sm.TripletCriterion.reduce_metrics(sums)
    assert out["eer"] == pytest.approx(20.0) and out["loss"] == pytest.approx(1.5)
    out = sc.AAMSoftmaxCriterion.reduce_metrics(
        {"loss": 3.0, "sample_size": 2, "margin": 0.3, "correct": 3, "total": 4}
    )
    assert out["margin"] == pytest.approx(0.15) and out["accuracy"] == pytest.approx(75.0)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_training_reduces_loss_on_separable_toy_data(name):
    torch.manual_seed(13)
    n_spk, length = C, 24
    prototypes = torch.randn(n_spk, length)
    model = torch.nn.Linear(length, D)
    crit = _build(name, **({"margin": 1.0} if name == "triplet" else {}))
    opt = torch.optim.Adam([*model.parameters(), *crit.parameters()], lr=0.03)
    label = torch.arange(n_spk)
    losses = []
    for _ in range(40):
        audio = prototypes[:, None, :] + 0.3 * torch.randn(n_spk, 2, length)
        loss, _, _ = crit(model, {"audio": audio, "label": label})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert first > 0 and last < 0.5 * first, (name, first, last)

"""Speaker-embedding enhancement: models, losses, lists, targets, the dump script, bad input.

Numbers are checked against float64 numpy computations written independently of the torch code
(explicit loops for the MMD, log-sum-exp for the cross-entropy, the reference's widths read off
research/sv_syncnet_enh.md section 3.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import speechkit.criterions.embedding_enhancement  # noqa: F401  (registers the criterions)
import speechkit.models.embedding_enhancement  # noqa: F401  (registers the models)
import speechkit.tasks.embedding_enhancement  # noqa: F401  (registers the task)
from speechkit.cli import combine_embeddings, dump_embeddings, make_enhancement_lists
from speechkit.data.embedding_dataset import (
    EmbeddingTable,
    ListEntry,
    TargetTable,
    build_dataset,
    embedding_path,
    read_enhancement_list,
    session_of,
    write_enhancement_list,
)
from speechkit.errors import DataError
from speechkit.registry import CRITERION_REGISTRY, MODEL_REGISTRY, TASK_REGISTRY

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------
# models


def _linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(
    "name, widths, dropout_after",
    [
        ("enhancement_mlp5_dropout", [512, 1024, 2048, 2048, 1024, 512], {2, 3, 4}),
        ("enhancement_mlp5", [512, 1024, 2048, 2048, 1024, 512], set()),
        ("enhancement_mlp3_dropout", [512, 1024, 1024, 512], {2}),
    ],
)
def test_mlps_have_the_reference_layout(name, widths, dropout_after):
    model = MODEL_REGISTRY.build({"_name": name})
    assert _linear_shapes(model) == list(zip(widths[:-1], widths[1:]))
    assert [n for n, _ in model.named_parameters()][:2] == ["l1.weight", "l1.bias"]
    assert set(model.dropout_after) == dropout_after
    x = torch.randn(7, 512)
    model.eval()
    y = model(x)
    assert y.shape == (7, 512)
    assert (y >= 0).all()  # ReLU after the last layer too, as the reference
    model.train()
    torch.manual_seed(0)
    differs = not torch.equal(model(x), model(x))
    assert differs == bool(dropout_after)  # dropout only where the reference has it


def test_mlp_forward_matches_float64_numpy():
    model = MODEL_REGISTRY.build(
        {
            "_name": "enhancement_mlp3_dropout",
            "embed_dim": 6,
            "hidden_dims": [9, 5],
            "activation": "elu",
            "final_activation": False,
        }
    ).eval()
    x = RNG.standard_normal((4, 6))
    h = x
    layers = [model.l1, model.l2, model.l3]
    for k, layer in enumerate(layers):
        w = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        h = h @ w.T + b
        if k < len(layers) - 1:
            h = np.where(h > 0, h, np.expm1(h))  # ELU, alpha 1
    got = model(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)
    assert (got < 0).any()  # no final activation: negative outputs possible


def test_residual_starts_as_identity_and_learns():
    model = MODEL_REGISTRY.build(
        {"_name": "enhancement_residual", "embed_dim": 16, "hidden_dims": [32]}
    )
    x = torch.randn(5, 16)
    assert torch.equal(model(x), x)
    target = torch.randn(5, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(x) - target).pow(2).mean()
    loss.backward()
    assert model.out.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(model(x), x)
    with pytest.raises(ValueError, match=r"expected embeddings \(\.\.\., 16\)"):
        model(torch.randn(3, 8))


# --------------------------------------------------------------------------------------------
# criterions against float64 numpy


B, D, C = 6, 5, 4


class _Task:
    num_classes = C
    embed_dim = D


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(3)
    lin = nn.Linear(D, D).double()  # a fixed "network", evaluated in float64 on both sides
    x_in = RNG.standard_normal((B, D))
    sample = {
        "input": torch.tensor(x_in),
        "target": torch.tensor(RNG.standard_normal((B, D))),
        "negative_target": torch.tensor(RNG.standard_normal((B, D))),
        "label": torch.tensor([0, 1, 2, 3, 1, 0]),
    }
    w = lin.weight.detach().numpy()
    b = lin.bias.detach().numpy()
    x = x_in @ w.T + b
    return lin, sample, x


def _cos_rows(a, b):
    return np.array([np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v)) for u, v in zip(a, b)])


def _cross_entropy(logits, labels):
    out = []
    for row, y in zip(logits, labels):
        m = row.max()
        out.append(m + np.log(np.exp(row - m).sum()) - row[y])
    return np.mean(out)


def _run(name, cfg, model, sample):
    crit = CRITERION_REGISTRY.build({"_name": name, **cfg}, _Task()).double()
    loss, sample_size, log = crit(model, sample)
    return crit, float(loss.detach()) / sample_size, sample_size, log


def test_pointwise_losses_match_numpy(batch):
    lin, sample, x = batch
    t = sample["target"].numpy()
    tn = sample["negative_target"].numpy()
    cos = _cos_rows(x, t)
    mse = np.mean((x - t) ** 2)
    cases = {
        "embedding_mse": ({}, mse),
        "embedding_mae": ({}, np.mean(np.abs(x - t))),
        "embedding_cosine": ({}, 1 - cos.mean()),
        "embedding_mse_cosine": (
            {"mse_weight": 0.3, "cosine_weight": 2.0},
            2.0 * (1 - cos.mean()) + 0.3 * mse,
        ),
        "embedding_triplet_cosine": (
            {"positive_weight": 1.5, "negative_weight": 0.5},
            1.5 * (1 - cos.mean()) + 0.5 * _cos_rows(x, tn).mean(),
        ),
    }
    for name, (cfg, expected) in cases.items():
        _, got, sample_size, log = _run(name, cfg, lin, sample)
        assert sample_size == B
        assert got == pytest.approx(expected, rel=1e-10), name
        assert log["loss"] / sample_size == pytest.approx(expected, rel=1e-10)


def test_reference_test_normalize_flags():
    flags = {
        n: CRITERION_REGISTRY.get(n).test_normalize
        for n in CRITERION_REGISTRY.names()
        if n.startswith("embedding_")
    }
    assert flags == {
        "embedding_mse": False,
        "embedding_mae": False,
        "embedding_cosine": True,
        "embedding_mse_cosine": True,
        "embedding_softmax": False,
        "embedding_mse_softmax": False,
        "embedding_triplet_cosine": True,
        "embedding_mmd_cosine": True,
        "embedding_mmd_mse": True,
    }


def test_softmax_losses_match_numpy(batch):
    lin, sample, x = batch
    labels = sample["label"].numpy()
    t = sample["target"].numpy()
    crit, got, _, log = _run("embedding_softmax", {}, lin, sample)
    w = crit.fc.weight.detach().numpy()
    b = crit.fc.bias.detach().numpy()
    logits = x @ w.T + b
    assert got == pytest.approx(_cross_entropy(logits, labels), rel=1e-10)
    assert log["correct"] == int((logits.argmax(1) == labels).sum()) and log["total"] == B
    assert crit.fc.weight.shape == (C, D)

    torch.manual_seed(5)
    crit, got, _, _ = _run(
        "embedding_mse_softmax", {"softmax_weight": 0.7, "mse_weight": 3.0}, lin, sample
    )
    logits = x @ crit.fc.weight.detach().numpy().T + crit.fc.bias.detach().numpy()
    expected = 0.7 * _cross_entropy(logits, labels) + 3.0 * np.mean((x - t) ** 2)
    assert got == pytest.approx(expected, rel=1e-10)


def _mmd_loops(a, b, sigma):
    def k(u, v):
        return np.exp(-((u - v) ** 2) / (2 * sigma**2))

    kaa = sum(k(u, v) for u in a for v in a) / len(a) ** 2
    kbb = sum(k(u, v) for u in b for v in b) / len(b) ** 2
    kab = sum(k(u, v) for u in a for v in b) / (len(a) * len(b))
    return kaa + kbb - 2 * kab


@pytest.mark.parametrize("name", ["embedding_mmd_cosine", "embedding_mmd_mse"])
def test_mmd_losses_match_numpy(batch, name):
    lin, _, _ = batch
    p = 6
    in1, in2 = RNG.standard_normal((p, D)), RNG.standard_normal((p, D))
    target = np.repeat(RNG.standard_normal((1, D)), p, axis=0)
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    sample = {
        "input1": torch.tensor(in1),
        "input2": torch.tensor(in2),
        "same": torch.tensor(same),
        "target": torch.tensor(target),
        "label": torch.zeros(p, dtype=torch.long),
    }
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    x1, x2 = in1 @ w.T + b, in2 @ w.T + b
    sigma = 0.5
    if name == "embedding_mmd_cosine":
        d = 1 - _cos_rows(x1, x2)
        second = 1 - _cos_rows(np.vstack([x1, x2]), np.vstack([target, target])).mean()
    else:
        d = np.sqrt(((x1 - x2) ** 2).mean(axis=1))
        second = ((np.vstack([x1, x2]) - np.vstack([target, target])) ** 2).mean()
    expected = 2.0 * _mmd_loops(d[same], d[~same], sigma) + 0.5 * second
    cfg = {"sigma": sigma, "mmd_weight": 2.0, "target_weight": 0.5}
    _, got, sample_size, log = _run(name, cfg, lin, sample)
    assert sample_size == 1
    assert got == pytest.approx(expected, rel=1e-9)
    assert log["mmd_loss"] == pytest.approx(_mmd_loops(d[same], d[~same], sigma), rel=1e-9)
    sample["same"] = torch.ones(p, dtype=torch.bool)
    with pytest.raises(DataError, match="same-session and cross-session pairs"):
        _run(name, cfg, lin, sample)


# --------------------------------------------------------------------------------------------
# list formats


def test_list_formats_round_trip(tmp_path):
    entries = {
        "normal": [ListEntry(("a/x.npy",), "s1"), ListEntry(("b/y.npy",), "s2")],
        "test": [
            ListEntry(("a/x.npy", "b/y.npy"), flag=0),
            ListEntry(("a/x.npy", "a/z.npy"), flag=1),
        ],
        "triplet": [ListEntry(("a/x.npy",), "s1", other_speaker="s2")],
        "distribution": [
            ListEntry(("a/x.npy", "a/z.npy"), "s1", flag=1),
            ListEntry(("a/x.npy", "b/y.npy"), "s1", flag=0),
        ],
    }
    for fmt, items in entries.items():
        path = write_enhancement_list(tmp_path / f"{fmt}.txt", fmt, items)
        back = read_enhancement_list(path, fmt)
        assert [(e.files, e.speaker, e.other_speaker, e.flag) for e in back.entries] == [
            (e.files, e.speaker, e.other_speaker, e.flag) for e in items
        ]
        assert [e.lineno for e in back.entries] == list(range(1, len(items) + 1))
    (tmp_path / "wav.txt").write_text("s1 spk/vid/00001.wav\n")
    assert read_enhancement_list(tmp_path / "wav.txt", "normal").entries[0].files == (
        "spk/vid/00001.npy",
    )
    (tmp_path / "bad.txt").write_text("1 a.npy b.npy\n2 a.npy c.npy\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: the label must be 0 or 1"):
        read_enhancement_list(tmp_path / "bad.txt", "test")
    with pytest.raises(DataError, match=r"bad\.txt:1: expected 'speaker_id file'"):
        read_enhancement_list(tmp_path / "bad.txt", "normal")


def test_paths_and_sessions():
    assert embedding_path("id1/v/00001.wav") == "id1/v/00001.npy"
    assert embedding_path("x/u.npy") == "x/u.npy"
    assert session_of("speech/ls/367/367-130732-0003.npy") == "367-130732"
    assert session_of("vox/id10001/1zcIwhmdeo4/00001.npy") == "1zcIwhmdeo4"
    assert session_of("vox/id10001/1zcIwhmdeo4/00001.npy", "none") == ""


# --------------------------------------------------------------------------------------------
# synthetic embedding folders


def _write_utterances(
    root: Path, layout: dict[str, dict[str, int]], dim: int = 8, crops: int = 3
) -> tuple[Path, dict[str, np.ndarray]]:
    """speaker -> {session: n} as ``root/emb/<spk>/<session>/<k>.npy`` (crops, dim) + a list."""
    lines, arrays = [], {}
    for spk, sessions in layout.items():
        for sess, n in sessions.items():
            for k in range(n):
                rel = f"{spk}/{sess}/{k:05d}.npy"
                arr = RNG.standard_normal((crops, dim)).astype(np.float32)
                (root / "emb" / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(root / "emb" / rel, arr)
                arrays[rel] = arr
                lines.append(f"{spk} {rel.replace('.npy', '.wav')}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt", arrays


def _unit(v):
    return v / np.linalg.norm(v)


def test_combine_modes_and_the_type_c_fix(tmp_path, capsys):
    lst, arrays = _write_utterances(tmp_path, {"s1": {"vA": 3, "vB": 2}, "s2": {"vC": 2}})
    means = {rel: a.astype(np.float64).mean(0) for rel, a in arrays.items()}
    s1 = [m for rel, m in means.items() if rel.startswith("s1/")]
    expected = {
        "norm_mean_norm": _unit(np.mean([_unit(m) for m in s1], axis=0)),
        "norm_mean": np.mean([_unit(m) for m in s1], axis=0),
        "mean_norm": _unit(np.mean(s1, axis=0)),
    }
    for mode, want in expected.items():
        out = tmp_path / mode
        assert (
            combine_embeddings.main(
                [
                    "--emb-dir",
                    str(tmp_path / "emb"),
                    "--list",
                    str(lst),
                    "--out",
                    str(out),
                    "--mode",
                    mode,
                    "--level",
                    "both",
                ]
            )
            == 0
        )
        got = np.load(out / "s1.npy")
        assert got.shape == (8,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        vb = [m for rel, m in means.items() if rel.startswith("s1/vB/")]
        want_vb = {
            "norm_mean_norm": _unit(np.mean([_unit(m) for m in vb], axis=0)),
            "norm_mean": np.mean([_unit(m) for m in vb], axis=0),
            "mean_norm": _unit(np.mean(vb, axis=0)),
        }[mode]
        np.testing.assert_allclose(np.load(out / "s1" / "vB.npy"), want_vb, rtol=1e-6, atol=1e-7)
    # the reference's type C normalised the last utterance instead of the mean
    assert not np.allclose(np.load(tmp_path / "mean_norm" / "s1.npy"), _unit(s1[-1]), atol=1e-3)
    tsv = (tmp_path / "norm_mean_norm" / "targets.tsv").read_text().splitlines()
    assert "s1\t-\t5\ts1.npy" in tsv and "s1\tvA\t3\ts1/vA.npy" in tsv
    # the reference's folder walk gives the same speaker targets
    out = tmp_path / "walk"
    assert (
        combine_embeddings.main(
            ["--emb-dir", str(tmp_path / "emb"), "--speaker-dirs", "--out", str(out)]
        )
        == 0
    )
    np.testing.assert_allclose(np.load(out / "s1.npy"), expected["norm_mean_norm"], rtol=1e-6)


def test_combine_bad_input_names_file_and_line(tmp_path, capsys):
    lst, _ = _write_utterances(tmp_path, {"s1": {"v": 2}, "s2": {"v": 2}})
    np.save(tmp_path / "emb" / "s2" / "v" / "00001.npy", np.ones((3, 5), np.float32))
    args = ["--emb-dir", str(tmp_path / "emb"), "--list", str(lst), "--out", str(tmp_path / "o")]
    assert combine_embeddings.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("combine_embeddings: error: ")
    assert "s2/v/00001.npy" in err and f"{lst}:4" in err and "D=8" in err
    (tmp_path / "emb" / "s2" / "v" / "00001.npy").unlink()
    assert combine_embeddings.main(args) == 2
    err = capsys.readouterr().err
    assert f"{lst}:4: embedding file not found" in err
    (tmp_path / "emb" / "s3").mkdir()
    assert (
        combine_embeddings.main(
            ["--emb-dir", str(tmp_path / "emb"), "--speaker-dirs", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "s3: speaker folder has no .npy files (an empty speaker)" in err


def _make_lists(tmp_path, lst, name, seed, *extra):
    out = tmp_path / "lists"
    argv = ["--list", str(lst), "--out-dir", str(out), "--name", name, "--seed", str(seed), *extra]
    assert make_enhancement_lists.main(argv) == 0
    return {f: out / f"{name}_{f}_list.txt" for f in ("normal", "test", "triplet", "distribution")}


def test_make_lists_are_seeded_and_balanced(tmp_path):
    layout = {f"id{i}": {"vA": 3 + i % 2, "vB": 2, "vC": 1 + i % 3} for i in range(5)}
    lst, arrays = _write_utterances(tmp_path, layout)
    speaker_of = {rel: rel.split("/")[0] for rel in arrays}
    a = _make_lists(tmp_path, lst, "a", 1)
    b = _make_lists(tmp_path, lst, "b", 1)
    c = _make_lists(tmp_path, lst, "c", 2)
    for fmt in a:
        assert a[fmt].read_bytes() == b[fmt].read_bytes()
    assert a["test"].read_bytes() != c["test"].read_bytes()

    normal = read_enhancement_list(a["normal"], "normal").entries
    assert sorted(e.files[0] for e in normal) == sorted(arrays)
    test = read_enhancement_list(a["test"], "test").entries
    labels = [e.flag for e in test]
    assert labels.count(1) == labels.count(0) > 0
    for e in test:
        assert (speaker_of[e.files[0]] == speaker_of[e.files[1]]) == (e.flag == 1)
        assert e.files[0] != e.files[1]
    assert len({tuple(sorted(e.files)) for e in test}) == len(test)
    for e in read_enhancement_list(a["triplet"], "triplet").entries:
        assert e.other_speaker != e.speaker and e.other_speaker in layout
    dist = read_enhancement_list(a["distribution"], "distribution").entries
    for spk in layout:
        mine = [e for e in dist if e.speaker == spk]
        assert sum(e.flag for e in mine) * 2 == len(mine) > 0
        for e in mine:
            assert {speaker_of[f] for f in e.files} == {spk}
            same_session = session_of(e.files[0]) == session_of(e.files[1])
            assert same_session == (e.flag == 1)


def test_make_lists_one_session_needs_blocks(tmp_path, capsys):
    lst, _ = _write_utterances(tmp_path, {"s1": {"v": 6}, "s2": {"v": 6}})
    out = tmp_path / "l"
    argv = ["--list", str(lst), "--out-dir", str(out), "--name", "x", "--formats", "distribution"]
    assert make_enhancement_lists.main(argv) == 2
    assert "use --category block" in capsys.readouterr().err
    assert make_enhancement_lists.main([*argv, "--category", "block", "--block-size", "3"]) == 0
    dist = read_enhancement_list(out / "x_distribution_list.txt", "distribution").entries
    assert [e.flag for e in dist].count(0) == [e.flag for e in dist].count(1) == 4
    assert make_enhancement_lists.main([*argv, "--emb-dir", str(tmp_path / "nowhere")]) == 2
    assert f"{lst}:1: embedding file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# datasets and the task: bad input


def _targets(tmp_path, lst):
    assert (
        combine_embeddings.main(
            [
                "--emb-dir",
                str(tmp_path / "emb"),
                "--list",
                str(lst),
                "--out",
                str(tmp_path / "targets"),
            ]
        )
        == 0
    )
    return TargetTable(tmp_path / "targets", 8)


def test_dataset_items_and_bad_input(tmp_path):
    lst, arrays = _write_utterances(tmp_path, {"s1": {"v": 3}, "s2": {"w": 3}})
    targets = _targets(tmp_path, lst)
    lists = _make_lists(tmp_path, lst, "t", 1, "--category", "block", "--block-size", "2")
    table = EmbeddingTable(tmp_path / "emb")
    normal = read_enhancement_list(lists["normal"], "normal")
    ds = build_dataset(normal, table, targets, {"s1": 0, "s2": 1})
    batch = ds.collater([ds[0], ds[4]])
    assert batch["input"].shape == (2, 8) and batch["label"].tolist() == [0, 1]
    rel = normal.entries[0].files[0]
    np.testing.assert_allclose(
        batch["input"][0].numpy(), _unit(arrays[rel].astype(np.float64).mean(0)), rtol=1e-6
    )
    np.testing.assert_array_equal(batch["target"][1].numpy(), np.load(tmp_path / "targets/s2.npy"))

    # wrong dimension: the .npy file and the list line are named
    bad = tmp_path / "emb" / "s2" / "w" / "00001.npy"
    np.save(bad, np.ones((3, 7), np.float32))
    with pytest.raises(DataError) as e:
        build_dataset(normal, EmbeddingTable(tmp_path / "emb"), targets, {"s1": 0, "s2": 1})
    assert str(bad) in str(e.value) and f"{lists['normal']}:5" in str(e.value)
    assert "D=8" in str(e.value)
    # missing .npy: the list file and line are named
    bad.unlink()
    with pytest.raises(DataError, match=rf"{lists['normal']}:5: embedding file not found"):
        build_dataset(normal, EmbeddingTable(tmp_path / "emb"), targets, {"s1": 0, "s2": 1})
    np.save(bad, RNG.standard_normal((3, 8)).astype(np.float32))
    # an unknown / empty other speaker in a triplet list
    trip = tmp_path / "trip.txt"
    trip.write_text(f"s1 {normal.entries[0].files[0]} s2\ns1 {normal.entries[1].files[0]} s9\n")
    with pytest.raises(DataError, match=r"trip\.txt:2: speaker 's9' has no target"):
        build_dataset(read_enhancement_list(trip, "triplet"), table, targets, {"s1": 0})
    # a distribution speaker without cross-session pairs
    dist = tmp_path / "dist.txt"
    f = [e.files[0] for e in normal.entries]
    dist.write_text(f"s1 {f[0]} {f[1]} 1\ns1 {f[0]} {f[3]} 0\ns2 {f[3]} {f[4]} 1\n")
    with pytest.raises(DataError, match=r"speaker 's2' \(lines 3\) has no cross-session"):
        build_dataset(
            read_enhancement_list(dist, "distribution"), table, targets, {"s1": 0, "s2": 1}
        )
    # cross-session pairs have two session targets: session level is refused
    session_targets = TargetTable(tmp_path / "targets", 8, level="session")
    with pytest.raises(DataError, match=r"dist\.txt: a distribution list .* speaker-level"):
        build_dataset(
            read_enhancement_list(dist, "distribution"), table, session_targets, {"s1": 0, "s2": 1}
        )


def test_task_checks_model_dim_and_criterion_format(tmp_path):
    from speechkit.errors import ConfigError

    lst, _ = _write_utterances(tmp_path, {"s1": {"v": 3}, "s2": {"w": 3}})
    _targets(tmp_path, lst)
    lists = _make_lists(tmp_path, lst, "t", 1, "--category", "block", "--block-size", "2")
    task = TASK_REGISTRY.build(
        {
            "_name": "embedding_enhancement",
            "embedding_dir": str(tmp_path / "emb"),
            "target_dir": str(tmp_path / "targets"),
            "train_list": str(lists["normal"]),
            "test_list": str(lists["test"]),
        }
    )
    assert task.embed_dim == 8 and task.num_classes == 2
    with pytest.raises(ConfigError, match="model.embed_dim=512 but the embeddings .* are 8-d"):
        task.build_model({"_name": "enhancement_residual"})
    with pytest.raises(ConfigError, match="trains on triplet lists"):
        task.build_criterion({"_name": "embedding_triplet_cosine"})
    model = task.build_model({"_name": "enhancement_residual", "embed_dim": 8}).eval()
    scores = task.trial_scores(model, torch.device("cpu"))
    np.testing.assert_array_equal(scores.raw, scores.enhanced)  # identity at the start
    test = read_enhancement_list(lists["test"], "test").entries
    assert scores.labels.tolist() == [e.flag for e in test]
    assert scores.paths1 == [e.files[0] for e in test]
    batches = task.batches("train", epoch=1, batch_size=4)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches == task.batches("train", epoch=1, batch_size=4)
    assert batches != task.batches("train", epoch=2, batch_size=4)


# --------------------------------------------------------------------------------------------
# the dump script (a tiny speaker model on three real utterances)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import speechkit.models.ecapa_tdnn  # noqa: F401

    cfg = {
        "_name": "ecapa_tdnn",
        "channels": 16,
        "mfa_channels": 48,
        "attention_channels": 8,
        "se_channels": 8,
        "n_mels": 20,
        "embed_dim": 12,
    }
    torch.manual_seed(0)
    model = MODEL_REGISTRY.build(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"cfg": {"model": cfg}, "model": model.state_dict()}, path)
    return path


def test_dump_is_batched_resumable_and_atomic(
    tmp_path, shared_data, tiny_checkpoint, capsys, monkeypatch
):
    lines = (shared_data / "lists" / "voxceleb1_mini_train_list.txt").read_text().splitlines()
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines[:3]) + "\n")
    out = tmp_path / "emb"
    argv = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--list",
        str(lst),
        "--root",
        str(shared_data),
        "--out",
        str(out),
        "--eval-frames",
        "50",
        "--num-eval",
        "3",
        "--batch-files",
        "2",
        "--device",
        "cpu",
    ]
    assert dump_embeddings.main(argv) == 0
    rels = [embedding_path(line.split()[1]) for line in lines[:3]]
    files = [out / r for r in rels]
    arrays = [np.load(f) for f in files]
    assert all(a.shape == (3, 12) and a.dtype == np.float32 for a in arrays)
    mtimes = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()

    assert dump_embeddings.main(argv) == 0  # everything there: nothing recomputed
    assert "3 already dumped, 0 to embed" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    files[1].unlink()
    real_save = np.save

    def broken_save(f, arr, **kw):  # dies half-way through writing the file
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        dump_embeddings.main(argv)
    monkeypatch.setattr(np, "save", real_save)
    assert not files[1].exists()
    # nothing half-written is left behind: neither the target nor the writer's temporary file
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        p.name for p in files if p.exists()
    ) + ["dump_info.json"]

    assert dump_embeddings.main(argv) == 0
    assert "2 already dumped, 1 to embed" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(files[1]), arrays[1], rtol=1e-5, atol=1e-6)
    assert [files[0].stat().st_mtime_ns, files[2].stat().st_mtime_ns] == [mtimes[0], mtimes[2]]

    assert dump_embeddings.main([*argv[:-6], "--num-eval", "2", *argv[-4:]]) == 2
    assert "other settings (num_eval: 3 there, 2 now)" in capsys.readouterr().err
    lst.write_text(lines[0] + "\nid10001 speech/voxceleb1_mini/id10001/nope/00009.wav\n")
    assert dump_embeddings.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dump_embeddings: error: 1 listed audio file(s) not found")
    assert f"{lst}:2:" in err


def test_softmax_classifier_from_a_speaker_checkpoint(tmp_path):
    from speechkit.errors import CheckpointError

    w, b = torch.randn(C, D), torch.randn(C)
    torch.save({"criterion": {"softmax.fc.weight": w, "softmax.fc.bias": b}}, tmp_path / "a.pt")
    crit = CRITERION_REGISTRY.build(
        {"_name": "embedding_softmax", "classifier_init": str(tmp_path / "a.pt")}, _Task()
    )
    assert torch.equal(crit.fc.weight.detach(), w) and torch.equal(crit.fc.bias.detach(), b)
    torch.save({"criterion": {"fc.weight": torch.randn(C + 1, D), "fc.bias": b}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"shape \(5, 5\), expected \(4, 5\)"):
        CRITERION_REGISTRY.build(
            {"_name": "embedding_mse_softmax", "classifier_init": str(tmp_path / "b.pt")}, _Task()
        )

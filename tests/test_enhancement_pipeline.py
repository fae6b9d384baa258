"""Speaker-embedding enhancement end to end on the real data (../shared/data).

A small speaker model is trained for a few updates, embeddings of the 10 LibriSpeech
test-other speakers and the 211-speaker cohort are dumped, speaker targets and lists are built,
and enhancement nets are trained through the Trainer. Validation must score the raw and the
enhanced embeddings on the same trials: both EERs are recomputed here from the ``.npy`` files
with sklearn's ROC. The full 4 x 9 model/loss table is ``benchmarks/enhancement_table.py``;
here a representative subset trains for a few epochs and the whole grid for one update.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

import speechkit.criterions.embedding_enhancement  # noqa: F401  (registrations)
import speechkit.models.ecapa_tdnn  # noqa: F401
import speechkit.models.embedding_enhancement  # noqa: F401
import speechkit.tasks.embedding_enhancement  # noqa: F401
from speechkit.cli import combine_embeddings, dump_embeddings, make_enhancement_lists
from speechkit.data.embedding_dataset import embedding_path
from speechkit.metrics.scoring import read_trial_list
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import compose_cfg

pytestmark = pytest.mark.slow

MODELS = [
    "enhancement_mlp5_dropout",
    "enhancement_mlp5",
    "enhancement_mlp3_dropout",
    "enhancement_residual",
]
CRITERIONS = [
    "enh_mse",
    "enh_mae",
    "enh_cosine",
    "enh_mse_cosine",
    "enh_softmax",
    "enh_mse_softmax",
    "enh_triplet_cosine",
    "enh_mmd_cosine",
    "enh_mmd_mse",
]
FORMAT = {
    "enh_triplet_cosine": "triplet",
    "enh_mmd_cosine": "distribution",
    "enh_mmd_mse": "distribution",
}
QUIET = [
    "common.cpu=true",
    "common.log_format=none",
    "common.tensorboard_logdir=null",
    "checkpoint.no_save=true",
    "checkpoint.best_checkpoint_metric=eer_enhanced",
]


@pytest.fixture(scope="module")
def pipeline(shared_data, tmp_path_factory):
    """Speaker model -> dump -> targets -> lists; returns the folders and files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to oversubscription
    work = tmp_path_factory.mktemp("enhancement")
    lists = shared_data / "lists"
    sv = compose_cfg(
        [
            "task=speaker_verification",
            "model=ecapa_tdnn",
            "criterion=angleproto",
            f"task.root={shared_data}",
            f"task.train_list={lists / 'split_train_list.txt'}",
            "task.max_frames=100",
            "task.n_per_speaker=2",
            "model.channels=32",
            "model.mfa_channels=96",
            "model.attention_channels=32",
            "model.se_channels=32",
            "model.n_mels=40",
            "model.embed_dim=32",
            "optimization.lr=0.002",
            "optimization.max_update=12",
            "dataset.batch_size=6",
            "dataset.disable_validation=true",
            f"checkpoint.save_dir={work / 'sv'}",
            "checkpoint.save_interval=0",
            "common.cpu=true",
            "common.log_format=none",
            "common.tensorboard_logdir=null",
        ]
    )
    seed_everything(1)
    Trainer(sv, *build_components(sv)).train()
    checkpoint = work / "sv" / "checkpoint_last.pt"

    all_list, cohort = lists / "librispeech_test_other_train_all.txt", lists / "cohort_list.txt"
    emb, targets, enh = work / "emb", work / "targets", work / "lists"
    assert (
        dump_embeddings.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--list",
                str(all_list),
                "--list",
                str(cohort),
                "--root",
                str(shared_data),
                "--out",
                str(emb),
                "--eval-frames",
                "150",
                "--num-eval",
                "2",
                "--batch-files",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        combine_embeddings.main(
            [
                "--emb-dir",
                str(emb),
                "--list",
                str(all_list),
                "--list",
                str(cohort),
                "--out",
                str(targets),
                "--level",
                "both",
            ]
        )
        == 0
    )
    assert (
        make_enhancement_lists.main(
            [
                "--list",
                str(lists / "split_train_list.txt"),
                "--list",
                str(cohort),
                "--out-dir",
                str(enh),
                "--name",
                "train",
                "--formats",
                "normal,triplet,distribution",
                "--category",
                "block",
                "--emb-dir",
                str(emb),
            ]
        )
        == 0
    )
    yield {
        "emb": emb,
        "targets": targets,
        "lists": enh,
        "test": lists / "split_test_trials.txt",
        "all": all_list,
        "cohort": cohort,
        "embed_dim": 32,
    }
    torch.set_num_threads(threads)


def overrides(p: dict, model: str, criterion: str, *extra: str) -> list[str]:
    fmt = FORMAT.get(criterion, "normal")
    return [
        "task=embedding_enhancement",
        f"model={model}",
        f"criterion={criterion}",
        f"task.embedding_dir={p['emb']}",
        f"task.target_dir={p['targets']}",
        f"task.train_list={p['lists'] / f'train_{fmt}_list.txt'}",
        f"task.list_format={fmt}",
        f"task.test_list={p['test']}",
        f"model.embed_dim={p['embed_dim']}",
        "dataset.batch_size=64",
        *QUIET,
        *extra,
    ]


def reference_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """voxceleb_trainer's EER from sklearn's ROC: max(FPR, FNR) where |FNR - FPR| is least."""
    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return 100.0 * max(fpr[i], fnr[i])


def raw_vectors(emb: Path, paths: list[str]) -> np.ndarray:
    """Per-utterance vectors straight from the .npy files: crop mean, L2 norm (float64)."""
    out = []
    for p in paths:
        v = np.load(emb / embedding_path(p)).astype(np.float64).mean(axis=0)
        out.append(v / np.sqrt(v @ v))
    return np.stack(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b) / np.sqrt(
        np.einsum("nd,nd->n", a, a) * np.einsum("nd,nd->n", b, b)
    )


def test_dump_targets_and_lists_cover_the_data(pipeline, shared_data):
    listed = [
        ln.split()[1]
        for f in (pipeline["all"], pipeline["cohort"])
        for ln in f.read_text().splitlines()
    ]
    assert len(listed) == 311
    for rel in listed:
        arr = np.load(pipeline["emb"] / embedding_path(rel))
        assert arr.shape == (2, 32) and np.isfinite(arr).all()
    assert len(list(pipeline["targets"].glob("*.npy"))) == 221  # 10 + 211 speakers
    assert (pipeline["targets"] / "ls367" / "367-130732.npy").is_file()  # chapter = session
    normal = (pipeline["lists"] / "train_normal_list.txt").read_text().splitlines()
    assert len(normal) == 60 + 211


@pytest.mark.parametrize(
    "model_name, criterion_name",
    [
        ("enhancement_residual", "enh_cosine"),
        ("enhancement_mlp5_dropout", "enh_mse"),
        ("enhancement_mlp3_dropout", "enh_mse_softmax"),
        ("enhancement_mlp5", "enh_triplet_cosine"),
        ("enhancement_residual", "enh_mmd_mse"),
    ],
)
def test_training_reports_raw_and_enhanced_eer_on_the_same_trials(
    pipeline, model_name, criterion_name
):
    cfg = compose_cfg(
        overrides(
            pipeline,
            model_name,
            criterion_name,
            "optimization.max_epoch=3",
            "dataset.validate_interval=3",
            "optimization.lr=0.001",
            "model.activation=elu",
        )
    )
    seed_everything(1)
    task, model, criterion = build_components(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(cfg, task, model, criterion)
    metrics = trainer.train()
    assert trainer.num_updates > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    trials = read_trial_list(pipeline["test"])
    assert metrics["num_trials"] == len(trials) == 360
    raw = raw_vectors(pipeline["emb"], trials.unique_paths())
    index = {p: i for i, p in enumerate(trials.unique_paths())}
    i1 = [index[p] for p in trials.paths1]
    i2 = [index[p] for p in trials.paths2]
    expected_raw = reference_eer(cosine(raw[i1], raw[i2]), trials.labels)
    assert metrics["eer_raw"] == pytest.approx(expected_raw, abs=1e-9)
    model.eval()
    with torch.no_grad():
        enhanced = model(torch.tensor(raw, dtype=torch.float32)).double().numpy()
    expected_enh = reference_eer(cosine(enhanced[i1], enhanced[i2]), trials.labels)
    assert metrics["eer_enhanced"] == pytest.approx(expected_enh, abs=1e-9)
    for key in ("min_dcf_raw", "min_dcf_enhanced", "min_dcf_001_raw", "min_dcf_001_enhanced"):
        assert 0.0 <= metrics[key] <= 1.0 + 1e-12


def test_every_model_with_every_loss_trains_two_epochs(pipeline):
    raw_eers = set()
    for model_name in MODELS:
        for criterion_name in CRITERIONS:
            cfg = compose_cfg(
                overrides(
                    pipeline,
                    model_name,
                    criterion_name,
                    "optimization.max_epoch=2",
                    "dataset.validate_interval=0",
                )
            )
            seed_everything(1)
            task, model, criterion = build_components(cfg)
            trainer = Trainer(cfg, task, model, criterion)
            if model_name == "enhancement_residual":  # the identity: nothing to gain yet
                start = trainer.validate()
                assert start["eer_enhanced"] == start["eer_raw"]
            before = {k: v.clone() for k, v in model.state_dict().items()}
            trainer.train()
            assert trainer.epoch == 3 and trainer.num_updates >= 4, (model_name, criterion_name)
            changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
            assert changed, (model_name, criterion_name)
            metrics = trainer.validate()
            assert metrics["num_trials"] == 360
            assert all(math.isfinite(v) for v in metrics.values())
            raw_eers.add(metrics["eer_raw"])
    assert len(raw_eers) == 1  # every run scores the same raw trials


def test_the_experiment_preset_trains(pipeline, tmp_path):
    cfg = compose_cfg(
        [
            "experiment=enhancement_demo",
            f"task.embedding_dir={pipeline['emb']}",
            f"task.target_dir={pipeline['targets']}",
            f"task.train_list={pipeline['lists'] / 'train_normal_list.txt'}",
            f"task.test_list={pipeline['test']}",
            f"model.embed_dim={pipeline['embed_dim']}",
            "optimization.max_epoch=2",
            "dataset.validate_interval=2",
            f"checkpoint.save_dir={tmp_path}",
            "common.log_format=none",
            "common.cpu=true",
            "common.tensorboard_logdir=null",
        ]
    )
    seed_everything(1)
    trainer = Trainer(cfg, *build_components(cfg))
    metrics = trainer.train()
    assert metrics["num_trials"] == 360 and trainer.best_metric == metrics["eer_enhanced"]
    assert (tmp_path / "checkpoint_last.pt").is_file()

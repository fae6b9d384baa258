"""SyncNet reference scoring, the triplet batch EER, sampler coverage and repeated crops,
``common.num_threads`` / ``common.deterministic`` in the Trainer, and the sv_shared preset."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.metrics import roc_curve

from speechkit.cli import eval_eer, make_sv_shared_lists
from speechkit.criterions.speaker_metric_learning import TripletHead, batch_eer
from speechkit.data.samplers import speaker_balanced_batches, speaker_coverage
from speechkit.data.speaker_dataset import SpeakerTrainDataset
from speechkit.errors import ConfigError
from speechkit.inference.speaker_embedding import SCORING, score_trials
from speechkit.metrics.scoring import mean_crop_cosine_score
from speechkit.metrics.verification import compute_eer
from speechkit.tasks.speaker_verification import (
    SpeakerVerificationConfig,
    SpeakerVerificationTask,
)
from speechkit.trainer.rng import configure_determinism
from tests.helpers import compose_cfg

# ------------------------------------------------------------------------------------------
# syncnet_reference scoring


def reference_syncnet_scores(feats, trials):
    """syncnet_trainer's evaluateFromListSave, written out with numpy: per trial the 10 x 10
    matrix of cosine similarities between the raw crop embeddings of the two files (each norm
    floored at 1e-8), then its mean."""
    scores = []
    for a, b in trials:
        ref, com = feats[a].astype(np.float64), feats[b].astype(np.float64)
        total = 0.0
        for i in range(ref.shape[0]):
            for j in range(com.shape[0]):
                na = max(np.sqrt(np.sum(ref[i] ** 2)), 1e-8)
                nb = max(np.sqrt(np.sum(com[j] ** 2)), 1e-8)
                total += float(np.sum(ref[i] * com[j])) / (na * nb)
        scores.append(total / (ref.shape[0] * com.shape[0]))
    return np.array(scores)


def test_syncnet_reference_scoring_equals_the_reference_arithmetic():
    rng = np.random.default_rng(0)
    # 6 files x 10 crops x 32-d, un-normalised, with a per-file offset so crops agree partly
    feats = {f"f{k}.wav": rng.normal(size=(10, 32)) + rng.normal(size=32) for k in range(6)}
    trials = [(f"f{a}.wav", f"f{b}.wav") for a in range(6) for b in range(6) if a < b]
    expected = reference_syncnet_scores(feats, trials)
    emb = {k: torch.from_numpy(v.astype(np.float32)) for k, v in feats.items()}
    p1, p2 = [a for a, _ in trials], [b for _, b in trials]
    got = score_trials(emb, p1, p2, "syncnet_reference")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the same when the crops were already L2-normalised (validation normalises them)
    unit = {k: torch.nn.functional.normalize(v, dim=-1) for k, v in emb.items()}
    np.testing.assert_allclose(
        score_trials(unit, p1, p2, "syncnet_reference"), expected, rtol=1e-5, atol=1e-6
    )
    # a different rule from cosine of the mean crops (which renormalises the means)
    assert not np.allclose(score_trials(unit, p1, p2, "cosine"), expected, atol=1e-3)
    # one trial: a 0-d tensor
    one = mean_crop_cosine_score(emb["f0.wav"], emb["f1.wav"])
    assert one.ndim == 0 and float(one) == pytest.approx(expected[0], rel=1e-5)
    with pytest.raises(ValueError):
        mean_crop_cosine_score(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


def test_syncnet_reference_is_offered_by_eval_eer_and_the_task(tmp_path):
    assert "syncnet_reference" in SCORING
    args = eval_eer.parse_args(
        ["--checkpoint", "x.pt", "--test-list", "t.txt", "--scoring", "syncnet_reference"]
    )
    assert args.scoring == "syncnet_reference"
    assert eval_eer.parse_args(["--checkpoint", "x.pt", "--test-list", "t.txt"]).scoring == (
        "cosine"
    )
    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    (tmp_path / "train.txt").write_text("s1 a.wav\ns2 a.wav\n")
    cfg = SpeakerVerificationConfig(
        root=str(tmp_path), train_list=str(tmp_path / "train.txt"), scoring="syncnet_reference"
    )
    assert SpeakerVerificationTask(cfg).cfg.scoring == "syncnet_reference"
    with pytest.raises(ConfigError, match="scoring"):
        SpeakerVerificationTask(
            SpeakerVerificationConfig(
                root=str(tmp_path), train_list=str(tmp_path / "train.txt"), scoring="nope"
            )
        )


# ------------------------------------------------------------------------------------------
# triplet batch EER


def sklearn_default_eer(scores, labels):
    fpr, tpr, _ = roc_curve(labels, scores)  # default arguments: drop_intermediate=True
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return 100 * max(fpr[i], 1 - tpr[i])


def test_batch_eer_is_sklearn_default_roc_curve():
    # a case where dropping the collinear ROC points changes the EER
    differs = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        labels = np.r_[np.ones(8), np.zeros(8)]
        scores = np.round(rng.normal(size=16) + labels, 1)
        assert batch_eer(scores, labels) == pytest.approx(sklearn_default_eer(scores, labels))
        if compute_eer(scores, labels, drop_intermediate=False)[0] != pytest.approx(
            batch_eer(scores, labels)
        ):
            differs += 1
    assert differs > 0  # the cases above include ones where drop_intermediate matters


def test_triplet_head_logs_the_reference_batch_eer():
    head = TripletHead(margin=0.1, hard_rank=10, hard_prob=0.5)
    differs = 0
    for seed in range(20):
        x = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(seed))
        out = head(x, generator=torch.Generator().manual_seed(seed))
        # the same pair scores, recomputed with the same negatives
        a = torch.nn.functional.normalize(x[:, 0], dim=1)
        p = torch.nn.functional.normalize(x[:, 1], dim=1)
        sim = -torch.cdist(a, p).pow(2)
        neg = head.mine_negatives(sim, torch.Generator().manual_seed(seed))
        d_pos, d_neg = (a - p).pow(2).sum(1), (a - p[neg]).pow(2).sum(1)
        scores = -torch.cat([d_pos, d_neg]).double().numpy()
        labels = np.r_[np.ones(8), np.zeros(8)]
        assert out.eer == pytest.approx(sklearn_default_eer(scores, labels))
        differs += compute_eer(scores, labels, drop_intermediate=False)[0] != pytest.approx(out.eer)
    assert differs > 0  # batches where every-threshold EER (the old one) is different


# ------------------------------------------------------------------------------------------
# sampler coverage and repeated crops


LABELS = [0, 0, 0, 1, 1, 1, 2, 3, 4, 5, 6]  # 2 speakers x 3 utterances, 5 one-utterance speakers


def test_speaker_coverage_counts_what_the_sampler_draws():
    cov = speaker_coverage(LABELS, n_per_speaker=2, max_seg_per_spk=500)
    assert (cov.speakers, cov.utterances) == (7, 11)
    assert (cov.usable_speakers, cov.usable_utterances) == (2, 4)
    assert cov.unusable_fraction == pytest.approx(5 / 7)
    assert "uses 2 of 7 speakers and 4 of 11 utterances" in cov.describe()
    for epoch in range(5):
        batches = speaker_balanced_batches(LABELS, 2, 500, batch_size=1, seed=1, epoch=epoch)
        seen = {LABELS[i] for b in batches for g in b for i in g}
        assert seen <= {0, 1}
    assert speaker_coverage(LABELS, 1, 500).usable_speakers == 7
    assert speaker_coverage(LABELS, 2, 1).usable_speakers == 0  # capped at 1 per speaker
    with pytest.raises(ConfigError):
        speaker_coverage(LABELS, 0, 500)


def test_repeat_short_samples_every_speaker_with_distinct_crops(tmp_path):
    cov = speaker_coverage(LABELS, 2, 500, repeat_short=True)
    assert (cov.usable_speakers, cov.usable_utterances) == (7, 9)
    batches = speaker_balanced_batches(
        LABELS, 2, 500, batch_size=1, seed=1, epoch=0, repeat_short=True
    )
    groups = [g for b in batches for g in b]
    assert {LABELS[g[0]] for g in groups} == set(range(7))
    short = [g for g in groups if LABELS[g[0]] >= 2]
    assert len(short) == 5 and all(len(g) == 2 and g[0] == g[1] for g in short)
    # the same utterance twice gives two different random crops
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "u.wav", rng.normal(0, 0.1, 64000).astype(np.float32), 16000)
    ds = SpeakerTrainDataset([("s", str(tmp_path / "u.wav"))], max_frames=100, n_per_speaker=2)
    audio = ds[[0, 0]]["audio"]
    assert audio.shape == (2, 100 * 160 + 240) and not torch.equal(audio[0], audio[1])


def write_list(tmp_path, counts):
    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    lines = [f"s{k} a.wav\n" for k, c in enumerate(counts) for _ in range(c)]
    (tmp_path / "train.txt").write_text("".join(lines))
    return str(tmp_path / "train.txt")


def test_task_warns_when_most_speakers_are_never_sampled(tmp_path, caplog):
    train = write_list(tmp_path, [3, 3, 1, 1, 1, 1, 1])
    with caplog.at_level(logging.INFO, logger="speechkit.tasks.speaker_verification"):
        SpeakerVerificationTask(
            SpeakerVerificationConfig(root=str(tmp_path), train_list=train, n_per_speaker=2)
        )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "5 of 7 speakers" in msg and "NEVER be sampled" in msg
    assert "task.n_per_speaker=1" in msg and "aamsoftmax" in msg
    assert "task.repeat_short_speakers=true" in msg
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("uses 2 of 7 speakers and 4 of 11 utterances" in m for m in infos)

    caplog.clear()
    for overrides in ({"n_per_speaker": 1}, {"n_per_speaker": 2, "repeat_short_speakers": True}):
        with caplog.at_level(logging.INFO, logger="speechkit.tasks.speaker_verification"):
            task = SpeakerVerificationTask(
                SpeakerVerificationConfig(root=str(tmp_path), train_list=train, **overrides)
            )
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        assert task.coverage.usable_speakers == 7
        caplog.clear()
    # a minority of short speakers: counted, no warning
    train = write_list(tmp_path, [2, 2, 2, 1])
    with caplog.at_level(logging.INFO, logger="speechkit.tasks.speaker_verification"):
        SpeakerVerificationTask(
            SpeakerVerificationConfig(root=str(tmp_path), train_list=train, n_per_speaker=2)
        )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("uses 3 of 4 speakers" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------
# determinism settings


def test_configure_determinism_sets_threads_and_deterministic_mode():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        configure_determinism(False, 1)
        assert torch.get_num_threads() == 1
        configure_determinism(True, None)
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        with pytest.raises(ConfigError, match="num_threads"):
            configure_determinism(False, 0)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def test_trainer_applies_num_threads_and_deterministic(shared_data, tmp_path):
    from speechkit.train import build_components
    from speechkit.trainer.trainer import Trainer

    lists = shared_data / "lists"
    cfg = compose_cfg(
        [
            "experiment=sv_demo",
            f"task.root={shared_data}",
            f"task.train_list={lists / 'voxceleb1_mini_train_list.txt'}",
            f"task.test_list={lists / 'voxceleb1_mini_trials.txt'}",
            f"checkpoint.save_dir={tmp_path}",
            "common.cpu=true",
            "common.tensorboard_logdir=null",
            "dataset.batch_size=2",
            "common.deterministic=true",
            "common.num_threads=1",
        ]
    )
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(False)
        Trainer(cfg, *build_components(cfg))
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


# ------------------------------------------------------------------------------------------
# the sv_shared_aam preset


def test_sv_shared_preset_uses_every_speaker_but_the_held_out(shared_data, tmp_path, caplog):
    make = make_sv_shared_lists
    assert make.main(["--data", str(shared_data), "--out", str(tmp_path)]) == 0
    train = tmp_path / "train_list.txt"
    cfg = compose_cfg(
        [
            "experiment=sv_shared_aam",
            f"task.root={shared_data}",
            f"task.train_list={train}",
            f"task.test_list={shared_data / 'lists/split_test_trials.txt'}",
            f"task.augmentation.noise_list={shared_data / 'lists/noise_list.txt'}",
            f"task.augmentation.rir_list={shared_data / 'lists/rir_list.txt'}",
        ]
    )
    assert cfg.criterion._name == "aam_softmax" and cfg.task.n_per_speaker == 1
    with caplog.at_level(logging.WARNING):
        task = SpeakerVerificationTask(
            SpeakerVerificationConfig(
                root=cfg.task.root,
                train_list=cfg.task.train_list,
                test_list=cfg.task.test_list,
                n_per_speaker=cfg.task.n_per_speaker,
            )
        )
    assert not caplog.records
    assert task.coverage.usable_speakers == task.coverage.speakers == 220
    assert task.coverage.usable_utterances == 278
    held_out = {"ls2609", "ls3005", "ls3080", "ls3331"}
    assert not held_out & set(task.label_of_speaker)
    trial_speakers = {p.split("/")[2] for p in task.trials.unique_paths()}
    assert {f"ls{s}" for s in trial_speakers} == held_out

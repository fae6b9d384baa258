"""Speaker verification on real speech (../shared/data): overfit, eval_eer.py, inference.

The numbers each test measures are printed (``pytest -s``) so they can be reported.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.cli import eval_eer
from speechkit.data.audio import read_audio
from speechkit.inference.speaker_embedding import SpeakerEmbedding
from speechkit.metrics.scoring import read_score_file, read_trial_list
from speechkit.metrics.verification import compute_eer
from speechkit.modules.frontend import LogMelFrontend
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import compose_cfg

pytestmark = pytest.mark.slow

# Every real-data training run pins one intra-op thread (common.num_threads=1, applied by the
# Trainer) so that its numbers do not depend on OMP_NUM_THREADS or the core count, and decays the
# learning rate to 0 (cosine) so that the final model sits on a plateau rather than at a random
# point of a noisy trajectory. What still differs between machines (vector instruction sets
# change float rounding, which training amplifies) is covered by margins measured over seeds.
TRAIN_THREADS = 1


def train_sv(shared, save_dir, train_list, trials, max_update, *extra, seed=1):
    """resnet_se34l + angleproto (the sv_demo preset) for ``max_update`` updates on the CPU,
    with ``extra`` overrides; returns (EER before training, EER after, trainer)."""
    lists = shared / "lists"
    cfg = compose_cfg(
        [
            "experiment=sv_demo",
            f"task.root={shared}",
            f"task.train_list={lists / train_list}",
            f"task.test_list={lists / trials}",
            f"checkpoint.save_dir={save_dir}",
            "common.cpu=true",
            "common.log_format=none",
            "common.tensorboard_logdir=null",
            f"common.seed={seed}",
            f"common.num_threads={TRAIN_THREADS}",
            "task.max_frames=200",
            "task.eval_frames=200",
            "task.num_eval=3",
            "dataset.batch_size=5",
            "optimization.lr=0.001",
            "lr_scheduler=cosine",
            "optimization.max_epoch=0",
            f"optimization.max_update={max_update}",
            "dataset.validate_interval=0",
            "dataset.validate_interval_updates=0",
            "dataset.validate_before_training=false",
            "checkpoint.save_interval_updates=0",
            *extra,
        ]
    )
    threads = torch.get_num_threads()
    try:
        seed_everything(cfg.common.seed)
        trainer = Trainer(cfg, *build_components(cfg))
        before = trainer.validate()["eer"]
        trainer.train()
        after = trainer.validate()["eer"]
    finally:
        torch.set_num_threads(threads)  # the Trainer pinned it for this process
    return before, after, trainer


@pytest.fixture(scope="module")
def overfit(shared_data, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("sv_overfit")
    trials = "librispeech_test_other_trials_all.txt"
    before, after, _ = train_sv(
        shared_data, save_dir, "librispeech_test_other_train_all.txt", trials, max_update=200
    )
    return {
        "before": before,
        "after": after,
        "baseline": logmel_stats_baseline_eer(shared_data, shared_data / "lists" / trials),
        "checkpoint": save_dir / "checkpoint_last.pt",
    }


def test_overfit_ten_speakers(overfit):
    before, after, baseline = overfit["before"], overfit["after"], overfit["baseline"]
    print(
        f"\noverfit (10 speakers, 900 trials): EER untrained {before:.2f}% -> trained "
        f"{after:.2f}%, log-mel mean/std baseline {baseline:.2f}%"
    )
    # Measured (200 updates, cosine LR, 1 pinned thread, OMP_NUM_THREADS=1): seed 1: 23.78 ->
    # 10.89, seed 2: 25.11 -> 13.78, seed 3: 29.56 -> 10.67; the log-mel baseline is 3.56 on
    # these trials. (250 updates gave 12.67, 11.33, 12.67; 400 reach 5.8-10.4 but cost twice the
    # suite's time; 150 gave 16.67, 17.56, 12.00.) Seeds stand in for other machines (different
    # float rounding makes a different trajectory).
    assert before > 15.0  # an untrained net is far from separating the speakers
    assert after < before - 7.0  # smallest measured gain: 11.3 points
    assert after < baseline + 13.0  # largest measured gap to the baseline: 10.2 points


def logmel_stats_baseline_eer(shared, trials_file) -> float:
    """EER of a plain baseline: cosine of per-utterance log-mel mean and std vectors."""
    trials = read_trial_list(trials_file, shared)
    frontend = LogMelFrontend(n_mels=40, log_input=True, norm="none")
    vectors = {}
    for path in trials.unique_paths():
        mel = frontend(torch.from_numpy(read_audio(trials.resolve(path)))[None])[0]
        v = torch.cat([mel.mean(-1), mel.std(-1)])
        vectors[path] = v - v.mean()
    e1 = torch.stack([vectors[p] for p in trials.paths1])
    e2 = torch.stack([vectors[p] for p in trials.paths2])
    scores = torch.nn.functional.cosine_similarity(e1, e2).numpy()
    return compute_eer(scores, trials.labels)[0]


def test_eval_eer_script_writes_scores_and_det(overfit, shared_data, tmp_path, capsys):
    trials_file = shared_data / "lists/voxceleb1_mini_trials.txt"
    scores, det = tmp_path / "scores.txt", tmp_path / "det.png"
    status = eval_eer.main(
        [
            "--checkpoint",
            str(overfit["checkpoint"]),
            "--test-list",
            str(trials_file),
            "--test-path",
            str(shared_data),
            "--eval-frames",
            "200",
            "--num-eval",
            "3",
            "--scores",
            str(scores),
            "--det-plot",
            str(det),
        ]
    )
    assert status == 0
    written = read_score_file(scores)
    trials = read_trial_list(trials_file)
    assert written.paths1 == trials.paths1 and written.paths2 == trials.paths2
    assert np.array_equal(written.labels, trials.labels) and len(written.scores) == 12
    # the EER printed for the real model's scores equals sklearn's ROC-based one
    from sklearn.metrics import roc_curve

    printed = float(capsys.readouterr().out.split("EER ", 1)[1].split("%", 1)[0])
    fpr, tpr, _ = roc_curve(written.labels, written.scores)
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    assert printed == pytest.approx(100 * max(fpr[i], 1 - tpr[i]), abs=1e-4)
    png = __import__("matplotlib.image", fromlist=["imread"]).imread(det)
    assert png.ndim == 3 and png.shape[0] > 100


def test_eval_eer_as_norm_cohort_levels(overfit, shared_data, tmp_path, capsys):
    files_of: dict[str, list[str]] = {}
    for line in (
        (shared_data / "lists/librispeech_test_other_train_all.txt").read_text().split("\n")
    ):
        if line.strip():
            speaker, path = line.split()
            files_of.setdefault(speaker, []).append(path)
    speakers = sorted(files_of)[:3]
    two = tmp_path / "two_per_speaker.txt"
    two.write_text("".join(f"{s} {f}\n" for s in speakers for f in files_of[s][:2]))
    one = tmp_path / "one_per_speaker.txt"
    one.write_text("".join(f"{s} {files_of[s][0]}\n" for s in speakers))
    base = ["--checkpoint", str(overfit["checkpoint"]), "--test-path", str(shared_data)]
    base += ["--test-list", str(shared_data / "lists/voxceleb1_mini_trials.txt")]
    base += ["--eval-frames", "100", "--num-eval", "2", "--cohort-path", str(shared_data)]

    def scores(name, *extra):
        out = tmp_path / f"{name}.txt"
        assert eval_eer.main([*base, *extra, "--scores", str(out)]) == 0
        return read_score_file(out).scores

    raw = scores("raw")
    spk2 = scores("spk2", "--cohort-list", str(two))
    utt2 = scores("utt2", "--cohort-list", str(two), "--cohort-level", "utterance")
    spk1 = scores("spk1", "--cohort-list", str(one))
    utt1 = scores("utt1", "--cohort-list", str(one), "--cohort-level", "utterance")
    out = capsys.readouterr().out
    assert "cohort of 3 speakers, top-3" in out and "cohort of 6 utterances, top-6" in out
    assert not np.allclose(spk2, raw) and not np.allclose(spk2, utt2)
    # one file per speaker: the speaker means are those files' embeddings
    np.testing.assert_allclose(spk1, utt1, rtol=1e-5, atol=1e-6)


def test_eval_eer_missing_files_fail_before_embedding(overfit, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a.wav gone1.wav\n0 a.wav gone2.wav\n1 gone1.wav a.wav\n")
    status = eval_eer.main(
        [
            "--checkpoint",
            str(overfit["checkpoint"]),
            "--test-list",
            str(trials),
            "--test-path",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "2 of 3 files not found" in err and "gone1.wav" in err and "gone2.wav" in err


def test_inference_api_embeds_real_speech(overfit, shared_data):
    spk = SpeakerEmbedding.from_checkpoint(overfit["checkpoint"])
    first = (shared_data / "lists/librispeech_test_other_train_all.txt").read_text().split()[1]
    emb = spk.embed(shared_data / first)
    assert emb.shape == (128,) and torch.isclose(emb.norm(), torch.tensor(1.0))
    same = spk.embed(read_audio(shared_data / first))
    assert torch.allclose(emb, same, atol=1e-6)

"""Trainer behaviour on the toy task of tests/user_dir_example (in-process, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from speechkit.registry import LR_SCHEDULER_REGISTRY
from speechkit.train import build_components
from speechkit.trainer.rng import seed_everything
from speechkit.trainer.trainer import Trainer
from tests.helpers import TOY, compose_cfg, prepare_registries


def make_trainer(tmp_path, *overrides):
    cfg = compose_cfg([*TOY, f"checkpoint.save_dir={tmp_path}", *overrides])
    seed_everything(cfg.common.seed)
    task, model, criterion = build_components(cfg)
    return Trainer(cfg, task, model, criterion)


def final_weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """update_freq=2 with batches of 8 == one batch of 16 (sum loss / global sample size)."""
    common = [
        "model.dropout=0",
        "optimization.max_update=6",
        "optimizer=sgd",
        "optimizer.momentum=0",
        "dataset.disable_validation=true",
    ]
    a = make_trainer(tmp_path / "a", *common, "dataset.batch_size=16")
    a.train()
    b = make_trainer(tmp_path / "b", *common, "dataset.batch_size=8", "optimization.update_freq=2")
    b.train()
    assert a.num_updates == b.num_updates == 6
    for k, v in final_weights(a).items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=0, atol=1e-6)


def test_training_reduces_loss_and_tracks_best(tmp_path):
    t = make_trainer(tmp_path, "optimization.max_epoch=4", "optimization.lr=0.01")
    first = t.validate()["loss"]
    metrics = t.train()
    assert metrics["loss"] < 0.5 * first
    assert t.best_metric == pytest.approx(metrics["loss"])
    assert (tmp_path / "checkpoint_best.pt").is_file()
    # keep-last-N (default 2) numbered checkpoints, named by the finished epoch
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*_*.pt")) == [
        "checkpoint_3_48.pt",
        "checkpoint_4_64.pt",
    ]


def test_no_save_writes_nothing_to_the_save_dir(tmp_path):
    """checkpoint.no_save: no checkpoint and no metrics.jsonl (a test once left a stray
    ``./checkpoints/metrics.jsonl`` in the repository this way); with saving, metrics.jsonl has
    one train record per log interval."""
    run_dir = tmp_path / "run"
    make_trainer(run_dir, "optimization.max_update=4", "checkpoint.no_save=true").train()
    assert not run_dir.exists() or not any(run_dir.iterdir())
    saved = tmp_path / "saved"
    make_trainer(saved, "optimization.max_update=4", "common.log_interval=2").train()
    records = [r for r in (saved / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert len(records) == 2


def test_nonfinite_loss_is_skipped_then_stops(tmp_path, caplog):
    t = make_trainer(
        tmp_path, "task.nan_after=3", "optimization.max_update=50", "common.max_nonfinite_steps=4"
    )
    with pytest.raises(FloatingPointError, match="4 consecutive updates"):
        t.train()
    assert t.num_updates == 3  # updates 0..2 applied, the NaN ones skipped
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert "skipped: non-finite" in caplog.text


def test_mid_epoch_validation_writes_best_checkpoint(tmp_path):
    """A new best found by validate_interval_updates is saved at once, not at the next
    numbered save (16 updates per epoch here: both validations fall inside epoch 1)."""
    t = make_trainer(
        tmp_path,
        "optimization.max_update=12",
        "optimization.lr=0.01",
        "dataset.validate_interval_updates=5",
        "dataset.validate_interval=0",
        "checkpoint.save_interval_updates=0",
    )
    t.train()
    best = torch.load(tmp_path / "checkpoint_best.pt", weights_only=True)
    assert best["train_state"]["num_updates"] == 10
    assert best["train_state"]["epoch"] == 1 and best["train_state"]["iterations_in_epoch"] == 10


def test_skipped_updates_do_not_repeat_interval_actions(tmp_path):
    """After a skipped (NaN) update num_updates is unchanged: its validation and numbered save
    must not run again."""
    t = make_trainer(
        tmp_path,
        "task.nan_after=3",
        "optimization.max_update=50",
        "common.max_nonfinite_steps=4",
        "dataset.validate_interval_updates=3",
        "checkpoint.save_interval_updates=3",
    )
    calls = {"validate": 0, "save": 0}
    validate, save = t._validate_and_track, t.save_checkpoint

    def count_validate():
        calls["validate"] += 1
        return validate()

    def count_save(*args, **kwargs):
        calls["save"] += 1
        return save(*args, **kwargs)

    t._validate_and_track, t.save_checkpoint = count_validate, count_save
    with pytest.raises(FloatingPointError):
        t.train()
    assert t.num_updates == 3 and calls == {"validate": 1, "save": 1}


def test_epoch_end_and_update_interval_validate_once(tmp_path):
    """validate_interval (epochs) and validate_interval_updates due after the same update (the
    epoch's last, 16 updates per epoch here): one validation, one metrics.jsonl record."""
    t = make_trainer(
        tmp_path,
        "optimization.max_epoch=2",
        "dataset.validate_interval=1",
        "dataset.validate_interval_updates=8",
        "checkpoint.save_interval_updates=0",
    )
    calls = []
    validate = t._validate_and_track

    def count_validate():
        calls.append(t.num_updates)
        return validate()

    t._validate_and_track = count_validate
    t.train()
    assert calls == [8, 16, 24, 32]
    valid = [r for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"valid"' in r]
    assert len(valid) == 4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    t = make_trainer(
        tmp_path,
        f"common.precision={precision}",
        "optimization.max_epoch=3",
        "optimization.lr=0.01",
        "optimization.clip_norm=1.0",
    )
    first = t.validate()["loss"]
    metrics = t.train()
    assert math.isfinite(metrics["loss"]) and metrics["loss"] < first


def test_resume_from_checkpoint_in_process(tmp_path):
    """Stop at max_update=20 (mid-epoch 2), resume to 40: equals one run of 40 exactly."""
    full = make_trainer(tmp_path / "full", "optimization.max_update=40")
    full.train()
    part = make_trainer(tmp_path / "part", "optimization.max_update=20")
    part.train()
    assert part.iterations_in_epoch == 4
    resumed = make_trainer(tmp_path / "part", "optimization.max_update=40")
    resumed.train()
    for k, v in final_weights(full).items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_finetune_and_reset_optimizer(tmp_path, caplog):
    src = make_trainer(tmp_path / "src", "optimization.max_update=10")
    src.train()
    ft = make_trainer(
        tmp_path / "ft",
        "optimization.max_update=1",
        "model.dropout=0.3",
        f"checkpoint.finetune_from_model={tmp_path / 'src' / 'checkpoint_last.pt'}",
    )
    ft.load_checkpoint()
    # the weights load, and the changed model setting is reported
    assert "dropout=0.3 (checkpoint: " in caplog.text
    assert ft.num_updates == 0 and ft.epoch == 1
    for k, v in src.model.state_dict().items():
        assert torch.equal(ft.model.state_dict()[k], v)
    again = make_trainer(
        tmp_path / "src", "optimization.max_update=20", "checkpoint.reset_optimizer=true"
    )
    again.load_checkpoint()
    assert again.num_updates == 10 and len(again.optimizer.state) == 0


@pytest.mark.parametrize(
    ("name", "over", "checks"),
    [
        ("fixed", {"warmup_updates": 10}, {0: 0.0, 5: 5e-4, 10: 1e-3, 99: 1e-3}),
        (
            "polynomial_decay",
            {"warmup_updates": 10, "end_learning_rate": 0.0},
            {5: 5e-4, 10: 1e-3, 55: 5e-4, 100: 0.0},
        ),
        ("cosine", {"warmup_updates": 0, "min_lr": 0.0}, {0: 1e-3, 50: 5e-4, 100: 0.0}),
        (
            "step",
            {"step_size_epochs": 0, "step_size_updates": 10, "gamma": 0.5},
            {0: 1e-3, 10: 5e-4, 25: 2.5e-4},
        ),
    ],
)
def test_lr_schedules(name, over, checks):
    prepare_registries()  # the built-in schedulers, also when this test runs on its own
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LR_SCHEDULER_REGISTRY.build({"_name": name, **over}, opt, 1e-3, 100)
    for step, lr in checks.items():
        assert sched.step_update(step) == pytest.approx(lr, abs=1e-12), (name, step)


def test_reduce_on_plateau():
    prepare_registries()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LR_SCHEDULER_REGISTRY.build(
        {"_name": "reduce_lr_on_plateau", "patience": 1, "factor": 0.1}, opt, 1.0, 0
    )
    for epoch, metric in enumerate([1.0, 0.9, 0.95, 0.95], start=1):
        sched.step_epoch(epoch, metric)
    assert sched.get_lr() == pytest.approx(0.1)
    state = sched.state_dict()
    other = LR_SCHEDULER_REGISTRY.build({"_name": "reduce_lr_on_plateau"}, opt, 1.0, 0)
    other.load_state_dict(state)
    assert other.get_lr() == pytest.approx(0.1) and other.best == pytest.approx(0.9)


class FakeClock:
    """Stands in for ``time`` in ``speechkit.trainer.metrics``: time moves only when told."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_data_wait_is_the_share_of_wall_time_spent_in_the_loader(monkeypatch):
    from speechkit.trainer import metrics

    clock = FakeClock()
    monkeypatch.setattr(metrics, "time", clock)

    def loader():  # each batch takes 3 s to arrive
        for batch in range(4):
            clock.now += 3.0
            yield batch

    meter = metrics.IntervalMeter()
    seen = []
    for batch in metrics.timed_batches(loader(), meter):
        seen.append(batch)
        clock.now += 1.0  # the update takes 1 s
        meter.add({"loss": 1.0}, grad_norm=None)
    assert seen == [0, 1, 2, 3]
    extras = meter.extras()
    assert extras["data_wait"] == pytest.approx(12.0 / 16.0)
    assert extras["ups"] == pytest.approx(4 / 16.0)
    meter.reset()
    assert meter.extras()["data_wait"] == 0.0


def test_train_records_report_data_wait(tmp_path):
    from tests.helpers import read_metrics

    t = make_trainer(tmp_path, "optimization.max_update=6", "common.log_interval=2")
    t.train()
    train = read_metrics(tmp_path, split="train")
    assert sorted(train) == [2, 4, 6]
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in train.values())

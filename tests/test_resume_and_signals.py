"""Exact resume after SIGKILL, crash-safe checkpoint writes, SIGUSR1/SIGTERM pre-emption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from speechkit.errors import CheckpointError
from speechkit.trainer.checkpoint import atomic_torch_save, load_checkpoint_file
from speechkit.trainer.trainer import EXIT_PREEMPTED
from tests.helpers import REPO_ROOT, TOY, clean_env, load_model_weights, run_train, train_cmd

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout=60.0, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError("timed out")


def _train_updates(run_dir) -> list[int]:
    """The updates of the train records in ``run_dir/metrics.jsonl`` (rank 0's metrics log)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [r["update"] for r in records if r["split"] == "train"]


def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    common = [
        *TOY,
        "optimization.max_update=40",
        "checkpoint.save_interval_updates=5",
        "dataset.num_workers=1",
    ]
    run_train(*common, f"checkpoint.save_dir={tmp_path / 'full'}")

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(*common, "task.step_delay=0.1", f"checkpoint.save_dir={run_dir}"),
        cwd=REPO_ROOT,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (run_dir / "checkpoint_1_10.pt").exists(), proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint_file(run_dir / "checkpoint_last.pt")
    assert state["train_state"]["epoch"] == 1
    assert 0 < state["train_state"]["iterations_in_epoch"] < 16  # killed inside epoch 1

    resumed = run_train(*common, f"checkpoint.save_dir={run_dir}")
    assert "batches into the epoch" in resumed.stderr
    full = load_model_weights(tmp_path / "full" / "checkpoint_last.pt")
    again = load_model_weights(run_dir / "checkpoint_last.pt")
    assert full.keys() == again.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), k


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    atomic_torch_save({"model": {"w": torch.ones(3)}, "step": 1}, path)
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        from speechkit.trainer import checkpoint
        def slow_fsync(fd):
            print("writing", flush=True)
            time.sleep(60)
        checkpoint.os.fsync = slow_fsync
        checkpoint.atomic_torch_save({{"model": {{"w": torch.zeros(3_000_000)}}, "step": 2}},
                                     {str(path)!r})
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"  # the new file is written, not renamed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint_last.pt.tmp")]
    assert leftovers, "the kill should have happened mid-write"
    state = load_checkpoint_file(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_and_exits_for_requeue(tmp_path, signum):
    common = [*TOY, "optimization.max_update=300", "common.log_interval=1"]
    proc = subprocess.Popen(
        train_cmd(*common, "task.step_delay=0.05", f"checkpoint.save_dir={tmp_path}"),
        cwd=REPO_ROOT,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: max(_train_updates(tmp_path), default=0) >= 3, proc=proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert f"received signal {int(signum)}" in err
    state = load_checkpoint_file(tmp_path / "checkpoint_last.pt")
    stopped_at = state["train_state"]["num_updates"]
    assert 3 <= stopped_at < 300
    assert max(_train_updates(tmp_path)) == stopped_at  # logged up to the saved update
    # the requeued job resumes and finishes; metrics.jsonl then holds every update once
    done = run_train(*common, f"checkpoint.save_dir={tmp_path}")
    assert f"update {stopped_at}" in done.stderr and "done: 300 updates" in done.stderr
    assert _train_updates(tmp_path) == list(range(1, 301))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*posix.system|refusing to load"):
        load_checkpoint_file(path)
    assert not marker.exists()
    # the trainer refuses it too when it tries to resume from it
    proc = run_train(
        *TOY, f"checkpoint.save_dir={tmp_path}", "optimization.max_update=2", check=False
    )
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint_file(path)

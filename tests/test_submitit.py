"""The Hydra submitit launcher's job process: speechkit saves on submitit's signal, then requeues.

Inside a submitit slurm job (``SUBMITIT_EXECUTOR=slurm``) submitit binds SIGUSR2 to a rank-0
handler that requeues at once, without a save. speechkit takes the signal over at the start of
its task function, saves ``checkpoint_last.pt`` like under the sbatch templates, and rank 0 then
runs ``scontrol requeue`` (here a stand-in that records its arguments; the real launcher on a
real slurm is exercised by ``tests/test_slurm_integration.py``, opt-in).
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import torch

from speechkit import preemption
from speechkit.preemption import EXIT_PREEMPTED
from tests.helpers import load_model_weights
from tests.test_preemption import _finish, _start, _wait


def _fake_scontrol(tmp_path: Path, status: int = 0) -> tuple[Path, Path]:
    """A ``scontrol`` on PATH that appends its arguments to a file; returns (bin dir, file)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nexit {status}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir, calls


def _submitit_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "1",
        **extra,
    }


def test_usr2_in_a_submitit_job_saves_then_requeues(tmp_path):
    """Before the fix USR2 went to submitit's handler: requeue at once, nothing saved."""
    bin_dir, calls = _fake_scontrol(tmp_path)
    run_dir = tmp_path / "run"
    proc = _start(
        [
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "optimization.max_update=400",
            "task.step_delay=0.05",
            "checkpoint.save_interval_updates=3",
            "dataset.num_workers=1",
            f"checkpoint.save_dir={run_dir}",
            "-m",  # a Hydra sweep, as the launcher runs it (basic launcher here); last for argparse
        ],
        tmp_path,
        _submitit_env(bin_dir),
    )
    _wait(lambda: (run_dir / "checkpoint_1_3.pt").exists(), proc)
    proc.send_signal(signal.SIGUSR2)
    status, err, _ = _finish(proc)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert calls.read_text() == "requeue 4242\n"
    last = run_dir / "checkpoint_last.pt"
    assert last.stat().st_mtime_ns <= calls.stat().st_mtime_ns  # saved before the requeue
    assert f"received signal {int(signal.SIGUSR2)}: saving checkpoint_last" in err
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["train_state"]["num_updates"] >= 3
    assert load_model_weights(last)  # a loadable model


@pytest.mark.parametrize(
    ("env", "requeued"),
    [
        ({"SLURM_RESTART_COUNT": "3", "MAX_REQUEUES": "3"}, False),  # the bound is reached
        ({"SLURM_RESTART_COUNT": "2", "MAX_REQUEUES": "3"}, True),
        ({"SLURM_PROCID": "1"}, False),  # only rank 0 requeues
        ({"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "5"}, True),
    ],
)
def test_requeue_bound_rank_and_array_job(tmp_path, monkeypatch, env, requeued):
    bin_dir, calls = _fake_scontrol(tmp_path)
    for key, value in {**_submitit_env(bin_dir), **env}.items():
        monkeypatch.setenv(key, value)
    assert preemption.requeue_slurm_job() is requeued
    if requeued:
        job = "77_5" if "SLURM_ARRAY_JOB_ID" in env else "4242"
        assert calls.read_text() == f"requeue {job}\n"
    else:
        assert not calls.exists()


def test_failed_scontrol_is_reported_not_raised(tmp_path, monkeypatch, caplog):
    bin_dir, _ = _fake_scontrol(tmp_path, status=1)
    for key, value in _submitit_env(bin_dir).items():
        monkeypatch.setenv(key, value)
    assert preemption.requeue_slurm_job() is False
    assert "scontrol requeue 4242 failed" in caplog.text


def test_take_over_replaces_submitits_handler_and_names_a_bad_signal(monkeypatch):
    def submitit_handler(signum, frame):  # stands for submitit's checkpoint_and_try_requeue
        raise AssertionError("submitit's handler ran")

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
        preemption.take_over_from_submitit()
        assert signal.getsignal(signal.SIGUSR2) is preemption._handle
        assert signal.getsignal(signal.SIGTERM) is preemption._handle
        preemption.uninstall()
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # given back
        monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "BOGUS")
        with pytest.raises(ValueError, match="SUBMITIT_PREEMPT_SIGNAL='BOGUS'"):
            preemption.take_over_from_submitit()
        monkeypatch.delenv("SUBMITIT_EXECUTOR")
        preemption.take_over_from_submitit()  # outside submitit: nothing happens
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        preemption.uninstall()
        signal.signal(signal.SIGUSR2, previous)

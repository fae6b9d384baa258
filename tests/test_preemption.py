"""Pre-emption from the first second, and no hang on any way out of ``python -m speechkit.train``.

The time bounds here are generous ceilings for "ended by itself" (each case hung forever or was
killed by the signal before the fix), not performance figures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from speechkit import preemption
from speechkit.preemption import EXIT_PREEMPTED, STATUS_FILE_ENV
from tests.helpers import REPO_ROOT, TOY, clean_env, free_port, train_cmd

ENDS_WITHIN = 60.0  # seconds; the bugs fixed here never ended at all


def _default_sigint() -> None:
    # a shell without job control starts background jobs (`pytest ... &`, nohup) with SIGINT
    # ignored, and children inherit that: give the run the default disposition a user's
    # terminal gives, so that Python installs its KeyboardInterrupt handler
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(overrides, tmp_path: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = clean_env()
    env[STATUS_FILE_ENV] = str(tmp_path / "status")
    env.update(extra_env or {})
    return subprocess.Popen(
        train_cmd(*TOY, *overrides),
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: lets the test find leftover workers
        preexec_fn=_default_sigint,
    )


def _catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` has a handler installed for ``sig`` (Linux /proc SigCgt mask)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(
        next(line for line in text.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(mask >> (sig - 1) & 1)


def _wait(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the run to reach the point under test")


def _finish(proc: subprocess.Popen) -> tuple[int, str, float]:
    """Wait for the process to end by itself; returns (status, stderr, seconds waited)."""
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=ENDS_WITHIN)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"still running {ENDS_WITHIN:.0f} s later: it hangs") from None
    return proc.returncode, err, time.time() - t0


def _assert_group_gone(pgid: int) -> None:
    """No process of the run (data workers included) outlives it by more than a few seconds."""
    end = time.time() + 10
    while time.time() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("data-loader workers outlived the main process")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_during_imports_exits_75(tmp_path, sig):
    """The handler is in place from the module's first line: a signal while torch and Hydra
    are still being imported ends the job with 75 (requeue) and writes the status file."""
    run_dir = tmp_path / "run"
    proc = _start(["optimization.max_update=5", f"checkpoint.save_dir={run_dir}"], tmp_path)
    _wait(lambda: _catches(proc.pid, sig), proc)
    proc.send_signal(sig)
    status, err, _ = _finish(proc)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert "pre-empted" in err
    assert (tmp_path / "status").read_text() == "75\n"
    assert not (run_dir / "checkpoint_last.pt").exists()  # nothing was trained, nothing saved


def test_signal_while_building_the_task_exits_75(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(
        ["task.startup_delay=30", "optimization.max_update=5", f"checkpoint.save_dir={run_dir}"],
        tmp_path,
    )
    _wait(lambda: (run_dir / "config.yaml").exists() or (run_dir / "train.log").exists(), proc)
    time.sleep(1.0)  # inside the task's start-up (sleeping in its constructor)
    proc.send_signal(signal.SIGUSR1)
    status, err, waited = _finish(proc)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert waited < 25  # it did not wait for the 30 s start-up to finish
    assert (tmp_path / "status").read_text() == "75\n"
    assert not (run_dir / "checkpoint_last.pt").exists()


def test_signal_during_training_writes_status_after_the_save(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(
        [
            "optimization.max_update=200",
            "task.step_delay=0.05",
            "checkpoint.save_interval_updates=3",
            "dataset.num_workers=2",
            f"checkpoint.save_dir={run_dir}",
        ],
        tmp_path,
    )
    _wait(lambda: (run_dir / "checkpoint_1_3.pt").exists(), proc)
    proc.send_signal(signal.SIGUSR1)
    status, err, _ = _finish(proc)
    assert status == EXIT_PREEMPTED, err[-3000:]
    assert (tmp_path / "status").read_text() == "75\n"
    assert (run_dir / "checkpoint_last.pt").stat().st_mtime_ns <= (
        tmp_path / "status"
    ).stat().st_mtime_ns
    _assert_group_gone(proc.pid)


def test_no_status_file_on_success_or_failure(tmp_path):
    proc = _start(["optimization.max_update=3", f"checkpoint.save_dir={tmp_path / 'ok'}"], tmp_path)
    status, err, _ = _finish(proc)
    assert status == 0, err[-3000:]
    proc = _start(
        ["task.crash_at_update=1", "optimization.max_update=3", f"checkpoint.save_dir={tmp_path}"],
        tmp_path,
    )
    status, err, _ = _finish(proc)
    assert status == 1, err[-3000:]
    assert "injected crash at update 1" in err
    assert not (tmp_path / "status").exists()


def test_ctrl_c_in_training_with_workers_ends_promptly(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(
        [
            "optimization.max_update=500",
            "task.step_delay=0.05",
            "checkpoint.save_interval_updates=3",
            "dataset.num_workers=2",
            f"checkpoint.save_dir={run_dir}",
        ],
        tmp_path,
    )
    _wait(lambda: (run_dir / "checkpoint_1_3.pt").exists(), proc)
    proc.send_signal(signal.SIGINT)  # to the main process only, as the reproduction
    status, err, _ = _finish(proc)
    assert status == 130, err[-3000:]
    assert "interrupted" in err
    _assert_group_gone(proc.pid)


def test_ctrl_c_in_validation_with_workers_ends_promptly(tmp_path):
    run_dir = tmp_path / "run"
    log = run_dir / "train.log"
    proc = _start(
        [
            "optimization.max_update=500",
            "task.valid_step_delay=2",  # 16 validation batches: a 32 s validation
            "dataset.validate_before_training=true",
            "dataset.num_workers=2",
            f"checkpoint.save_dir={run_dir}",
        ],
        tmp_path,
    )
    _wait(lambda: log.exists() and "task toy_regression" in log.read_text(), proc)
    time.sleep(4.0)  # the Trainer is built and the validation before training has begun
    proc.send_signal(signal.SIGINT)
    status, err, waited = _finish(proc)
    assert status == 130, err[-3000:]
    assert waited < 25  # did not wait for the validation to end
    assert "[valid]" not in log.read_text()  # interrupted inside the validation
    _assert_group_gone(proc.pid)


def test_nan_stop_with_workers_ends_promptly(tmp_path):
    proc = _start(
        [
            "optimization.max_update=500",
            "task.nan_after=2",
            "common.max_nonfinite_steps=3",
            "dataset.num_workers=2",
            f"checkpoint.save_dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    status, err, _ = _finish(proc)
    assert status == 1, err[-3000:]
    assert "consecutive updates had a NaN/inf loss" in err
    _assert_group_gone(proc.pid)


def test_a_crashed_rank_brings_every_rank_down(tmp_path):
    """Two gloo ranks started without a launcher that would kill the survivor (srun without
    --kill-on-bad-exit): rank 1 crashes, rank 0 must not wait in its all-reduce for the 30-minute
    process-group timeout."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = clean_env()
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                train_cmd(
                    *TOY,
                    "optimization.max_update=200",
                    "task.crash_at_update=4",
                    "task.crash_rank=1",
                    "dataset.num_workers=1",
                    "distributed.world_size=2",
                    f"checkpoint.save_dir={tmp_path / 'run'}",
                ),
                cwd=REPO_ROOT,
                env=env,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    results = [_finish(p) for p in procs]
    assert results[1][0] == 1, results[1][1][-3000:]
    assert "injected crash at update 4 on rank 1" in results[1][1]
    assert results[0][0] not in (0, EXIT_PREEMPTED), results[0][1][-3000:]
    for p in procs:
        _assert_group_gone(p.pid)


def test_deferred_mode_records_instead_of_raising():
    """In-process: outside ``deferred()`` the handler raises ``Preempted``; inside, it records;
    uninstalling restores the handlers that were there before."""
    before = signal.getsignal(signal.SIGUSR1)
    preemption.uninstall()
    preemption.install()
    try:
        assert _catches(os.getpid(), signal.SIGUSR1)
        with pytest.raises(preemption.Preempted):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)  # the handler runs between bytecodes, right after the kill
        preemption.clear()
        with preemption.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert preemption.received() == signal.SIGTERM
    finally:
        preemption.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before
    assert preemption.received() is None

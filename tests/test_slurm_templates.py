"""The sbatch templates under a fake slurm: fake ``srun``/``scontrol`` first on PATH, SLURM_* set.

No slurm is needed: the fake ``srun`` records its arguments and plays one outcome (success, a
failure, a pre-emption where srun reports 143 although the ranks left with 75 after saving, or
waiting for a signal), the fake ``scontrol`` records ``requeue`` calls and answers
``show job`` with the submitted script's path. The real-slurm counterpart is
tests/test_slurm_integration.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

TEMPLATES = ["train_cpu.sbatch", "train_single_node.sbatch", "train_multi_node.sbatch"]

FAKE_SRUN = r"""#!/bin/bash
printf '%s\n' "$@" > "$FAKE_DIR/srun.args"
printf '%s\n' "$SPEECHKIT_STATUS_FILE" > "$FAKE_DIR/status_path"
case "$FAKE_SRUN" in
    ok) exit 0 ;;
    fail) exit 1 ;;
    preempt143) printf '75\n' > "$SPEECHKIT_STATUS_FILE"; exit 143 ;;
    exit75) exit 75 ;;
    wait)
        trap 'echo USR1 >> "$FAKE_DIR/srun.signals"; printf "75\n" > "$SPEECHKIT_STATUS_FILE"; exit 143' USR1
        trap 'echo TERM >> "$FAKE_DIR/srun.signals"; exit 143' TERM
        touch "$FAKE_DIR/srun.started"
        while :; do sleep 0.02; done ;;
esac
"""

FAKE_SCONTROL = r"""#!/bin/bash
case "$1" in
    requeue) echo "requeue $2" >> "$FAKE_DIR/scontrol.log" ;;
    show) [ -n "${FAKE_COMMAND:-}" ] && echo "JobId=$4 JobName=x Command=$FAKE_COMMAND WorkDir=/x" ;;
esac
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    """A fake slurm: bin dir with srun/scontrol, a submit dir outside the repo, SLURM_* env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    submit = tmp_path / "submit"
    submit.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SPEECHKIT_"))}
    env.pop("MAX_REQUEUES", None)
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        FAKE_DIR=str(tmp_path),
        FAKE_SRUN="ok",
        SLURM_JOB_ID="4242",
        SLURM_NTASKS="2",
        SLURM_SUBMIT_DIR=str(submit),
        SLURM_JOB_NODELIST="node1",
        SPEECHKIT_PYTHON=sys.executable,
    )

    class Fake:
        dir = tmp_path
        submit_dir = submit

        def run(self, *args, template="train_cpu.sbatch", script=None, timeout=30, **extra):
            e = dict(env, **extra)
            return subprocess.run(
                ["bash", str(script or REPO_ROOT / "slurm" / template), *args],
                cwd=submit,
                env=e,
                capture_output=True,
                text=True,
                timeout=timeout,
            )

        def popen(self, *args, **extra):
            return subprocess.Popen(
                ["bash", str(REPO_ROOT / "slurm" / "train_cpu.sbatch"), *args],
                cwd=submit,
                env=dict(env, **extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        def srun_args(self) -> list[str] | None:
            p = tmp_path / "srun.args"
            return p.read_text().splitlines() if p.exists() else None

        def train_args(self) -> list[str]:
            args = self.srun_args()
            assert args is not None, "srun was not called"
            i = args.index("speechkit.train")
            assert args[i - 2 : i] == [sys.executable, "-m"]
            return args[i + 1 :]

        def requeues(self) -> list[str]:
            p = tmp_path / "scontrol.log"
            return p.read_text().splitlines() if p.exists() else []

    return Fake()


@pytest.mark.parametrize("template", TEMPLATES)
def test_refuses_world_size_that_disagrees_with_ntasks(fake, template):
    r = fake.run("task=x", "distributed.world_size=4", template=template)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "distributed.world_size=4" in lines[0] and "SLURM_NTASKS=2" in lines[0]
    assert fake.srun_args() is None  # refused before srun


def test_passes_user_arguments_unchanged(fake):
    user = ["task=toy", "optimization.lr=[0.1]", "common.seed=3 ", "distributed.world_size=2"]
    r = fake.run(*user)
    assert r.returncode == 0, r.stderr
    assert fake.train_args() == user  # nothing appended, nothing reordered
    assert fake.requeues() == []


def test_appends_world_size_check_when_not_given(fake):
    r = fake.run("task=toy", "checkpoint.save_dir=runs/a b")
    assert r.returncode == 0, r.stderr
    assert fake.train_args() == [
        "task=toy",
        "checkpoint.save_dir=runs/a b",
        "distributed.world_size=2",
    ]


def test_requeues_when_status_file_says_75_although_srun_returned_143(fake):
    stale = fake.submit_dir / ".speechkit-status.4242.1"
    stale.write_text("75\n")  # left by an earlier try: must not count for this one
    r = fake.run("task=toy", FAKE_SRUN="preempt143", SLURM_RESTART_COUNT="1")
    assert r.returncode == 0, r.stderr
    assert fake.requeues() == ["requeue 4242"]
    status_path = Path((fake.dir / "status_path").read_text().strip())
    assert status_path == stale  # per job and restart, in the submit dir
    assert not status_path.exists()  # read and removed


def test_requeues_when_srun_itself_returns_75(fake):
    r = fake.run("task=toy", FAKE_SRUN="exit75")
    assert r.returncode == 0, r.stderr
    assert fake.requeues() == ["requeue 4242"]


def test_plain_failure_is_not_requeued(fake):
    r = fake.run("task=toy", FAKE_SRUN="fail")
    assert r.returncode == 1
    assert fake.requeues() == []
    assert "not requeueing" in r.stderr


def test_stale_status_file_of_a_failed_step_is_ignored(fake):
    (fake.submit_dir / ".speechkit-status.4242.0").write_text("75\n")
    r = fake.run("task=toy", FAKE_SRUN="fail")
    assert r.returncode == 1
    assert fake.requeues() == []


def test_stops_requeueing_past_max_requeues(fake):
    r = fake.run("task=toy", FAKE_SRUN="preempt143", SLURM_RESTART_COUNT="3", MAX_REQUEUES="3")
    assert r.returncode == 75
    assert fake.requeues() == []
    assert "MAX_REQUEUES=3" in r.stderr
    r = fake.run("task=toy", FAKE_SRUN="preempt143", SLURM_RESTART_COUNT="2", MAX_REQUEUES="3")
    assert r.returncode == 0
    assert fake.requeues() == ["requeue 4242"]


def test_runs_from_a_spool_copy_and_a_submit_dir_outside_the_repo(fake):
    # sbatch runs a copy of the script from its spool directory; the repository is found
    # from the submitted script's path that scontrol reports.
    spool = fake.dir / "spool" / "job4242"
    spool.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "slurm" / "train_cpu.sbatch", spool / "slurm_script")
    r = fake.run(
        "task=toy",
        script=spool / "slurm_script",
        FAKE_COMMAND=str(REPO_ROOT / "slurm" / "train_cpu.sbatch"),
    )
    assert r.returncode == 0, r.stderr
    assert fake.train_args() == ["task=toy", "distributed.world_size=2"]
    assert f"repo {REPO_ROOT}" in r.stdout
    # SPEECHKIT_ROOT overrides the search
    r = fake.run("task=toy", script=spool / "slurm_script", SPEECHKIT_ROOT=str(REPO_ROOT))
    assert r.returncode == 0, r.stderr


def test_fails_early_with_one_line_when_repo_or_venv_missing(fake):
    spool = fake.dir / "spool"
    spool.mkdir()
    shutil.copy(REPO_ROOT / "slurm" / "train_cpu.sbatch", spool / "slurm_script")
    r = fake.run("task=toy", script=spool / "slurm_script")  # no Command=, submit dir outside
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "SPEECHKIT_ROOT" in r.stderr
    r = fake.run("task=toy", SPEECHKIT_PYTHON=str(fake.dir / "nope" / "python"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "nope/python" in r.stderr
    assert fake.srun_args() is None


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_batch_shell_forwards_signals_to_the_step(fake, sig):
    # `scancel --batch -s USR1` signals only the batch shell; pre-emption sends TERM to it.
    # Either must reach the step as USR1 (srun turns a TERM into SIGKILL for its tasks).
    proc = fake.popen("task=toy", FAKE_SRUN="wait")
    try:
        deadline = time.monotonic() + 20
        while not (fake.dir / "srun.started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "fake srun did not start"
            time.sleep(0.01)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (fake.dir / "srun.signals").read_text().split() == ["USR1"]
    assert fake.requeues() == ["requeue 4242"]
    assert f"got SIG{sig.name[3:]}" in out

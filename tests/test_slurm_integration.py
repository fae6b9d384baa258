"""Real slurm: the CPU template (2 tasks, gloo) pre-empted in every way, resumed bit-identically.

Environment-bound: needs a running slurm whose jobs can reach this repository and the pytest
temporary directory (the one-node cluster of ``slurm/local_cluster.sh``: run it as root first;
it provides partitions ``debug`` and ``urgent`` for the partition pre-emption case). Opt-in, like
the real-fairseq tests: they run only with ``SPEECHKIT_SLURM_TESTS=1`` and then fail (never skip)
when ``sbatch`` is missing or the controller does not answer. Having the slurm packages installed
is not enough, since a machine can carry them without running the daemons. Run by hand::

    sudo slurm/local_cluster.sh
    SPEECHKIT_SLURM_TESTS=1 .venv/bin/pytest -q -p no:cacheprovider tests/test_slurm_integration.py
    SPEECHKIT_SLURM_ROUNDS=3 SPEECHKIT_SLURM_TESTS=1 .venv/bin/pytest ...   # every sequence 3 times

Each case submits ``slurm/train_cpu.sbatch`` from a directory outside the repository on the toy
task, interrupts it (``scancel -s USR1``, ``scancel --batch -s USR1``, ``scancel --full -s
USR1``, a USR1 while the processes start up, the template's time-limit signal, a higher-priority
job in partition ``urgent``), waits for the requeue (a requeued job is held ~2 minutes by slurm;
the test releases it with ``scontrol update StartTime=now``), and finally compares the weights
of ``checkpoint_last.pt`` with an uninterrupted 2-task run: they must be bit-identical.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, TOY, load_model_weights

OPT_IN = os.environ.get("SPEECHKIT_SLURM_TESTS") == "1"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not OPT_IN,
        reason="real-slurm tests are opt-in: start slurm/local_cluster.sh and set "
        "SPEECHKIT_SLURM_TESTS=1 (see module doc)",
    ),
]

TEMPLATE = REPO_ROOT / "slurm" / "train_cpu.sbatch"
MAX_UPDATE = 64  # 8 updates per epoch on 2 ranks: 8 epochs, a checkpoint at every epoch end
ROUNDS = int(os.environ.get("SPEECHKIT_SLURM_ROUNDS", "1"))
TERMINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
)


def _sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module", autouse=True)
def slurm_up():
    if shutil.which("sbatch") is None:
        pytest.fail("SPEECHKIT_SLURM_TESTS=1 but sbatch is not on PATH; install slurm-client")
    try:
        out = _sh("sinfo", "-h", "-o", "%P %T")
    except subprocess.CalledProcessError as e:
        pytest.fail(
            f"slurm does not answer ({e.stderr.strip()}); run slurm/local_cluster.sh as root"
        )
    assert "idle" in out or "mix" in out or "alloc" in out, out


class Job:
    """One submitted template run: its id, directory, output file and scheduler state."""

    def __init__(self, root: Path, *sbatch_args: str, step_delay: float = 0.15):
        self.root = root
        self.run_dir = root / "run"
        root.mkdir(parents=True, exist_ok=True)
        overrides = [
            *TOY,
            f"optimization.max_update={MAX_UPDATE}",
            f"task.step_delay={step_delay}",
            "dataset.num_workers=1",
            f"checkpoint.save_dir={self.run_dir}",
        ]
        self.id = (
            _sh(
                "sbatch",
                "--parsable",
                f"--output={root}/slurm-%j.out",
                *sbatch_args,
                str(TEMPLATE),
                *overrides,
            )
            .strip()
            .split(";")[0]
        )
        self.out = root / f"slurm-{self.id}.out"
        self.restarts_seen = 0
        self.release_holds = True  # release slurm's ~2 min hold of a requeued job while waiting

    def info(self) -> dict[str, str]:
        text = _sh("scontrol", "show", "job", "-o", self.id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def log(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def current_log(self) -> str:
        """The output of the current try (the file is appended across requeues)."""
        text = self.log()
        marker = f"speechkit-slurm: job {self.id} restart {self.restarts_seen}/"
        i = text.rfind(marker)
        return text[i:] if i >= 0 else ""

    def fail(self, what: str) -> None:
        pytest.fail(
            f"job {self.id}: {what}; state {self.info().get('JobState')}\n{self.log()[-6000:]}"
        )

    def wait(self, predicate, what: str, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.release_holds:
                self.release()
            if predicate():
                return
            state = self.info().get("JobState", "")
            if state in TERMINAL and not predicate():
                self.fail(f"ended while waiting for {what}")
            time.sleep(0.2)
        self.fail(f"timed out waiting for {what}")

    def wait_training(self) -> None:
        """Until the current try has saved a checkpoint (so it resumed and made progress)."""
        self.wait(lambda: "saved " in self.current_log(), "a checkpoint save in this try")

    def wait_step_started(self) -> None:
        """Until the srun step of the current try exists (Python is importing/starting)."""

        def started() -> bool:
            if not self.current_log():
                return False
            steps = _sh("squeue", "-h", "-s", "-j", self.id, "-o", "%i", check=False).split()
            return f"{self.id}.0" in steps

        self.wait(started, "the srun step to start", timeout=120)

    def wait_handlers_installed(self) -> None:
        """Until both ranks' processes (this host) catch SIGUSR1: speechkit installed its handler.

        That happens first thing in ``speechkit.train``, seconds before torch, Hydra, the data
        and the model are loaded, so a signal sent now lands in the start-up phase.
        """

        def installed() -> bool:
            n = 0
            for proc in Path("/proc").iterdir():
                try:
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                    if b"speechkit.train" not in cmd or str(self.run_dir).encode() not in b" ".join(
                        cmd
                    ):
                        continue
                    caught = re.search(r"SigCgt:\s*([0-9a-f]+)", (proc / "status").read_text())
                except OSError:
                    continue
                n += bool(caught and int(caught.group(1), 16) >> (10 - 1) & 1)
            return n >= 2

        self.wait(installed, "both ranks to install their signal handlers", timeout=120)

    def wait_requeued(self, release: bool = True) -> None:
        """Until slurm counts one more restart; release the ~2 min BeginTime hold of a requeue."""
        want = self.restarts_seen + 1
        self.wait(
            lambda: int(self.info().get("Restarts", 0)) >= want, f"restart {want}", timeout=180
        )
        self.restarts_seen = want
        if release:
            self.release()

    def release(self) -> None:
        info = self.info()
        if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
            _sh("scontrol", "update", f"jobid={self.id}", "StartTime=now", check=False)

    def wait_completed(self, timeout: float = 300) -> None:
        def done() -> bool:
            return self.info().get("JobState") == "COMPLETED"

        self.wait(done, "COMPLETED", timeout=timeout)


def _preempt(job: Job, kind: str, tmp_path: Path) -> None:
    if kind == "startup":
        job.wait_step_started()
        job.wait_handlers_installed()
        _sh("scancel", "-s", "USR1", job.id)
    elif kind == "usr1":
        job.wait_training()
        _sh("scancel", "-s", "USR1", job.id)
    elif kind == "batch":
        job.wait_training()
        _sh("scancel", "--batch", "-s", "USR1", job.id)
    elif kind == "full":
        job.wait_training()
        _sh("scancel", "--full", "-s", "USR1", job.id)
    elif kind == "partition":
        job.wait_training()
        # a job in the higher-priority partition takes every CPU: slurm pre-empts ours
        # (PreemptMode=REQUEUE, GraceTime): its steps get SIGTERM
        _sh(
            "sbatch",
            "--parsable",
            "-p",
            "urgent",
            "-n",
            "2",
            f"--output={tmp_path}/urgent-%j.out",
            "--wrap",
            "sleep 1",
        )
    else:
        raise ValueError(kind)
    job.wait_requeued()


def _assert_same_weights(run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    got = load_model_weights(run_dir / "checkpoint_last.pt")
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), k


def _sacct_states(job_id: str) -> list[str] | None:
    """Every try's state from accounting, once slurmdbd has recorded the last try's end."""
    if shutil.which("sacct") is None:
        return None
    states: list[str] = []
    end = time.monotonic() + 60
    while time.monotonic() < end:
        out = _sh("sacct", "-n", "-X", "--duplicates", "-j", job_id, "-o", "State", check=False)
        states = out.split()
        if states and states[-1] in TERMINAL:
            break
        time.sleep(0.5)
    return states or None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """An uninterrupted 2-task run of the template: it completes; its final weights."""
    job = Job(tmp_path_factory.mktemp("slurm_reference"), step_delay=0.0)
    job.wait_completed()
    log = job.log()
    assert "done: 64 updates" in log, log[-3000:]
    assert "2 process(es) via slurm" in log
    return load_model_weights(job.run_dir / "checkpoint_last.pt")


def test_completes(reference):
    assert reference  # the fixture's run completed with 64 updates on 2 slurm tasks


SEQUENCES = {
    "usr1-batch-full": ["usr1", "batch", "full"],
    "startup-usr1-batch": ["startup", "usr1", "batch"],
    "partition-batch-usr1": ["partition", "batch", "usr1"],
}


@pytest.mark.parametrize("round_", range(ROUNDS))
@pytest.mark.parametrize("name", list(SEQUENCES))
def test_preempted_and_requeued_resumes_bit_identical(reference, tmp_path, name, round_):
    kinds = SEQUENCES[name]
    job = Job(tmp_path / "job")
    for kind in kinds:
        _preempt(job, kind, tmp_path)
    job.wait_completed()
    log = job.log()
    assert log.count("speechkit-slurm: pre-empted") == len(kinds), log[-4000:]
    assert f"done: {MAX_UPDATE} updates" in log
    _assert_same_weights(job.run_dir, reference)
    states = _sacct_states(job.id)
    if states is not None:  # accounting configured: one REQUEUED row per pre-emption
        assert states == ["REQUEUED"] * len(kinds) + ["COMPLETED"], states
    print(f"slurm pre-emptions requeued+resumed bit-identically: {len(kinds)} ({','.join(kinds)})")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_time_limit_signal_requeues(reference, tmp_path, round_):
    # a 2-minute limit with the signal 100 s before it: USR1 arrives 0-20 s after the start
    # (slurm checks time limits about every 30-60 s), well before the ~40 s of training end.
    job = Job(tmp_path / "job", "--time=2", "--signal=USR1@100", step_delay=0.6)
    job.release_holds = False
    job.wait_requeued(release=False)
    # the requeued try gets the same limit; give it room, as a resubmission would
    _sh("scontrol", "update", f"jobid={job.id}", "TimeLimit=15")
    job.release_holds = True
    job.wait_completed(timeout=400)
    log = job.log()
    assert "speechkit-slurm: pre-empted" in log
    _assert_same_weights(job.run_dir, reference)
    print("slurm pre-emptions requeued+resumed bit-identically: 1 (timelimit)")


class SubmititJob(Job):
    """One run through the Hydra submitit launcher (``-m hydra/launcher=...``) on 2 tasks.

    The launcher process waits for the job's result; the job's rank-0 log is submitit's
    ``<job>_0_log.err`` (appended across requeues, ``open-mode=append`` in the preset).
    """

    def __init__(self, root: Path, step_delay: float = 0.15):
        self.root = root
        self.run_dir = root / "run"
        root.mkdir(parents=True, exist_ok=True)
        name = f"sk-{root.parent.name}"[:60]
        env = dict(os.environ)
        # the job unpickles the task function and the user module (common.user_dir)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
        self.launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "speechkit.train",
                *TOY,
                f"optimization.max_update={MAX_UPDATE}",
                f"task.step_delay={step_delay}",
                "dataset.num_workers=1",
                f"checkpoint.save_dir={self.run_dir}",
                "hydra/launcher=submitit_slurm_speechkit",
                "hydra.launcher.partition=debug",
                "hydra.launcher.gpus_per_node=null",
                "hydra.launcher.tasks_per_node=2",
                "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.timeout_min=30",
                f"hydra.launcher.name={name}",
                f"hydra.sweep.dir={root / 'sweep'}",
                "-m",
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        end = time.monotonic() + 60
        self.id = ""
        while not self.id and time.monotonic() < end:
            self.id = _sh("squeue", "-h", "-n", name, "-o", "%i", check=False).strip()
            if self.launcher.poll() is not None:
                pytest.fail(
                    f"the launcher ended before its job was seen:\n{self.launcher.stdout.read()}"
                )
            time.sleep(0.2)
        if not self.id:
            pytest.fail("no submitit job appeared in squeue within 60 s")
        self.out = root / "sweep" / ".submitit" / self.id / f"{self.id}_0_log.err"
        self.restarts_seen = 0
        self.release_holds = True

    def current_log(self) -> str:
        tries = self.log().split("speechkit.train | task ")  # rank 0's first line of each try
        return tries[self.restarts_seen + 1] if len(tries) > self.restarts_seen + 1 else ""

    def launcher_output(self) -> str:
        out, _ = self.launcher.communicate(timeout=120)
        return out


def test_submitit_launcher_preempted_and_requeued_resumes_bit_identical(reference, tmp_path):
    """submitit's own signal (USR2, by hand here) and a partition pre-emption (SIGTERM): each
    time speechkit saves, rank 0 requeues, and the final weights equal the template's run."""
    job = SubmititJob(tmp_path / "job")
    job.wait_training()
    _sh("scancel", "-s", "USR2", job.id)
    job.wait_requeued()
    _preempt(job, "partition", tmp_path)
    job.wait_completed()
    assert job.launcher_output() is not None and job.launcher.returncode == 0
    log = job.log()
    assert log.count("exiting with status 75 for requeue") == 2, log[-4000:]
    assert f"done: {MAX_UPDATE} updates" in log
    _assert_same_weights(job.run_dir, reference)
    print("submitit pre-emptions requeued+resumed bit-identically: 2 (usr2,partition)")

"""Pre-emption signals (SIGUSR1 / SIGTERM) from the first second of a job to its last.

slurm sends SIGUSR1 (``--signal=USR1@180``) or SIGTERM (pre-emption, ``scancel``) to every task
of a job step. A job that dies from such a signal is marked FAILED and never requeued, so
``python -m speechkit.train`` installs these handlers before it imports torch or reads any data:

* **before training** (imports, config, data checks, model build, resuming): the handler raises
  :class:`Preempted` at once; nothing new has been trained, so nothing is saved and the process
  exits with :data:`EXIT_PREEMPTED` (the checkpoint it resumed from, if any, stays as it was);
* **while training** (:func:`deferred`, entered by the Trainer): the handler only records the
  signal; every rank finishes its update, rank 0 saves ``checkpoint_last.pt`` and all ranks exit
  with :data:`EXIT_PREEMPTED`.

A launcher cannot always trust the exit status it sees: ``srun --kill-on-bad-exit=1`` takes the
first rank's 75 for a failure and kills the ranks still shutting down (``srun`` then returns 143).
When ``SPEECHKIT_STATUS_FILE`` is set, a process leaving with status 75 first writes ``75`` to
that file (rank 0 after ``checkpoint_last.pt`` is on disk), and the sbatch templates requeue on
the file rather than on ``srun``'s status.

Under the Hydra submitit launcher (``SUBMITIT_EXECUTOR=slurm``) the job process is submitit's,
which binds its own handlers before speechkit runs: its rank-0 handler requeues the job at once,
without a save, and the other ranks then die in their next collective. :func:`take_over_from_submitit`
puts speechkit's handler on submitit's pre-emption signal (``$SUBMITIT_PREEMPT_SIGNAL``, USR2 by
default) as well, so the job saves like any other, and :func:`requeue_slurm_job` lets rank 0
requeue it afterwards (``scontrol requeue``, at most ``$MAX_REQUEUES`` times, as the templates).

This module imports only the standard library so it can be installed before anything else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

EXIT_PREEMPTED = 75
"""Exit status after a pre-emption signal (EX_TEMPFAIL): requeue the job to resume it."""

STATUS_FILE_ENV = "SPEECHKIT_STATUS_FILE"
"""Environment variable naming the file a pre-empted process writes its exit status to."""

SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGTERM") if hasattr(signal, name))

MAX_REQUEUES_ENV = "MAX_REQUEUES"
"""Environment variable bounding the requeues of one job (as in ``slurm/launch.sh``)."""

DEFAULT_MAX_REQUEUES = 20

logger = logging.getLogger("speechkit.preemption")


class Preempted(BaseException):
    """The job was asked to stop (SIGUSR1 / SIGTERM) and should be requeued.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` on the way,
    in speechkit or a library (Hydra's error reporting included), can swallow it.
    """


class _State:
    signum: int | None = None
    deferred: bool = False
    leaving: bool = False  # requeued: slurm is ending this process, say nothing more
    installed: bool = False
    previous: dict = {}


_state = _State()


def _handle(signum: int, _frame: object) -> None:
    _state.signum = signum
    if _state.leaving:
        return
    if not _state.deferred:
        raise Preempted(f"signal {signum} before training started; nothing new to save")
    logger.warning("received signal %d: saving checkpoint_last after this update", signum)


def install(extra: tuple[signal.Signals, ...] = ()) -> None:
    """Install the handler for SIGUSR1/SIGTERM and ``extra`` (idempotent; main thread only;
    no-op on Windows). A signal whose handler someone else replaced is taken back."""
    if not SIGNALS:
        return
    for sig in (*SIGNALS, *extra):
        if signal.getsignal(sig) is not _handle:
            _state.previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, _handle)
    _state.installed = True


def under_submitit() -> bool:
    """True inside a job of the submitit slurm executor (the Hydra submitit launcher's)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def take_over_from_submitit() -> None:
    """Inside a submitit slurm job: handle submitit's pre-emption signal and SIGTERM/SIGUSR1
    with speechkit's handler instead of submitit's (no-op elsewhere).

    Raises:
        ValueError: ``$SUBMITIT_PREEMPT_SIGNAL`` names no signal.
    """
    if not under_submitit():
        return
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, f"SIG{name}", None)
    if sig is None:
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal name (e.g. USR2)")
    install((sig,))


def requeue_slurm_job() -> bool:
    """Rank 0 of a slurm job requeues it (``scontrol requeue``); True when requeued.

    Only global rank 0 (``$SLURM_PROCID``) acts, and only while ``$SLURM_RESTART_COUNT`` is
    below ``$MAX_REQUEUES`` (default 20). slurm then ends every task of the job and starts it
    again, which resumes from ``checkpoint_last.pt``. Failures are logged, never raised.
    """
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return False
    array_job, array_task = (
        os.environ.get("SLURM_ARRAY_JOB_ID"),
        os.environ.get("SLURM_ARRAY_TASK_ID"),
    )
    job = (
        f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
    )
    if not job:
        logger.error("pre-empted, but SLURM_JOB_ID is not set: cannot requeue")
        return False
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    limit = int(os.environ.get(MAX_REQUEUES_ENV) or DEFAULT_MAX_REQUEUES)
    if restarts >= limit:
        logger.error(
            "job %s already requeued %d times (%s=%d): not requeued again",
            job,
            restarts,
            MAX_REQUEUES_ENV,
            limit,
        )
        return False
    import subprocess

    # from here on slurm's SIGTERM to the requeued job's steps is expected: only record it
    _state.leaving = True
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.error("scontrol requeue %s failed: %s", job, e)
        return False
    if done.returncode != 0:
        logger.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
        return False
    logger.warning("requeued job %s (restart %d of at most %d)", job, restarts + 1, limit)
    return True


def install_exit_hook() -> None:
    """Make an uncaught :class:`Preempted` end the process with :data:`EXIT_PREEMPTED`.

    For a command-line process: a signal while modules are still being imported raises where
    no ``try`` can catch it. The hook prints one line, writes the status file and leaves with
    ``os._exit`` (data workers, if any, are left to notice their parent is gone); other
    exceptions go to the previous hook.
    """
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # type: ignore[no-untyped-def]
        if not issubclass(exc_type, Preempted):
            previous(exc_type, exc, tb)
            return
        print(
            f"speechkit: pre-empted ({exc}); exiting with status {EXIT_PREEMPTED}", file=sys.stderr
        )
        write_status_file(EXIT_PREEMPTED)
        sys.stderr.flush()
        os._exit(EXIT_PREEMPTED)

    sys.excepthook = hook


def uninstall() -> None:
    """Restore the handlers found by :func:`install` and forget any recorded signal."""
    if _state.installed:
        for sig, handler in _state.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    _state.previous = {}
    _state.installed = False
    _state.leaving = False
    _state.deferred = False
    _state.signum = None


def received() -> int | None:
    """The signal number received so far, or None."""
    return _state.signum


def clear() -> None:
    """Forget a recorded signal (a fresh Trainer in the same process starts clean)."""
    _state.signum = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside this block a signal is only recorded (see :func:`received`), never raised.

    Installs the handlers when they are not yet (a Trainer used from Python); on leaving, the
    previous mode is restored, and handlers installed here are removed again.
    """
    installed_here = not _state.installed
    install()
    previous = _state.deferred
    _state.deferred = True
    try:
        yield
    finally:
        _state.deferred = previous
        if installed_here:
            uninstall()


def write_status_file(status: int) -> None:
    """Write ``status`` to ``$SPEECHKIT_STATUS_FILE`` atomically (no-op when it is unset).

    Errors are logged, never raised: the process is on its way out.
    """
    path = os.environ.get(STATUS_FILE_ENV)
    if not path:
        return
    try:
        from speechkit.atomic import atomic_write_text

        atomic_write_text(path, f"{status}\n")
    except OSError as e:
        print(f"speechkit: warning: cannot write status file {path}: {e}", file=sys.stderr)

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

logger = logging.getLogger("speechkit.preemption")


class Preempted(BaseException):
    """The job was asked to stop (SIGUSR1 / SIGTERM) and should be requeued.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` on the way,
    in speechkit or a library (Hydra's error reporting included), can swallow it.
    """


class _State:
    signum: int | None = None
    deferred: bool = False
    installed: bool = False
    previous: dict = {}


_state = _State()


def _handle(signum: int, _frame: object) -> None:
    _state.signum = signum
    if not _state.deferred:
        raise Preempted(f"signal {signum} before training started; nothing new to save")
    logger.warning("received signal %d: saving checkpoint_last after this update", signum)


def install() -> None:
    """Install the SIGUSR1/SIGTERM handlers (idempotent; main thread only; no-op on Windows)."""
    if _state.installed or not SIGNALS:
        return
    _state.previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    _state.installed = True


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
    _state.installed = False
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

"""Checkpoint files: atomic writes, safe loading, last/best/numbered files and retention.

Layout of a run directory (``checkpoint.save_dir``)::

    checkpoint_last.pt          newest state (what a restarted or requeued job resumes from)
    checkpoint_best.pt          state with the best validation metric so far
    checkpoint_<E>_<U>.pt       numbered snapshots (epoch E, update U); the newest N are kept

A checkpoint is written once, to ``checkpoint_last.pt`` (temporary file, fsync, ``os.replace``,
fsync of the folder), and the other names are hard links to the same inode made with the same
link-then-rename dance (copies where the file system has no hard links). A crash at any moment
leaves every name pointing at a complete file: the old one or the new one; the temporary file
of a killed write (``.checkpoint_last.pt.tmp-<pid>-<id>``) is removed by the next run's writer.

A state whose model or criterion tensors are not all finite (a NaN that reached the weights or
the BatchNorm statistics) is never written: the previous files stay, and nothing is pruned.

Loading uses ``torch.load(weights_only=True)``: speechkit checkpoints hold only tensors and plain
containers, so a file carrying a pickled object (a malicious ``__reduce__``) is refused with
``CheckpointError`` instead of being executed. An empty, truncated or foreign file is reported as
such (``CorruptCheckpointError``), so that auto-resume can fall back to an older checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

from speechkit.atomic import TEMPORARY_NAME, atomic_link, atomic_open, format_bytes
from speechkit.errors import CheckpointError, ConfigError

logger = logging.getLogger("speechkit.checkpoint")

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
_NUMBERED = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")
_PROCESS_START = time.time()
"""Temporaries older than this process cannot belong to one of its writes."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint file is empty, truncated, damaged or not a torch checkpoint at all (as
    opposed to a readable file that is refused as unsafe or has the wrong layout)."""


def state_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a nested container (the bulk of its ``torch.save`` size)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(state_nbytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    Raises:
        OutputError: the folder is not writable or the disk is full (``path`` is then untouched,
            no temporary is left; the message gives the state's size and the free space).
    """
    with atomic_open(path, "wb", size_hint=state_nbytes(obj)) as f:
        torch.save(obj, f)


def _describe_head(head: bytes) -> str:
    text = head.decode("utf-8", errors="replace")
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        return f"it looks like text: {text[:40]!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a speechkit checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, or holds anything but tensors and plain
            containers (such a pickle is refused, never executed).
        CorruptCheckpointError: the file is empty, truncated (an incomplete zip archive), damaged,
            or not a torch checkpoint at all (neither a zip archive nor a legacy torch pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    expected = "expected a file written by torch.save (a zip archive)"
    if size == 0:
        raise CorruptCheckpointError(
            f"cannot read checkpoint {path}: the file is empty (0 bytes), e.g. an interrupted "
            f"copy or a full disk; {expected}"
        )
    is_zip = head.startswith(b"PK\x03\x04")
    is_legacy_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not is_zip and not is_legacy_pickle:
        raise CorruptCheckpointError(
            f"cannot read checkpoint {path}: not a torch checkpoint ({size} bytes; "
            f"{_describe_head(head)}); {expected}"
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(
            f"cannot read checkpoint {path}: truncated or damaged ({format_bytes(size)}, the zip "
            f"archive has no central directory: the write or copy did not finish); {expected}"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        unsafe = [ln for ln in lines if "GLOBAL" in ln or "global" in ln]
        if not unsafe:
            first = lines[0] if lines else type(e).__name__
            raise CorruptCheckpointError(
                f"cannot read checkpoint {path}: its pickle is damaged ({first}); {expected}"
            ) from None
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain "
            f"containers, which could execute code ({unsafe[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptCheckpointError(
            f"cannot read checkpoint {path}: damaged or truncated ({reason}); {expected}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} is not a speechkit checkpoint (top level {type(obj).__name__})"
        )
    return obj


def nonfinite_tensors(state: dict, sections: tuple[str, ...] = ("model", "criterion")) -> list:
    """Names (``section.key``) of the floating-point tensors of ``state[section]`` holding a NaN
    or an infinity; one device synchronisation in all."""
    names, flags = [], []
    for section in sections:
        part = state.get(section)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if torch.is_tensor(value) and value.is_floating_point() and value.numel():
                names.append(f"{section}.{key}")
                flags.append(torch.isfinite(value).all())
    if not flags:
        return []
    ok = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return [n for n, good in zip(names, ok) if not good]


def check_save_dir(save_dir: str | os.PathLike) -> Path:
    """Make sure ``checkpoint.save_dir`` exists and is writable, before any work is done.

    Creates the folder (and its parents), then creates and removes a small temporary file in it.

    Returns:
        The folder.

    Raises:
        ConfigError: the folder cannot be created (a parent is a regular file, permissions) or
            written (read-only file system or folder); the message names the path and the reason.
    """
    path = Path(save_dir)
    what = f"checkpoint.save_dir={path}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: is a regular file; expected a writable folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(
                f"{what}: cannot create the folder: {blocker} is a regular file; expected a "
                "writable folder"
            ) from None
        raise ConfigError(
            f"{what}: cannot create the folder ({e.strerror or e}); expected a writable folder"
        ) from None
    probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise ConfigError(
            f"{what}: cannot write in the folder ({e.strerror or e}); expected a writable folder"
        ) from None
    return path


def check_weights_match(
    module: torch.nn.Module,
    weights: dict,
    path: str | os.PathLike,
    saved_name: str | None,
    run_name: str | None,
    what: str = "model",
) -> None:
    """Refuse, in one line, weights that ``module.load_state_dict`` would refuse with a long
    ``RuntimeError``: missing or unexpected keys, or tensors of another shape.

    Args:
        module: the module the run built. weights: the checkpoint's state dict for it.
        path: the checkpoint (for the message). saved_name / run_name: the registry names of
            the checkpoint's model and of this run's (``cfg.model._name``), if known.
        what: ``"model"`` or ``"criterion"``.

    Raises:
        CheckpointError: the names or shapes differ; the message says which model the checkpoint
            holds and which the run builds, and lists the first three keys of each kind.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and torch.is_tensor(weights[k]) and weights[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return

    def first(items: list[str]) -> str:
        more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
        return ", ".join(items[:3]) + more

    parts = []
    if missing:
        parts.append(f"missing {first(missing)}")
    if unexpected:
        parts.append(f"unexpected {first(unexpected)}")
    if shapes:
        parts.append(f"other shape (checkpoint vs this run) {first(shapes)}")
    holds = f"a {saved_name!r} {what}" if saved_name else f"{what} weights"
    builds = f"a {run_name!r} {what}" if run_name else f"a {what} of another shape"
    raise CheckpointError(
        f"{path}: holds {holds} that does not fit {builds} built by this run ({'; '.join(parts)})"
        f"; expected a checkpoint of the same {what} architecture"
    )


def numbered_checkpoints(save_dir: Path) -> list[Path]:
    """Numbered checkpoints in ``save_dir``, oldest first (by update, then epoch)."""
    found = []
    for p in save_dir.glob("checkpoint_*_*.pt"):
        m = _NUMBERED.match(p.name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), p))
    return [p for _, _, p in sorted(found)]


def load_resume_checkpoint(path: str | os.PathLike, fallback: bool = True) -> tuple[dict, Path]:
    """Load the checkpoint a run resumes from; when ``fallback`` and ``path`` is empty,
    truncated, damaged or holds non-finite model/criterion tensors, the newest intact numbered
    checkpoint of its folder instead, with a WARNING naming both files.

    Returns:
        ``(state, the path it came from)``.

    Raises:
        CheckpointError: ``path`` cannot be used and no numbered checkpoint can (the message is
            ``path``'s own), or ``path`` is refused as unsafe (never skipped silently).
    """
    path = Path(path)
    try:
        state = load_checkpoint_file(path)
        bad = nonfinite_tensors(state)
        if bad:
            raise CorruptCheckpointError(
                f"{path}: {len(bad)} model/criterion tensor(s) hold NaN or inf ({bad[0]}, ...); "
                "expected finite weights and statistics"
            )
        return state, path
    except CorruptCheckpointError as first:
        if not fallback:
            raise
        for older in reversed(numbered_checkpoints(path.parent)):
            if older.exists() and path.exists() and os.path.samefile(older, path):
                continue  # a hard link to the same damaged file
            try:
                state = load_checkpoint_file(older)
            except CheckpointError:
                continue
            if nonfinite_tensors(state):
                continue
            logger.warning(
                "cannot resume from %s (%s); resuming from %s, the newest intact numbered "
                "checkpoint, instead",
                path,
                first,
                older,
            )
            return state, older
        raise CheckpointError(
            f"{first}; and no intact numbered checkpoint to fall back to"
        ) from None


def _saved_name(state: dict, section: str) -> str | None:
    return ((state.get("cfg") or {}).get(section) or {}).get("_name")


def load_resume_state(
    restore_file: str | os.PathLike,
    save_dir: Path,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    run_cfg: dict,
) -> tuple[dict, Path] | None:
    """The training state a run resumes from, or None when there is none.

    ``restore_file`` is relative to ``save_dir`` unless absolute. Auto-resume (the default
    ``checkpoint_last.pt``) falls back to the newest intact numbered checkpoint when it is
    damaged; an explicitly named file does not (:func:`load_resume_checkpoint`). The weights are
    checked against this run's model and criterion before anything is loaded.

    Args:
        run_cfg: this run's config as a plain container (names the model and criterion).

    Returns:
        ``(state, the file it came from)`` or None when ``restore_file`` does not exist.

    Raises:
        CheckpointError: no usable checkpoint, an unsafe pickle, or weights that do not fit
            (the message names both models and the first keys that differ).
    """
    restore = Path(restore_file)
    if not restore.is_absolute():
        restore = save_dir / restore
    if not restore.is_file():
        return None
    state, restore = load_resume_checkpoint(restore, fallback=restore == save_dir / LAST)
    run_name = (run_cfg.get("model") or {}).get("_name")
    check_weights_match(
        model, state.get("model", {}), restore, _saved_name(state, "model"), run_name
    )
    if state.get("criterion"):
        check_weights_match(
            criterion,
            state["criterion"],
            restore,
            _saved_name(state, "criterion"),
            (run_cfg.get("criterion") or {}).get("_name"),
            what="criterion",
        )
    return state, restore


def load_finetune_weights(
    path: str | os.PathLike, model: torch.nn.Module, criterion: torch.nn.Module, run_cfg: dict
) -> None:
    """Initialise ``model`` (and, as far as the keys agree, ``criterion``) from the checkpoint
    at ``path`` (``checkpoint.finetune_from_model``); warns about model settings that differ
    from the checkpoint's (the model is built from this run's config: e.g. a converted
    checkpoint's ``input_scale``), since the weights load either way when the shapes agree.

    Raises:
        CheckpointError: unreadable file, no ``model`` weights, or weights that do not fit.
    """
    state = load_checkpoint_file(path)
    if "model" not in state:
        raise CheckpointError(f"{path} has no 'model' weights")
    run_model = run_cfg.get("model") or {}
    check_weights_match(
        model, state["model"], path, _saved_name(state, "model"), run_model.get("_name")
    )
    model.load_state_dict(state["model"])
    saved = (state.get("cfg") or {}).get("model") or {}
    differ = [
        f"{key}={run_model[key]!r} (checkpoint: {saved[key]!r})"
        for key in sorted(set(saved) & set(run_model))
        if saved[key] != run_model[key]
    ]
    if differ:
        logger.warning(
            "fine-tuning from %s with model settings that differ from the checkpoint's: %s",
            path,
            "; ".join(differ),
        )
    if state.get("criterion"):
        result = criterion.load_state_dict(state["criterion"], strict=False)
        if result.missing_keys or result.unexpected_keys:
            logger.warning("criterion weights partly loaded: %s", result)
    logger.info(
        "initialised the model from %s (fresh optimizer, scheduler and data position)", path
    )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


class CheckpointWriter:
    """Writes the run directory's checkpoint files (call on rank 0 only).

    Args:
        save_dir: the run directory.
        keep_last: number of numbered checkpoints to keep (-1: all).
    """

    def __init__(self, save_dir: str | os.PathLike, keep_last: int = 2):
        self.save_dir = Path(save_dir)
        self.keep_last = keep_last
        self._swept = False

    @property
    def last_path(self) -> Path:
        return self.save_dir / LAST

    def remove_stale_temporaries(self) -> tuple[int, int]:
        """Remove the temporaries that killed checkpoint writes left in ``save_dir``
        (``.checkpoint*.pt.tmp-<pid>-<id>``): only those older than this process whose writer
        (the pid in the name) is not alive on this machine. Logs how many and the bytes freed.

        Returns:
            ``(files removed, bytes freed)``.
        """
        self._swept = True
        removed, freed = 0, 0
        if not self.save_dir.is_dir():
            return 0, 0
        for p in self.save_dir.iterdir():
            m = TEMPORARY_NAME.match(p.name)
            if not m or not m.group("target").startswith("checkpoint"):
                continue
            try:
                st = p.stat()
                if st.st_mtime >= _PROCESS_START or _pid_alive(int(m.group("pid"))):
                    continue
                p.unlink()
            except OSError:
                continue
            removed += 1
            freed += st.st_size
        if removed:
            logger.info(
                "removed %d stale temporary file(s) of interrupted checkpoint writes from %s "
                "(%s freed)",
                removed,
                self.save_dir,
                format_bytes(freed),
            )
        return removed, freed

    def save(
        self, state: dict, epoch: int, num_updates: int, numbered: bool, is_best: bool
    ) -> Path | None:
        """Write ``state`` as checkpoint_last and link the numbered / best names to it.

        Returns:
            The path written, or None when the state was refused: a model or criterion tensor
            is not finite (logged as an error; the previous files are kept and none is pruned).

        Raises:
            OutputError: the disk is full or the folder not writable (previous files intact).
        """
        if not self._swept:
            self.remove_stale_temporaries()
        bad = nonfinite_tensors(state)
        if bad:
            shown = ", ".join(bad[:3]) + (f", ... ({len(bad)} in all)" if len(bad) > 3 else "")
            logger.error(
                "not writing the checkpoint of epoch %d, update %d: %d model/criterion "
                "tensor(s) hold NaN or inf (%s); keeping the previous %s and numbered "
                "checkpoints in %s",
                epoch,
                num_updates,
                len(bad),
                shown,
                LAST,
                self.save_dir,
            )
            return None
        atomic_torch_save(state, self.last_path)
        if numbered:
            atomic_link(self.last_path, self.save_dir / f"checkpoint_{epoch}_{num_updates}.pt")
            self.prune()
        if is_best:
            atomic_link(self.last_path, self.save_dir / BEST)
        return self.last_path

    def prune(self) -> None:
        if self.keep_last < 0:
            return
        old = numbered_checkpoints(self.save_dir)
        for p in old[: max(len(old) - self.keep_last, 0)]:
            p.unlink(missing_ok=True)

"""Atomic file writes: nothing already written is lost, no reader ever sees half a file.

Every writer goes through ``atomic_open``: the data goes to a temporary file in the target's
folder, is flushed and fsynced, then renamed over the target with ``os.replace`` (atomic on
POSIX file systems) and the folder is fsynced. On an exception the temporary file is removed and
the target is untouched; after a crash (SIGKILL, power loss) at most a hidden
``.<name>.tmp-<pid>-<id>`` file remains next to an intact target (``TEMPORARY_NAME`` matches it).

A write that the operating system refuses (full disk, quota, file-size limit, read-only file
system, a folder that is a regular file) raises ``speechkit.errors.OutputError`` with a one-line
message naming the file, the reason and, when space ran out, the space needed and free: every
command that writes through this module can print it as ``<tool>: error: ...``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from speechkit.errors import OutputError, SpeechkitError

TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)-(?P<id>[0-9a-f]{8})$")
"""Matches the names ``temporary_name`` makes; groups ``target``, ``pid`` (the writer's) and ``id``."""

_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# errors a write itself can raise: converted even when they surface inside the caller's block
_WRITE_ERRNOS = _SPACE_ERRNOS | {errno.EROFS, errno.EIO}


def format_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # unreachable


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):  # the nearest folder that exists
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def output_error(
    path: str | os.PathLike,
    err: OSError,
    needed: int | None = None,
    written: int | None = None,
) -> OutputError:
    """The ``OutputError`` for ``err`` raised while writing ``path``, as one line.

    Args:
        path: the file that could not be written.
        err: the operating system's error.
        needed: bytes the complete file needs (an estimate), if known.
        written: bytes written before the error, if known.
    """
    path = Path(path)
    code = err.errno
    reason = err.strerror or str(err) or type(err).__name__
    if code in _SPACE_ERRNOS:
        what = "no space left on the device" if code == errno.ENOSPC else reason.lower()
        if code == errno.EFBIG:
            what = "file too large for the file system or the file-size limit (ulimit -f)"
        facts = []
        if needed is not None:
            facts.append(f"needs about {format_bytes(needed)}")
        if written is not None:
            facts.append(f"{format_bytes(written)} written before the error")
        free = _free_bytes(path.parent)
        if free is not None:
            facts.append(f"{format_bytes(free)} free in {path.parent}")
        detail = f" ({', '.join(facts)})" if facts else ""
        msg = (
            f"{path}: cannot write: {what}{detail}; free some space or write elsewhere "
            "(the previous file, if any, is untouched)"
        )
    elif isinstance(err, NotADirectoryError | FileExistsError) and err.filename is not None:
        msg = f"{path}: cannot write: {err.filename} is not a folder ({reason})"
    else:
        msg = f"{path}: cannot write: {reason}; expected a writable folder"
    out = OutputError(msg)
    out.errno = code  # strerror and filename stay unset: str() is the message
    return out


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first ``OSError`` in ``exc``'s cause/context chain (torch.save wraps the writer's
    ``OSError`` in a ``RuntimeError`` from its zip writer)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and not isinstance(exc, SpeechkitError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, size_hint: int | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block (also one wrapped by torch.save) into the
    ``OutputError`` for ``path``: for writers that manage their own temporary files (e.g. a
    streamed ``.npy``) and want the same one-line message as ``atomic_open``.

    Raises:
        OutputError: the block raised an ``OSError`` (the caller cleans up its files).
    """
    try:
        yield
    except Exception as e:
        os_err = _os_error_in(e)
        if os_err is None:
            raise
        raise output_error(path, os_err, size_hint) from e


def temporary_name(path: Path) -> Path:
    """A hidden, unique sibling of ``path`` for an in-progress write."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "wb",
    encoding: str | None = None,
    size_hint: int | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` atomically.

    Args:
        path: the target file; its folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
        encoding: text encoding for ``"w"`` (default UTF-8).
        size_hint: bytes the complete file will need (only for the message when space runs out).

    Raises:
        OutputError: the folder cannot be created or written, or the disk (quota, file-size
            limit) is full; ``path`` is then untouched and the temporary file removed. An
            ``OSError`` that the caller's block raises is converted only when it is one a write
            raises (no space, read-only file system, I/O error), also when wrapped (torch.save).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e) from e
    tmp = temporary_name(path)
    kwargs = {"encoding": encoding or "utf-8"} if mode == "w" else {}
    failure: tuple[BaseException, OSError] | None = None
    written = None
    try:
        try:
            f = open(tmp, mode, **kwargs)
        except OSError as e:
            failure = (e, e)
            raise
        in_body = True
        with f:
            yield f
            in_body = False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if failure is None:
            os_err = _os_error_in(e)
            if os_err is not None and (not in_body or os_err.errno in _WRITE_ERRNOS):
                failure = (e, os_err)
        if failure is None:
            raise
        with contextlib.suppress(OSError):
            written = tmp.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)
    if failure is not None:
        raise output_error(path, failure[1], size_hint, written) from failure[0]
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """``np.save`` (no pickles) to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` name the same file as ``src`` atomically: a hard link (no copy of a large
    checkpoint), or a copy where the file system has no hard links (e.g. across devices).

    Raises:
        OutputError: the link or copy could not be made (``dst`` is then untouched).
    """
    src, dst = Path(src), Path(dst)
    tmp = temporary_name(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        size = src.stat().st_size if src.is_file() else None
        raise output_error(dst, e, size) from e
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)

"""Speaker-verification train lists (voxceleb_trainer format) and speaker labels.

A train list has one ``speaker_id relative/path.wav`` line per utterance, paths relative to a
root folder (voxceleb_trainer's ``--train_path``), e.g.
``id00012 id00012/21Uxsk56VDQ/00001.wav``. Blank lines are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from speechkit.errors import DataError

__all__ = ["read_list_fields", "read_train_list", "speaker_to_label"]

_MAX_MISSING_SHOWN = 5


def read_list_fields(
    path: str | os.PathLike, num_fields: tuple[int, ...], expected: str
) -> list[tuple[int, list[str]]]:
    """Split a whitespace-separated list file into fields, checking the field count per line.

    Args:
        path: the list file.
        num_fields: allowed numbers of fields per line.
        expected: the line format, quoted in error messages (e.g. ``"speaker_id path"``).

    Returns:
        ``[(line_number, fields), ...]`` for the non-blank lines (line numbers are 1-based).

    Raises:
        DataError: the file is missing or unreadable, a line has a wrong number of fields, or
            the file has no entries. Messages name the file, the line and the expected format.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise DataError(f"{path}: list file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the list file ({e})") from e
    rows = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in num_fields:
            raise DataError(
                f"{path}:{number}: expected '{expected}' ({' or '.join(map(str, num_fields))} "
                f"whitespace-separated fields), got {len(fields)}: {line.strip()!r}"
            )
        rows.append((number, fields))
    if not rows:
        raise DataError(f"{path}: the list is empty; expected lines '{expected}'")
    return rows


def check_files_exist(list_path: str, entries: Iterable[tuple[int, str]]) -> None:
    """Check every file of a list before failing, then report all missing files in one error.

    Args:
        list_path: the list file (named in the message).
        entries: ``(line_number, absolute_path)`` pairs.

    Raises:
        DataError: with the count of missing files and the first few of them with line numbers.
    """
    missing = [(n, p) for n, p in entries if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(f"line {n}: {p}" for n, p in missing[:_MAX_MISSING_SHOWN])
        more = "" if len(missing) <= _MAX_MISSING_SHOWN else f", ... ({len(missing)} in all)"
        raise DataError(
            f"{list_path}: {len(missing)} listed file(s) not found (is the root folder "
            f"right?): {shown}{more}"
        )


def read_train_list(
    path: str | os.PathLike, root: str | os.PathLike, check_exists: bool = False
) -> list[tuple[str, str]]:
    """Read a voxceleb_trainer train list.

    Args:
        path: list file with ``speaker_id relative/path.wav`` lines.
        root: folder the paths are relative to (absolute paths in the list are kept as they are).
        check_exists: check that every listed file exists (one ``stat`` per file).

    Returns:
        ``[(speaker_id, absolute_path), ...]`` in list order.

    Raises:
        DataError: missing/unreadable/empty list, a line without exactly two fields (file, line
            number and expected format in the message), or with ``check_exists`` missing audio
            files (all are checked first; the count and the first few are reported).
    """
    path = os.fspath(path)
    root = os.path.abspath(os.fspath(root))
    rows = read_list_fields(path, (2,), "speaker_id relative/path.wav")
    items = [(fields[0], os.path.normpath(os.path.join(root, fields[1]))) for _, fields in rows]
    if check_exists:
        check_files_exist(path, ((n, item[1]) for (n, _), item in zip(rows, items)))
    return items


def speaker_to_label(speakers: Iterable[str]) -> dict[str, int]:
    """Map speaker ids to class labels: the index of each id among the sorted unique ids.

    This is voxceleb_trainer's rule, so a list gives the same labels as there (and a checkpoint's
    classifier rows line up with them).

    Args:
        speakers: speaker ids (repeats allowed), e.g. ``[s for s, _ in read_train_list(...)]``.

    Returns:
        ``{speaker_id: label}`` with labels ``0 .. num_speakers - 1``.
    """
    return {speaker: label for label, speaker in enumerate(sorted(set(speakers)))}

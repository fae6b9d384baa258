"""Readers for the JSON metadata of the VoiceVector reference (akamrahimi/VoiceVector, data
module; Rahimi, Afouras & Zisserman, "VoiceVector", ICASSP 2024, arXiv 2501.01401).

Formats (each file is one JSON value):

* LRS2/LRS3 ``data.json``: a list of ``[relative_id, frames, speaker]``; ``relative_id`` names
  ``<root>/<relative_id>.wav``, ``frames`` is the duration in 25 fps video frames (an integer,
  ``frames * 640`` samples at 16 kHz), ``speaker`` an integer id.
* LibriSpeech: a list of ``[relative/path.flac, samples, speaker]``; ``samples`` is the duration
  in 16 kHz samples (an integer), ``speaker`` an integer or string id.
* ``speaker.json``: ``{speaker_id: [row indices into data.json]}``.
* ``DNS.json``: a list of ``[noise_file.wav, n_samples]`` (the DNS-Challenge noise clips).

:func:`separation_entries` turns a data file into the ``(speaker_id, relative_path,
absolute_path, number)`` rows that :class:`speechkit.data.separation_dataset.SeparationDataset`
reads from a speechkit list; ``number`` is then the 0-based entry index in the JSON list (the
dataset names it as ``file:number`` in its errors).

Errors: ``DataError`` naming the file and, for a bad entry, its index (``file[entry 3]``): a
missing or non-JSON file, a top-level value of the wrong type, an entry of the wrong arity or
type, a length that is not a positive integer, a speaker index out of range, and (when
``check_files``) a file that does not exist.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from speechkit.errors import DataError
from speechkit.registry import ChoiceEnum

__all__ = [
    "FRAME_SAMPLES",
    "MetadataEntry",
    "MetadataFormat",
    "read_dns_json",
    "read_librispeech_json",
    "read_lrs_json",
    "read_speaker_json",
    "separation_entries",
]

FRAME_SAMPLES = 640
"""16 kHz samples per 25 fps video frame (LRS lengths are in frames)."""

MetadataFormat = ChoiceEnum(
    "MetadataFormat", [(v, v) for v in ("speechkit", "librispeech_json", "lrs_json")]
)
MetadataFormat.__doc__ = """Layout of the separation lists: ``speechkit`` (``speaker_id
relative/path.wav`` lines), ``librispeech_json`` (``[path, samples, speaker]``) or ``lrs_json``
(``[id, frames, speaker]``), the last two as in the VoiceVector reference."""


@dataclass(frozen=True)
class MetadataEntry:
    """One utterance of a JSON data file.

    Attributes:
        speaker: speaker id as a string (an integer id is written in decimal).
        rel_path: audio path relative to the root (LRS: ``relative_id + ".wav"``).
        path: absolute normalised path.
        num_samples: duration in 16 kHz samples, as listed (LRS: ``frames * 640``).
        index: 0-based position in the JSON list.
    """

    speaker: str
    rel_path: str
    path: str
    num_samples: int
    index: int


def _load(path: str | os.PathLike) -> Any:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: metadata file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the metadata file ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _entries(path: str, arity: int, layout: str) -> list[list[Any]]:
    """The top-level list, each entry checked to be a list of ``arity`` values."""
    data = _load(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {layout}, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: the metadata list is empty; expected entries {layout}")
    for i, entry in enumerate(data):
        if not isinstance(entry, list) or len(entry) != arity:
            raise DataError(
                f"{path}[entry {i}]: expected {layout} ({arity} values), got {entry!r:.80}"
            )
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _length(path: str, i: int, value: Any, unit: str) -> int:
    if not _is_int(value) or value <= 0:
        raise DataError(
            f"{path}[entry {i}]: the length must be a positive integer ({unit}), got {value!r}"
        )
    return value


def _name(path: str, i: int, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(
            f"{path}[entry {i}]: the file name must be a non-empty string, got {value!r}"
        )
    return value


def _speaker(path: str, i: int, value: Any, integer_only: bool) -> str:
    if _is_int(value) or (not integer_only and isinstance(value, str) and value):
        return str(value)
    kind = "an integer" if integer_only else "an integer or a non-empty string"
    raise DataError(f"{path}[entry {i}]: the speaker id must be {kind}, got {value!r}")


def _join(root: str | os.PathLike, rel: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(os.fspath(root)), rel))


def _check_exist(path: str, files: list[tuple[int, str]]) -> None:
    missing = [(i, p) for i, p in files if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(f"entry {i}: {p}" for i, p in missing[:5])
        more = "" if len(missing) <= 5 else f", ... ({len(missing)} in all)"
        raise DataError(
            f"{path}: {len(missing)} listed file(s) not found (is the root folder right?): "
            f"{shown}{more}"
        )


def read_lrs_json(
    path: str | os.PathLike, root: str | os.PathLike, check_files: bool = True
) -> list[MetadataEntry]:
    """Read an LRS2/LRS3 ``[relative_id, frames, speaker:int]`` list.

    Args:
        path: the JSON file.
        root: folder of the audio; entry ``relative_id`` is ``<root>/<relative_id>.wav``.
        check_files: raise when a listed audio file does not exist.

    Returns:
        one :class:`MetadataEntry` per entry, ``num_samples = frames * 640``.

    Raises:
        DataError: see the module docstring.
    """
    path = os.fspath(path)
    out = []
    for i, (rid, frames, spk) in enumerate(_entries(path, 3, "[relative_id, frames, speaker]")):
        rel = _name(path, i, rid) + ".wav"
        n = _length(path, i, frames, "25 fps video frames")
        out.append(
            MetadataEntry(_speaker(path, i, spk, True), rel, _join(root, rel), n * FRAME_SAMPLES, i)
        )
    if check_files:
        _check_exist(path, [(e.index, e.path) for e in out])
    return out


def read_librispeech_json(
    path: str | os.PathLike, root: str | os.PathLike, check_files: bool = True
) -> list[MetadataEntry]:
    """Read a LibriSpeech ``[relative/path.flac, samples, speaker]`` list.

    Args:
        path: the JSON file.
        root: folder the paths are relative to.
        check_files: raise when a listed audio file does not exist.

    Returns:
        one :class:`MetadataEntry` per entry (``num_samples`` as listed, 16 kHz samples).

    Raises:
        DataError: see the module docstring.
    """
    path = os.fspath(path)
    out = []
    for i, (rel, samples, spk) in enumerate(_entries(path, 3, "[path, samples, speaker]")):
        rel = _name(path, i, rel)
        n = _length(path, i, samples, "16 kHz samples")
        out.append(MetadataEntry(_speaker(path, i, spk, False), rel, _join(root, rel), n, i))
    if check_files:
        _check_exist(path, [(e.index, e.path) for e in out])
    return out


def read_speaker_json(path: str | os.PathLike, num_rows: int | None = None) -> dict[str, list[int]]:
    """Read a ``speaker.json`` ``{speaker_id: [row indices]}`` map.

    Args:
        path: the JSON file.
        num_rows: entries of the matching data file; when given every index must be in
            ``[0, num_rows)`` and no row may belong to two speakers.

    Returns:
        ``{speaker_id: [row indices]}`` in file order.

    Raises:
        DataError: not a JSON object, a speaker whose value is not a non-empty list of
            non-negative integers, an index out of range or listed twice (file and speaker named).
    """
    path = os.fspath(path)
    data = _load(path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty JSON object {{speaker_id: [row indices]}}")
    seen: dict[int, str] = {}
    out: dict[str, list[int]] = {}
    for spk, rows in data.items():
        if not isinstance(rows, list) or not rows or not all(_is_int(r) and r >= 0 for r in rows):
            raise DataError(
                f"{path}[speaker {spk}]: expected a non-empty list of row indices, got {rows!r:.80}"
            )
        for r in rows:
            if num_rows is not None and r >= num_rows:
                raise DataError(
                    f"{path}[speaker {spk}]: row {r} out of range [0, {num_rows}) of the data file"
                )
            if r in seen:
                raise DataError(
                    f"{path}[speaker {spk}]: row {r} is also listed for speaker {seen[r]}"
                )
            seen[r] = spk
        out[spk] = list(rows)
    return out


def read_dns_json(
    path: str | os.PathLike, root: str | os.PathLike, check_files: bool = True
) -> list[tuple[str, int]]:
    """Read a ``DNS.json`` ``[noise_file.wav, n_samples]`` list.

    Args:
        path: the JSON file.
        root: folder the noise paths are relative to.
        check_files: raise when a listed noise file does not exist.

    Returns:
        ``[(absolute_path, n_samples), ...]`` in file order.

    Raises:
        DataError: see the module docstring.
    """
    path = os.fspath(path)
    out = []
    for i, (rel, samples) in enumerate(_entries(path, 2, "[noise_file.wav, n_samples]")):
        out.append((_join(root, _name(path, i, rel)), _length(path, i, samples, "samples")))
    if check_files:
        _check_exist(path, list(enumerate(p for p, _ in out)))
    return out


def separation_entries(
    path: str | os.PathLike,
    root: str | os.PathLike,
    fmt: str,
    speaker_json: str | os.PathLike | None = None,
) -> list[tuple[str, str, str, int]]:
    """A JSON data file as the rows a separation dataset reads from a speechkit list.

    Args:
        path: the data file.
        root: the audio folder.
        fmt: ``"librispeech_json"`` or ``"lrs_json"``.
        speaker_json: optional ``speaker.json`` of the same split; each row's speaker there must
            equal the entry's own speaker field.

    Returns:
        ``[(speaker_id, relative_path, absolute_path, entry_index), ...]``; every audio file is
        checked to exist.

    Raises:
        DataError: see the module docstring; a row whose ``speaker.json`` speaker differs from
            its entry (both named). ValueError: an unknown ``fmt``.
    """
    readers = {"librispeech_json": read_librispeech_json, "lrs_json": read_lrs_json}
    if fmt not in readers:
        raise ValueError(f"unknown JSON metadata format {fmt!r}; expected one of {list(readers)}")
    entries = readers[fmt](path, root, check_files=True)
    if speaker_json is not None:
        for spk, rows in read_speaker_json(speaker_json, len(entries)).items():
            for r in rows:
                if entries[r].speaker != spk:
                    raise DataError(
                        f"{os.fspath(speaker_json)}[speaker {spk}]: row {r} is speaker "
                        f"{entries[r].speaker} in {os.fspath(path)}[entry {r}]"
                    )
    return [(e.speaker, e.rel_path, e.path, e.index) for e in entries]

"""Per-clip face embeddings for the VoiceVector ``ivem`` enrolment net (Rahimi, Afouras and
Zisserman, "VoiceVector", ICASSP 2024; upstream ``src/data/components/LRSDataset.py``, its
``face_emb_root`` folders written by ``tools/create_face_embeddings.py``).

Layout: the face embeddings of ``relative/path.wav`` (or ``.mp4``) live in the folder
``<face_dir>/relative/path/`` (:func:`face_folder`: the path without its suffix, as the
reference's ``<face_emb_root>/<relative id>``), one ``.npy`` per detected face image, each a
``(dim,)`` or ``(1, dim)`` float vector (dim 128 in the reference).

A clip's faces (:func:`read_face_embeddings`): the folder's ``*.npy`` files sorted by name; the
first ``count`` (3) single-face files are taken, a folder with fewer is cycled through again
(``a b a``); a file holding several faces (``(k, dim)``, ``k > 1``: which one is the speaker's is
unknown) is skipped, as the reference skips it. A missing folder, an empty one or one with only
multi-face files gives ``count`` zero vectors: the reference's "no face" input.

Deviations from the reference: it shuffles the file list and draws the faces at random on every
read, and drops utterances without any face file from its data list; speechkit takes the first
files by name (the same faces every epoch, so a clip's input does not depend on the worker) and
keeps such utterances with zero faces.

Errors (``DataError``, naming the file and the list line that named the clip): an unreadable
``.npy``, an array that is not ``(dim,)`` / ``(k, dim)`` of numbers, a wrong ``dim``, a NaN or
infinite value.
"""

from __future__ import annotations

import os

import numpy as np

from speechkit.errors import DataError

__all__ = ["FACES_PER_CLIP", "FACE_DIM", "face_folder", "read_face_embeddings"]

FACE_DIM = 128
"""Size of one face embedding in the reference."""
FACES_PER_CLIP = 3
"""Face embeddings per enrolment clip in the reference (``face_embeddings: 3``)."""

_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".mp4", ".avi", ".mov", ".mkv")


def face_folder(relative_path: str) -> str:
    """``spk/utt.wav -> spk/utt`` (an audio or video suffix removed, other names kept)."""
    root, ext = os.path.splitext(relative_path)
    return root if ext.lower() in _SUFFIXES else relative_path


def _read_one(path: str, where: str, dim: int) -> np.ndarray | None:
    """``(dim,)`` float32 vector of one file; ``None`` for a multi-face ``(k, dim)`` file."""
    at = f" (listed at {where})" if where else ""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}{at}: not a readable .npy array ({e})") from None
    if array.ndim not in (1, 2) or array.size == 0 or not np.issubdtype(array.dtype, np.number):
        raise DataError(
            f"{path}{at}: expected a face embedding ({dim},) or (1, {dim}), got shape "
            f"{array.shape} dtype {array.dtype}"
        )
    if array.shape[-1] != dim:
        raise DataError(
            f"{path}{at}: face embedding of shape {array.shape}, expected dimension {dim}"
        )
    if array.ndim == 2 and array.shape[0] != 1:
        return None
    vec = array.reshape(dim).astype(np.float32)
    if not np.isfinite(vec).all():
        raise DataError(f"{path}{at}: the face embedding has NaN or infinite values")
    return vec


def read_face_embeddings(
    folder: str | os.PathLike,
    where: str = "",
    dim: int = FACE_DIM,
    count: int = FACES_PER_CLIP,
) -> np.ndarray:
    """The ``count`` face embeddings of one clip (see the module docstring).

    Args:
        folder: the clip's face folder (``<face_dir>/<face_folder(relative path)>``).
        where: the list line naming the clip (``list:line``), quoted in errors.
        dim: expected embedding size.
        count: faces returned.

    Returns:
        ``(count, dim)`` float32; all zeros when the folder is missing, empty or has no
        single-face file.

    Raises:
        DataError: a bad file (see the module docstring). ValueError: ``dim`` or ``count`` < 1.
    """
    if dim < 1 or count < 1:
        raise ValueError(f"face embeddings need dim >= 1 and count >= 1, got {dim}, {count}")
    folder = os.fspath(folder)
    out = np.zeros((count, dim), dtype=np.float32)
    if not os.path.isdir(folder):
        return out
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npy"))
    faces: list[np.ndarray] = []
    for name in names:
        vec = _read_one(os.path.join(folder, name), where, dim)
        if vec is not None:
            faces.append(vec)
            if len(faces) == count:
                break
    for k in range(count if faces else 0):
        out[k] = faces[k % len(faces)]
    return out

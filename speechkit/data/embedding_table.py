"""Per-utterance speaker-embedding vectors read from ``.npy`` files, shared by the datasets.

``scripts/dump_embeddings.py`` writes one ``.npy`` per utterance, mirroring the audio tree
(``embedding_path``), holding the crop embeddings ``(K, D)`` (or one vector ``(D,)``). The
per-utterance vector is the mean over the K crops, then L2-normalised, as in the embedding
enhancement reference (Dorika0203/proj_2022NC, ``utils.py``). Used by the enhancement dataset
(:mod:`speechkit.data.embedding_dataset`) and the separation dataset
(:mod:`speechkit.data.separation_dataset`, speaker-embedding conditioning).

Bad input raises ``DataError`` naming the ``.npy`` file and the list line that named it: a
missing or unreadable file, an embedding of the wrong dimension, a zero or non-finite vector.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechkit.errors import DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "EmbeddingTable",
    "crop_mean",
    "embedding_path",
    "l2_normalize",
    "load_embedding",
    "load_npy",
    "utterance_vector",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")


def embedding_path(path: str) -> str:
    """The ``.npy`` name of an utterance: an audio suffix is replaced, ``.npy`` kept.

    ``id10001/1zcIwhmdeo4/00001.wav -> id10001/1zcIwhmdeo4/00001.npy``; a path with another or
    no suffix gets ``.npy`` appended.
    """
    root, ext = os.path.splitext(path)
    if ext == ".npy":
        return path
    if ext.lower() in AUDIO_SUFFIXES:
        return root + ".npy"
    return path + ".npy"


def load_npy(file: Path, where: str) -> np.ndarray:
    """``np.load`` without pickles; ``where`` (``list:line``) is named in every error."""
    if not file.is_file():
        raise DataError(f"{where}: embedding file not found: {file}")
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{file} (listed at {where}): not a readable .npy array ({e})") from None


def crop_mean(array: np.ndarray, file: str | os.PathLike = "<array>") -> np.ndarray:
    """Mean over crops of an utterance's embeddings, un-normalised.

    Args:
        array: crop embeddings (K, D) or one embedding (D,).
        file: named in error messages.

    Returns:
        (D,) float64.

    Raises:
        DataError: not 1-D/2-D or not numeric, no values, or non-finite values.
    """
    array = np.asarray(array)
    if array.ndim not in (1, 2) or array.size == 0 or not np.issubdtype(array.dtype, np.number):
        raise DataError(
            f"{file}: expected crop embeddings (K, D) or one embedding (D,), got shape "
            f"{array.shape} dtype {array.dtype}"
        )
    vec = array.astype(np.float64).reshape(-1, array.shape[-1]).mean(axis=0)
    if not np.isfinite(vec).all():
        raise DataError(f"{file}: the embedding has NaN or infinite values")
    return vec


def l2_normalize(vec: np.ndarray, what: str) -> np.ndarray:
    """``vec / ||vec||`` (float64); ``DataError`` naming ``what`` for a zero vector."""
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        raise DataError(f"{what}: the embedding is a zero vector (cannot be L2-normalised)")
    return vec / norm


def utterance_vector(array: np.ndarray, file: str | os.PathLike = "<array>") -> np.ndarray:
    """The reference's per-utterance input: mean over crops, then L2-normalised.

    Args:
        array: crop embeddings (K, D) or one embedding (D,).
        file: named in error messages.

    Returns:
        (D,) float32 unit vector.

    Raises:
        DataError: see ``crop_mean``; a zero mean vector.
    """
    return l2_normalize(crop_mean(array, file), str(file)).astype(np.float32)


def load_embedding(
    file: str | os.PathLike, where: str, embed_dim: int | None = None, first: str | None = None
) -> np.ndarray:
    """Read an utterance's ``.npy`` (K, D) or (D,) and check its dimension.

    Args:
        file: the ``.npy`` file.
        where: ``list:line`` that names it, quoted in every error.
        embed_dim: expected D (``None``: not checked).
        first: the file D was taken from, quoted in the dimension error.

    Raises:
        DataError: missing (list and line named), unreadable, or of another dimension (the file,
            the list line and the expected D named).
    """
    file = Path(file)
    array = load_npy(file, where)
    if array.ndim not in (1, 2):
        raise DataError(
            f"{file} (listed at {where}): expected crop embeddings (K, D) or (D,), "
            f"got shape {array.shape}"
        )
    if embed_dim is not None and array.shape[-1] != embed_dim:
        source = f" (as {first})" if first else ""
        raise DataError(
            f"{file} (listed at {where}): embedding of shape {array.shape}, expected "
            f"dimension D={embed_dim}{source}"
        )
    return array


class EmbeddingTable:
    """Per-utterance vectors of one embedding folder, each file read once.

    Args:
        root: folder the list paths are relative to (the dump's ``--out``).
        embed_dim: expected D; ``None``: taken from the first file read, then enforced.

    Raises (``get``):
        DataError: the file is missing (list file and line named), unreadable, of another
            dimension than ``embed_dim`` (the ``.npy`` file, the list line and the expected D
            named) or zero / non-finite.
    """

    def __init__(self, root: str | os.PathLike, embed_dim: int | None = None):
        self.root = Path(root)
        self.embed_dim = embed_dim
        self._first: str | None = None
        self.vectors: dict[str, np.ndarray] = {}

    def get(self, file: str, where: str) -> np.ndarray:
        """(D,) unit vector of ``file`` (relative to ``root``); ``where`` = ``list:line``."""
        vec = self.vectors.get(file)
        if vec is not None:
            return vec
        path = self.root / file
        array = load_embedding(path, where, self.embed_dim, self._first)
        vec = utterance_vector(array, f"{path} (listed at {where})")
        if self.embed_dim is None:
            self.embed_dim, self._first = int(vec.shape[0]), str(path)
        self.vectors[file] = vec
        return vec

    def stack(self, files: Sequence[str], wheres: Sequence[str]) -> np.ndarray:
        """(N, D) float32 vectors of ``files``."""
        return np.stack([self.get(f, w) for f, w in zip(files, wheres)])

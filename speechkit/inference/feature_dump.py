"""Streaming feature dumps of a manifest, in fairseq's ``simple_kmeans`` layout.

``dump_features(manifest, featurize, out_dir, split, nshard=n, rank=r)`` computes the features
of shard ``r`` of ``n`` (manifest entries ``[round(N r / n), round(N (r + 1) / n))``, fairseq's
``examples/hubert/simple_kmeans/feature_utils.py`` ``get_shard_range``) and writes:

* ``{split}_{rank}_{nshard}.npy``: float32 (sum T_i, C), the utterances' frames concatenated in
  manifest order;
* ``{split}_{rank}_{nshard}.len``: one line per utterance with its frame count T_i;

or, with ``per_utterance=True``, one ``out_dir/<manifest path>.npy`` ((T_i, C)) per utterance.
Files are written atomically (temporary file, fsync, rename): an interrupted run leaves no partial
output under the final names. The ``.npy`` is streamed to disk, so memory stays bounded whatever
the shard size. Used by ``speechkit-extract`` (``speechkit.cli.extract``) and
``speechkit-hubert-labels dump`` (``speechkit.cli.hubert_labels``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechkit.atomic import atomic_save_npy, fsync_dir, output_errors, temporary_name
from speechkit.data.audio import audio_info, read_audio
from speechkit.data.manifest import Manifest
from speechkit.errors import ConfigError, DataError

__all__ = [
    "ConcatFeatureWriter",
    "Featurize",
    "check_manifest_size",
    "dump_features",
    "shard_range",
]


Featurize = Callable[[list[np.ndarray], list[str]], Sequence[torch.Tensor | np.ndarray]]
"""``featurize(waveforms, rel_paths)``: (L_i,) float32 waveforms and their manifest paths (e.g.
to look up each utterance's speaker) -> one (T_i, C) feature array per waveform."""


def shard_range(total: int, nshard: int, rank: int) -> tuple[int, int]:
    """Entries ``[start, end)`` of shard ``rank``: fairseq's ``round(total / nshard * rank)``.

    Raises:
        ConfigError: not ``0 <= rank < nshard``.
    """
    if nshard < 1 or not 0 <= rank < nshard:
        raise ConfigError(f"shard rank={rank} of nshard={nshard}: need 0 <= rank < nshard")
    return round(total / nshard * rank), round(total / nshard * (rank + 1))


class ConcatFeatureWriter:
    """Streams (T_i, C) float32 blocks into one ``.npy`` of shape (sum T_i, C) plus a ``.len``.

    The ``.npy`` header (format 1.0) is a fixed 128 bytes, rewritten with the final shape on
    ``close``; both files appear under their names only then (atomic rename). Use as a context
    manager: an exception removes the temporary files and leaves old outputs untouched.

    Args:
        npy_path: output ``.npy``. len_path: output ``.len`` (one frame count per line).

    Raises:
        DataError: (from ``add``) a block whose dimension differs from the first one's.
    """

    HEADER_BYTES = 128

    def __init__(self, npy_path: str | os.PathLike, len_path: str | os.PathLike):
        self.npy_path, self.len_path = Path(npy_path), Path(len_path)
        self.npy_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_npy, self._tmp_len = temporary_name(self.npy_path), temporary_name(self.len_path)
        self._f = open(self._tmp_npy, "wb")
        self._f.write(b"\0" * self.HEADER_BYTES)
        self.lengths: list[int] = []
        self.rows = 0
        self.dim: int | None = None

    def _header(self) -> bytes:
        shape = (self.rows, self.dim or 0)
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        text = text.ljust(self.HEADER_BYTES - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")

    def add(self, feats: np.ndarray | torch.Tensor) -> None:
        """Append one utterance's (T, C) features."""
        x = feats.detach().cpu().numpy() if torch.is_tensor(feats) else np.asarray(feats)
        if x.ndim != 2:
            raise DataError(f"{self.npy_path}: expected (T, C) features, got shape {x.shape}")
        if self.dim is None:
            self.dim = int(x.shape[1])
        elif x.shape[1] != self.dim:
            raise DataError(
                f"{self.npy_path}: utterance {len(self.lengths)} has {x.shape[1]} feature "
                f"dimensions, the first one had {self.dim}"
            )
        with output_errors(self.npy_path):
            self._f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        self.rows += int(x.shape[0])
        self.lengths.append(int(x.shape[0]))

    def close(self) -> None:
        """Write the header and the ``.len`` file, fsync, and rename both into place.

        Raises:
            OutputError: a write failed (disk full, ...); the caller's ``abort`` cleans up.
        """
        with output_errors(self.npy_path):
            self._f.seek(0)
            self._f.write(self._header())
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        with output_errors(self.len_path), open(self._tmp_len, "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in self.lengths))
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._tmp_npy, self.npy_path)
        os.replace(self._tmp_len, self.len_path)
        fsync_dir(self.npy_path.parent)

    def abort(self) -> None:
        """Close and delete the temporary files."""
        if not self._f.closed:
            self._f.close()
        self._tmp_npy.unlink(missing_ok=True)
        self._tmp_len.unlink(missing_ok=True)

    def __enter__(self) -> ConcatFeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_manifest_size(path: str | os.PathLike, num_samples: int) -> None:
    """Refuse an audio file whose frame count is not the manifest's ``num_samples``.

    fairseq's manifests record ``soundfile.info(path).frames`` (samples per channel at the
    file's own rate); a disagreement means a stale manifest or a changed file, and the labels
    dumped from these features would not line up with the manifest that trains on them.

    Raises:
        DataError: ``"<path>: the file holds N samples; expected the manifest's num_samples M
            ..."`` (or the file's own read error).
    """
    frames = audio_info(path).frames
    if frames != num_samples:
        raise DataError(
            f"{os.fspath(path)}: the file holds {frames} samples; expected the manifest's "
            f"num_samples {num_samples} (regenerate the manifest: num_samples is the file's "
            "frame count at its own rate)"
        )


def _utterance_output(out_dir: Path, rel: str, where: str) -> Path:
    rel_path = Path(rel)
    if ".." in rel_path.parts:
        raise DataError(f"{where}: per-utterance output needs a path without '..', got {rel!r}")
    if rel_path.is_absolute():
        rel_path = rel_path.relative_to(rel_path.anchor)
    return out_dir / rel_path.with_suffix(".npy")


def dump_features(
    manifest: Manifest,
    featurize: Featurize,
    out_dir: str | os.PathLike,
    split: str,
    sample_rate: int = 16000,
    nshard: int = 1,
    rank: int = 0,
    batch_size: int = 8,
    per_utterance: bool = False,
    desc: str = "features",
) -> list[Path]:
    """Compute the features of one shard of a manifest and write them (module docstring).

    Audio is read with ``read_audio`` in background threads. Each file's frame count must equal
    the manifest's ``num_samples``; a file at another rate is resampled to ``sample_rate`` (soxr)
    and a multi-channel file averaged, each with a WARNING naming it; NaN/inf samples are
    refused. Nothing is written under the final names when a file is refused.
    Utterances are grouped into batches of similar manifest length inside windows of
    ``8 * batch_size`` consecutive entries; output order is always the manifest's.

    Args:
        manifest: the utterances. featurize: ``featurize(waveforms, rel_paths)``, (L_i,)
            float32 waveforms and their manifest paths -> (T_i, C) features each
            (``Featurize``). out_dir: output folder. split: output file prefix.
        sample_rate: Hz the audio is read at. nshard, rank: the shard. batch_size: utterances
            per ``featurize`` call. per_utterance: one ``.npy`` per utterance.
        desc: progress-bar label.

    Returns:
        The files written.

    Raises:
        DataError: unreadable audio, NaN/inf samples, or a frame count other than the
            manifest's (the manifest line and file are named). ConfigError: bad shard.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    start, end = shard_range(len(manifest), nshard, rank)
    window = max(1, batch_size) * 8
    name = f"{split}_{rank}_{nshard}"
    writer = None
    written: list[Path] = []
    if not per_utterance:
        writer = ConcatFeatureWriter(out_dir / f"{name}.npy", out_dir / f"{name}.len")

    def load(i: int) -> np.ndarray:
        path = manifest.audio_path(i)
        try:
            check_manifest_size(path, int(manifest.sizes[i]))
            return read_audio(path, sample_rate=sample_rate)
        except DataError as e:
            raise DataError(f"{manifest.where(i)}: {e}") from None

    try:
        with (
            ThreadPoolExecutor(max_workers=2) as pool,
            tqdm(total=end - start, desc=desc, unit="utt", disable=None) as bar,
        ):
            for w0 in range(start, end, window):
                idx = list(range(w0, min(w0 + window, end)))
                wavs = dict(zip(idx, pool.map(load, idx)))
                order = sorted(idx, key=lambda i: len(wavs[i]))
                feats: dict[int, Any] = {}
                for b in range(0, len(order), max(1, batch_size)):
                    batch = order[b : b + max(1, batch_size)]
                    out = featurize([wavs[i] for i in batch], [manifest.paths[i] for i in batch])
                    for i, f in zip(batch, out):
                        feats[i] = f
                    bar.update(len(batch))
                for i in idx:
                    if writer is not None:
                        writer.add(feats[i])
                    else:
                        path = _utterance_output(out_dir, manifest.paths[i], manifest.where(i))
                        f = feats[i]
                        f = f.detach().cpu().numpy() if torch.is_tensor(f) else np.asarray(f)
                        atomic_save_npy(path, f.astype(np.float32))
                        written.append(path)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
        written += [writer.npy_path, writer.len_path]
    return written

"""Every noise, music, babble and RIR file, decoded once into one tensor on the training device.

With ``task.augmentation.on_device=true`` and ``task.augmentation.noise_bank=true`` the data
workers no longer decode, crop and send the noise segments an utterance draws (1.5 segments of
L samples per utterance on average with the reference's choices: about as much data as the
speech itself, and on a corpus the size of MUSAN a per-worker file cache that cannot hold it,
so every draw is a decode): a worker sends each segment as ``(file, start)`` and
:meth:`NoiseBank.segments` cuts it out of the bank on the device; a drawn RIR travels as its
file index (:meth:`NoiseBank.whole`).

The segments are exactly those of the worker path: the bank holds what
:meth:`speechkit.data.augment.Augmenter.load` returns for each file (resampled and averaged to
mono as there), 16-bit-exact files as int16 (scaled by 2**-15 when cut, exact) and others as
float32; a segment starts where ``random_crop`` would start it (files not longer than the crop
are wrap-padded: repeated from their start, which modular indexing gives).

Device memory: 2 bytes per sample for 16-bit sources (one hour at 16 kHz is 115 MB; MUSAN's
109 hours are 12.5 GB), 4 bytes for float sources. Each rank holds its own copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from speechkit.data.augment import Augmenter
from speechkit.data.batch_buffer import float_audio
from speechkit.data.wav import exact_pcm16
from speechkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["NoiseBank"]


class NoiseBank:
    """The decoded noise / music / babble / RIR files of an :class:`Augmenter`, concatenated.

    Args:
        files: source files (paths as the augmenter's lists give them).
        samples: one (L_i,) float32 array per file, as ``Augmenter.load`` returns it.

    Attributes:
        files: the paths; ``index[path]`` is a file's row in ``lengths`` / ``offsets``.
        lengths: (F,) int64 samples per file.
        offsets: (F,) int64 first sample of each file in the bank.
        data: (sum L_i,) int16 (every file 16-bit exact) or float32, on the CPU until
            :meth:`to` moves it.
    """

    def __init__(self, files: Sequence[str], samples: Sequence[np.ndarray]):
        if len(files) != len(samples) or not files:
            raise ValueError(f"a noise bank needs one array per file, got {len(files)} files")
        self.files = list(files)
        self.index = {path: i for i, path in enumerate(self.files)}
        self.lengths = np.array([len(s) for s in samples], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        exact = [exact_pcm16(s) for s in samples]
        if all(e is not None for e in exact):
            self.data = torch.from_numpy(np.concatenate(exact))
        else:
            self.data = torch.from_numpy(np.concatenate(samples).astype(np.float32, copy=False))

    @classmethod
    def from_augmenter(cls, augmenter: Augmenter) -> NoiseBank:
        """Decode every noise, music and babble file of ``augmenter`` (``Augmenter.load``
        without its cache; errors name the file).

        Raises:
            DataError: a file cannot be read (missing, corrupt, empty, NaN/inf), or an RIR is
                all zeros (the worker path refuses it when drawn; the bank at once).
            ValueError: the augmenter has no noise sources and no RIRs.
        """
        sources = [p for kind in ("noise", "music", "babble") for p in augmenter.sources[kind]]
        files = list(dict.fromkeys(sources + list(augmenter.rir_files)))
        samples = [augmenter.decode(path) for path in files]
        for path in augmenter.rir_files:
            if not np.any(samples[files.index(path)]):
                raise DataError(f"{path}: the RIR is all zeros")
        bank = cls(files, samples)
        logger.info(
            "noise bank: %d noise / RIR files, %.1f hours, %.1f MB (%s) on the training device",
            len(files),
            bank.lengths.sum() / augmenter.sample_rate / 3600,
            bank.data.numel() * bank.data.element_size() / 1e6,
            bank.data.dtype,
        )
        return bank

    @property
    def layout(self) -> dict[str, tuple[int, int]]:
        """``{path: (file index, samples)}``: what a data worker needs to draw segments."""
        return {path: (i, int(n)) for i, (path, n) in enumerate(zip(self.files, self.lengths))}

    def whole(self, file: torch.Tensor) -> torch.Tensor:
        """Whole files (RIRs), zero-padded to the longest.

        Args:
            file: (R,) long file indices (any device: read on the host).

        Returns:
            (R, max length) float32 on the bank's device (R >= 1: (0, 1) when ``file`` is
            empty, as ``collate_draws`` packs no RIR).
        """
        files = file.tolist()
        width = max((int(self.lengths[f]) for f in files), default=1)
        out = torch.zeros(len(files), width, device=self.device)
        for row, f in zip(out, files):
            first, length = int(self.offsets[f]), int(self.lengths[f])
            row[:length] = float_audio(self.data[first : first + length])
        return out

    def to(self, device: torch.device | str) -> NoiseBank:
        """Move the bank to ``device`` (in place; returns self)."""
        self.data = self.data.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.data.device

    def segments(self, file: torch.Tensor, start: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Cut segments out of the bank, as ``random_crop`` cuts them from the decoded files.

        Args:
            file: (S,) long file indices (any device: read on the host).
            start: (S,) long starts within the (wrap-padded) files.
            num_samples: segment length L.

        Returns:
            (S, L) float32 on the bank's device; sample k of row s is sample
            ``(start[s] + k) mod lengths[file[s]]`` of file ``file[s]``.
        """
        rows = []
        for f, s in zip(file.tolist(), start.tolist()):
            first, length = int(self.offsets[f]), int(self.lengths[f])
            if s + num_samples <= length:  # a slice (a view; one stack copies them all)
                rows.append(self.data[first + s : first + s + num_samples])
            else:  # a file not longer than the segment, repeated from its start
                steps = torch.arange(s, s + num_samples, device=self.device)
                rows.append(self.data[first + steps % length])
        out = torch.stack(rows) if rows else self.data.new_zeros(0, num_samples)
        return float_audio(out)

"""HuBERT pretraining dataset: audio from a fairseq manifest plus frame-aligned unit labels.

Follows fairseq's ``HubertDataset`` (``fairseq/data/audio/hubert_dataset.py``):

* entries shorter than ``min_sample_size`` (or longer than ``max_keep_size``) are dropped; the
  label files still hold one line per manifest entry (fairseq#5005);
* ``collater`` crops every item to ``min(shortest item, max_sample_size)`` samples at its own
  uniform random start (``random_crop``), or with ``pad_audio`` zero-pads to
  ``min(longest item, max_sample_size)`` and marks the pad in ``padding_mask``;
* labels follow the audio crop: frame start ``round(start * label_rate / sr)``, frame count
  ``round(size * label_rate / sr)`` (limited to the labels left when not padding);
* ``batches`` is fairseq's ``ordered_indices`` + ``batch_by_size`` (``max_tokens`` on
  ``min(size, max_sample_size)``, ``required_batch_size_multiple``) with a new batch order per
  epoch.

Unlike fairseq, all randomness is a function of ``(seed, epoch, item ids)``: the crop starts of a
batch come from ``np.random.default_rng([seed, epoch, 1, *ids])``. The same batches therefore
give the same tensors with any number of DataLoader workers and after resuming mid-epoch. Keys
(``dataset[key]``, ``sample["id"]``) are positions among the KEPT entries; ``indices[key]`` is
the 0-based manifest entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from speechkit.data.audio import read_audio
from speechkit.data.batch_buffer import empty_batch
from speechkit.data.labels import PAD, LabelDictionary, LabelFile, check_lengths
from speechkit.data.manifest import Manifest, PackedStrings, read_manifest
from speechkit.data.samplers import batch_by_size
from speechkit.errors import ConfigError, DataError

__all__ = [
    "BATCH_STREAM",
    "COLLATE_STREAM",
    "ITEM_STREAM",
    "WINDOW_STREAM",
    "HubertCollater",
    "HubertDataset",
]

logger = logging.getLogger(__name__)

RATE_HINT = (
    " (task.sample_rate; resampling is off): convert the corpus once (e.g. sox IN.flac -r "
    "16000 -c 1 OUT.wav) and regenerate the manifest, or set task.resample=true"
)

# Stream ids: the third seed word of every generator, so that the item, collate, batch and
# window draws of one (seed, epoch) never share a stream (ContentVecDataset adds its own draws
# on ITEM_STREAM and WINDOW_STREAM).
ITEM_STREAM, COLLATE_STREAM, BATCH_STREAM, WINDOW_STREAM = 0, 1, 2, 3


def _as_list(value: Any, n: int, name: str) -> list:
    if isinstance(value, str | os.PathLike) or not isinstance(value, Sequence):
        value = [value] * n
    if len(value) != n:
        raise ConfigError(f"HubertDataset: {len(value)} {name} for {n} label files")
    return list(value)


class HubertCollater:
    """fairseq ``HubertDataset.collater`` without a manifest: crop (or pad) a batch of items
    ``{"id": int, "source": (L,) float32, "label_list": [(T_i,) int64]}`` and their labels
    alike. ``HubertDataset`` inherits it; a streaming dataset (tar shards) uses it alone.

    Args:
        label_rates: labels per second of each stream (negative: sequence labels).
        sample_rate: audio rate in Hz.
        max_sample_size: longest crop in samples (``None``: no limit).
        random_crop: random crop starts (else 0).
        pad_audio: pad to the longest item instead of cropping to the shortest.
        seed: base seed of the crop starts; ``epoch`` (attribute, default 1) is the other.
    """

    def __init__(
        self,
        label_rates: Sequence[float],
        sample_rate: int = 16000,
        max_sample_size: int | None = 250000,
        random_crop: bool = True,
        pad_audio: bool = False,
        seed: int = 1,
    ):
        self.label_rates = [float(r) for r in label_rates]
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size if max_sample_size is not None else 2**62
        self.random_crop = random_crop
        self.pad_audio = pad_audio
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crop starts the next batches get."""
        self.epoch = int(epoch)

    def crop_starts(self, lengths: Sequence[int], audio_size: int, ids: Sequence[int]) -> list[int]:
        """Crop start (samples) of each item: uniform in ``[0, length - audio_size]`` when
        ``random_crop`` (0 otherwise and for items not longer than ``audio_size``), drawn from
        ``default_rng([seed, epoch, 1, *ids])``."""
        rng = np.random.default_rng([self.seed, self.epoch, COLLATE_STREAM, *map(int, ids)])
        starts = []
        for length in lengths:
            diff = int(length) - audio_size
            starts.append(int(rng.integers(0, diff + 1)) if diff > 0 and self.random_crop else 0)
        return starts

    @staticmethod
    def collate_audio(
        sources: Sequence[torch.Tensor], audio_size: int, starts: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop or zero-pad each (L_b,) source to ``audio_size``.

        Returns:
            ``(audio (B, audio_size) float32, padding_mask (B, audio_size) bool)``; the mask is
            True on padded samples.
        """
        # written once, in shared memory inside a DataLoader worker (no copy when sent)
        audio = empty_batch((len(sources), audio_size), sources[0].dtype)
        padding_mask = empty_batch((len(sources), audio_size), torch.bool)
        for b, (source, start) in enumerate(zip(sources, starts)):
            n = min(len(source) - start, audio_size)
            audio[b, :n] = source[start : start + n]
            audio[b, n:] = 0.0
            padding_mask[b, :n] = False
            padding_mask[b, n:] = True
        return audio, padding_mask

    def collate_labels(
        self,
        targets: Sequence[torch.Tensor],
        label_rate: float,
        audio_size: int,
        starts: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop the labels of one stream like the audio and pad them with index 1.

        Frame start ``round(start * label_rate / sr)``, frame count
        ``round(audio_size * label_rate / sr)``, limited to the shortest remainder when not
        padding audio. Sequence labels (``label_rate < 0``) are kept whole.

        Returns:
            ``(targets (B, T) int64, lengths (B,) int64)``.
        """
        if label_rate > 0:
            s2f = label_rate / self.sample_rate
            frame_starts = [int(round(s * s2f)) for s in starts]
            frame_size = int(round(audio_size * s2f))
            if not self.pad_audio:
                frame_size = min(frame_size, *(len(t) - s for t, s in zip(targets, frame_starts)))
            frame_size = max(frame_size, 0)
            targets = [t[s : s + frame_size] for t, s in zip(targets, frame_starts)]
        lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        out = torch.full((len(targets), int(lengths.max())), PAD, dtype=torch.long)
        for b, t in enumerate(targets):
            out[b, : len(t)] = t
        return out, lengths

    def collate(
        self, items: Sequence[dict[str, Any]], source_keys: Sequence[str] = ("source",)
    ) -> dict[str, Any]:
        """Collate items whose ``source_keys`` hold equally long waveforms, cropped alike."""
        items = [s for s in items if s.get(source_keys[0]) is not None]
        if not items:
            return {}
        ids = [s["id"] for s in items]
        lengths = [len(s[source_keys[0]]) for s in items]
        longest_or_shortest = max(lengths) if self.pad_audio else min(lengths)
        audio_size = int(min(longest_or_shortest, self.max_sample_size))
        starts = self.crop_starts(lengths, audio_size, ids)
        net_input: dict[str, torch.Tensor] = {}
        for key in source_keys:
            net_input[key], padding_mask = self.collate_audio(
                [s[key] for s in items], audio_size, starts
            )
        net_input["padding_mask"] = padding_mask
        targets, target_lengths = [], []
        for i, rate in enumerate(self.label_rates):
            t, n = self.collate_labels(
                [s["label_list"][i] for s in items], rate, audio_size, starts
            )
            targets.append(t)
            target_lengths.append(n)
        ntokens = [int(n.sum()) for n in target_lengths]
        return {
            "id": torch.tensor(ids, dtype=torch.long),
            "net_input": net_input,
            "target_list": targets,
            "target_lengths_list": target_lengths,
            "ntokens_list": ntokens,
            "ntokens": ntokens[0],
            "nsentences": len(items),
            "crop_starts": torch.tensor(starts, dtype=torch.long),
        }

    def collater(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Batch items (fairseq ``HubertDataset.collater``).

        Returns:
            ``{"id": (B,), "net_input": {"source": (B, L) float32, "padding_mask": (B, L) bool},
            "target_list": [(B, T_i) int64], "target_lengths_list": [(B,)], "ntokens_list":
            [int], "ntokens": int (first stream), "nsentences": B, "crop_starts": (B,)}`` with
            ``L = min(shortest, max_sample_size)`` (``pad_audio``: longest); ``{}`` for no items.
        """
        return self.collate(items, ("source",))


class HubertDataset(HubertCollater, Dataset):
    """Audio + unit labels for masked prediction (fairseq ``HubertDataset`` semantics).

    Collation is :class:`HubertCollater`'s (the attributes it reads are set here).

    Args:
        manifest: a ``Manifest`` or the path of a ``.tsv`` manifest.
        label_files: one label file (``LabelFile`` or path) per label stream.
        label_rates: labels per second of each stream (one number applies to all); a negative
            rate marks sequence labels (no frame alignment).
        dictionaries: one ``LabelDictionary`` (or ``dict.*.txt`` path) per stream; ``None`` (for
            a stream or all) keeps the integer ids as written.
        sample_rate: audio rate in Hz; files at another rate are an error unless ``resample``.
        max_sample_size: longest crop in samples (fairseq Base: 250000 = 15.6 s).
        min_sample_size: entries with fewer samples are dropped (Base: 32000 = 2 s); ``None``
            keeps all.
        random_crop: random crop starts (else every crop starts at sample 0).
        pad_audio: pad to the longest item instead of cropping to the shortest.
        normalize: per-utterance ``layer_norm`` of the waveform (HuBERT Large/XLarge).
        max_keep_size: entries with more samples are dropped; ``None``: no limit.
        seed: base seed of the crop starts.
        resample: resample files at another rate with soxr instead of raising.
        crop: read at most the manifest's ``num_samples`` of each file (ContentVec's
            ``task.crop``).
        length_tol: tolerance in seconds of the audio/label duration check and of the check of
            a decoded file against its manifest size (fairseq: 0.1).
        length_check: ``"raise"`` (default), ``"warn"`` (fairseq's behaviour) or ``"ignore"``.
        root_override: replaces the manifest's root folder (see ``read_manifest``).

    Attributes:
        sizes: (N,) int64 samples of the kept entries.
        indices: (N,) int64 manifest entry of each key.
        num_classes: classes of each label stream (``K + 4`` with a dictionary).

    Raises:
        DataError: bad manifest, label or dictionary file, no entry left after filtering, a
            label file whose line count differs from the manifest's entry count, or audio/label
            durations that disagree (``length_check="raise"``).
        ConfigError: inconsistent arguments.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        label_files: Sequence[LabelFile | str | os.PathLike],
        label_rates: float | Sequence[float],
        dictionaries: Sequence[LabelDictionary | str | os.PathLike | None] | None = None,
        sample_rate: int = 16000,
        max_sample_size: int | None = 250000,
        min_sample_size: int | None = 32000,
        random_crop: bool = True,
        pad_audio: bool = False,
        normalize: bool = False,
        max_keep_size: int | None = None,
        seed: int = 1,
        resample: bool = False,
        crop: bool = False,
        length_tol: float = 0.1,
        length_check: str = "raise",
        root_override: str | os.PathLike | None = None,
    ):
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest, root_override=root_override)
        elif root_override is not None:
            manifest = Manifest(
                Path(root_override), manifest.paths, manifest.sizes, manifest.source
            )
        if isinstance(label_files, str | os.PathLike | LabelFile):
            label_files = [label_files]
        if length_check not in ("raise", "warn", "ignore"):
            raise ConfigError(f"length_check must be raise, warn or ignore, got {length_check!r}")
        self.manifest_path = manifest.source
        self.root = manifest.root
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size if max_sample_size is not None else 2**62
        self.random_crop = random_crop
        self.pad_audio = pad_audio
        self.normalize = normalize
        self.seed = seed
        self.resample = resample
        self.crop = crop
        self.length_tol = length_tol
        self.length_check = length_check
        self.epoch = 1

        keep = np.ones(len(manifest), dtype=bool)
        if min_sample_size is not None:
            keep &= manifest.sizes >= min_sample_size
        if max_keep_size is not None:
            keep &= manifest.sizes <= max_keep_size
        self.indices = np.flatnonzero(keep).astype(np.int64)
        if len(self.indices) == 0:
            raise DataError(
                f"{manifest.source}: no entry left after filtering by size (min_sample_size="
                f"{min_sample_size}, max_keep_size={max_keep_size}, {len(manifest)} entries)"
            )
        self.sizes = manifest.sizes[self.indices].copy()
        self.paths = PackedStrings([manifest.paths[i] for i in self.indices.tolist()])
        logger.info(
            "%s: kept %d of %d entries (min_sample_size=%s, max_keep_size=%s)",
            manifest.source,
            len(self.indices),
            len(manifest),
            min_sample_size,
            max_keep_size,
        )

        self.label_files = [f if isinstance(f, LabelFile) else LabelFile(f) for f in label_files]
        n_streams = len(self.label_files)
        self.label_rates = [float(r) for r in _as_list(label_rates, n_streams, "label_rates")]
        dicts = _as_list(dictionaries, n_streams, "dictionaries")
        self.dictionaries = [
            d if d is None or isinstance(d, LabelDictionary) else LabelDictionary.load(d)
            for d in dicts
        ]
        self.num_classes = [d.num_classes if d is not None else None for d in self.dictionaries]
        names = None
        for lf, rate in zip(self.label_files, self.label_rates):
            if len(lf) != len(manifest):
                raise DataError(
                    f"number of labels does not match: {lf.path} has {len(lf)} lines but "
                    f"{manifest.source} has {len(manifest)} entries. The label file needs one "
                    "line per manifest entry, in manifest order, INCLUDING entries dropped "
                    "later by min_sample_size/max_keep_size (fairseq#5005)"
                )
            if rate > 0 and length_check != "ignore":
                if names is None:
                    names = _LazyNames(manifest, self.indices)
                check_lengths(
                    self.sizes,
                    lf.lengths[self.indices],
                    sample_rate,
                    rate,
                    length_tol,
                    names=names,
                    label_path=lf.path,
                    action=length_check,
                )

    # -- items ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sizes)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crop starts (and perturbations) the next items get."""
        self.epoch = int(epoch)

    def describe(self, index: int) -> str:
        """``"manifest.tsv:LINE (relative/path)"`` of key ``index``."""
        return f"{self.manifest_path}:{int(self.indices[index]) + 2} ({self.paths[index]})"

    def size(self, index: int) -> int:
        """Samples key ``index`` occupies in a batch: ``min(size, max_sample_size)``."""
        return int(min(self.sizes[index], self.max_sample_size))

    def num_tokens(self, index: int) -> int:
        """Same as ``size`` (the batching cost, in samples)."""
        return self.size(index)

    def load_audio(self, index: int) -> np.ndarray:
        """Waveform (L,) float32 of key ``index`` at ``sample_rate`` (mono; not normalised).

        A multi-channel file is averaged to mono with a WARNING naming it (once per file and
        process); with ``resample`` a file at another rate is resampled, also with a WARNING.

        Raises:
            DataError: unreadable file, NaN/inf samples, wrong sample rate without ``resample``
                (both rates and how to convert in the message), or a decoded
                length that differs from the manifest's by more than ``length_tol`` seconds
                (unless ``length_check="ignore"``; ``crop`` only checks files that are
                shorter). The message names the manifest line and the file.
        """
        path = self.root / self.paths[index]
        expected = int(self.sizes[index])
        try:
            wav = read_audio(
                path,
                sample_rate=self.sample_rate,
                resample=self.resample,
                frames=expected if self.crop and not self.resample else -1,
                convert_hint=RATE_HINT,
            )
        except DataError as e:
            raise DataError(f"{self.describe(index)}: {e}") from e
        if self.crop:
            wav = wav[:expected]
        diff = len(wav) - expected
        if self.length_check != "ignore" and abs(diff) > self.length_tol * self.sample_rate:
            message = (
                f"{self.describe(index)}: {path} decodes to {len(wav)} samples but the manifest "
                f"says {expected}; regenerate the manifest (its sizes align the labels)"
            )
            if self.length_check == "raise":
                raise DataError(message)
            logger.warning(message)
        return wav

    def postprocess(self, wav: np.ndarray) -> torch.Tensor:
        """(L,) float32 tensor, layer-normalised over the whole utterance when ``normalize``."""
        source = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if self.normalize:
            source = F.layer_norm(source, source.shape)
        return source

    def get_labels(self, index: int) -> list[torch.Tensor]:
        """Labels of key ``index``: one (T_i,) int64 tensor per stream (dictionary indices).

        Raises:
            DataError: a unit that is not in the stream's dictionary (label file, line and unit
                named), or a non-integer label without a dictionary.
        """
        entry = int(self.indices[index])
        out = []
        for lf, dictionary in zip(self.label_files, self.dictionaries):
            tokens = lf.read_tokens(entry)
            if dictionary is not None:
                ids = dictionary.encode_strict(tokens, f"{lf.path}:{entry + 1}")
            else:
                try:
                    ids = np.array(tokens, dtype=np.int64)
                except ValueError as e:
                    raise DataError(f"{lf.path}:{entry + 1}: non-integer label ({e})") from e
            out.append(torch.from_numpy(ids))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"id": int, "source": (L,) float32, "label_list": [(T_i,) int64]}``."""
        return {
            "id": int(index),
            "source": self.postprocess(self.load_audio(index)),
            "label_list": self.get_labels(index),
        }

    # -- batching ------------------------------------------------------------------------------
    def ordered_indices(self, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
        """Keys sorted by size, longest first, ties in random order (fairseq).

        The tie-break permutation comes from ``default_rng([seed, epoch, 2])``.
        """
        if not shuffle:
            return np.lexsort((np.arange(len(self)), self.sizes))[::-1].copy()
        rng = np.random.default_rng([seed, epoch, BATCH_STREAM])
        return np.lexsort((rng.permutation(len(self)), self.sizes))[::-1].copy()

    def batches(
        self,
        max_tokens: int | None,
        batch_size: int | None = None,
        seed: int = 1,
        epoch: int = 1,
        required_batch_size_multiple: int = 8,
        shuffle: bool = True,
    ) -> list[list[int]]:
        """The global batches of one epoch (fairseq ``ordered_indices`` + ``batch_by_size``).

        Each batch costs at most ``max_tokens`` padded samples, counting an item as
        ``min(size, max_sample_size)`` (also with ``pad_audio``, where fairseq counts the full
        size although the collater never pads beyond ``max_sample_size``). The batch order is
        permuted per epoch when ``shuffle``. Deterministic in ``(seed, epoch)``; the trainer
        gives batch ``i`` to rank ``i % world_size``.

        Raises:
            ConfigError: see ``speechkit.data.samplers.batch_by_size``.
        """
        order = self.ordered_indices(seed, epoch, shuffle)
        num_tokens = np.minimum(self.sizes, self.max_sample_size)
        try:
            batches = batch_by_size(
                order, num_tokens, max_tokens, batch_size, required_batch_size_multiple
            )
        except ConfigError as e:
            raise ConfigError(f"{self.manifest_path}: {e}") from e
        if shuffle:
            rng = np.random.default_rng([seed, epoch, BATCH_STREAM, 1])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches


class _LazyNames:
    """``names[i]`` -> ``"manifest.tsv:LINE (path)"`` of kept entry ``i`` (built on demand)."""

    def __init__(self, manifest: Manifest, indices: np.ndarray):
        self.manifest = manifest
        self.indices = indices

    def __getitem__(self, i: int) -> str:
        return self.manifest.where(int(self.indices[i]))

    def __len__(self) -> int:
        return len(self.indices)

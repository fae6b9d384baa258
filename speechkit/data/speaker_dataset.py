"""Speaker-verification datasets: random training crops and evenly spaced evaluation crops.

Follows voxceleb_trainer's ``loadWAV`` (clovaai/voxceleb_trainer, ``DatasetLoader.py``; the crop
helpers live in :mod:`speechkit.data.crop`):

* a crop of ``max_frames`` frames is ``max_frames * 160 + 240`` samples (10 ms hop and 25 ms
  window at 16 kHz); 200 frames give 32,240 samples, about 2.015 s;
* a file of at most that many samples is first wrap-padded (``np.pad`` mode ``"wrap"``, i.e.
  repeated from its start) by ``crop - length + 1`` samples;
* training: one start drawn uniformly from ``[0, length - crop)``;
* evaluation: ``num_eval`` starts ``np.linspace(0, length - crop, num_eval)`` truncated to
  integers, or the whole file when ``eval_frames == 0``.

Input policy (README, "Audio input policy"): training refuses a file whose sample rate is not
``sample_rate`` (``DataError`` naming the list line, the file and both rates; convert the data
once with ``scripts/prepare_voxceleb.py`` or ``sox IN.wav -r 16000 OUT.wav``: resampling every
crop on every epoch would be slow and silent), averages a multi-channel file to mono with a
WARNING naming it, and refuses NaN/inf samples. Evaluation (``SpeakerEvalDataset``: validation,
``eval_eer.py``, ``dump_embeddings.py``) resamples with soxr and downmixes, each with a WARNING
naming the file.

Unlike the reference, training randomness (crop start, augmentation) is a pure function of
``(seed, epoch, utterance indices)``: resuming in the middle of an epoch, or any number of
DataLoader workers, gives the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from speechkit.data.audio import audio_info, check_finite, read_audio
from speechkit.data.augment import Augmenter
from speechkit.data.augment_draws import AugmentDrawer, collate_draws
from speechkit.data.batch_buffer import empty_batch, stack_rows
from speechkit.data.crop import (
    crop_waveform,
    eval_crop_starts,
    frames_to_samples,
    random_crop,
    random_crop_start,
    wrap_pad,
)
from speechkit.data.lists import read_list_fields, speaker_to_label
from speechkit.data.wav import exact_pcm16, read_plain_wav_crop
from speechkit.errors import DataError

__all__ = ["SpeakerEvalDataset", "SpeakerTrainDataset"]

CONVERT_HINT = (
    " (the model's rate; training does not resample): convert the data to 16 kHz mono WAV "
    "once (scripts/prepare_voxceleb.py, or sox IN.wav -r 16000 -c 1 OUT.wav)"
)


class _NotPcm16(Exception):
    """A crop is not 16-bit exact (float or 24-bit audio): the batch is loaded as float32."""


class SpeakerTrainDataset(Dataset):
    """Training crops of one speaker's utterances per item, for metric and classification losses.

    An item is a GROUP: a list of ``M = n_per_speaker`` utterance indices of one speaker, as
    yielded by ``speechkit.data.samplers.speaker_balanced_batches`` (voxceleb_trainer's sampler
    yields the same). Each utterance gives one random crop of ``max_frames * 160 + 240`` samples,
    optionally augmented.

    Randomness: ``np.random.default_rng([seed, epoch, *indices])`` per item, never a global
    generator, so items are identical across resumption and DataLoader worker counts. Call
    ``set_epoch`` before creating the epoch's DataLoader iterator (with ``persistent_workers``
    the workers would keep a stale copy of the epoch).

    Args:
        items: ``[(speaker_id, path), ...]`` as returned by ``read_train_list``.
        labels: ``{speaker_id: label}``; ``None`` uses ``speaker_to_label`` of ``items``.
        max_frames: crop length in 10 ms frames (reference default 200).
        n_per_speaker: utterances per group (``nPerSpeaker``); informational, a group may have
            any length.
        augment: an ``Augmenter`` applied to every crop, an ``AugmentDrawer`` (on-device
            augmentation: the crops stay clean and the item carries the draws), or ``None``.
        seed: base seed of the per-item generators.
        sample_rate: the model's audio rate in Hz; a file at another rate is refused.
        partial_read: read only the crop from the file (header read + seek) instead of decoding
            the whole file; same samples, less I/O for long files (only the crop is checked
            for NaN/inf samples).
        list_path: the train list ``items`` came from, one item per non-blank line in order;
            errors then name ``list:LINE`` (found by re-reading the list only on an error).
        pcm16: batches loaded by ``__getitems__`` carry ``audio`` as int16 16-bit PCM
            (``audio * 2**-15`` is the float audio, exactly) when every crop of the batch is
            16-bit exact, else float32 as usual: half the bytes to send to the main process and
            the device, and no conversion in the worker. A batch found to hold a crop int16
            cannot (a float or 24-bit file) is loaded again as float32, and the file is
            remembered (per process), so that its later batches are loaded as float32 at once.
            For training paths that convert on the device (the speaker task's on-device
            augmentation); not with a worker-side ``Augmenter``, whose output is float.

    Raises:
        DataError (from ``__getitem__``): an unreadable or empty audio file, NaN/inf samples, or
            a sample rate other than ``sample_rate``; the message names the list line (with
            ``list_path``), the file, what was found and what was expected.
        KeyError: a speaker of ``items`` is missing from ``labels``.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        labels: dict[str, int] | None = None,
        max_frames: int = 200,
        n_per_speaker: int = 1,
        augment: Augmenter | None = None,
        seed: int = 10,
        sample_rate: int = 16000,
        partial_read: bool = True,
        list_path: str | os.PathLike | None = None,
        pcm16: bool = False,
    ):
        if labels is None:
            labels = speaker_to_label(s for s, _ in items)
        self.speakers = [s for s, _ in items]
        self.paths = [os.fspath(p) for _, p in items]
        self.labels = [labels[s] for s in self.speakers]
        self.label_of_speaker = dict(labels)
        self.max_frames = max_frames
        self.num_samples = frames_to_samples(max_frames)
        self.n_per_speaker = n_per_speaker
        self.augment = augment
        self.seed = seed
        self.sample_rate = sample_rate
        self.partial_read = partial_read
        self.list_path = os.fspath(list_path) if list_path is not None else None
        if pcm16 and isinstance(augment, Augmenter):
            raise ValueError("pcm16 batches need clean crops: not with a worker-side Augmenter")
        self.pcm16 = pcm16
        self._not_pcm16: set[int] = set()  # utterances seen with crops int16 cannot hold
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """Number of classes of the label map (for the classifier / loss)."""
        return len(self.label_of_speaker)

    @property
    def num_speakers(self) -> int:
        """Number of distinct speakers present in ``items``."""
        return len(set(self.labels))

    def __len__(self) -> int:
        """Number of utterances (indices valid in a group)."""
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and augmentations ``__getitem__`` produces."""
        self.epoch = int(epoch)

    def describe(self, index: int) -> str:
        """``"list.txt:LINE"`` of utterance ``index`` (with ``list_path``), else its path."""
        if self.list_path is not None:
            try:
                rows = read_list_fields(self.list_path, (2,), "speaker_id relative/path.wav")
            except DataError:
                rows = []
            if len(rows) == len(self.paths):
                return f"{self.list_path}:{rows[index][0]}"
        return self.paths[index]

    def _read(self, path: str, **kwargs: Any) -> np.ndarray:
        return read_audio(
            path, self.sample_rate, resample=False, convert_hint=CONVERT_HINT, **kwargs
        )

    def _load_crop(self, index: int, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
        """The crop of utterance ``index``: ``out`` ((L,) float32) when it was decoded into it,
        else a new array (the caller copies it)."""
        path, n = self.paths[index], self.num_samples
        if self.partial_read:
            try:  # a plain mono WAV at the model's rate: header, draw and read in one open
                fast = read_plain_wav_crop(
                    path, n, self.sample_rate, lambda total: random_crop_start(total, n, rng), out
                )
            except OSError:
                fast = None  # the general path reports it
            if fast is not None:
                wav, start = fast
                check_finite(wav, path, self.sample_rate, offset=start)
                decoded_in_place = out is not None and np.may_share_memory(wav, out)
                return out if decoded_in_place else wav
            info = audio_info(path)
            if info.sample_rate == self.sample_rate and info.frames > n:
                start = random_crop_start(info.frames, n, rng)
                wav = self._read(path, start=start, frames=n, out=out)
                if len(wav) == n:
                    return wav
                # the header over-stated the length: fall back to decoding the whole file
                # (the start was already drawn, so reuse it for reproducibility)
                return crop_waveform(self._read(path), n, start)
        return random_crop(self._read(path), n, rng)

    def _indices(self, group: int | Sequence[int]) -> list[int]:
        indices = [int(group)] if isinstance(group, int | np.integer) else [int(i) for i in group]
        labels = {self.labels[i] for i in indices}
        if len(labels) != 1:
            raise ValueError(f"a group must hold one speaker's utterances, got labels {labels}")
        return indices

    def __getitem__(self, group: int | Sequence[int]) -> dict[str, Any]:
        """Load one group.

        Args:
            group: utterance indices of ONE speaker (an int is a group of one).

        Returns:
            ``{"id": LongTensor (M,), "audio": FloatTensor (M, L), "label": int}`` with
            ``L = max_frames * 160 + 240`` samples; with an ``AugmentDrawer`` also
            ``"augment"``: the M utterances' ``UtteranceDraws`` (the audio is then clean).

        Raises:
            ValueError: the indices belong to more than one speaker.
        """
        indices = self._indices(group)
        return self._load_group(indices, torch.empty(len(indices), self.num_samples))

    def __getitems__(self, groups: Sequence[int | Sequence[int]]) -> list[dict[str, Any]]:
        """Load a batch of groups (the DataLoader calls this with a batch sampler): the same
        items as ``[self[g] for g in groups]``, their crops decoded straight into the rows of
        one (B, M, L) buffer (shared memory in a worker) that :meth:`collater` then returns
        without a copy (:mod:`speechkit.data.batch_buffer`)."""
        groups = [self._indices(g) for g in groups]
        if not groups or len({len(g) for g in groups}) != 1:
            return [self._load_group(g, torch.empty(len(g), self.num_samples)) for g in groups]
        shape = (len(groups), len(groups[0]), self.num_samples)
        if self.pcm16 and self._not_pcm16.isdisjoint(i for g in groups for i in g):
            buffer = empty_batch(shape, torch.int16)
            try:
                return [self._load_group(g, buffer[b]) for b, g in enumerate(groups)]
            except _NotPcm16:
                pass  # a crop that int16 cannot hold exactly: the batch again, in float32
        buffer = empty_batch(shape)
        return [self._load_group(g, buffer[b]) for b, g in enumerate(groups)]

    def _load_group(self, indices: list[int], audio: torch.Tensor) -> dict[str, Any]:
        """The item of one group, its M crops written into ``audio`` ((M, L) float32, or int16:
        16-bit PCM, raising ``_NotPcm16`` for a crop that int16 cannot hold exactly)."""
        rng = np.random.default_rng([self.seed, self.epoch, *indices])
        rows, draws = audio.numpy(), []
        for row, index in zip(rows, indices):
            try:
                wav = self._load_crop(index, rng, row)
            except DataError as e:
                where = self.describe(index)
                if where == self.paths[index]:
                    raise
                raise DataError(f"{where}: {e}") from e
            if isinstance(self.augment, AugmentDrawer):
                draws.append(self.augment.draw(len(wav), rng))
            elif self.augment is not None:
                wav = self.augment(wav, rng)
            if wav is not row:
                if row.dtype == np.int16:
                    wav = exact_pcm16(wav)
                    if wav is None:
                        self._not_pcm16.add(index)
                        raise _NotPcm16
                row[...] = wav
        item = {
            "id": torch.tensor(indices, dtype=torch.long),
            "audio": audio,
            "label": self.labels[indices[0]],
        }
        if isinstance(self.augment, AugmentDrawer):
            item["augment"] = draws
        return item

    def collater(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack groups into a batch.

        Returns:
            ``{"id": LongTensor (B, M), "audio": FloatTensor (B, M, L), "label": LongTensor (B,)}``
            (an empty dict for an empty list). All groups must have the same M. Items with
            augmentation draws add ``"augment"``: ``collate_draws`` of the B * M utterances in
            ``audio.reshape(B * M, L)`` order.
        """
        if not samples:
            return {}
        batch = {
            "id": torch.stack([s["id"] for s in samples]),
            "audio": stack_rows([s["audio"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        }
        if "augment" in samples[0]:
            draws = [d for s in samples for d in s["augment"]]
            batch["augment"] = collate_draws(draws, batch["audio"].shape[-1])
        return batch


class SpeakerEvalDataset(Dataset):
    """Evaluation crops, one item per unique file (voxceleb_trainer's test loader).

    Args:
        paths: audio files; duplicates are dropped, first-seen order kept (``self.paths``).
        eval_frames: crop length in 10 ms frames (reference default 300, the README uses 400);
            0 means the whole utterance as one crop.
        num_eval: number of evenly spaced crops per file (reference: 10).
        sample_rate: the model's audio rate in Hz; files at other rates are resampled with soxr
            and multi-channel files averaged, each with a WARNING naming the file.
        where: ``{path: "list.txt:LINE"}`` for error messages (paths as given in ``paths``).

    Raises:
        DataError (from ``__getitem__``): an unreadable or empty audio file or NaN/inf samples;
            the message names the list line (from ``where``) and the file.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        eval_frames: int = 300,
        num_eval: int = 10,
        sample_rate: int = 16000,
        where: dict[str, str] | None = None,
    ):
        self.paths = list(dict.fromkeys(os.fspath(p) for p in paths))
        self.where = dict(where or {})
        self.index_of_path = {p: i for i, p in enumerate(self.paths)}
        self.eval_frames = eval_frames
        self.num_eval = num_eval if eval_frames > 0 else 1
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load one file's crops.

        Returns:
            ``{"id": int, "path": str, "audio": FloatTensor (num_eval, L)}``, with
            ``L = eval_frames * 160 + 240``, or (1, L_file) when ``eval_frames == 0``.
        """
        path = self.paths[index]
        try:
            wav = read_audio(path, self.sample_rate)
        except DataError as e:
            if path not in self.where:
                raise
            raise DataError(f"{self.where[path]}: {e}") from e
        if self.eval_frames == 0:
            crops = wav[None]
        else:
            n = frames_to_samples(self.eval_frames)
            wav = wrap_pad(wav, n)
            crops = np.stack([wav[s : s + n] for s in eval_crop_starts(len(wav), n, self.num_eval)])
        return {"id": index, "path": self.paths[index], "audio": torch.from_numpy(crops)}

    def collater(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items of equal shape: batch size 1, or any batch with fixed-length crops.

        Returns:
            ``{"id": LongTensor (B,), "path": list[str], "audio": FloatTensor (B, N, L)}``.

        Raises:
            ValueError: items have different lengths (``eval_frames == 0``, batch > 1): use
                ``collater_padded``.
        """
        if not samples:
            return {}
        shapes = {tuple(s["audio"].shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot stack crops of shapes {sorted(shapes)}; use batch size 1 or "
                "collater_padded for whole-utterance evaluation"
            )
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "path": [s["path"] for s in samples],
            "audio": torch.stack([s["audio"] for s in samples]),
        }

    def collater_padded(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Zero-pad items to the longest one (for batched whole-utterance evaluation).

        Returns:
            ``{"id": LongTensor (B,), "path": list[str], "audio": FloatTensor (B, N, L_max),
            "lengths": LongTensor (B,)}``; ``lengths`` are the valid samples of each item (the
            same for all its N crops). A model must mask or trim the padding itself (zeros
            change statistics pooling).
        """
        if not samples:
            return {}
        lengths = [s["audio"].shape[-1] for s in samples]
        n = samples[0]["audio"].shape[0]
        audio = torch.zeros(len(samples), n, max(lengths))
        for b, s in enumerate(samples):
            audio[b, :, : lengths[b]] = s["audio"]
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "path": [s["path"] for s in samples],
            "audio": audio,
            "lengths": torch.tensor(lengths, dtype=torch.long),
        }

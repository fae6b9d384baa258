"""Streaming training data from tar shards (:mod:`speechkit.data.shards`), split across ranks and
DataLoader workers, shuffled through a buffer, and resumable at a sample position.

Follows the shard pipeline of wespeaker (``wespeaker/dataset/dataset.py``: shards split by rank
then by worker; ``processor.shuffle``: a shuffling buffer), with every random choice a function
of ``(seed, epoch, rank, worker)`` so that an epoch, and a resumed epoch, are reproducible.

One epoch on rank ``r`` of ``R``, with ``W`` DataLoader workers:

1. the shard list is permuted by ``default_rng([seed, epoch, 4, 0x5348])`` (``shuffle``);
2. rank ``r`` takes shards ``r, r + R, ...`` of that order; its worker ``w`` takes every
   ``W``-th of those from ``w``: each shard is read by exactly one worker of one rank;
3. a worker reads its shards in order, sample by sample, through a buffer of ``buffer_size``
   samples: once the buffer is full, each new sample replaces a uniformly drawn one, which is
   emitted (``default_rng([seed, epoch, 5, r, w, 0x5348])``); the rest is emitted in a random
   order at the end. The buffer holds the packed bytes; audio is decoded only when emitted;
4. the DataLoader (``batch_size=None``: one item per fetch) returns the workers' items
   round-robin, worker 0 first, skipping exhausted workers.

The order of a rank's items is therefore fixed by ``(seed, epoch, R, W, buffer_size)``.

**Resume position.** ``set_epoch(epoch, start)``: ``start`` is the number of items THIS RANK has
already received from its loader in this epoch (e.g. ``batches consumed * batch_size``). With
``equal_ranks`` every rank receives the same number, so the global count is
``start * world_size``. Each worker works out from the shard sizes in the index how many of its
items the first ``start`` round-robin items took, skips that many (reading only tar headers and
drawing the same buffer choices, without reading or decoding audio) and continues: as the new
loader's round-robin starts at worker 0 again, its worker ``p`` takes over the shards and buffer
of the worker whose turn would have come ``p``-th (:func:`next_turns`). The resumed epoch yields
exactly items ``start, start + 1, ...`` of the uninterrupted one. It needs the same
``R``, ``W`` and ``buffer_size`` as the interrupted run.

``equal_ranks=True`` (DDP training) stops every rank after the smallest rank's item count, so all
ranks run the same number of steps; the tail items of the larger ranks are left out this epoch
(the shard order, hence which items, changes every epoch).

Use :func:`make_shard_loader` for the DataLoader (one item per fetch, no persistent workers:
``set_epoch`` must reach the workers' copies) and :func:`batched` to collate items.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from speechkit.data.augment_draws import AugmentDrawer
from speechkit.data.crop import crop_waveform, frames_to_samples, random_crop, random_crop_start
from speechkit.data.labels import LabelDictionary
from speechkit.data.shards import (
    SampleRef,
    ShardIndex,
    ShardReader,
    decode_audio_bytes,
    read_member_bytes,
)
from speechkit.errors import ConfigError, DataError

__all__ = [
    "HubertItems",
    "ShardDataset",
    "ShardSample",
    "SpeakerItems",
    "batched",
    "decoded_item",
    "interleave_counts",
    "make_shard_loader",
    "next_turns",
]

SHARD_ORDER_STREAM, BUFFER_STREAM, TAG = 4, 5, 0x5348  # generator seeds: [seed, epoch, stream, ...]
RATE_HINT = " (resampling is off): convert the corpus once and pack it again, or set resample"


@dataclass(frozen=True)
class ShardSample:
    """One packed sample, read but not decoded (a worker decodes only what an item needs).

    Attributes:
        key: the member key in the shard (zero-padded entry number).
        index: 0-based entry of the packed list or manifest.
        meta: the sample's JSON (``path``, ``num_samples``, ``sample_rate``, ``speaker`` or
            ``labels`` ...).
        data: the audio file's bytes.
        where: ``"shard.tar:key (path)"`` for messages.
        sample_rate: the rate ``decode`` returns (Hz); another rate is refused unless
            ``resample``.
        resample: resample another rate with soxr.
    """

    key: str
    index: int
    meta: dict[str, Any]
    data: bytes
    where: str
    sample_rate: int = 16000
    resample: bool = False

    def decode(self, start: int = 0, frames: int = -1) -> np.ndarray:
        """(L,) float32 samples ``start .. start + frames`` (``-1``: to the end), decoded and
        checked like ``read_audio`` (:func:`speechkit.data.shards.decode_audio_bytes`)."""
        return decode_audio_bytes(
            self.data, self.where, self.sample_rate, self.resample, RATE_HINT, start, frames
        )


def decoded_item(sample: ShardSample, seed: int, epoch: int) -> dict[str, Any]:
    """The default item: ``{"key": str, "index": int, "meta": dict, "where": str, "audio": (L,)
    float32 tensor}`` (the whole file)."""
    return {
        "key": sample.key,
        "index": sample.index,
        "meta": sample.meta,
        "where": sample.where,
        "audio": torch.from_numpy(sample.decode()),
    }


def interleave_counts(counts: Sequence[int], n: int) -> list[int]:
    """How many items each worker gave among the first ``n`` items of a round-robin.

    The DataLoader takes one item from each worker in turn (worker 0 first), dropping a worker
    from the cycle once it is exhausted.

    Args:
        counts: (W,) items each worker yields in the epoch.
        n: items taken so far (clipped to ``sum(counts)``).

    Returns:
        (W,) items taken from each worker.
    """
    taken = [0] * len(counts)
    n = max(0, min(int(n), sum(counts)))
    active = [w for w, c in enumerate(counts) if c > 0]
    while n > 0 and active:
        k = len(active)
        full = min(n // k, min(counts[w] - taken[w] for w in active))
        for w in active:
            taken[w] += full
        n -= full * k
        if n < k and all(counts[w] > taken[w] for w in active):
            for w in active[:n]:  # a last, partial round
                taken[w] += 1
            break
        active = [w for w in active if counts[w] > taken[w]]
    return taken


def next_turns(counts: Sequence[int], taken: Sequence[int]) -> list[int]:
    """The workers in the order the round-robin serves them next, after ``taken`` items.

    Workers with items left come first, starting with the one whose turn is next (the first
    with the fewest taken), in cyclic order; the exhausted ones follow. A new DataLoader starts
    its round-robin at worker 0, so worker ``p`` of a resumed loader plays the part of worker
    ``next_turns(...)[p]``: the resumed order then continues the interrupted one exactly.

    Args:
        counts: (W,) items each worker yields in the epoch.
        taken: (W,) items taken from each (``interleave_counts(counts, n)``).

    Returns:
        A permutation of ``range(W)``.
    """
    active = [w for w in range(len(counts)) if counts[w] > taken[w]]
    done = [w for w in range(len(counts)) if counts[w] <= taken[w]]
    if not active:
        return done
    fewest = min(taken[w] for w in active)
    j = next(i for i, w in enumerate(active) if taken[w] == fewest)
    return active[j:] + active[:j] + done


class _ShuffleBuffer:
    """Reservoir-style buffer: full at ``size``; each push then emits a uniformly drawn entry."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.rng = rng
        self.items: list[Any] = []

    def push(self, item: Any) -> Any | None:
        if len(self.items) < self.size:
            self.items.append(item)
            return None
        j = int(self.rng.integers(self.size))
        out, self.items[j] = self.items[j], item
        return out

    def drain(self) -> Iterator[Any]:
        items, self.items = self.items, []
        for j in self.rng.permutation(len(items)).tolist():
            yield items[j]


class ShardDataset(IterableDataset):
    """Stream the samples of a shard folder for one rank (see the module docstring).

    Args:
        shards: a :class:`ShardIndex` or the shard folder / its ``shards.json``.
        make_item: ``make_item(sample, seed, epoch) -> item`` turns a :class:`ShardSample` into a
            task's item (:class:`SpeakerItems`, :class:`HubertItems`; default
            :func:`decoded_item`). It runs in the DataLoader worker.
        rank, world_size: this process's place among the data-parallel ranks.
        shuffle: permute the shard order every epoch and shuffle through the buffer; ``False``
            reads the shards in index order, samples in archive order.
        buffer_size: samples in each worker's shuffling buffer (memory: that many packed files;
            0 or 1: no buffer).
        seed: base seed (``common.seed``).
        equal_ranks: every rank stops after the smallest rank's item count (needed by DDP).
        sample_rate: the model's rate in Hz; a file at another rate is refused unless
            ``resample``.
        resample: resample files at another rate with soxr.

    Raises:
        DataError: a bad index, or a shard missing or of another size than the index records
            (checked here with one ``stat`` per shard); while iterating, a corrupt shard or
            sample (shard and key named).
        ConfigError: fewer shards than ranks, or a bad rank / world size / buffer size.
    """

    def __init__(
        self,
        shards: ShardIndex | str | os.PathLike,
        make_item: Callable[[ShardSample, int, int], Any] = decoded_item,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        buffer_size: int = 1000,
        seed: int = 1,
        equal_ranks: bool = False,
        sample_rate: int = 16000,
        resample: bool = False,
    ):
        self.index = shards if isinstance(shards, ShardIndex) else ShardIndex.load(shards)
        if buffer_size < 0:
            raise ConfigError(f"ShardDataset: buffer_size must be >= 0, got {buffer_size}")
        self.set_rank(rank, world_size)
        self.index.check_files()
        self.make_item = make_item
        self.shuffle = shuffle
        self.buffer_size = buffer_size if shuffle else 0
        self.seed = seed
        self.equal_ranks = equal_ranks
        self.sample_rate = sample_rate
        self.resample = resample
        self.epoch = 1
        self.start = 0
        self._counts = np.array([s.samples for s in self.index.shards], dtype=np.int64)

    # -- the plan of an epoch -----------------------------------------------------------------
    def set_rank(self, rank: int, world_size: int) -> None:
        """Place the dataset among ``world_size`` data-parallel ranks (the trainer's epoch
        iterator does this: a task builds its dataset before it knows the rank).

        Raises:
            ConfigError: ``rank`` outside ``0 .. world_size - 1``, or fewer shards than ranks.
        """
        if not 0 <= rank < world_size:
            raise ConfigError(f"ShardDataset: rank {rank} outside world size {world_size}")
        if len(self.index.shards) < world_size:
            raise ConfigError(
                f"{self.index.path}: {len(self.index.shards)} shards for {world_size} ranks; every "
                "rank needs at least one (pack with a smaller --shard-size)"
            )
        self.rank = int(rank)
        self.world_size = int(world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch, and the number of items this rank has already consumed in it.

        Call it before creating the loader's iterator (workers copy the dataset then).

        Raises:
            ConfigError: ``start`` is negative or beyond this rank's items in the epoch.
        """
        self.epoch = int(epoch)
        if not 0 <= start <= len(self):
            raise ConfigError(
                f"resume position {start} is outside epoch {epoch}'s {len(self)} items on rank "
                f"{self.rank} (same world size, workers and shards as the interrupted run?)"
            )
        self.start = int(start)

    def shard_order(self, epoch: int) -> np.ndarray:
        """(S,) shard numbers in epoch ``epoch``'s reading order (before splitting by rank)."""
        if not self.shuffle:
            return np.arange(len(self._counts))
        rng = np.random.default_rng([self.seed, epoch, SHARD_ORDER_STREAM, TAG])
        return rng.permutation(len(self._counts))

    def rank_shards(self, epoch: int, rank: int | None = None) -> np.ndarray:
        """Shard numbers read by ``rank`` (default: this rank) in ``epoch``."""
        rank = self.rank if rank is None else rank
        return self.shard_order(epoch)[rank :: self.world_size]

    def worker_shards(self, epoch: int, worker: int, num_workers: int) -> np.ndarray:
        """Shard numbers read by DataLoader worker ``worker`` of ``num_workers`` on this rank."""
        return self.rank_shards(epoch)[worker::num_workers]

    def rank_items(self, epoch: int, rank: int | None = None) -> int:
        """Items ``rank`` would read in ``epoch`` without ``equal_ranks``."""
        return int(self._counts[self.rank_shards(epoch, rank)].sum())

    def __len__(self) -> int:
        """Items this rank yields in the current epoch (``equal_ranks``: the smallest rank's)."""
        if self.equal_ranks:
            return min(self.rank_items(self.epoch, r) for r in range(self.world_size))
        return self.rank_items(self.epoch)

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.iter_worker(worker, num_workers)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[Any]:
        """The items of DataLoader worker ``worker`` of ``num_workers`` for the current epoch and
        resume position (what ``__iter__`` yields inside that worker); their round-robin
        (worker 0 first, exhausted workers dropped) is this rank's order.

        After a resume (``start > 0``) worker ``worker`` reads the shards of the worker whose
        turn comes ``worker``-th (:func:`next_turns`)."""
        per_worker = [
            int(self._counts[self.worker_shards(self.epoch, w, num_workers)].sum())
            for w in range(num_workers)
        ]
        skipped = interleave_counts(per_worker, self.start)
        role = next_turns(per_worker, skipped)[worker]
        begin = skipped[role]
        end = interleave_counts(per_worker, len(self))[role]
        for sample in self._worker_samples(role, begin, end, num_workers):
            yield self.make_item(sample, self.seed, self.epoch)

    def _worker_samples(
        self, worker: int, begin: int, end: int, num_workers: int
    ) -> Iterator[ShardSample]:
        """Samples ``begin .. end - 1`` of this worker's stream (its shuffled sample order)."""
        if begin >= end:
            return
        rng = np.random.default_rng([self.seed, self.epoch, BUFFER_STREAM, self.rank, worker, TAG])
        buffer = _ShuffleBuffer(self.buffer_size, rng)
        emitted = 0
        for s in self.worker_shards(self.epoch, worker, num_workers).tolist():
            info = self.index.shards[s]
            reader = ShardReader(self.index.shard_path(s), info.samples, info.bytes)
            for ref in reader:
                # before the resume position only the headers are read (data stays None)
                data = reader.read(ref) if emitted >= begin else None
                out = buffer.push((ref, data)) if buffer.size > 1 else (ref, data)
                if out is None:
                    continue
                if emitted >= begin:
                    yield self._decode(*out)
                emitted += 1
                if emitted >= end:
                    return
        for out in buffer.drain():
            if emitted >= begin:
                yield self._decode(*out)
            emitted += 1
            if emitted >= end:
                return

    def _decode(self, ref: SampleRef, data: dict[str, bytes] | None) -> ShardSample:
        if data is None:  # buffered before the resume position: read it now
            data = read_member_bytes(ref)
        try:
            meta = json.loads(data["json"])
            index = int(meta["index"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{ref.where}: malformed sample JSON ({e}); re-run pack_shards") from e
        if not ref.key.isdigit() or index != int(ref.key):
            raise DataError(f"{ref.where}: JSON index {index} does not match the key")
        where = f"{ref.where} ({meta.get('path', '?')})"
        audio = data[ref.members[1][0]]
        return ShardSample(ref.key, index, meta, audio, where, self.sample_rate, self.resample)


# -- items of the tasks ----------------------------------------------------------------------------
class SpeakerItems:
    """``ShardSample`` -> the item of ``SpeakerTrainDataset`` for a group of one utterance.

    Same crop and augmentation as ``SpeakerTrainDataset[[index]]`` (voxceleb_trainer's
    ``loadWAV`` crop): ``rng = default_rng([seed, epoch, index])``, a crop of
    ``max_frames * 160 + 240`` samples (wrap-padding short files; only the crop is decoded, as
    with ``partial_read``), then ``augment(wav, rng)``; so a shard item equals the list
    dataset's item of the same entry, epoch and seed.

    Args:
        label_of_speaker: ``{speaker_id: label}`` (e.g. ``speaker_to_label(index.speakers)``).
        max_frames: crop length in 10 ms frames.
        augment: an ``Augmenter``, an ``AugmentDrawer`` (the item then also carries
            ``"augment"``: its one ``UtteranceDraws``, and the audio stays clean) or ``None``.

    Returns (call):
        ``{"id": LongTensor (1,), "audio": FloatTensor (1, L), "label": int}``.

    Raises (call):
        DataError: the sample's speaker is not in ``label_of_speaker`` (shard and key named).
    """

    def __init__(
        self, label_of_speaker: dict[str, int], max_frames: int = 200, augment: Any = None
    ):
        self.label_of_speaker = dict(label_of_speaker)
        self.num_samples = frames_to_samples(max_frames)
        self.augment = augment

    @classmethod
    def from_index(cls, index: ShardIndex, **kwargs: Any) -> SpeakerItems:
        """Labels ``0 .. S-1`` of the index's sorted speakers (voxceleb_trainer's rule)."""
        return cls({s: i for i, s in enumerate(index.speakers)}, **kwargs)

    def _crop(self, sample: ShardSample, rng: np.random.Generator) -> np.ndarray:
        """Decode only the crop when the packed header says the file is long enough (as
        ``SpeakerTrainDataset`` with ``partial_read``); else the whole file, wrap-padded."""
        n = self.num_samples
        frames = int(sample.meta.get("num_samples", -1))
        if sample.meta.get("sample_rate") == sample.sample_rate and frames > n:
            start = random_crop_start(frames, n, rng)
            wav = sample.decode(start, n)
            if len(wav) == n:
                return wav
            return crop_waveform(sample.decode(), n, start)  # the header over-stated the length
        return random_crop(sample.decode(), n, rng)

    def __call__(self, sample: ShardSample, seed: int, epoch: int) -> dict[str, Any]:
        speaker = sample.meta.get("speaker")
        if speaker not in self.label_of_speaker:
            raise DataError(f"{sample.where}: speaker {speaker!r} is not in the label map")
        rng = np.random.default_rng([seed, epoch, sample.index])
        wav = self._crop(sample, rng)
        draws = None
        if isinstance(self.augment, AugmentDrawer):  # on-device augmentation: keep the draws
            draws = [self.augment.draw(len(wav), rng)]
        elif self.augment is not None:
            wav = self.augment(wav, rng)
        item = {
            "id": torch.tensor([sample.index], dtype=torch.long),
            "audio": torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)[None]),
            "label": self.label_of_speaker[speaker],
        }
        if draws is not None:
            item["augment"] = draws
        return item


class HubertItems:
    """``ShardSample`` -> the item of ``HubertDataset``: ``{"id": int, "source": (L,) float32,
    "label_list": [(T_i,) int64]}`` (fairseq ``HubertDataset.__getitem__``).

    ``id`` is the manifest entry number (``HubertDataset`` uses positions among the kept
    entries; both only seed the collater's crop starts).

    Args:
        dictionaries: one ``LabelDictionary`` (or ``None``: integer ids as written) per label
            stream of the shards.
        normalize: layer-normalise the whole waveform (HuBERT Large).

    Raises (call):
        DataError: a decoded length other than the packed ``num_samples``, a label stream count
            other than ``len(dictionaries)``, or a unit not in its dictionary / not an integer.
    """

    def __init__(self, dictionaries: Sequence[LabelDictionary | None], normalize: bool = False):
        self.dictionaries = list(dictionaries)
        self.normalize = normalize

    def __call__(self, sample: ShardSample, seed: int, epoch: int) -> dict[str, Any]:
        expected = int(sample.meta.get("num_samples", -1))
        audio = sample.decode()
        if len(audio) != expected and not sample.resample:
            raise DataError(
                f"{sample.where}: decodes to {len(audio)} samples, packed as {expected}"
            )
        lines = sample.meta.get("labels", [])
        if len(lines) != len(self.dictionaries):
            raise DataError(
                f"{sample.where}: {len(lines)} label streams in the shard, expected "
                f"{len(self.dictionaries)} (one per dictionary)"
            )
        labels = []
        for line, dictionary in zip(lines, self.dictionaries):
            tokens = line.split()
            if dictionary is not None:
                ids = dictionary.encode_strict(tokens, sample.where)
            else:
                try:
                    ids = np.array(tokens, dtype=np.int64)
                except ValueError as e:
                    raise DataError(f"{sample.where}: non-integer label ({e})") from e
            labels.append(torch.from_numpy(ids))
        source = torch.from_numpy(audio)
        if self.normalize:
            source = F.layer_norm(source, source.shape)
        return {"id": sample.index, "source": source, "label_list": labels}


# -- loading --------------------------------------------------------------------------------------
def make_shard_loader(
    dataset: ShardDataset,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader that returns the dataset's items one at a time, in the order the resume
    position assumes (``batch_size=None``, no persistent workers). Collate with :func:`batched`.

    Args:
        worker_init_fn: run in each worker at start (e.g. to ignore SIGUSR1/SIGTERM).
        generator: draws the workers' base seed when an iterator is made (``None``: the global
            RNG; a training loop passes a private one, so that making the loader draws nothing
            from the RNG that dropout uses and a resumed run stays exact).
    """
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        generator=generator,
    )


def batched(
    items: Iterable[Any],
    batch_size: int,
    collater: Callable[[list[Any]], Any],
    drop_last: bool = False,
) -> Iterator[Any]:
    """Collate consecutive items into batches of ``batch_size`` (the last may be smaller unless
    ``drop_last``). ``batches consumed * batch_size`` is then the resume ``start``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield collater(batch)
            batch = []
    if batch and not drop_last:
        yield collater(batch)

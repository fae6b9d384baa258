"""Epoch batch lists: speaker-balanced groups (speaker verification) and size-limited batches.

Both return the GLOBAL list of batches of one epoch, a deterministic function of
``(seed, epoch)``; the trainer gives batch ``i`` to rank ``i % world_size`` and skips the batches
already consumed when it resumes mid-epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from speechkit.errors import ConfigError

__all__ = ["SpeakerCoverage", "batch_by_size", "speaker_balanced_batches", "speaker_coverage"]


@dataclass(frozen=True)
class SpeakerCoverage:
    """What ``speaker_balanced_batches`` can draw from in one epoch (see ``speaker_coverage``).

    Attributes:
        speakers: distinct speakers in the list.
        utterances: utterances in the list.
        usable_speakers: speakers with at least ``n_per_speaker`` utterances (the others are
            never sampled).
        usable_utterances: utterances the sampler can put in groups per epoch (per speaker
            ``min(count, max_seg_per_spk)`` rounded down to a multiple of ``n_per_speaker``).
        n_per_speaker: the group size these counts are for.
        repeat_short: whether short speakers' utterances are repeated to fill a group.
    """

    speakers: int
    utterances: int
    usable_speakers: int
    usable_utterances: int
    n_per_speaker: int
    repeat_short: bool = False

    @property
    def unusable_speakers(self) -> int:
        return self.speakers - self.usable_speakers

    @property
    def unusable_fraction(self) -> float:
        """Share of the speakers that are never sampled (0 for an empty list)."""
        return self.unusable_speakers / self.speakers if self.speakers else 0.0

    def describe(self) -> str:
        """One line: ``"the sampler uses S of T speakers and U of V utterances per epoch ..."``."""
        why = (
            "speakers with fewer utterances fill their group with repeated crops"
            if self.repeat_short
            else "speakers with fewer utterances are never sampled"
        )
        return (
            f"the sampler uses {self.usable_speakers} of {self.speakers} speakers and "
            f"{self.usable_utterances} of {self.utterances} utterances per epoch "
            f"(n_per_speaker={self.n_per_speaker}: {why})"
        )


def speaker_coverage(
    labels: Sequence[int], n_per_speaker: int, max_seg_per_spk: int, repeat_short: bool = False
) -> SpeakerCoverage:
    """Count the speakers and utterances ``speaker_balanced_batches`` can use per epoch.

    The counts do not depend on the seed or epoch: a speaker with ``count`` utterances gives
    ``min(count, max_seg_per_spk) // n_per_speaker`` groups every epoch (some may still be
    dropped when they meet their speaker in the batch being filled).

    Args:
        labels: (N,) speaker label of each utterance.
        n_per_speaker: utterances per group (>= 1).
        max_seg_per_spk: at most this many utterances per speaker per epoch (>= 1).
        repeat_short: as in ``speaker_balanced_batches``: a speaker with fewer than
            ``n_per_speaker`` utterances is usable with all of them.

    Raises:
        ConfigError: a size < 1.
    """
    if n_per_speaker < 1 or max_seg_per_spk < 1:
        raise ConfigError(
            f"speaker_coverage: n_per_speaker ({n_per_speaker}) and max_seg_per_spk "
            f"({max_seg_per_spk}) must be >= 1"
        )
    counts: dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    usable = [
        min(c, max_seg_per_spk)
        if repeat_short and min(c, max_seg_per_spk) < n_per_speaker
        else min(c, max_seg_per_spk) // n_per_speaker * n_per_speaker
        for c in counts.values()
    ]
    return SpeakerCoverage(
        speakers=len(counts),
        utterances=len(labels),
        usable_speakers=sum(1 for u in usable if u > 0),
        usable_utterances=sum(usable),
        n_per_speaker=n_per_speaker,
        repeat_short=repeat_short,
    )


def speaker_balanced_batches(
    labels: Sequence[int],
    n_per_speaker: int,
    max_seg_per_spk: int,
    batch_size: int,
    seed: int,
    epoch: int,
    world_size: int = 1,
    repeat_short: bool = False,
) -> list[list[list[int]]]:
    """voxceleb_trainer's ``train_dataset_sampler`` (clovaai/voxceleb_trainer ``DatasetLoader.py``).

    1. A ``torch.Generator`` seeded with ``seed + epoch`` permutes all utterance indices; they
       are bucketed by speaker in that order.
    2. Per speaker (in ascending label order), the first ``min(count, max_seg_per_spk)``
       indices, rounded down to a multiple of ``n_per_speaker``, are chunked into groups of
       ``n_per_speaker``.
    3. The groups are permuted with the same generator and accepted greedily into consecutive
       batches of ``batch_size`` groups; a group whose speaker is already in the batch being
       filled is dropped for this epoch.
    4. The batch count is truncated to a multiple of ``world_size`` (the reference truncates the
       group count to a multiple of ``batch_size * world_size``; the partial last batch is
       dropped too).

    The generator calls are the reference's, so the batches match voxceleb_trainer's for the
    same labels, seed and epoch (its per-rank slicing aside).

    ``repeat_short=True`` (not in the reference) also gives every speaker with fewer than
    ``n_per_speaker`` utterances one group per epoch, its utterances repeated in turn (a
    one-utterance speaker gives ``[i, i]`` for M = 2). ``SpeakerTrainDataset`` draws an
    independent random crop (and augmentation) for each entry of a group, so the group holds
    different crops of the same recording: metric losses can then use one-utterance speakers,
    at the price of same-recording positives (no session variability).

    Args:
        labels: (N,) speaker label of each utterance.
        n_per_speaker: utterances per group (``nPerSpeaker``, M).
        max_seg_per_spk: at most this many utterances per speaker per epoch (reference 500).
        batch_size: groups (= distinct speakers) per batch, per rank.
        seed, epoch: the epoch's generator is seeded with ``seed + epoch`` (non-negative).
        world_size: number of ranks; the batch count is a multiple of it.
        repeat_short: fill the groups of speakers with fewer than ``n_per_speaker`` utterances
            by repeating them (see above) instead of never sampling those speakers.

    Returns:
        ``batches[b][g]`` = list of ``n_per_speaker`` utterance indices of one speaker; a speaker
        appears at most once per batch and every utterance at most once per epoch.

    Raises:
        ConfigError: a non-positive size, or no batch can be formed (fewer eligible speakers
            than ``batch_size``, or fewer batches than ``world_size``).
    """
    for name, value in (
        ("n_per_speaker", n_per_speaker),
        ("max_seg_per_spk", max_seg_per_spk),
        ("batch_size", batch_size),
        ("world_size", world_size),
    ):
        if value < 1:
            raise ConfigError(f"speaker_balanced_batches: {name} must be >= 1, got {value}")
    generator = torch.Generator().manual_seed(seed + epoch)

    by_speaker: dict[int, list[int]] = {}
    for index in torch.randperm(len(labels), generator=generator).tolist():
        by_speaker.setdefault(int(labels[index]), []).append(index)

    groups: list[list[int]] = []
    group_speaker: list[int] = []
    for speaker in sorted(by_speaker):
        utterances = by_speaker[speaker]
        count = min(len(utterances), max_seg_per_spk)
        if repeat_short and count < n_per_speaker:
            groups.append([utterances[k % count] for k in range(n_per_speaker)])
            group_speaker.append(speaker)
            continue
        count -= count % n_per_speaker
        for first in range(0, count, n_per_speaker):
            groups.append(utterances[first : first + n_per_speaker])
            group_speaker.append(speaker)

    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    speakers_in_current: set[int] = set()
    for g in torch.randperm(len(groups), generator=generator).tolist():
        if group_speaker[g] in speakers_in_current:
            continue
        current.append(groups[g])
        speakers_in_current.add(group_speaker[g])
        if len(current) == batch_size:
            batches.append(current)
            current, speakers_in_current = [], set()
    batches = batches[: len(batches) - len(batches) % world_size]
    if not batches:
        eligible = len(set(group_speaker))
        raise ConfigError(
            f"speaker_balanced_batches: no full batch for batch_size={batch_size} speakers x "
            f"world_size={world_size}: {eligible} speaker(s) have >= n_per_speaker="
            f"{n_per_speaker} utterances ({len(groups)} groups); lower batch_size"
        )
    return batches


def batch_by_size(
    order: Sequence[int] | np.ndarray,
    num_tokens: Sequence[int] | np.ndarray,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    required_batch_size_multiple: int = 1,
) -> list[list[int]]:
    """fairseq's ``batch_by_size``: pack consecutive indices of ``order`` into batches.

    Follows ``fairseq/data/data_utils_fast.pyx`` (``batch_by_size_vec``): an index joins the
    current batch unless that would give more than ``batch_size`` items (fairseq's
    ``max_sentences``) or a padded cost ``(len(batch) + 1) * max(num_tokens in batch)`` above
    ``max_tokens``. A full batch is emitted cut to the largest multiple of
    ``required_batch_size_multiple`` (the rest carries over to the next batch), or whole when it
    has fewer items than the multiple. The caller chooses the order (fairseq's
    ``ordered_indices``: longest first, e.g. ``HubertDataset.ordered_indices``) and any batch
    shuffling.

    Args:
        order: item indices in batching order.
        num_tokens: (N,) padded cost of each item (samples, frames or tokens), indexed by item.
        max_tokens: limit of ``count * max(num_tokens)``; ``None``: none.
        batch_size: limit of items per batch; ``None``: none.
        required_batch_size_multiple: batch sizes are multiples of this when possible.

    Returns:
        Batches of indices covering ``order`` once, in order.

    Raises:
        ConfigError: no limit, a limit < 1, or one item alone above ``max_tokens`` (the message
            names the item).
    """
    if max_tokens is None and batch_size is None:
        raise ConfigError("batch_by_size: give max_tokens and/or batch_size")
    if (
        (max_tokens is not None and max_tokens < 1)
        or (batch_size is not None and batch_size < 1)
        or required_batch_size_multiple < 1
    ):
        raise ConfigError(
            f"batch_by_size: limits must be >= 1 (max_tokens={max_tokens}, batch_size="
            f"{batch_size}, required_batch_size_multiple={required_batch_size_multiple})"
        )
    mult = required_batch_size_multiple
    batches: list[list[int]] = []
    batch: list[int] = []
    lens: list[int] = []
    for index in np.asarray(order).tolist():
        n = int(num_tokens[index])
        if max_tokens is not None and n > max_tokens:
            raise ConfigError(
                f"batch_by_size: item {index} costs {n} samples > max_tokens={max_tokens}; raise "
                "max_tokens or lower max_sample_size"
            )
        longest = max(max(lens, default=0), n)
        full = batch and (
            (batch_size is not None and len(batch) == batch_size)
            or (max_tokens is not None and longest * (len(batch) + 1) > max_tokens)
        )
        if full:
            keep = max(mult * (len(batch) // mult), len(batch) % mult)
            batches.append(batch[:keep])
            batch, lens = batch[keep:], lens[keep:]
        batch.append(index)
        lens.append(n)
    if batch:
        batches.append(batch)
    return batches

"""Worker side of on-device augmentation (``task.augmentation.on_device=true``).

A DataLoader worker then only decodes and crops: :class:`AugmentDrawer` makes, from the item's
generator, exactly the draws :class:`speechkit.data.augment.Augmenter` makes (same calls on
the same ``np.random.Generator``, in the same order), and instead of transforming the speech
crop it returns them as :class:`UtteranceDraws`: the speed factor and the start of the crop
taken from the resampled signal, the augmentation kind, the decoded RIR, and the decoded and
cropped noise segments with their SNRs. :func:`collate_draws` packs the draws of a batch into
tensors for :class:`speechkit.data.device_augment.DeviceAugmenter`, which renders them batched
on the training device.

Why the draws are made in the worker: they come from the dataset's per-item generator
(``default_rng([seed, epoch, *indices])``, :class:`speechkit.data.speaker_dataset
.SpeakerTrainDataset`), so a resumed run, any worker count and the worker path all see the same
draws, with no generator state to checkpoint. Noise segments and RIRs are decoded and cropped
here (through the Augmenter's per-process file cache) rather than kept in a device bank, so
noise and RIR corpora of any size work, and the segment a draw names is the one the worker path
would mix in.

The one draw that depends on a transform's output, the crop start after speed perturbation,
needs the resampled length: soxr's one-shot length ``int(L * rate_out / rate_in + 0.5)``
(:func:`speed_length`), checked against soxr in ``tests/test_device_augment.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import default_collate

from speechkit.data.augment import AUGMENTATIONS, Augmenter
from speechkit.data.crop import random_crop, random_crop_start
from speechkit.errors import DataError

__all__ = ["AugmentDrawer", "UtteranceDraws", "collate_draws", "speed_length"]


def speed_length(num_samples: int, factor: float, sample_rate: int) -> int:
    """Samples soxr returns when ``num_samples`` samples are resampled from
    ``sample_rate * factor`` to ``sample_rate`` Hz (what ``Augmenter.speed`` does)."""
    return int(num_samples * sample_rate / (sample_rate * factor) + 0.5)


@dataclass(frozen=True)
class UtteranceDraws:
    """What the worker path would do to one crop of L samples.

    Attributes:
        kind: one of ``AUGMENTATIONS`` ("none", "reverb", "music", "babble", "noise").
        speed: speed factor (1.0: none).
        speed_start: start of the L-sample crop in the resampled signal when it is longer than
            L (speed < 1); -1 otherwise (shorter signals are wrap-padded, no draw).
        rir: (Lr,) float32 RIR as decoded (not normalised), for ``kind == "reverb"``.
        rir_ref: instead, with a noise bank, the RIR's file index in the bank (-1: none).
        noise: (L,) float32 noise segments, one per source (3-7 for babble); empty with a
            noise bank, which cuts them on the device from ``noise_ref`` instead.
        noise_ref: ``(file index in the bank, start)`` of each segment, with a noise bank.
        snr: SNR in dB of each segment.
    """

    kind: str
    speed: float = 1.0
    speed_start: int = -1
    rir: np.ndarray | None = None
    rir_ref: int = -1
    noise: tuple[np.ndarray, ...] = ()
    noise_ref: tuple[tuple[int, int], ...] = ()
    snr: tuple[float, ...] = ()


class AugmentDrawer:
    """Draws of an :class:`Augmenter`, decoded and cropped, without transforming the speech.

    ``drawer.draw(L, rng)`` consumes ``rng`` exactly as ``augmenter(wav, rng)`` does for a
    crop of L samples, so a dataset can call it in place of the augmenter and the next draws
    (the next utterance's crop) stay the same.

    Args:
        augmenter: the configured augmenter (its files, SNR ranges, speeds and file cache).
        bank_layout: ``NoiseBank.layout`` (``{path: (file index, samples)}``) when the noise
            sources are in a :class:`speechkit.data.noise_bank.NoiseBank` on the device: noise
            segments are then drawn from the files' lengths and sent as ``noise_ref``, never
            decoded here.
    """

    def __init__(self, augmenter: Augmenter, bank_layout: dict[str, tuple[int, int]] | None = None):
        self.augmenter = augmenter
        self.bank_layout = bank_layout

    def draw(self, num_samples: int, rng: np.random.Generator) -> UtteranceDraws:
        """The draws for one crop of ``num_samples`` samples.

        Raises:
            DataError: the drawn RIR file is all zeros (as ``Augmenter.reverb``), or a noise /
                RIR file cannot be read.
        """
        aug, n = self.augmenter, num_samples
        speed, start = 1.0, -1
        if aug.speed_perturb:  # Augmenter.speed
            speed = aug.speeds[int(rng.integers(len(aug.speeds)))]
            if speed != 1.0:
                changed = speed_length(n, speed, aug.sample_rate)
                if changed > n:
                    start = random_crop_start(changed, n, rng)
        kind = aug.choices[int(rng.integers(len(aug.choices)))]  # Augmenter.__call__
        if kind == "none":
            return UtteranceDraws(kind, speed, start)
        if kind == "reverb":  # Augmenter.reverb
            path = aug.rir_files[int(rng.integers(len(aug.rir_files)))]
            if self.bank_layout is not None:  # all-zero RIRs were refused by the bank
                return UtteranceDraws(kind, speed, start, rir_ref=self.bank_layout[path][0])
            rir = aug.load(path)
            if not np.any(rir):
                raise DataError(f"{path}: the RIR is all zeros")
            return UtteranceDraws(kind, speed, start, rir=rir)
        files = aug.sources[kind]  # Augmenter.add_noise
        if kind == "babble":
            count = min(int(rng.integers(aug.num_babble[0], aug.num_babble[1] + 1)), len(files))
            chosen = rng.choice(len(files), size=count, replace=False)
        else:
            chosen = rng.integers(len(files), size=1)
        low, high = aug.snr[kind]
        noise, refs, snr = [], [], []
        for i in chosen:
            if self.bank_layout is not None:
                # random_crop's draw from the length alone (wrap_pad makes a file of at most
                # n samples n + 1 long, so its start is 0)
                file, length = self.bank_layout[files[int(i)]]
                refs.append((file, random_crop_start(max(length, n + 1), n, rng)))
            else:
                # a view of the cached file (never written to): collate_draws makes the one copy
                noise.append(random_crop(aug.load(files[int(i)]), n, rng))
            snr.append(float(rng.uniform(low, high)))
        return UtteranceDraws(
            kind, speed, start, noise=tuple(noise), noise_ref=tuple(refs), snr=tuple(snr)
        )


def collate_draws(draws: Sequence[UtteranceDraws], num_samples: int) -> dict[str, torch.Tensor]:
    """Pack the draws of N utterances (in the order of the flattened batch) into tensors.

    Noise segments and RIRs are packed (only the utterances that have them), each with the
    index of the utterance it belongs to, so a batch carries no empty rows.

    Args:
        draws: one per utterance (arrays may be numpy or torch, as the DataLoader left them).
        num_samples: the crop length L.

    Returns:
        ``kind`` (N,) long (index into ``AUGMENTATIONS``), ``speed`` (N,) float64,
        ``speed_start`` (N,) long, ``rir`` (R, Lr_max) float32 zero-padded (from a noise bank:
        (0, 1), and ``rir_file`` (R,) long names them; else ``rir_file`` is (0,)), ``rir_owner``
        (R,) long, ``noise`` (S, L) float32 (or, from a noise bank, (0, L) and the segments as
        ``noise_file`` and ``noise_start`` (S,) long; both (0,) otherwise),
        ``noise_owner`` (S,) long (non-decreasing),
        ``noise_slot`` (S,) long (position of the segment among its utterance's sources, the
        worker path's summation order) and ``noise_snr`` (S,) float64.

    Raises:
        ValueError: a noise segment is not L samples long, or the draws mix decoded segments
            or RIRs and noise-bank references.
    """
    rir_refs = [(n, d.rir_ref) for n, d in enumerate(draws) if d.rir_ref >= 0]
    rir_owner = [n for n, d in enumerate(draws) if d.rir is not None] or [n for n, _ in rir_refs]
    if rir_refs and any(d.rir is not None for d in draws):
        raise ValueError("a batch mixes decoded RIRs and noise-bank references")
    rirs = [torch.as_tensor(d.rir, dtype=torch.float32) for d in draws if d.rir is not None]
    rir = torch.zeros(len(rirs), max((len(r) for r in rirs), default=1))
    for row, r in zip(rir, rirs):
        row[: len(r)] = r
    noise_owner, noise_slot, noise, refs, snr = [], [], [], [], []
    for n, d in enumerate(draws):
        for slot, level in enumerate(d.snr):
            if d.noise_ref:
                refs.append(d.noise_ref[slot])
            else:
                segment = torch.as_tensor(d.noise[slot], dtype=torch.float32)
                if segment.shape != (num_samples,):
                    raise ValueError(
                        f"noise segment of utterance {n} has shape {tuple(segment.shape)}; "
                        f"expected ({num_samples},)"
                    )
                noise.append(segment)
            noise_owner.append(n)
            noise_slot.append(slot)
            snr.append(float(level))
    if noise and refs:
        raise ValueError("a batch mixes decoded noise segments and noise-bank references")
    return {
        "kind": torch.tensor([AUGMENTATIONS.index(d.kind) for d in draws], dtype=torch.long),
        "speed": torch.tensor([float(d.speed) for d in draws], dtype=torch.float64),
        "speed_start": torch.tensor([int(d.speed_start) for d in draws], dtype=torch.long),
        "rir": rir,
        "rir_owner": torch.tensor(rir_owner, dtype=torch.long),
        "rir_file": torch.tensor([f for _, f in rir_refs], dtype=torch.long),
        # default_collate stacks straight into shared memory in a DataLoader worker: the
        # segments are copied once, not again when the batch is sent to the main process
        "noise": default_collate(noise) if noise else torch.zeros(0, num_samples),
        "noise_file": torch.tensor([f for f, _ in refs], dtype=torch.long),
        "noise_start": torch.tensor([start for _, start in refs], dtype=torch.long),
        "noise_owner": torch.tensor(noise_owner, dtype=torch.long),
        "noise_slot": torch.tensor(noise_slot, dtype=torch.long),
        "noise_snr": torch.tensor(snr, dtype=torch.float64),
    }

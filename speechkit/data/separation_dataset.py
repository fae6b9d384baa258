"""On-the-fly two-speaker mixtures with enrolment vectors for VoiceVector target-speaker
separation (the audio-enrolment ``voicevectorae`` variant; the mixing of akamrahimi/VoiceVector's
``src/data/`` datasets).

Inputs:

* a speaker list, one ``speaker_id relative/path.wav`` line per utterance (the speaker-
  verification train-list format, ``speechkit.data.lists``), paths relative to ``root``;
* an embedding folder written by ``scripts/dump_embeddings.py``: one ``.npy`` per utterance at
  ``embedding_path(relative/path.wav)`` (``relative/path.npy``), holding crop embeddings
  ``(num_crops, D)`` or one ``(D,)``. An utterance's vector is the mean over crops, then
  L2-normalised (``speechkit.data.embedding_table.utterance_vector``). Every ``.npy`` is read
  (and checked) when the dataset is built.

One item (``index`` = the target utterance, ``index % num_utterances`` in eval mode):

1. target: a ``segment``-second crop (``S`` samples at 16 kHz) of the utterance. The offset is a
   uniform multiple of 640 samples (25 fps video frames) in ``[0, L - S]``, and 0 when the file
   has fewer than ``S + 4000`` samples (the reference's rule). A file shorter than ``S`` is
   repeated from its start (``np.pad(mode="wrap")``: ``x x x ...`` cut at ``S``), so a short
   crop holds the whole utterance followed by its own beginning again. (Deviation: the
   reference appends the file's last samples instead; a wrap keeps the speech continuous
   instead of doubling the ending.)
2. interferer: a uniformly drawn utterance of any OTHER speaker, cropped the same way, scaled so
   ``||interferer|| = ||target|| * 10 ** (r / 20)`` with ``r`` a uniform integer in
   ``[sir_low, sir_high]`` dB (default [-5, 5]). ``r`` is the interferer-to-target level in dB, as
   in the reference (``r > 0``: the interferer is louder). An all-zero interferer crop stays zero.
3. mixture = target + interferer (float32; the item's ``interferer`` is exactly that float32
   summand).
4. enrolment: ``K = num_enrol`` vectors. Training draws ``P`` uniform in ``[1, K]`` (so
   ``N = K - P`` may be 0); eval uses ``P = num_positive``. Positives: vectors of OTHER
   utterances of the target speaker (without replacement when there are at least ``P``, else with
   replacement); a speaker with no other utterance gets the target utterance's own vector ``P``
   times (as the reference does for LRS2's one-utterance "speakers"). Negatives: other
   utterances of the interferer's speaker by the same rules (the interferer utterance's own vector
   when its speaker has no other). Positives come first; the model's enrolment tokens carry no
   position, so the order does not matter. ``enrol_type`` is 1 = positive, 0 = negative.

More speakers (``speakers`` > 2): ``speakers - 1`` interferers, each of a different speaker
(from the target's and each other's), each scaled with its own ``r``; the item's ``interferer``
is their float32 sum, ``sir_db`` the first one's ``r`` and ``meta["sir_db"]`` all of them. The
``N`` negatives are shared out round-robin over the interferers (the first gets the most). The
reference also requires a different LRS "YouTube folder"; speechkit only knows speaker ids.

Mixture augmentations (training items only; the reference's ``transform`` and
``add_background_noise``, applied to the mixture only, so the target stays clean and aligned to
the unshifted speech), in this order:

1. background noise (``noise_files`` set), with probability ``noise_prob`` (reference 0.5): a
   uniformly drawn noise file, cropped at a uniform sample offset (a file shorter than ``S`` is
   wrap-repeated; a file not at 16 kHz is resampled on every read), scaled so ``10 log10(||mixture||^2 / ||noise||^2)`` equals an SNR drawn
   uniformly in ``[noise_snr_low, noise_snr_high]`` dB (reference [8, 10]), and added;
2. gain, with probability ``gain_prob`` (the reference's transform: 0.3): the mixture times
   ``10 ** (g / 20)``, ``g`` uniform in ``[-4, 5]`` dB;
3. shift, with probability ``shift_prob`` (reference 0.2): the mixture rolled later by a uniform
   integer in ``[500, 1500]`` samples (the wrapped tail re-enters at the start, as
   torch_audiomentations' ``Shift`` with its default rollover).

Their draws come from a second generator ``[seed, epoch, index, AUGMENT_STREAM]``, so switching
an augmentation on or off leaves the item's mixing and enrolment unchanged, and a resumed run
rebuilds the same items. ``meta`` records ``noise`` (file index or -1), ``noise_snr_db``,
``gain_db`` and ``shift`` (0.0 / 0 when not applied).

Lip features (the audio-visual ``voicevector_av`` variant, ``lip_dir`` set): one ``(F, D)``
``.npy`` per utterance at ``<lip_dir>/relative/path.npy`` (25 fps, 640 samples per frame; see
:mod:`speechkit.data.lip_features`). Every file's header is checked against its audio length
when the dataset is built (a missing file or a mismatch beyond ``lip_tolerance`` frames is a
``DataError`` naming it). The item's ``lip`` holds the target crop's ``S / 640`` frames on the
crop's grid (a wrapped short crop repeats its frames the same way); ``segment`` must then be a
multiple of 0.04 s. With ``embedding_dir`` null the items carry no enrolment.

Enrolment clips (``enrolment_source="clips"``, for the composite models ``voicevector_vem`` /
``voicevector_avem`` / ``voicevector_ivem`` whose frozen enrolment net turns each clip into a
vector): the positives and negatives are drawn exactly as above, but instead of their vectors the
item carries one enrolment clip per chosen utterance (:mod:`speechkit.data.enrolment_clips`:
a fresh ``enrol_segment``-second crop, by default 4 s, drawn from the item's generator after the
choice; ``enrol_lip`` (K, F, lip_dim); with ``enrol_inputs="av"`` also ``enrol_audio`` (K, F *
640), each clip mixed with its own interferer of another speaker at a drawn SIR; with ``"iv"``
``enrol_face`` (K, 3, face_dim) from ``face_dir``). The target's own ``lip`` is then not carried
(the composites do not read it) and ``embedding_dir`` must be null. ``enrolment_source="vectors"``
(the default) builds the same items as before this option existed, bit for bit.

Randomness: training items use ``np.random.default_rng([seed, epoch, index])``, so an epoch is
reproducible and a resumed run rebuilds the same items; eval items use
``np.random.default_rng([seed, EVAL_STREAM, index])``, the same mixtures every epoch.

Sample rate: audio is 16 kHz. A file at another rate is a ``DataError`` (naming the file and the
list line) unless ``resample=True``, in which case the whole file is decoded and resampled with
soxr by ``read_audio`` on every read (slow; convert the data once instead). 16 kHz files are read
only over the crop (``soundfile`` seeks).

Errors (``DataError``, naming ``list:line`` and the file): a malformed list line, a missing audio
file (all checked when built), a missing, unreadable, zero or wrong-dimension ``.npy``, fewer than
two speakers, a file at the wrong sample rate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from speechkit.data.audio import audio_info, read_audio
from speechkit.data.embedding_table import EmbeddingTable, embedding_path
from speechkit.data.enrolment_clips import ENROL_SEGMENT, EnrolmentClips, EnrolmentSource
from speechkit.data.face_embeddings import FACE_DIM
from speechkit.data.lip_features import (
    DEFAULT_TOLERANCE,
    align_lip_features,
    check_alignment,
    crop_lip_features,
    lip_feature_path,
    lip_shape,
    read_lip_features,
)
from speechkit.data.lists import check_files_exist, read_list_fields
from speechkit.errors import DataError

__all__ = [
    "ENROL_KEYS",
    "EVAL_STREAM",
    "OFFSET_STEP",
    "SAMPLE_RATE",
    "SeparationDataset",
    "collate_separation",
    "crop_offset",
    "read_separation_list",
    "scale_to_sir",
]

SAMPLE_RATE = 16000
OFFSET_STEP = 640
"""Crop offsets are multiples of 640 samples (one 25 fps video frame at 16 kHz)."""
SAMPLES_PER_FRAME = OFFSET_STEP
SHORT_MARGIN = 4000
"""Files with fewer than ``S + SHORT_MARGIN`` samples are cropped at offset 0 (the reference)."""
EVAL_STREAM = 0x5E9A
"""Extra seed word of eval items, so they never coincide with a training epoch's stream."""
AUGMENT_STREAM = 0xA06
"""Extra seed word of an item's augmentation generator."""
GAIN_DB = (-4.0, 5.0)
"""Mixture gain range in dB (the reference's transform)."""
SHIFT_SAMPLES = (500, 1500)
"""Mixture shift range in samples (the reference's transform)."""

LIST_LAYOUT = "speaker_id relative/path.wav"


def read_separation_list(
    path: str | os.PathLike, root: str | os.PathLike
) -> list[tuple[str, str, str, int]]:
    """Read a ``speaker_id relative/path.wav`` list and check the audio files exist.

    Args:
        path: the list file.
        root: folder the paths are relative to.

    Returns:
        ``[(speaker_id, relative_path, absolute_path, line_number), ...]`` in list order.

    Raises:
        DataError: missing/empty list, a line without exactly 2 fields (file:line named),
            missing audio files (count and the first few with line numbers).
    """
    path = os.fspath(path)
    root = os.path.abspath(os.fspath(root))
    rows = read_list_fields(path, (2,), LIST_LAYOUT)
    items = [
        (fields[0], fields[1], os.path.normpath(os.path.join(root, fields[1])), n)
        for n, fields in rows
    ]
    check_files_exist(path, ((n, p) for _, _, p, n in items))
    return items


def crop_offset(length: int, num_samples: int, rng: np.random.Generator) -> int:
    """Start of a ``num_samples`` crop in a file of ``length`` samples (section 1.5 step 1).

    Returns:
        0 when ``length < num_samples + 4000``; else ``640 * k`` with ``k`` uniform in
        ``[0, (length - num_samples) // 640]`` (the crop always fits).
    """
    if length < num_samples + SHORT_MARGIN:
        return 0
    return OFFSET_STEP * int(rng.integers(0, (length - num_samples) // OFFSET_STEP + 1))


def scale_to_sir(wav: np.ndarray, target_norm: float, sir_db: int) -> np.ndarray:
    """``wav`` scaled so ``||out|| = target_norm * 10 ** (sir_db / 20)`` (float64 arithmetic,
    float32 result); an all-zero ``wav`` stays zero."""
    norm = float(np.linalg.norm(wav.astype(np.float64)))
    gain = target_norm * 10.0 ** (sir_db / 20.0) / norm if norm > 0 else 0.0
    return (wav.astype(np.float64) * gain).astype(np.float32)


def _fit(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut to ``num_samples``, repeating a shorter waveform from its start (wrap padding)."""
    if len(wav) < num_samples:
        wav = np.pad(wav, (0, num_samples - len(wav)), mode="wrap")
    return np.ascontiguousarray(wav[:num_samples], dtype=np.float32)


class SeparationDataset(Dataset):
    """Two-speaker mixtures made on the fly, with positive/negative enrolment vectors.

    Args:
        list_path: ``speaker_id relative/path.wav`` list.
        root: folder the list paths are relative to.
        embedding_dir: folder of the per-utterance ``.npy`` files (same relative layout);
            ``None``: no enrolment vectors (needs ``lip_dir``).
        segment: crop length in seconds (S = round(segment * 16000) samples).
        num_enrol: K, enrolment vectors per item.
        num_positive: P in eval mode (``1 <= P <= K``); training draws P uniform in [1, K].
        eval_mode: fixed mixtures per index, independent of the epoch.
        num_items: items in eval mode (``0``: one per utterance); training always has one item
            per utterance.
        emb_dim: expected D; ``None``: taken from the first ``.npy``, then enforced.
        seed: base seed (the task sets ``common.seed`` for training).
        sir_low, sir_high: the integer interferer-to-target ratio range in dB.
        resample: resample files that are not 16 kHz (else ``DataError``).
        lip_dir: folder of per-utterance lip features (same relative layout); ``None``: none.
        lip_dim: expected lip feature size; ``None``: taken from the first file, then enforced.
        lip_tolerance: largest accepted ``|frames - samples / 640|`` per file, in frames.
        entries: the utterances as ``(speaker_id, relative_path, absolute_path, number)`` rows
            (e.g. :func:`speechkit.data.voicevector_metadata.separation_entries`) instead of
            reading ``list_path`` as a speechkit list; ``list_path`` then only names the source.
        speakers: speakers per mixture (the target and ``speakers - 1`` interferers; >= 2).
        noise_files: absolute paths of background noise files; ``None``: no noise.
        noise_prob: probability of adding noise to a training mixture.
        noise_snr_low, noise_snr_high: SNR range in dB (uniform, real-valued).
        gain_prob, shift_prob: probabilities of the mixture gain and shift (0: off).
        enrolment_source: ``vectors`` (``enrol`` from ``embedding_dir``) or ``clips``
            (enrolment clips; needs ``lip_dir`` and no ``embedding_dir``).
        enrol_inputs: the clips' inputs, ``v``, ``av`` or ``iv`` (``clips`` only).
        enrol_segment: clip length in seconds (multiple of 0.04 s; the reference's 4 s).
        face_dir: face-embedding folder (``iv``; :mod:`speechkit.data.face_embeddings`).
        face_dim: size of one face embedding (the reference's 128).

    Item (``dataset[i]``): ``mixture``, ``target``, ``interferer`` (S,) float32 tensors;
    ``enrol`` (K, D) float32; ``enrol_type`` (K,) int64; ``sir_db`` float; ``id`` int;
    ``meta``: dict of utterance indices and offsets (``target``, ``interferer``,
    ``target_offset``, ``interferer_offset``, ``interferers``, ``interferer_offsets``,
    ``sir_db`` (list), ``positives``, ``negatives``, and the augmentation record ``noise``,
    ``noise_snr_db``, ``gain_db``, ``shift``). With ``lip_dir``:
    ``lip`` (S / 640, lip_dim) float32; without ``embedding_dir``: no ``enrol`` / ``enrol_type``.
    With ``enrolment_source="clips"``: ``enrol_lip`` (K, F, lip_dim), ``enrol_audio`` (K, F *
    640) (``av``), ``enrol_face`` (K, 3, face_dim) (``iv``) and ``enrol_type`` instead of
    ``enrol`` and ``lip``.

    Raises:
        DataError: see the module docstring. ValueError: bad ``segment``, ``num_enrol``,
            ``num_positive``, SIR range, ``speakers``, probabilities or noise SNR range, or
            enrolment-clip settings (:class:`~speechkit.data.enrolment_clips.EnrolmentClips`).
            ConfigError: an unknown ``enrolment_source``.
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        root: str | os.PathLike,
        embedding_dir: str | os.PathLike | None,
        segment: float = 4.0,
        num_enrol: int = 5,
        num_positive: int = 3,
        eval_mode: bool = False,
        num_items: int = 0,
        emb_dim: int | None = None,
        seed: int = 0,
        sir_low: int = -5,
        sir_high: int = 5,
        resample: bool = False,
        lip_dir: str | os.PathLike | None = None,
        lip_dim: int | None = None,
        lip_tolerance: float = DEFAULT_TOLERANCE,
        entries: Sequence[tuple[str, str, str, int]] | None = None,
        speakers: int = 2,
        noise_files: Sequence[str] | None = None,
        noise_prob: float = 0.5,
        noise_snr_low: float = 8.0,
        noise_snr_high: float = 10.0,
        gain_prob: float = 0.0,
        shift_prob: float = 0.0,
        enrolment_source: str = "vectors",
        enrol_inputs: str = "v",
        enrol_segment: float = ENROL_SEGMENT,
        face_dir: str | os.PathLike | None = None,
        face_dim: int = FACE_DIM,
    ):
        source = str(EnrolmentSource.check(enrolment_source, "separation: enrolment_source"))
        if source == "clips" and (lip_dir is None or embedding_dir is not None):
            raise ValueError(
                "enrolment_source='clips' reads lip_dir (the enrolment clips' lip features) and "
                "no embedding_dir"
            )
        if embedding_dir is None and lip_dir is None:
            raise ValueError("a separation dataset needs embedding_dir, lip_dir or both")
        if segment <= 0:
            raise ValueError(f"segment must be positive seconds, got {segment}")
        if num_enrol < 1:
            raise ValueError(f"num_enrol must be >= 1, got {num_enrol}")
        if not 1 <= num_positive <= num_enrol:
            raise ValueError(
                f"num_positive must be in [1, num_enrol={num_enrol}], got {num_positive}"
            )
        if sir_low > sir_high:
            raise ValueError(f"empty SIR range [{sir_low}, {sir_high}] dB")
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        if speakers < 2:
            raise ValueError(f"speakers must be >= 2 (target + interferers), got {speakers}")
        for name, p in (
            ("noise_prob", noise_prob),
            ("gain_prob", gain_prob),
            ("shift_prob", shift_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if noise_snr_low > noise_snr_high:
            raise ValueError(f"empty noise SNR range [{noise_snr_low}, {noise_snr_high}] dB")
        if noise_files is not None and len(noise_files) == 0:
            raise ValueError("noise_files is empty; pass None for no background noise")
        self.speakers_per_mixture = int(speakers)
        self.noise_files = None if noise_files is None else [os.fspath(p) for p in noise_files]
        self.noise_prob = float(noise_prob)
        self.noise_snr = (float(noise_snr_low), float(noise_snr_high))
        self.gain_prob = float(gain_prob)
        self.shift_prob = float(shift_prob)
        self.list_path = os.fspath(list_path)
        self.num_samples = int(round(segment * SAMPLE_RATE))
        self.num_enrol = num_enrol
        self.num_positive = num_positive
        self.eval_mode = eval_mode
        self.seed = seed
        self.epoch = 1
        self.sir_low, self.sir_high = int(sir_low), int(sir_high)
        self.resample = resample

        if entries is None:
            entries = read_separation_list(list_path, root)
        self.speakers = [e[0] for e in entries]
        self.rel_paths = [e[1] for e in entries]
        self.paths = [e[2] for e in entries]
        self.lines = [e[3] for e in entries]
        speaker_ids = sorted(set(self.speakers))
        if len(speaker_ids) < 2:
            raise DataError(
                f"{self.list_path}: mixing needs utterances of at least 2 speakers, got "
                f"{len(speaker_ids)} ({', '.join(speaker_ids)})"
            )
        if len(speaker_ids) < self.speakers_per_mixture:
            raise DataError(
                f"{self.list_path}: mixtures of {self.speakers_per_mixture} speakers need at "
                f"least as many speakers in the list, got {len(speaker_ids)}"
            )
        self.vectors: np.ndarray | None = None
        self.emb_dim = 0
        self.embedding_dir = None if embedding_dir is None else os.fspath(embedding_dir)
        if embedding_dir is not None:
            table = EmbeddingTable(embedding_dir, emb_dim)
            self.vectors = np.stack(
                [
                    table.get(embedding_path(rel), self.where(i))
                    for i, rel in enumerate(self.rel_paths)
                ]
            ).astype(np.float32)
            self.emb_dim = int(self.vectors.shape[1])
        self.lip_dir = None if lip_dir is None else os.fspath(lip_dir)
        self.lip_dim = 0
        self.lip_tolerance = float(lip_tolerance)
        if lip_dir is not None:
            self._check_lip_features(lip_dim)
        self.clips: EnrolmentClips | None = None
        if source == "clips":
            self.clips = EnrolmentClips(self, enrol_inputs, enrol_segment, face_dir, face_dim)

        label = {s: k for k, s in enumerate(speaker_ids)}
        self.labels = np.array([label[s] for s in self.speakers], dtype=np.int64)
        # utterances grouped by speaker: order[start[k]:start[k + 1]] are speaker k's
        self.order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=len(speaker_ids))
        self.start = np.concatenate([[0], np.cumsum(counts)])
        self.num_items = num_items if (eval_mode and num_items > 0) else len(self.paths)

    def _check_lip_features(self, lip_dim: int | None) -> None:
        """Header of every lip file against its audio length (16 kHz samples)."""
        if self.num_samples % SAMPLES_PER_FRAME:
            raise ValueError(
                f"segment of {self.num_samples} samples is not a multiple of "
                f"{SAMPLES_PER_FRAME} (one 25 fps lip frame); use a multiple of 0.04 s"
            )
        self.lip_paths = [
            os.path.join(self.lip_dir, lip_feature_path(rel)) for rel in self.rel_paths
        ]
        self.audio_lens = []
        for i, path in enumerate(self.lip_paths):
            frames, dim = lip_shape(path, self.where(i), lip_dim)
            lip_dim = dim
            info = audio_info(self.paths[i])
            num = int(round(info.frames * SAMPLE_RATE / info.sample_rate))
            try:
                check_alignment(frames, num, path, self.lip_tolerance)
            except DataError as e:
                raise DataError(f"{e}; listed at {self.where(i)}") from None
            self.audio_lens.append(num)
        self.lip_dim = int(lip_dim)

    def lip_crop(self, utt: int, offset: int, num_samples: int | None = None) -> np.ndarray:
        """(num_samples / 640, lip_dim) lip frames of utterance ``utt``'s crop of
        ``num_samples`` (default S) starting at ``offset`` (needs ``lip_dir``)."""
        path = self.lip_paths[utt]
        aligned = align_lip_features(
            read_lip_features(path, self.where(utt), self.lip_dim),
            self.audio_lens[utt],
            path,
            self.lip_tolerance,
        )
        num = self.num_samples if num_samples is None else int(num_samples)
        return crop_lip_features(aligned, offset, num, self.audio_lens[utt])

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def num_speakers(self) -> int:
        return len(self.start) - 1

    def where(self, utt: int) -> str:
        """``list:line`` of utterance ``utt``."""
        return f"{self.list_path}:{self.lines[utt]}"

    def __len__(self) -> int:
        return self.num_items

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random stream (training items only)."""
        self.epoch = int(epoch)

    def _seed_words(self, index: int) -> list[int]:
        if self.eval_mode:
            return [self.seed, EVAL_STREAM, index]
        return [self.seed, self.epoch, index]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index``: ``[seed, epoch, index]`` (eval: epoch-free)."""
        return np.random.default_rng(self._seed_words(index))

    def augment_rng(self, index: int) -> np.random.Generator:
        """The augmentation generator of item ``index``: the item's seed words plus
        ``AUGMENT_STREAM``."""
        return np.random.default_rng([*self._seed_words(index), AUGMENT_STREAM])

    def utterances_of(self, utt: int) -> np.ndarray:
        """Indices of all utterances of ``utt``'s speaker (list order)."""
        k = self.labels[utt]
        return self.order[self.start[k] : self.start[k + 1]]

    # -- drawing --------------------------------------------------------------------------------
    def other_speaker_utterance(self, utt: int, rng: np.random.Generator) -> int:
        """A uniform utterance among those of every speaker but ``utt``'s."""
        k = self.labels[utt]
        a, b = self.start[k], self.start[k + 1]
        j = int(rng.integers(0, len(self.order) - (b - a)))
        if j >= a:
            j += b - a
        return int(self.order[j])

    def _more_interferers(self, used: list[int], rng: np.random.Generator) -> int:
        """A uniform utterance among those of speakers not in ``used`` (speaker labels)."""
        candidates = np.flatnonzero(~np.isin(self.labels, used))
        return int(candidates[int(rng.integers(0, len(candidates)))])

    def _enrolment(self, utt: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` utterances of ``utt``'s speaker other than ``utt`` (see module doc)."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        others = self.utterances_of(utt)
        others = others[others != utt]
        if len(others) == 0:
            return np.full(count, utt, dtype=np.int64)
        return rng.choice(others, size=count, replace=len(others) < count).astype(np.int64)

    def _noise(
        self, mixture: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, int, float]:
        """(S,) float32 noise for ``mixture`` at a drawn SNR, the file index and the SNR (dB);
        a zero noise crop or mixture gives zeros."""
        k = int(rng.integers(0, len(self.noise_files)))
        snr = float(rng.uniform(*self.noise_snr))
        path = self.noise_files[k]
        try:
            info = audio_info(path)
            if info.sample_rate == SAMPLE_RATE:
                offset = int(rng.integers(0, max(info.frames - self.num_samples, 0) + 1))
                wav = read_audio(path, SAMPLE_RATE, start=offset, frames=self.num_samples)
            else:
                wav = read_audio(path, SAMPLE_RATE)
                offset = int(rng.integers(0, max(len(wav) - self.num_samples, 0) + 1))
                wav = wav[offset:]
        except DataError as e:
            raise DataError(f"noise file {path}: {e}") from None
        noise = _fit(wav, self.num_samples).astype(np.float64)
        n_norm = float(np.linalg.norm(noise))
        m_norm = float(np.linalg.norm(mixture.astype(np.float64)))
        scale = m_norm * 10.0 ** (-snr / 20.0) / n_norm if n_norm > 0 else 0.0
        return (noise * scale).astype(np.float32), k, snr

    def _augment(self, mixture: np.ndarray, index: int, meta: dict[str, Any]) -> np.ndarray:
        """The training mixture augmentations (module docstring), recorded in ``meta``."""
        rng = self.augment_rng(index)
        if self.noise_files is not None and rng.random() < self.noise_prob:
            noise, meta["noise"], meta["noise_snr_db"] = self._noise(mixture, rng)
            mixture = mixture + noise
        if self.gain_prob > 0 and rng.random() < self.gain_prob:
            meta["gain_db"] = float(rng.uniform(*GAIN_DB))
            mixture = (mixture * 10.0 ** (meta["gain_db"] / 20.0)).astype(np.float32)
        if self.shift_prob > 0 and rng.random() < self.shift_prob:
            meta["shift"] = int(rng.integers(SHIFT_SAMPLES[0], SHIFT_SAMPLES[1] + 1))
            mixture = np.roll(mixture, meta["shift"])
        return mixture

    def read_crop(
        self, utt: int, rng: np.random.Generator, num_samples: int | None = None
    ) -> tuple[np.ndarray, int]:
        """(num_samples,) float32 crop (default S samples) of utterance ``utt`` and its offset
        (16 kHz samples; :func:`crop_offset`, short files wrap-repeated)."""
        num = self.num_samples if num_samples is None else int(num_samples)
        path = self.paths[utt]
        try:
            info = audio_info(path)
        except DataError as e:
            raise DataError(f"{self.where(utt)}: {e}") from None
        if info.sample_rate != SAMPLE_RATE:
            if not self.resample:
                raise DataError(
                    f"{path} (listed at {self.where(utt)}): sample rate is {info.sample_rate} Hz,"
                    f" expected {SAMPLE_RATE} Hz; convert the data, or set task.resample=true "
                    "to resample every read with soxr"
                )
            wav = read_audio(path, SAMPLE_RATE)
            offset = crop_offset(len(wav), num, rng)
            return _fit(wav[offset:], num), offset
        offset = crop_offset(info.frames, num, rng)
        if info.frames >= num:
            wav = read_audio(path, SAMPLE_RATE, start=offset, frames=num)
        else:
            wav = read_audio(path, SAMPLE_RATE)
        return _fit(wav, num), offset

    def crop_start(self, utt: int, rng: np.random.Generator, num_samples: int) -> int:
        """The offset :meth:`read_crop` would draw for ``num_samples``, from the audio length
        checked against the lip features (needs ``lip_dir``; the audio is not read)."""
        return crop_offset(self.audio_lens[utt], num_samples, rng)

    def noisy_crop(
        self, utt: int, rng: np.random.Generator, num_samples: int
    ) -> tuple[np.ndarray, dict[str, int]]:
        """A crop of ``utt`` plus a crop of a uniformly drawn utterance of another speaker,
        scaled to an interferer-to-target ratio uniform in ``[sir_low, sir_high]`` dB: the
        reference's noisy enrolment clip (section 1.5 step 5; no augmentation).

        Returns:
            ``(num_samples,)`` float32 mixture and ``{"offset", "interferer",
            "interferer_offset", "sir_db"}``.
        """
        clip, offset = self.read_crop(utt, rng, num_samples)
        other = self.other_speaker_utterance(utt, rng)
        wav, other_offset = self.read_crop(other, rng, num_samples)
        sir = int(rng.integers(self.sir_low, self.sir_high + 1))
        norm = float(np.linalg.norm(clip.astype(np.float64)))
        info = {"offset": offset, "interferer": other, "interferer_offset": other_offset}
        return clip + scale_to_sir(wav, norm, sir), {**info, "sir_db": sir}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_items:
            raise IndexError(f"item {index} out of range [0, {self.num_items})")
        rng = self.rng(index)
        utt = index % len(self.paths)
        other = self.other_speaker_utterance(utt, rng)
        target, t_off = self.read_crop(utt, rng)
        t_norm = float(np.linalg.norm(target.astype(np.float64)))
        others, offsets, sirs = [other], [], []
        interferer = np.zeros(self.num_samples, dtype=np.float32)
        for j in range(self.speakers_per_mixture - 1):
            if j > 0:
                others.append(self._more_interferers([self.labels[u] for u in [utt, *others]], rng))
            wav, off = self.read_crop(others[j], rng)
            sir = int(rng.integers(self.sir_low, self.sir_high + 1))
            interferer = interferer + scale_to_sir(wav, t_norm, sir)
            offsets.append(off)
            sirs.append(sir)
        mixture = target + interferer
        item: dict[str, Any] = {
            "id": index,
            "mixture": torch.from_numpy(mixture),
            "target": torch.from_numpy(target),
            "interferer": torch.from_numpy(interferer),
            "sir_db": float(sirs[0]),
            "meta": {
                "target": utt,
                "interferer": other,
                "target_offset": t_off,
                "interferer_offset": offsets[0],
                "interferers": others,
                "interferer_offsets": offsets,
                "sir_db": [float(r) for r in sirs],
                "positives": [],
                "negatives": [],
                "noise": -1,
                "noise_snr_db": 0.0,
                "gain_db": 0.0,
                "shift": 0,
            },
        }
        if not self.eval_mode:
            item["mixture"] = torch.from_numpy(self._augment(mixture, index, item["meta"]))
        if self.lip_dir is not None and self.clips is None:
            item["lip"] = torch.from_numpy(self.lip_crop(utt, t_off))
        if self.vectors is None and self.clips is None:
            return item
        num_pos = self.num_positive if self.eval_mode else int(rng.integers(1, self.num_enrol + 1))
        positives = self._enrolment(utt, num_pos, rng)
        num_neg = self.num_enrol - num_pos
        negatives = np.concatenate(
            [
                self._enrolment(o, len(range(j, num_neg, len(others))), rng)
                for j, o in enumerate(others)
            ]
        )
        chosen = np.concatenate([positives, negatives])
        enrol_type = np.concatenate(
            [np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)]
        )
        if self.clips is not None:
            item.update(self.clips.stack(chosen, rng))
        else:
            item["enrol"] = torch.from_numpy(self.vectors[chosen])
        item["enrol_type"] = torch.from_numpy(enrol_type)
        item["meta"]["positives"] = positives.tolist()
        item["meta"]["negatives"] = negatives.tolist()
        return item

    def collater(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """See ``collate_separation``."""
        return collate_separation(items)


ENROL_KEYS = ("enrol", "enrol_lip", "enrol_audio", "enrol_face")
"""Per-item enrolment tensors (N_i, ...) that :func:`collate_separation` pads to (B, N, ...)."""


def collate_separation(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch, padding the enrolment to the batch's largest count.

    Args:
        items: dataset items with equal-length waveforms (``mixture``/``target`` (T,)), their
            enrolment (``enrol_type`` (N_i,) with ``enrol`` (N_i, D) vectors or clips
            ``enrol_lip`` (N_i, F, D_lip), ``enrol_audio`` (N_i, F * 640), ``enrol_face``
            (N_i, 3, D_face)) and/or ``lip`` (F, D_lip) (all items alike).

    Returns:
        ``{"id": (B,) int64, "mixture": (B, T), "target": (B, T), "enrol": (B, N, D) zero-padded,
        "enrol_type": (B, N) int64 (padding 0), "enrol_mask": (B, N) bool (True = a real vector),
        "sir_db": (B,) float32, "nsentences": B, "ntokens": B * T}``, ``N = max_i N_i``; the
        enrolment keys only when the items have them (clips: ``enrol_lip`` (B, N, F, D_lip),
        ``enrol_audio`` (B, N, F * 640), ``enrol_face`` (B, N, 3, D_face), zero-padded, instead
        of ``enrol``), plus ``"lip": (B, F, D_lip)`` when they have ``lip``. An empty list gives
        ``{}``.

    Raises:
        ValueError: waveforms of different lengths, enrolment or lip features of different
            shapes, or items that disagree on having an enrolment key or ``lip``.
    """
    if not items:
        return {}
    lengths = {int(it["mixture"].shape[0]) for it in items}
    if len(lengths) != 1:
        raise ValueError(f"cannot batch waveforms of lengths {sorted(lengths)}")
    for key in (*ENROL_KEYS, "lip"):
        if len({key in it for it in items}) != 1:
            raise ValueError(f"cannot batch items with and without '{key}'")
    batch_size = len(items)
    mixture = torch.stack([it["mixture"] for it in items])
    batch: dict[str, Any] = {
        "id": torch.tensor([int(it["id"]) for it in items], dtype=torch.long),
        "mixture": mixture,
        "target": torch.stack([it["target"] for it in items]),
    }
    present = [key for key in ENROL_KEYS if key in items[0]]
    if present:
        n_max = max(int(it["enrol_type"].shape[0]) for it in items)
        for key in present:
            shapes = {tuple(it[key].shape[1:]) for it in items}
            if len(shapes) != 1:
                what = "dims" if key == "enrol" else f"'{key}' shapes"
                sizes = sorted(s[0] for s in shapes) if key == "enrol" else sorted(shapes)
                raise ValueError(f"cannot batch enrolment {what} {sizes}")
            padded = torch.zeros(batch_size, n_max, *shapes.pop(), dtype=torch.float32)
            for b, it in enumerate(items):
                padded[b, : it[key].shape[0]] = it[key]
            batch[key] = padded
        enrol_type = torch.zeros(batch_size, n_max, dtype=torch.long)
        enrol_mask = torch.zeros(batch_size, n_max, dtype=torch.bool)
        for b, it in enumerate(items):
            n = int(it["enrol_type"].shape[0])
            enrol_type[b, :n] = it["enrol_type"]
            enrol_mask[b, :n] = True
        batch.update(enrol_type=enrol_type, enrol_mask=enrol_mask)
    if "lip" in items[0]:
        shapes = {tuple(it["lip"].shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"cannot batch lip features of shapes {sorted(shapes)}")
        batch["lip"] = torch.stack([it["lip"] for it in items])
    batch.update(
        sir_db=torch.tensor([float(it["sir_db"]) for it in items], dtype=torch.float32),
        nsentences=batch_size,
        ntokens=int(mixture.numel()),
    )
    return batch

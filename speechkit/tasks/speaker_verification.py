"""``speaker_verification``: voxceleb_trainer's system (Chung et al., "In defence of metric
learning for speaker recognition", Interspeech 2020) on speechkit's trainer.

Training items are groups of ``n_per_speaker`` random crops of one speaker (the reference's
sampler: at most ``max_seg_per_spk`` utterances per speaker and epoch, one speaker at most once
per batch); ``dataset.batch_size`` counts speakers per batch and rank, as the reference's
``--batch_size``. The task logs how many speakers and utterances the sampler can use and warns
when most speakers have fewer than ``n_per_speaker`` utterances (never sampled, as in the
reference; ``repeat_short_speakers`` fills their groups with crops of what they have).
Validation embeds every file of ``test_list`` once (sharded over ranks) and reports EER (%) and
minDCF at p_target 0.05 and 0.01.

``task.shards=DIR`` trains from tar shards packed from a train list (``speechkit-pack-shards``;
wespeaker's shard pipeline) instead of ``task.train_list``: the utterances are streamed through
a shuffling buffer (``speechkit.data.shard_dataset``), one crop per item (``n_per_speaker`` must
be 1: a stream cannot form speaker-balanced groups), labels from the index's sorted speakers (the
labels the list would give), ``dataset.batch_size`` utterances per batch and rank.

``task.augmentation.on_device=true`` (with ``task.augment=true``): the data workers decode and
crop only and the batch carries the augmentation draws (``speechkit.data.augment_draws``, drawn
from the per-item generators as the worker path draws them); :meth:`train_step` renders them
batched on the training device (``speechkit.data.device_augment``) before the forward pass.
The models compute their log-mel / fbank front-ends from the waveform themselves, so the
front-end already runs on the device.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit import distributed as dist_utils
from speechkit.data.augment import AugmentConfig, build_augmenter
from speechkit.data.augment_draws import AugmentDrawer
from speechkit.data.batch_buffer import float_audio
from speechkit.data.device_augment import DeviceAugmenter, speed_ratio
from speechkit.data.epoch_iterator import (
    Batching,
    StreamBatches,
    check_data_resume,
    shards_state,
    stream_layout,
)
from speechkit.data.lists import read_train_list, speaker_to_label
from speechkit.data.noise_bank import NoiseBank
from speechkit.data.samplers import speaker_balanced_batches, speaker_coverage
from speechkit.data.shard_dataset import ShardDataset, SpeakerItems
from speechkit.data.shards import ShardIndex
from speechkit.data.speaker_dataset import SpeakerTrainDataset
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError
from speechkit.inference.speaker_embedding import extract_embeddings, score_trials
from speechkit.metrics.scoring import TrialList, read_trial_list
from speechkit.metrics.verification import evaluate_scores
from speechkit.registry import ChoiceEnum, register_task
from speechkit.tasks.base import Task, model_embed_dim

logger = logging.getLogger(__name__)


class SpeakerScoring(ChoiceEnum):
    """Trial scoring rules (``speechkit.inference.speaker_embedding.score_trials``)."""

    cosine = "cosine"
    crop_distance = "crop_distance"
    syncnet_reference = "syncnet_reference"


@dataclass
class SpeakerVerificationConfig(SpeechkitDataclass):
    root: str = "."
    """Folder the train-list paths are relative to (the reference's ``--train_path``)."""
    train_list: str | None = None
    """``speaker_id relative/path.wav`` per line (this or ``shards``)."""
    shards: str | None = None
    """Folder of tar shards packed from a train list (``speechkit-pack-shards --train-list``),
    read instead of ``train_list`` (set that to null)."""
    shard_buffer: int = 1000
    """Shuffling-buffer size in utterances, per DataLoader worker (``shards`` only)."""
    test_list: str | None = None
    """Trial list ``label path1 path2`` for validation (EER, minDCF); null: no validation."""
    test_root: str | None = None
    """Folder the trial paths are relative to (``--test_path``); null: ``root``."""
    max_frames: int = 200
    """Training crop in 10 ms frames (``max_frames * 160 + 240`` samples)."""
    eval_frames: int = 300
    """Validation crop in frames; 0 = whole utterances."""
    num_eval: int = 10
    """Evenly spaced validation crops per file."""
    n_per_speaker: int = 1
    """Utterances per speaker in a batch (``nPerSpeaker``); metric losses need >= 2."""
    max_seg_per_spk: int = 500
    repeat_short_speakers: bool = False
    """Speakers with fewer than ``n_per_speaker`` utterances fill their group with independent
    random crops (and augmentations) of the utterances they have, e.g. two crops of one
    utterance, instead of never being sampled (the reference's behaviour). Not in the
    reference; positives then come from one recording."""
    default_batch_size: int = 200
    """Speakers per batch and rank when ``dataset.batch_size`` is null (the reference's 200)."""
    augment: bool = False
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    """Noise / babble / reverb list files (each found like ``train_list``: relative to the
    working directory, absolute paths as given) whose lines name audio files relative to
    ``root``, the SNR ranges, and ``on_device`` (render the augmentation batched on the
    training device; the workers only decode and crop)."""
    scoring: SpeakerScoring = "cosine"
    """``cosine`` (of mean crop embeddings, default), ``crop_distance`` (voxceleb_trainer's
    -mean crop distance) or ``syncnet_reference`` (syncnet_trainer's mean cosine over all crop
    pairs: the rule that reproduces its released EER 20.4348)."""
    eval_batch_files: int = 8
    check_files: bool = True
    """Check that every listed audio file exists before training starts."""


# defaults: voxceleb_trainer names none; Fast ResNet-34 with AAM-softmax trains with the task's
# own n_per_speaker=1 (the metric losses such as angleproto need n_per_speaker >= 2)
@register_task(
    "speaker_verification",
    dataclass=SpeakerVerificationConfig,
    default_model="resnet_se34l",
    default_criterion="aamsoftmax",
)
class SpeakerVerificationTask(Task):
    """Speaker-verification training and EER validation.

    Raises (at construction, before any model is built):
        DataError: missing or malformed lists, or listed audio files that do not exist (all
            are checked; the count and the first paths are reported).
        ConfigError: an unknown scoring, ``n_per_speaker < 1``, neither or both of
            ``train_list`` and ``shards``, ``shards`` with ``n_per_speaker > 1``, or
            ``augmentation.on_device`` with a speed that is not a ratio ``down / up``
            (``up <= 1000``), or ``augmentation.noise_bank`` without ``on_device``.
    """

    needs = (
        "task.train_list=FILE with 'speaker_id relative/path.wav' lines (paths relative to "
        "task.root) or task.shards=DIR packed from one, and optionally task.test_list=FILE with "
        "'label path1 path2' trials"
    )

    def __init__(self, cfg: SpeakerVerificationConfig, seed: int = 1):
        super().__init__(cfg, seed)
        SpeakerScoring.check(cfg.scoring, "task.scoring")  # for configs built in Python
        if cfg.n_per_speaker < 1:
            raise ConfigError(f"task.n_per_speaker must be >= 1, got {cfg.n_per_speaker}")
        has_list = cfg.train_list not in ("???", "", None)
        if cfg.shards:
            if has_list:
                raise ConfigError(
                    f"task.train_list={cfg.train_list} and task.shards={cfg.shards} are both "
                    "set; train from one (e.g. add task.train_list=null)"
                )
            self._init_shards()
        elif not has_list:
            raise self.missing_config_error(["train_list"])
        else:
            self.shard_index = None
            self.train_items = read_train_list(
                cfg.train_list, cfg.root, check_exists=cfg.check_files
            )
            self.label_of_speaker = speaker_to_label(s for s, _ in self.train_items)
            self.coverage = speaker_coverage(
                [self.label_of_speaker[s] for s, _ in self.train_items],
                cfg.n_per_speaker,
                cfg.max_seg_per_spk,
                repeat_short=cfg.repeat_short_speakers,
            )
            self._log_coverage()
        self.device_augment = None
        if cfg.augmentation.noise_bank and not (cfg.augment and cfg.augmentation.on_device):
            raise ConfigError(
                "task.augmentation.noise_bank=true keeps the noise sources on the training "
                "device for the on-device augmentation; it needs task.augment=true and "
                "task.augmentation.on_device=true"
            )
        if cfg.augment and cfg.augmentation.on_device:
            if cfg.augmentation.speed_perturb:
                for factor in cfg.augmentation.speeds:
                    speed_ratio(factor)  # a ConfigError now, not at the first batch
            self.device_augment = DeviceAugmenter(level_eps=cfg.augmentation.level_eps)
        self.trials: TrialList | None = None
        if cfg.test_list:
            test_root = cfg.test_root if cfg.test_root is not None else cfg.root
            self.trials = read_trial_list(cfg.test_list, test_root)
            if not self.trials.has_labels:
                raise DataError(f"{cfg.test_list}: validation needs 'label path1 path2' lines")
            if cfg.check_files:
                files = [self.trials.resolve(p) for p in self.trials.unique_paths()]
                missing = [str(p) for p in files if not p.is_file()]
                if missing:
                    raise DataError(
                        f"{cfg.test_list}: {len(missing)} of {len(files)} trial files not found "
                        f"under {test_root} (first: {', '.join(missing[:3])})"
                    )

    def _init_shards(self) -> None:
        """Read and check the shard index; labels from its sorted speakers (``speaker_to_label``
        of the packed list)."""
        cfg = self.cfg
        if cfg.n_per_speaker > 1:
            raise ConfigError(
                f"task.shards streams single utterances, but task.n_per_speaker="
                f"{cfg.n_per_speaker}: speaker-balanced groups (which metric losses such as "
                "angleproto need) cannot be drawn from a stream; use task.train_list, or "
                "task.n_per_speaker=1 with a classification loss (criterion=aamsoftmax or softmax)"
            )
        if cfg.shard_buffer < 0:
            raise ConfigError(f"task.shard_buffer must be >= 0, got {cfg.shard_buffer}")
        self.shard_index = ShardIndex.load(cfg.shards)
        if self.shard_index.kind != "speaker":
            raise DataError(
                f"{self.shard_index.path}: packed from a {self.shard_index.kind}; "
                "speaker_verification needs shards packed from a train list (--train-list)"
            )
        self.shard_index.check_files()
        self.train_items, self.coverage = [], None  # no list: the sampler's coverage is moot
        self.label_of_speaker = speaker_to_label(self.shard_index.speakers)
        logger.info(
            "%s: %d utterances of %d speakers in %d shards",
            self.shard_index.path,
            self.shard_index.num_samples,
            len(self.label_of_speaker),
            len(self.shard_index.shards),
        )

    def check_resume(self, state: dict, env: Any, batching: Batching) -> None:
        """Called by the trainer with the checkpoint it resumes from: refuse a mid-epoch resume
        of a list run's checkpoint (``task.train_list``) from shards or the reverse, and, with
        ``shards``, one under another world size, worker count, buffer or batch size, or from
        another shard index (the stream's order depends on them;
        :func:`speechkit.data.epoch_iterator.check_data_resume`).

        Raises:
            ConfigError: naming the values or data sources that differ.
        """
        layout = stream_layout(env.world_size, batching, self.cfg.shard_buffer)
        check_data_resume(state, self.cfg, "train_list", layout, self.shard_index)

    def data_state(self) -> dict[str, Any]:
        """The shard index digest (``shards_state``); nothing for a list run."""
        return shards_state(self.shard_index)

    def _log_coverage(self) -> None:
        """Log how much of the train list the sampler uses; WARN when most speakers are unused."""
        cov, cfg = self.coverage, self.cfg
        logger.info("%s: %s", cfg.train_list, cov.describe())
        if cov.unusable_fraction > 0.5:
            logger.warning(
                "%s: %d of %d speakers (%.0f%%) have fewer than task.n_per_speaker=%d "
                "utterances and will NEVER be sampled; %s. To train on them: "
                "task.n_per_speaker=1 with a classification loss (criterion=aamsoftmax or "
                "softmax), or task.repeat_short_speakers=true (different crops of the same "
                "utterance as a speaker's group)",
                cfg.train_list,
                cov.unusable_speakers,
                cov.speakers,
                100 * cov.unusable_fraction,
                cfg.n_per_speaker,
                cov.describe(),
            )

    @property
    def num_classes(self) -> int:
        """Training speakers (the classifier size of softmax-type losses)."""
        return len(self.label_of_speaker)

    def build_model(self, cfg: Any) -> nn.Module:
        """Build the model and record its ``embed_dim`` (criterions size their heads by it).

        Raises:
            ConfigError: the model declares no integer ``embed_dim``.
        """
        model = super().build_model(cfg)
        self.embed_dim = model_embed_dim(model, "speaker_verification")
        return model

    def has_split(self, split: str) -> bool:
        return split == "train"

    def load_dataset(self, split: str) -> SpeakerTrainDataset | ShardDataset:
        if split != "train":
            raise ValueError(
                f"speaker_verification has no '{split}' dataset (validation uses the trial list)"
            )
        cfg = self.cfg
        augment = build_augmenter(cfg.augmentation, cfg.root) if cfg.augment else None
        if augment is not None and self.device_augment is not None:
            layout = None
            if cfg.augmentation.noise_bank and (any(augment.sources.values()) or augment.rir_files):
                if self.device_augment.noise_bank is None:
                    self.device_augment.noise_bank = NoiseBank.from_augmenter(augment)
                layout = self.device_augment.noise_bank.layout
            # workers draw, decode and crop (noise segments and RIRs only without a bank);
            # train_step renders the augmentation
            augment = AugmentDrawer(augment, layout)
        if self.shard_index is not None:  # placed on its rank by the epoch iterator
            items = SpeakerItems(self.label_of_speaker, cfg.max_frames, augment)
            return ShardDataset(
                self.shard_index, items, buffer_size=cfg.shard_buffer, seed=self.seed
            )
        return SpeakerTrainDataset(
            self.train_items,
            self.label_of_speaker,
            max_frames=cfg.max_frames,
            n_per_speaker=cfg.n_per_speaker,
            augment=augment,
            seed=self.seed,
            list_path=cfg.train_list,
            # on-device augmentation: the workers send 16-bit PCM, train_step scales it
            pcm16=self.device_augment is not None,
        )

    def set_epoch(self, split: str, epoch: int) -> None:
        self.dataset(split).set_epoch(epoch)

    def train_step(
        self, sample: Any, model_and_criterion: nn.Module, update_num: int
    ) -> tuple[torch.Tensor, int, dict]:
        """With ``augmentation.on_device``: scale 16-bit PCM crops (int16 ``audio``, see
        ``SpeakerTrainDataset(pcm16=True)``) to float on the device, augment them where they
        are (``DeviceAugmenter``, from the draws the workers made), then forward as the base
        task."""
        if sample["audio"].dtype == torch.int16:
            sample = {**sample, "audio": float_audio(sample["audio"])}
        if self.device_augment is not None and "augment" in sample:
            sample = self.device_augment.augment_sample(sample)
        return model_and_criterion(sample)

    def batches(
        self,
        split: str,
        epoch: int,
        batch_size: int | None = None,
        max_tokens: int | None = None,
    ) -> list[list[Any]] | StreamBatches:
        """The epoch's speaker-balanced batches; with ``shards`` a :class:`StreamBatches` of
        ``batch_size`` utterances collated like the list dataset's groups of one."""
        dataset = self.dataset(split)
        if self.shard_index is not None:
            # SpeakerTrainDataset.collater uses nothing of its instance
            return StreamBatches(
                batch_size or self.cfg.default_batch_size,
                functools.partial(SpeakerTrainDataset.collater, None),
            )
        batches = speaker_balanced_batches(
            dataset.labels,
            n_per_speaker=self.cfg.n_per_speaker,
            max_seg_per_spk=self.cfg.max_seg_per_spk,
            batch_size=batch_size or self.cfg.default_batch_size,
            seed=self.seed,
            epoch=epoch,
            repeat_short=self.cfg.repeat_short_speakers,
        )
        if not batches:
            raise DataError(
                f"{self.cfg.train_list}: no full batch of {batch_size or self.cfg.default_batch_size}"
                f" speakers x {self.cfg.n_per_speaker} utterances ({self.num_classes} speakers); "
                "lower dataset.batch_size"
            )
        return batches

    @torch.no_grad()
    def validate(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float] | None:
        """EER (%) and minDCF of the trial list: each file embedded once (files sharded over
        ranks, embeddings gathered), so the numbers do not depend on the world size. Crops are
        L2-normalised when the criterion's ``test_normalize`` says so. ``None`` without
        ``test_list``."""
        if self.trials is None:
            return None
        trials = self.trials
        normalize = bool(criterion.test_normalize)
        files = [str(trials.resolve(p)) for p in trials.unique_paths()]
        with torch.autocast(device_type=device.type, enabled=False):
            local = extract_embeddings(
                model,
                files,
                device,
                eval_frames=self.cfg.eval_frames,
                num_eval=self.cfg.num_eval,
                normalize=normalize,
                batch_files=self.cfg.eval_batch_files,
                rank=env.rank,
                world_size=env.world_size,
            )
        embeddings: dict[str, torch.Tensor] = {}
        for part in dist_utils.all_gather_object(local):
            embeddings.update(part)
        p1 = [str(trials.resolve(p)) for p in trials.paths1]
        p2 = [str(trials.resolve(p)) for p in trials.paths2]
        scores = score_trials(embeddings, p1, p2, self.cfg.scoring)
        result = evaluate_scores(scores, np.asarray(trials.labels))
        return {
            "eer": result.eer,
            "min_dcf_005": result.min_dcf_005,
            "min_dcf_001": result.min_dcf_001,
        }

"""``target_speaker_separation``: VoiceVector audio-enrolment separation (``voicevectorae``;
akamrahimi/VoiceVector ``src/data/`` and ``src/models/``) on two-speaker mixtures made on the fly.

Data preparation: a speaker list (``speaker_id relative/path.wav``, the speaker-verification
train-list format) and one ``.npy`` per utterance from a speaker model::

    python scripts/dump_embeddings.py --checkpoint sv.pt --list train.txt --list valid.txt \\
        --root DATA --out emb/
    python -m speechkit.train experiment=tss_voicevector_ae task.root=DATA \\
        task.train_list=train.txt task.valid_list=valid.txt task.embedding_dir=emb/ \\
        task.emb_dim=<D of the speaker model> model.emb_dim=<same>

Audio-visual variant (``voicevector_av``): instead of enrolment vectors, ``task.lip_dir`` names
a folder of per-utterance lip features (``<rel path>.npy``, (frames, lip_dim) at 25 fps, e.g.
from ``speechkit-dump-lip-features``) and each batch carries the target crop's frames as
``lip``; ``task.embedding_dir`` may then be null (``experiment=tss_voicevector_av``).

Enrolment clips (``task.enrolment_source=clips``; the composites ``voicevector_vem``,
``voicevector_avem``, ``voicevector_ivem``, experiments ``tss_voicevector_vem`` / ``_avem`` /
``_ivem``): instead of vectors, each positive and negative is a 4 s enrolment clip of the chosen
utterance (``task.enrol_segment``), read per ``task.enrol_inputs``: ``v`` lip features from
``task.lip_dir``, ``av`` also the clip's audio mixed with an interferer of another speaker at a
drawn SIR, ``iv`` also 3 face embeddings from ``task.face_dir``
(:mod:`speechkit.data.enrolment_clips`); the model's frozen enrolment net (trained by the
``voicevector_enrolment_distillation`` task) embeds them. ``task.embedding_dir`` is then null
and the target's own lip features are not passed. ``build_model`` refuses a built-in model
whose inputs differ from ``enrol_inputs``.

VoiceVector reference metadata (``task.metadata_format``): ``lrs_json`` reads
``train_list`` / ``valid_list`` as LRS2/LRS3 ``data.json`` files (``[relative_id, frames,
speaker]``, audio at ``<root>/<relative_id>.wav``), ``librispeech_json`` as LibriSpeech ones
(``[relative/path.flac, samples, speaker]``); they are converted to speaker-list rows by
:func:`speechkit.data.voicevector_metadata.separation_entries` (errors name the file and the
entry index). The embedding and lip folders keep the same relative layout
(``<relative path>.npy``).

Mixture augmentations (training only; see :mod:`speechkit.data.separation_dataset`):
``task.noise_list`` (a ``DNS.json`` ``[noise_file.wav, n_samples]`` list, or a text noise list
``[category] relative/path.wav``; paths relative to ``task.noise_root``, default ``task.root``)
adds background noise with probability ``noise_prob`` at an SNR uniform in
``[noise_snr_low, noise_snr_high]`` dB (the reference's 0.5 and [8, 10] dB); ``gain_prob`` and
``shift_prob`` (the reference's transform: 0.3 and 0.2; off by default) apply a -4..+5 dB gain and
a 500..1500-sample shift to the mixture only. ``task.speakers`` is the number of speakers per
mixture (the reference's ``speakers``: the target plus ``speakers - 1`` interferers).

Deviations from the reference: a file shorter than the crop is wrap-repeated from its start
(the reference pads with the file's last samples); interferers need only a different speaker
id (the reference also requires a different LRS YouTube folder); augmentations are drawn from a
separate per-item generator and are not applied to the validation mixtures; with several
interferers the negatives are shared out over all of them; the order noise, gain, shift is
speechkit's (not checked against the reference). The JSON lengths are checked to be positive
integers but not used: crops use each file's own header.

Mixing and enrolment: :mod:`speechkit.data.separation_dataset` (training: P uniform in [1, K];
validation: ``num_positive`` positives and ``num_enrol - num_positive`` negatives, fixed
mixtures seeded by ``valid_seed``). Every audio file is stat-ed and every ``.npy`` read when
the task is built, so a missing file or a wrong dimension fails before any model is built.

Validation (``validate``): the ``num_valid`` fixed mixtures of ``valid_list`` in eval mode, in
fixed batches shared out across ranks (``Task.validate_batches``), scored by the criterion. Its
summed logs (``waveform_l1`` logs ``loss``, ``si_sdr``, ``si_sdri``, ``sdr``, ``sdri`` per item)
are all-reduced and passed to its ``reduce_metrics``, so the reported numbers are means over all
mixtures whatever the world size. (The trainer's default loop would drop trailing batches to
give each rank the same number, making the numbers depend on the world size.)

With ``task.valid_extra_metrics=true``, :meth:`valid_step` also sums wide-band PESQ (ITU-T
P.862.2), STOI (Taal et al. 2011) and BSS-Eval v4 SDR (``bss_sdr``, museval's framewise SDR over
1 s windows) of the same forward pass's estimates and of the mixtures
(:func:`speechkit.metrics.separation.sum_extra_scores`: an item whose metric is not finite, e.g.
PESQ on a silent reference, is left out of that metric's sums and ``<m>_count``); the reported
``pesq``, ``pesq_mix``, ``pesqi`` (and the same for ``stoi``, ``bss_sdr``) are means over the
counted items, summed in global batch order like the criterion's logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from speechkit.data.augment import read_noise_list
from speechkit.data.enrolment_clips import MODEL_INPUTS, EnrolmentInputs, EnrolmentSource
from speechkit.data.epoch_iterator import Batching
from speechkit.data.separation_dataset import SAMPLE_RATE, SeparationDataset
from speechkit.data.voicevector_metadata import MetadataFormat, read_dns_json
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError, DataError
from speechkit.metrics.separation import EXTRA_METRICS, reduce_extra_sums, sum_extra_scores
from speechkit.registry import register_task
from speechkit.tasks.speaker_list_items import SpeakerListItemsTask


@dataclass
class TargetSpeakerSeparationConfig(SpeechkitDataclass):
    root: str = "???"
    """Folder the list paths are relative to."""
    train_list: str = "???"
    """``speaker_id relative/path.wav`` lines (at least 2 speakers), or a reference JSON data
    file (``metadata_format``)."""
    valid_list: str | None = None
    """Same format, for the fixed validation mixtures; null: no validation."""
    metadata_format: MetadataFormat = "speechkit"
    """Layout of ``train_list`` / ``valid_list``: ``speechkit`` (speaker list),
    ``librispeech_json`` (``[path, samples, speaker]``) or ``lrs_json`` (``[id, frames,
    speaker]``, audio ``<id>.wav``), the last two as in the VoiceVector reference."""
    speakers: int = 2
    """Speakers per mixture: the target and ``speakers - 1`` interferers (the reference's 2)."""
    noise_list: str | None = None
    """Background noise for training mixtures: a ``DNS.json`` (``[noise_file.wav, n_samples]``)
    or a text noise list (``[category] relative/path.wav``); null: no noise."""
    noise_root: str | None = None
    """Folder the noise paths are relative to; null: ``task.root``."""
    noise_prob: float = 0.5
    """Probability of adding noise to a training mixture (the reference's 0.5)."""
    noise_snr_low: float = 8.0
    noise_snr_high: float = 10.0
    """Noise SNR range in dB (uniform; the reference's [8, 10]), relative to the mixture."""
    gain_prob: float = 0.0
    """Probability of a -4..+5 dB mixture gain (the reference's transform: 0.3)."""
    shift_prob: float = 0.0
    """Probability of a 500..1500-sample mixture shift (the reference's transform: 0.2)."""
    embedding_dir: str | None = None
    """``scripts/dump_embeddings.py --out`` folder: ``<rel path>.npy`` (num_crops, D) per
    utterance of both lists. Required unless ``lip_dir`` is set (the AV variant)."""
    lip_dir: str | None = None
    """Lip-feature folder (``<rel path>.npy``, (frames, lip_dim) at 25 fps, 640 samples per
    frame) for ``voicevector_av``; null: no lip features."""
    lip_dim: int = 512
    """Lip feature size of the files (VTP: 512); must equal ``model.lip_dim``."""
    lip_tolerance: float = 2.0
    """Largest accepted ``|frames - samples / 640|`` per file (see speechkit.data.lip_features)."""
    segment: float = 4.0
    """Mixture length in seconds (the reference's LRS3 4 s)."""
    num_enrol: int = 5
    """K, enrolment vectors per mixture (positives + negatives)."""
    num_positive: int = 3
    """Positives at validation (the rest negatives); training draws P uniform in [1, K]."""
    emb_dim: int = 192
    """D of the ``.npy`` vectors (ECAPA: 192); must equal the files' and ``model.emb_dim``."""
    num_valid: int = 0
    """Fixed validation mixtures; 0: one per utterance of ``valid_list``."""
    valid_seed: int = 2038
    """Seed of the validation mixtures (the reference's eval seed), independent of
    ``common.seed`` and the epoch."""
    sir_low: int = -5
    sir_high: int = 5
    """Interferer-to-target ratio range in dB (integers, uniform)."""
    resample: bool = False
    """Resample non-16 kHz files on every read (else they are an error)."""
    default_batch_size: int = 40
    """Mixtures per batch when ``dataset.batch_size`` is null (the reference's 40)."""
    valid_batch_size: int = 0
    """Mixtures per validation batch; 0: the training batch size."""
    enrolment_source: EnrolmentSource = "vectors"
    """``vectors``: enrolment vectors from ``embedding_dir`` (``voicevector_ae``); ``clips``:
    enrolment clips (lip features from ``lip_dir``, plus noisy audio or face embeddings per
    ``enrol_inputs``) for the composites ``voicevector_vem`` / ``voicevector_avem`` /
    ``voicevector_ivem``, whose frozen enrolment net embeds them (``embedding_dir`` null)."""
    enrol_inputs: EnrolmentInputs = "v"
    """Clip inputs (``clips`` only): ``v`` (vem), ``av`` (avem: also each clip's audio mixed with
    an interferer) or ``iv`` (ivem: also 3 face embeddings from ``face_dir``)."""
    enrol_segment: float = 4.0
    """Enrolment clip length in seconds (the reference's 4 s = 100 lip frames)."""
    face_dir: str | None = None
    """Face-embedding folder (``<face_dir>/<relative id>/*.npy``, 128-d each) for ``iv``."""
    face_dim: int = 128
    """Size of one face embedding (the reference's 128); must equal ``model.face_dim``."""
    valid_extra_metrics: bool = False
    """Also report wide-band PESQ, STOI and BSS-Eval v4 SDR (1 s windows) at validation, for
    the estimate (``pesq``), the mixture (``pesq_mix``) and their difference (``pesqi``); costly
    (CPU, per item) and needs ``pip install 'speechkit[separation]'``."""


@register_task(
    "target_speaker_separation",
    dataclass=TargetSpeakerSeparationConfig,
    default_model="voicevector_ae",
    default_criterion="waveform_l1",
)
class TargetSpeakerSeparationTask(SpeakerListItemsTask):
    """Target-speaker separation with positive/negative enrolment vectors (VoiceVector AE) or
    the target's lip features (VoiceVector AV, ``task.lip_dir``).

    Raises (at construction, before any model is built):
        ConfigError: a required path not set (``embedding_dir`` unless ``lip_dir``), a
            ``segment`` not a multiple of 0.04 s with ``lip_dir``, bad ``segment`` / ``num_enrol`` /
            ``num_positive`` / ``num_valid`` / SIR range / ``speakers`` / augmentation
            probabilities or SNR range, enrolment-clip settings (:meth:`_check_clips`),
            ``emb_dim`` different from the
            ``.npy`` files' dimension, or ``valid_extra_metrics`` without the ``pesq`` /
            ``pystoi`` packages.
        DataError: see :mod:`speechkit.data.separation_dataset`.
    """

    required = ("root", "train_list")
    needs = (
        "task.root=DIR, task.train_list=FILE (and optionally task.valid_list=FILE) with "
        "'speaker_id relative/path.wav' lines and task.embedding_dir=DIR with one .npy per "
        "utterance (scripts/dump_embeddings.py), or task.lip_dir=DIR with lip features "
        "(scripts/dump_lip_features.py)"
    )

    def __init__(self, cfg: TargetSpeakerSeparationConfig, seed: int = 1):
        super().__init__(cfg, seed)
        self.clips = self._check_clips(cfg)
        if cfg.embedding_dir in ("???", "", None) and not cfg.lip_dir:
            raise self.missing_config_error(["embedding_dir"])
        if cfg.segment <= 0:
            raise ConfigError(f"task.segment must be positive seconds, got {cfg.segment}")
        if cfg.lip_dir and round(cfg.segment * 16000) % 640:
            raise ConfigError(
                f"task.segment={cfg.segment} s must be a multiple of 0.04 s (one 25 fps lip "
                "frame, 640 samples) when task.lip_dir is set"
            )
        if cfg.num_enrol < 1 or not 1 <= cfg.num_positive <= cfg.num_enrol:
            raise ConfigError(
                f"task.num_enrol={cfg.num_enrol}, task.num_positive={cfg.num_positive}: need "
                "num_enrol >= 1 and 1 <= num_positive <= num_enrol"
            )
        if cfg.num_valid < 0 or cfg.sir_low > cfg.sir_high:
            raise ConfigError(
                f"task.num_valid={cfg.num_valid} must be >= 0 and task.sir_low={cfg.sir_low} <= "
                f"task.sir_high={cfg.sir_high}"
            )
        if cfg.speakers < 2:
            raise ConfigError(
                f"task.speakers must be >= 2 (target + interferers), got {cfg.speakers}"
            )
        for name in ("noise_prob", "gain_prob", "shift_prob"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ConfigError(f"task.{name} must be in [0, 1], got {getattr(cfg, name)}")
        if cfg.noise_snr_low > cfg.noise_snr_high:
            raise ConfigError(
                f"task.noise_snr_low={cfg.noise_snr_low} must be <= "
                f"task.noise_snr_high={cfg.noise_snr_high}"
            )
        if cfg.valid_extra_metrics:
            for module in ("pesq", "pystoi"):
                try:
                    __import__(module)
                except ImportError:
                    raise ConfigError(
                        f"task.valid_extra_metrics=true needs the '{module}' package: pip "
                        "install 'speechkit[separation]' (or set task.valid_extra_metrics=false)"
                    ) from None
        common = dict(
            root=cfg.root,
            embedding_dir=cfg.embedding_dir,
            segment=cfg.segment,
            num_enrol=cfg.num_enrol,
            num_positive=cfg.num_positive,
            sir_low=cfg.sir_low,
            sir_high=cfg.sir_high,
            resample=cfg.resample,
            lip_dir=cfg.lip_dir or None,
            lip_dim=cfg.lip_dim if cfg.lip_dir and cfg.lip_dim > 0 else None,
            lip_tolerance=cfg.lip_tolerance,
        )
        if common["embedding_dir"] in ("???", ""):
            common["embedding_dir"] = None
        if self.clips:
            common.update(
                enrolment_source="clips",
                enrol_inputs=str(cfg.enrol_inputs),
                enrol_segment=cfg.enrol_segment,
                face_dir=cfg.face_dir or None,
                face_dim=cfg.face_dim,
            )
        common["speakers"] = cfg.speakers
        self.train_dataset = SeparationDataset(
            cfg.train_list,
            seed=self.seed,
            entries=self._entries(cfg.train_list),
            noise_files=self._noise_files(),
            noise_prob=cfg.noise_prob,
            noise_snr_low=cfg.noise_snr_low,
            noise_snr_high=cfg.noise_snr_high,
            gain_prob=cfg.gain_prob,
            shift_prob=cfg.shift_prob,
            **common,
        )
        dim = self.train_dataset.emb_dim
        if self.train_dataset.vectors is not None and cfg.emb_dim > 0 and dim != cfg.emb_dim:
            raise ConfigError(
                f"task.emb_dim={cfg.emb_dim} but the embeddings in {cfg.embedding_dir} are "
                f"{dim}-d (e.g. {self.train_dataset.embedding_dir}/...); set task.emb_dim={dim} "
                f"model.emb_dim={dim}"
            )
        self.emb_dim = dim
        self.lip_dim = self.train_dataset.lip_dim
        if self.lip_dim:
            common["lip_dim"] = self.lip_dim
        self.valid_dataset = None
        if cfg.valid_list:
            self.valid_dataset = SeparationDataset(
                cfg.valid_list,
                eval_mode=True,
                num_items=cfg.num_valid,
                emb_dim=dim or None,
                seed=cfg.valid_seed,
                entries=self._entries(cfg.valid_list),
                **common,
            )

    @staticmethod
    def _check_clips(cfg: TargetSpeakerSeparationConfig) -> bool:
        """Whether the items carry enrolment clips; checks their settings.

        Raises:
            ConfigError: ``clips`` without ``lip_dir`` or with ``embedding_dir``, ``iv``
                without ``face_dir``, an ``enrol_segment`` not a positive multiple of 0.04 s.
        """
        source = EnrolmentSource.check(cfg.enrolment_source, "task.enrolment_source")
        if source != "clips":
            return False
        inputs = EnrolmentInputs.check(cfg.enrol_inputs, "task.enrol_inputs")
        if not cfg.lip_dir:
            raise ConfigError(
                "task.enrolment_source=clips needs task.lip_dir=DIR (the enrolment clips' lip "
                "features, speechkit-dump-lip-features)"
            )
        if cfg.embedding_dir not in ("???", "", None):
            raise ConfigError(
                "task.enrolment_source=clips takes no enrolment vectors: set "
                "task.embedding_dir=null (the composite's enrolment net embeds the clips)"
            )
        if inputs == "iv" and not cfg.face_dir:
            raise ConfigError("task.enrol_inputs=iv needs task.face_dir=DIR (face embeddings)")
        samples = round(cfg.enrol_segment * 16000)
        if samples <= 0 or samples % 640:
            raise ConfigError(
                f"task.enrol_segment={cfg.enrol_segment} s must be a positive multiple of "
                "0.04 s (one 25 fps lip frame)"
            )
        return True

    def _noise_files(self) -> list[str] | None:
        """Absolute noise paths of ``task.noise_list`` (checked to exist); ``None``: none."""
        path = self.cfg.noise_list
        if not path:
            return None
        root = self.cfg.noise_root or self.cfg.root
        if path.endswith(".json"):
            return [p for p, _ in read_dns_json(path, root, check_files=True)]
        files = [p for paths in read_noise_list(path, root).values() for p in paths]
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} noise file(s) not found under {root} (is "
                f"task.noise_root right?), e.g. {missing[0]}"
            )
        return files

    # -- building -------------------------------------------------------------------------------
    def build_model(self, cfg: Any) -> nn.Module:
        """The registered model, after checking its input sizes against the data.

        Raises:
            ConfigError: a model taking enrolment vectors (``emb_dim``) without
                ``task.embedding_dir`` or of another size; one taking lip features
                (``lip_dim``) without ``task.lip_dir`` or of another size.
        """
        if self.clips:
            return self._build_composite(cfg)
        lip_dim = getattr(cfg, "lip_dim", None)
        if lip_dim is not None and not self.lip_dim:
            raise ConfigError(
                f"model {cfg._name} needs lip features: set task.lip_dir=DIR "
                "(scripts/dump_lip_features.py)"
            )
        if lip_dim is not None and lip_dim != self.lip_dim:
            raise ConfigError(
                f"model.lip_dim={lip_dim} but the lip features in {self.cfg.lip_dir} are "
                f"{self.lip_dim}-d; set model.lip_dim={self.lip_dim}"
            )
        dim = getattr(cfg, "emb_dim", None)
        if dim is not None and self.train_dataset.vectors is None:
            raise ConfigError(
                f"model {cfg._name} needs enrolment vectors: set task.embedding_dir=DIR "
                "(scripts/dump_embeddings.py)"
            )
        if dim is not None and dim != self.emb_dim:
            raise ConfigError(
                f"model.emb_dim={dim} but the enrolment vectors in {self.cfg.embedding_dir} are "
                f"{self.emb_dim}-d; set model.emb_dim={self.emb_dim}"
            )
        return super().build_model(cfg)

    def _build_composite(self, cfg: Any) -> nn.Module:
        """A model for enrolment clips, after checking its name and sizes against the data.

        Raises:
            ConfigError: a built-in model that takes other inputs than ``task.enrol_inputs``
                (e.g. ``voicevector_ae`` or ``voicevector_avem`` with ``v`` clips), or a
                ``lip_dim`` / ``face_dim`` different from the data's.
        """
        name, inputs = cfg._name, str(self.cfg.enrol_inputs)
        known = MODEL_INPUTS.get(name)
        if name in ("voicevector_ae", "voicevector_av") or (known and known != inputs):
            want = [m for m, i in MODEL_INPUTS.items() if i == inputs and "embedding" not in m]
            raise ConfigError(
                f"task.enrolment_source=clips with task.enrol_inputs={inputs} needs model "
                f"{want[0]}, got model {name}"
            )
        sizes = getattr(cfg, "enrolment", cfg)  # the composites nest their enrolment net's
        for key, have in (("lip_dim", self.lip_dim), ("face_dim", self.cfg.face_dim)):
            want = getattr(sizes, key, None)
            if want is not None and (key == "lip_dim" or inputs == "iv") and want != have:
                name = f"model.enrolment.{key}" if sizes is not cfg else f"model.{key}"
                raise ConfigError(
                    f"{name}={want} but the task's enrolment clips are {have}-d; set {name}={have}"
                )
        return super().build_model(cfg)

    # -- validation -----------------------------------------------------------------------------
    def valid_step(
        self, sample: Any, model: nn.Module, criterion: nn.Module
    ) -> tuple[torch.Tensor, int, dict]:
        """The criterion on one validation batch; with ``valid_extra_metrics`` its logs also
        hold the sums of :func:`speechkit.metrics.separation.sum_extra_scores` (``pesq``,
        ``pesqi``, ``pesq_count``, the same for ``stoi`` and ``bss_sdr``) of the estimate the
        criterion's forward pass produced (the model runs once; the criterion's numbers are
        unchanged). Scores are computed on the CPU in float64 from (B, T) 16 kHz signals.
        """
        if not self.cfg.valid_extra_metrics:
            return criterion(model, sample)
        estimates: list[torch.Tensor] = []

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = model(*args, **kwargs)
            estimates.append(out)
            return out

        loss, sample_size, log = criterion(forward, sample)
        sums = sum_extra_scores(
            estimates[-1].detach().float().cpu(),
            sample["mixture"].detach().float().cpu(),
            sample["target"].detach().float().cpu(),
            EXTRA_METRICS,
            sample_rate=SAMPLE_RATE,
        )
        return loss, sample_size, {**log, **sums}

    def reduce_metrics(self, sums: dict[str, float], criterion: nn.Module) -> dict[str, float]:
        """The criterion's metrics, plus (with ``valid_extra_metrics``) the means ``m``,
        ``m_mix`` and ``mi`` of each extra metric over the items where it is finite (NaN when
        none is); ``m_mix = m - mi`` over the same items."""
        out = criterion.reduce_metrics(sums)
        extra = reduce_extra_sums(sums)
        for name in EXTRA_METRICS:
            if name in extra:
                out[name] = extra[name]
                out[f"{name}_mix"] = extra[name] - extra[f"{name}i"]
                out[f"{name}i"] = extra[f"{name}i"]
        return out

    @torch.no_grad()
    def validate(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float] | None:
        """Means over the fixed validation mixtures: ``loss`` and whatever the criterion's
        ``reduce_metrics`` reports (``waveform_l1``: ``si_sdr``, ``si_sdri``, ``sdr``,
        ``sdri`` in dB), with ``valid_extra_metrics`` also ``pesq``, ``stoi``, ``bss_sdr`` and
        their ``_mix`` / ``i`` forms (:meth:`reduce_metrics`); identical on every rank. ``None`` without ``valid_list``. Batches of
        ``valid_batch_size`` mixtures (0: the training ``batch_size``)."""
        return self.validate_fixed(model, criterion, device, env, batching, "num_mixtures")

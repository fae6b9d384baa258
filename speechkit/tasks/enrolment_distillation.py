"""``voicevector_enrolment_distillation``: teach a VoiceVector enrolment net to map enrolment
clips (lip features, optionally noisy audio or face embeddings) to the speaker vector of a
speaker model (Rahimi, Afouras and Zisserman, "VoiceVector", ICASSP 2024; upstream
``src/models/avEmbeddingModule.py``: teacher-student regression with an L1 loss, Adam 3e-4,
ReduceLROnPlateau(factor 0.6, patience 3)). The distilled net is then frozen inside a
composite separation model (``voicevector_vem`` / ``_avem`` / ``_ivem``, task
``target_speaker_separation`` with ``task.enrolment_source=clips``).

Data preparation: a speaker list (``speaker_id relative/path.wav``; or the reference's JSON
metadata, ``task.metadata_format``), the teacher vectors and the lip features, both one ``.npy``
per utterance at ``<relative path>.npy``::

    speechkit-dump-embeddings --checkpoint ecapa_speechbrain.pt --list train.txt \\
        --list valid.txt --root DATA --out emb/ --eval-frames 0
    speechkit-dump-lip-features --checkpoint syncnet.pt --list video_list.txt --root DATA \\
        --out lip/
    python -m speechkit.train experiment=voicevector_distill_v task.root=DATA \\
        task.train_list=train.txt task.valid_list=valid.txt task.embedding_dir=emb/ \\
        task.lip_dir=lip/

Inputs (``task.inputs``, which must match the model: ``v`` for ``voicevector_embedding_v``,
``av`` for ``_av``, ``iv`` for ``_iv``; checked by :meth:`build_model`): every item is a 4 s
enrolment clip of one utterance with its teacher vector
(:mod:`speechkit.data.enrolment_dataset`); ``av`` mixes each clip with an interferer of another
speaker at an integer SIR uniform in ``[sir_low, sir_high]`` dB (the reference's noisy
enrolment clips), ``iv`` adds 3 face embeddings per clip from ``task.face_dir``
(``<face_dir>/<relative id>/*.npy``, zeros when an utterance has none). Deviations from the
reference: the teacher is the L2-normalised crop mean (the vector the separation task uses), no
augmentation is applied to the noisy clips, and utterances without faces are kept (see the data
modules).

Training: every utterance once per epoch as a random clip, shuffled by ``(seed, epoch)``.
Validation (``validate``): the ``num_valid`` fixed clips of ``valid_list`` (seeded by
``valid_seed``, the same every epoch), in fixed batches shared out across ranks
(``Task.validate_batches``), so the reported ``loss`` (mean L1) and ``cosine`` (mean cosine to
the teacher) do not depend on the world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from speechkit.data.enrolment_clips import MODEL_INPUTS, EnrolmentInputs
from speechkit.data.enrolment_dataset import EnrolmentDataset
from speechkit.data.epoch_iterator import Batching
from speechkit.data.voicevector_metadata import MetadataFormat
from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import ConfigError
from speechkit.registry import register_task
from speechkit.tasks.speaker_list_items import SpeakerListItemsTask


@dataclass
class EnrolmentDistillationConfig(SpeechkitDataclass):
    root: str = "???"
    """Folder the list paths are relative to."""
    train_list: str = "???"
    """``speaker_id relative/path.wav`` lines (at least 2 speakers), or a reference JSON data
    file (``metadata_format``)."""
    valid_list: str | None = None
    """Same format, for the fixed validation clips; null: no validation."""
    metadata_format: MetadataFormat = "speechkit"
    """``speechkit``, ``librispeech_json`` or ``lrs_json`` (as ``target_speaker_separation``)."""
    embedding_dir: str = "???"
    """Teacher vectors: ``speechkit-dump-embeddings --out`` folder, ``<rel path>.npy`` per
    utterance of both lists, (num_crops, D) or (D,)."""
    emb_dim: int = 192
    """D of the teacher vectors (ECAPA: 192); must equal the files' and ``model.out_dim``."""
    lip_dir: str = "???"
    """Lip-feature folder, ``<rel path>.npy`` (frames, lip_dim) at 25 fps."""
    lip_dim: int = 512
    """Lip feature size (VTP: 512); must equal the files' and ``model.lip_dim``."""
    lip_tolerance: float = 2.0
    """Largest accepted ``|frames - samples / 640|`` per file."""
    inputs: EnrolmentInputs = "v"
    """The enrolment net's inputs: ``v`` (lip), ``av`` (lip + noisy clip audio) or ``iv`` (lip +
    face embeddings)."""
    face_dir: str | None = None
    """Face-embedding folder (``<face_dir>/<relative id>/*.npy``); required for ``iv``."""
    face_dim: int = 128
    """Size of one face embedding (the reference's 128); must equal ``model.face_dim``."""
    segment: float = 4.0
    """Clip length in seconds, a multiple of 0.04 s (the reference's 4 s = 100 lip frames)."""
    sir_low: int = -5
    sir_high: int = 5
    """Interferer-to-target ratio range of the ``av`` clips in dB (integers, uniform)."""
    resample: bool = False
    """Resample non-16 kHz files on every read (else they are an error)."""
    num_valid: int = 0
    """Fixed validation clips; 0: one per utterance of ``valid_list``."""
    valid_seed: int = 2038
    """Seed of the validation clips, independent of ``common.seed`` and the epoch."""
    default_batch_size: int = 40
    """Clips per batch when ``dataset.batch_size`` is null (the reference's LRS3 batch)."""
    valid_batch_size: int = 0
    """Clips per validation batch; 0: the training batch size."""


@register_task(
    "voicevector_enrolment_distillation",
    dataclass=EnrolmentDistillationConfig,
    default_model="voicevector_embedding_v",
    default_criterion="enrolment_l1",
)
class EnrolmentDistillationTask(SpeakerListItemsTask):
    """Enrolment clips -> teacher speaker vectors (see the module docstring).

    Raises (at construction, before any model is built):
        ConfigError: a required path not set, an unknown ``inputs``, ``iv`` without
            ``face_dir``, a ``segment`` that is not a positive multiple of 0.04 s, a negative
            ``num_valid``, an empty SIR range.
        DataError: see :mod:`speechkit.data.enrolment_dataset` (also a teacher file whose
            dimension is not ``emb_dim``, or lip features not ``lip_dim``-d).
    """

    required = ("root", "train_list", "embedding_dir", "lip_dir")
    needs = (
        "task.root=DIR, task.train_list=FILE ('speaker_id relative/path.wav' lines), "
        "task.embedding_dir=DIR (teacher vectors, speechkit-dump-embeddings) and "
        "task.lip_dir=DIR (lip features, speechkit-dump-lip-features)"
    )

    def __init__(self, cfg: EnrolmentDistillationConfig, seed: int = 1):
        super().__init__(cfg, seed)
        inputs = EnrolmentInputs.check(cfg.inputs, "task.inputs")
        if inputs == "iv" and not cfg.face_dir:
            raise ConfigError("task.inputs=iv needs task.face_dir=DIR (face embeddings)")
        samples = round(cfg.segment * 16000)
        if samples <= 0 or samples % 640:
            raise ConfigError(
                f"task.segment={cfg.segment} s must be a positive multiple of 0.04 s (one 25 fps "
                "lip frame, 640 samples)"
            )
        if cfg.num_valid < 0 or cfg.sir_low > cfg.sir_high:
            raise ConfigError(
                f"task.num_valid={cfg.num_valid} must be >= 0 and task.sir_low={cfg.sir_low} <= "
                f"task.sir_high={cfg.sir_high}"
            )
        common = dict(
            root=cfg.root,
            embedding_dir=cfg.embedding_dir,
            lip_dir=cfg.lip_dir,
            inputs=inputs,
            segment=cfg.segment,
            face_dir=cfg.face_dir or None,
            face_dim=cfg.face_dim,
            sir_low=cfg.sir_low,
            sir_high=cfg.sir_high,
            resample=cfg.resample,
            lip_dim=cfg.lip_dim if cfg.lip_dim > 0 else None,
            lip_tolerance=cfg.lip_tolerance,
            emb_dim=cfg.emb_dim if cfg.emb_dim > 0 else None,
        )
        self.train_dataset = EnrolmentDataset(
            cfg.train_list, seed=self.seed, entries=self._entries(cfg.train_list), **common
        )
        self.emb_dim = self.train_dataset.emb_dim
        self.lip_dim = self.train_dataset.lip_dim
        common.update(emb_dim=self.emb_dim, lip_dim=self.lip_dim)
        self.valid_dataset = None
        if cfg.valid_list:
            self.valid_dataset = EnrolmentDataset(
                cfg.valid_list,
                eval_mode=True,
                num_items=cfg.num_valid,
                seed=cfg.valid_seed,
                entries=self._entries(cfg.valid_list),
                **common,
            )

    # -- building -------------------------------------------------------------------------------
    def build_model(self, cfg: Any) -> nn.Module:
        """The registered model, after checking it against the data.

        Raises:
            ConfigError: a built-in enrolment net or composite whose inputs differ from
                ``task.inputs``, or a ``lip_dim`` / ``face_dim`` / ``out_dim`` different from
                the data's.
        """
        inputs = str(self.cfg.inputs)
        known = MODEL_INPUTS.get(cfg._name)
        if known is not None and known != inputs:
            want = [m for m, i in MODEL_INPUTS.items() if i == inputs and "embedding" in m]
            raise ConfigError(
                f"model {cfg._name} takes '{known}' enrolment inputs but task.inputs={inputs}; "
                f"use model={want[0]} or task.inputs={known}"
            )
        checks = [("lip_dim", self.lip_dim), ("out_dim", self.emb_dim)]
        if inputs == "iv":
            checks.append(("face_dim", self.cfg.face_dim))
        for key, have in checks:
            want = getattr(cfg, key, None)
            if want is not None and want != have:
                raise ConfigError(
                    f"model.{key}={want} but the task's data is {have}-d; set model.{key}={have}"
                )
        return super().build_model(cfg)

    @torch.no_grad()
    def validate(
        self,
        model: nn.Module,
        criterion: nn.Module,
        device: torch.device,
        env: Any,
        batching: Batching | None = None,
    ) -> dict[str, float] | None:
        """Means over the fixed validation clips (``enrolment_l1``: ``loss``, ``cosine``),
        identical on every rank and for every world size; ``None`` without ``valid_list``."""
        return self.validate_fixed(model, criterion, device, env, batching, "num_clips")

"""VoiceVector composite separation models: a frozen enrolment net turns each enrolment clip into
a 192-d vector, and a ``voicevector_ae`` separation net extracts the target from the mixture
given those vectors as positive / negative enrolment tokens.

Reference: Rahimi, Afouras and Zisserman, "VoiceVector: multimodal enrolment vectors for speaker
separation", ICASSP 2024; upstream ``akamrahimi/VoiceVector`` ``src/models/components/``
``voiceFormerAVEM2.py`` (``voicevectoravem2``, released as ``avem3.pth``), ``voiceFormerVEM.py``
(``vem.pth``) and ``voiceFormerIVEM.py`` (``ivem.pth``): an enrolment net
(:mod:`speechkit.models.voicevector_enrolment`) under ``no_grad`` and a ``VoiceFormerAE``
(:class:`~speechkit.models.voicevector.VoiceVectorAE`). Only the separation net trains.

* ``voicevector_avem``: enrolment net ``voicevector_embedding_av``; inputs ``enrol_lip`` +
  ``enrol_audio`` per clip;
* ``voicevector_vem``: ``voicevector_embedding_v``; ``enrol_lip``;
* ``voicevector_ivem``: ``voicevector_embedding_iv``; ``enrol_lip`` + ``enrol_face``.

The enrolment net is always in eval mode (``train()`` leaves it there: its BatchNorm statistics
and dropout stay fixed), its parameters have ``requires_grad=False`` (the trainer's optimizer
only takes trainable parameters) and it runs under ``torch.no_grad``. Padded clips
(``enrol_mask`` False) are not run through it; their vectors are zeros, which the separation
net ignores.

Weights: ``enrolment_checkpoint`` is a speechkit checkpoint of a trained
``voicevector_embedding_*`` model (task ``voicevector_enrolment_distillation``) or of the same
composite (its ``enrolment.*`` weights), loaded strictly into a net built from
``model.enrolment``; ``separation_init`` optionally starts the separation net from a speechkit
``voicevector_ae`` (or composite) checkpoint or from a reference ``ae.ckpt`` / composite
``.pth`` through :mod:`speechkit.interop.voicevector`. A composite checkpoint holds both nets,
so rebuilding one for inference needs neither file: set both fields to ``""``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from speechkit.dataclass import SpeechkitDataclass
from speechkit.errors import CheckpointError, ConfigError
from speechkit.models.voicevector import VoiceVectorAE, VoiceVectorConfig
from speechkit.models.voicevector_enrolment import (
    VoiceVectorEmbeddingAV,
    VoiceVectorEmbeddingAVConfig,
    VoiceVectorEmbeddingConfig,
    VoiceVectorEmbeddingIV,
    VoiceVectorEmbeddingV,
)
from speechkit.registry import register_model

__all__ = [
    "COMPOSITE_MODELS",
    "VoiceVectorAVEMConfig",
    "VoiceVectorVEMConfig",
    "VoiceVectorIVEMConfig",
    "VoiceVectorComposite",
    "VoiceVectorAVEM",
    "VoiceVectorVEM",
    "VoiceVectorIVEM",
]

COMPOSITE_MODELS = {
    "voicevector_avem": "voicevector_embedding_av",
    "voicevector_vem": "voicevector_embedding_v",
    "voicevector_ivem": "voicevector_embedding_iv",
}
"""Composite model name -> the registered name of its enrolment net."""


@dataclass
class _CompositeFields(SpeechkitDataclass):
    separation: VoiceVectorConfig = field(default_factory=VoiceVectorConfig)
    enrolment_checkpoint: str = ""  # trained voicevector_embedding_* checkpoint ("" = none)
    separation_init: str = ""  # voicevector_ae / composite / reference ae.ckpt ("" = random)


@dataclass
class VoiceVectorAVEMConfig(_CompositeFields):
    """Config of ``voicevector_avem``: ``separation`` (the AE net), ``enrolment`` (its
    ``voicevector_embedding_av``), and the weight files."""

    enrolment: VoiceVectorEmbeddingAVConfig = field(default_factory=VoiceVectorEmbeddingAVConfig)


@dataclass
class VoiceVectorVEMConfig(_CompositeFields):
    """Config of ``voicevector_vem`` (enrolment net ``voicevector_embedding_v``)."""

    enrolment: VoiceVectorEmbeddingConfig = field(default_factory=VoiceVectorEmbeddingConfig)


@dataclass
class VoiceVectorIVEMConfig(_CompositeFields):
    """Config of ``voicevector_ivem`` (enrolment net ``voicevector_embedding_iv``)."""

    enrolment: VoiceVectorEmbeddingConfig = field(default_factory=VoiceVectorEmbeddingConfig)


def _sub_state(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


class VoiceVectorComposite(nn.Module):
    """Frozen enrolment net + trainable ``voicevector_ae`` (see the module docstring).

    Shapes:
        forward(mixture (B, T) float32 at 16 kHz, enrol_type (B, N) long (1 positive, 0
        negative), enrol_mask (B, N) bool or None (all real), enrol_lip (B, N, F, lip_dim),
        enrol_audio (B, N, F * 640) (avem), enrol_face (B, N, K, face_dim) (ivem)) -> (B, T)
        float32 target estimate. Inputs the variant does not use may be given and are ignored.
        :meth:`embed` gives the (B, N, 192) enrolment vectors alone.

    Raises:
        ConfigError: ``separation.emb_dim`` differs from ``enrolment.out_dim``; bad sizes.
        CheckpointError: an ``enrolment_checkpoint`` / ``separation_init`` that cannot be read
            or does not fit (one line naming the file).
        ValueError: a missing enrolment input or one whose leading (B, N) differ from
            ``enrol_type``'s; the enrolment and separation nets' own shape errors.
    """

    name = ""
    enrolment_class: type[nn.Module] = nn.Module
    enrolment_inputs: tuple[str, ...] = ()

    def __init__(self, cfg: Any):
        super().__init__()
        if cfg.separation.emb_dim != cfg.enrolment.out_dim:
            raise ConfigError(
                f"{self.name}: model.separation.emb_dim ({cfg.separation.emb_dim}) must equal "
                f"model.enrolment.out_dim ({cfg.enrolment.out_dim})"
            )
        self.cfg = cfg
        self.separation = VoiceVectorAE(cfg.separation)
        self.enrolment = self.enrolment_class(cfg.enrolment)
        if cfg.enrolment_checkpoint:
            self.load_enrolment(cfg.enrolment_checkpoint)
        if cfg.separation_init:
            self.load_separation(cfg.separation_init)
        self.enrolment.requires_grad_(False)
        self.enrolment.eval()

    @property
    def enrolment_model(self) -> str:
        """The registered name of the enrolment net (``voicevector_embedding_*``)."""
        return COMPOSITE_MODELS[self.name]

    def train(self, mode: bool = True) -> VoiceVectorComposite:
        """Set the separation net's mode; the enrolment net stays in eval mode."""
        super().train(mode)
        self.enrolment.eval()
        return self

    # -- weights --------------------------------------------------------------------------------
    def load_enrolment(self, path: str) -> None:
        """Load the enrolment net strictly from a speechkit checkpoint of
        ``enrolment_model`` (or of this composite: its ``enrolment.*`` weights).

        Raises:
            CheckpointError: unreadable file, another model, or weights that do not fit
                ``model.enrolment`` (the differing config fields are named when known).
        """
        from speechkit.trainer.checkpoint import check_weights_match, load_checkpoint_file

        what = f"model.enrolment_checkpoint={path}"
        state = load_checkpoint_file(path)
        model_cfg = (state.get("cfg") or {}).get("model") or {}
        saved = model_cfg.get("_name")
        weights = state.get("model")
        if not isinstance(weights, dict):
            raise CheckpointError(f"{what}: no 'model' weights (not a speechkit checkpoint)")
        if saved == self.name:
            weights = _sub_state(weights, "enrolment.")
            model_cfg = model_cfg.get("enrolment") or {}
        elif saved != self.enrolment_model:
            raise CheckpointError(
                f"{what}: holds a {saved!r} model; expected a trained {self.enrolment_model!r} "
                f"(task voicevector_enrolment_distillation) or a {self.name!r} checkpoint"
            )
        try:
            check_weights_match(self.enrolment, weights, path, saved, self.enrolment_model)
        except CheckpointError as e:
            mine = dataclasses.asdict(self.cfg.enrolment)
            differ = [
                f"model.enrolment.{k}={mine[k]!r} (checkpoint: {v!r})"
                for k, v in sorted(model_cfg.items())
                if k in mine and k != "_name" and mine[k] != v
            ]
            hint = f"; set {', '.join(differ)}" if differ else ""
            raise CheckpointError(f"model.enrolment_checkpoint: {e}{hint}") from None
        self.enrolment.load_state_dict(weights)

    def load_separation(self, path: str) -> None:
        """Initialise the separation net from a speechkit ``voicevector_ae`` or composite
        checkpoint, or a reference ``ae.ckpt`` / ``avem3.pth`` / ``vem.pth`` / ``ivem.pth``
        (converted on the fly by :func:`speechkit.interop.voicevector.convert_voicevector`).

        Raises:
            CheckpointError: unreadable file, another model, or weights that do not fit
                ``model.separation``.
        """
        from speechkit.interop.voicevector import convert_voicevector, load_voicevector_state_dict
        from speechkit.trainer.checkpoint import (
            CorruptCheckpointError,
            check_weights_match,
            load_checkpoint_file,
        )

        what = f"model.separation_init={path}"
        try:
            state = load_checkpoint_file(path)
        except CorruptCheckpointError:
            raise
        except CheckpointError:  # a Lightning file pickling other objects: the converter reads it
            state = {}
        if isinstance(state.get("model"), dict):
            weights = state["model"]
            saved = ((state.get("cfg") or {}).get("model") or {}).get("_name")
        else:
            reference = load_voicevector_state_dict(path)
            weights, cfg, _ = convert_voicevector(
                reference, str(path), {"heads": self.cfg.separation.heads}
            )
            saved = cfg["_name"]
        if saved in COMPOSITE_MODELS:
            weights = _sub_state(weights, "separation.")
        elif saved != "voicevector_ae":
            raise CheckpointError(
                f"{what}: holds a {saved!r} model; expected voicevector_ae, a composite "
                f"({', '.join(COMPOSITE_MODELS)}) or a reference ae.ckpt"
            )
        try:
            check_weights_match(self.separation, weights, path, saved, "voicevector_ae")
        except CheckpointError as e:
            raise CheckpointError(f"model.separation_init: {e}") from None
        self.separation.load_state_dict(weights)

    # -- forward --------------------------------------------------------------------------------
    def embed(
        self,
        enrol_type: torch.Tensor,
        enrol_mask: torch.Tensor | None = None,
        enrol_lip: torch.Tensor | None = None,
        enrol_audio: torch.Tensor | None = None,
        enrol_face: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Enrolment clips -> (B, N, out_dim) float32 vectors (zeros where ``enrol_mask`` is
        False), computed by the frozen enrolment net in eval mode without gradients."""
        if enrol_type.dim() != 2:
            raise ValueError(
                f"{self.name}: expected enrol_type of shape (B, N), got {tuple(enrol_type.shape)}"
            )
        b, n = enrol_type.shape
        if enrol_mask is not None and tuple(enrol_mask.shape) != (b, n):
            raise ValueError(
                f"{self.name}: enrol_mask must be ({b}, {n}) like enrol_type, got "
                f"{tuple(enrol_mask.shape)}"
            )
        given = {"lip": enrol_lip, "audio": enrol_audio, "face": enrol_face}
        clips = {}
        for key in self.enrolment_inputs:
            x = given[key]
            if x is None:
                raise ValueError(
                    f"{self.name}: needs enrol_{key} (B, N, ...); inputs: "
                    f"{', '.join('enrol_' + k for k in self.enrolment_inputs)}"
                )
            if x.dim() < 3 or tuple(x.shape[:2]) != (b, n):
                raise ValueError(
                    f"{self.name}: enrol_{key} must start with (B, N) = ({b}, {n}) like "
                    f"enrol_type, got {tuple(x.shape)}"
                )
            clips[key] = x.reshape(b * n, *x.shape[2:])
        out_dim = self.cfg.enrolment.out_dim
        vectors = torch.zeros(b * n, out_dim, dtype=torch.float32, device=enrol_type.device)
        keep = None if enrol_mask is None else enrol_mask.reshape(-1).to(torch.bool)
        if b * n and (keep is None or bool(keep.any())):
            if self.enrolment.training:  # e.g. a bare nn.Module.train() on a parent
                self.enrolment.eval()
            with torch.no_grad():
                if keep is None:
                    vectors = self.enrolment(**clips).float()
                else:
                    vectors[keep] = self.enrolment(**{k: v[keep] for k, v in clips.items()}).float()
        return vectors.reshape(b, n, out_dim)

    def forward(
        self,
        mixture: torch.Tensor,
        enrol_type: torch.Tensor,
        enrol_mask: torch.Tensor | None = None,
        enrol_lip: torch.Tensor | None = None,
        enrol_audio: torch.Tensor | None = None,
        enrol_face: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) mixture + enrolment clips -> (B, T) target estimate."""
        vectors = self.embed(enrol_type, enrol_mask, enrol_lip, enrol_audio, enrol_face)
        return self.separation(mixture, vectors.to(mixture.device), enrol_type, enrol_mask)


@register_model("voicevector_avem", dataclass=VoiceVectorAVEMConfig)
class VoiceVectorAVEM(VoiceVectorComposite):
    """VoiceVector ``avem``: enrolment vectors from noisy enrolment audio + lip video
    (upstream ``voiceFormerAVEM2.py``; released as ``avem3.pth``). See
    :class:`VoiceVectorComposite`."""

    name = "voicevector_avem"
    enrolment_class = VoiceVectorEmbeddingAV
    enrolment_inputs = ("lip", "audio")


@register_model("voicevector_vem", dataclass=VoiceVectorVEMConfig)
class VoiceVectorVEM(VoiceVectorComposite):
    """VoiceVector ``vem``: enrolment vectors from silent lip video (upstream
    ``voiceFormerVEM.py``; ``vem.pth``). See :class:`VoiceVectorComposite`."""

    name = "voicevector_vem"
    enrolment_class = VoiceVectorEmbeddingV
    enrolment_inputs = ("lip",)


@register_model("voicevector_ivem", dataclass=VoiceVectorIVEMConfig)
class VoiceVectorIVEM(VoiceVectorComposite):
    """VoiceVector ``ivem``: enrolment vectors from face embeddings + silent lip video
    (upstream ``voiceFormerIVEM.py``; ``ivem.pth``). See :class:`VoiceVectorComposite`."""

    name = "voicevector_ivem"
    enrolment_class = VoiceVectorEmbeddingIV
    enrolment_inputs = ("lip", "face")

"""Read clovaai/voxceleb_trainer checkpoints and convert them to speechkit checkpoints.

voxceleb_trainer's top-level ``SpeakerNet`` has two children, ``__S__`` (the embedding model) and
``__L__`` (the loss), so its state_dict keys are ``__S__.<name>`` and ``__L__.<name>``
(clovaai/voxceleb_trainer ``SpeakerNet.py``). Three file layouts exist:

* **legacy** (every published ``baseline_*.model``): ``torch.save`` of that bare state_dict;
  some copies carry ``module.`` prefixes from ``DataParallel`` / DDP wrappers;
* **new** (the reference's code since 2026-04): ``{"model_state_dict": <state_dict>,
  "optimizer_state_dict", "scheduler_state_dict", "epoch"}``;
* **rawnet3** (``models/weights/RawNet3/model.pt``): ``{"model": <RawNet3 state_dict>}`` with no
  prefix (the reference prepends ``__S__.``).

speechkit's models (:mod:`speechkit.models.resnet_se`, :mod:`~speechkit.models.vggvox`,
:mod:`~speechkit.models.rawnet3`) and loss heads use the same parameter names without the
prefixes, so the conversion is a renaming, plus:

* the torchaudio front-end buffers ``__S__.torchfb.*`` (``spectrogram.window`` [400],
  ``mel_scale.fb`` [257, n_mels], ResNetSE34V2's ``0.flipped_filter`` [1, 1, 2]) are dropped,
  because speechkit computes its front-end itself, after being *checked* against that front-end
  (a different window, mel bank or pre-emphasis would change every embedding);
* the model config is inferred from the weights (architecture from the key set, ``n_mels`` from
  the mel bank or the attention width, SAP/ASP and ``embed_dim`` from ``fc``) and from the file
  name of the published checkpoints; explicit overrides win;
* ``input_scale`` is recorded: the 2020 checkpoints (``baseline_lite_ap``, ``baseline_v2_ap``)
  were trained on int16-scale audio read with ``scipy.io.wavfile`` (voxceleb_trainer issue #144),
  later ones on soundfile's [-1, 1] floats. A file cannot tell, so :data:`KNOWN_CHECKPOINTS`
  gives the default per published file and 1.0 is assumed otherwise.

Files are read with ``torch.load(weights_only=True)``: they hold only tensors and plain
containers, and a pickle that would construct anything else is refused, never executed.

Example::

    ckpt, report = convert_voxceleb_trainer("baseline_lite_ap.model")
    print(report.format())
    save_converted(ckpt, "baseline_lite_ap.pt")   # SpeakerEmbedding.from_checkpoint reads it
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechkit.errors import CheckpointError

__all__ = [
    "SUPPORTED_MODELS",
    "FRONTEND_ATOL",
    "KNOWN_CHECKPOINTS",
    "KnownCheckpoint",
    "FrontendCheck",
    "ConversionReport",
    "SourceCheckpoint",
    "load_voxceleb_trainer_file",
    "detect_model",
    "detect_loss",
    "infer_model_config",
    "convert_voxceleb_trainer",
    "save_converted",
]

MODEL_PREFIX = "__S__."
LOSS_PREFIX = "__L__."
FRONTEND_PREFIX = "torchfb."
#: absolute tolerance of the front-end buffer checks: torchaudio builds its mel bank in float32
#: (errors up to ~1e-5); any real difference (window type, n_mels, f_max, norm) is >> 1e-3
FRONTEND_ATOL = 1e-4
SUPPORTED_MODELS = ("resnet_se34l", "resnet_se34v2", "vggvox40", "rawnet3")


@dataclass(frozen=True)
class KnownCheckpoint:
    """Facts about a published voxceleb_trainer checkpoint that its weights do not hold.

    Attributes:
        model: speechkit model name.
        loss: speechkit criterion name of the loss it was trained with.
        input_scale: waveform multiplier it expects (32768: trained on int16-scale audio).
        note: where the numbers come from.
    """

    model: str
    loss: str
    input_scale: float
    note: str


#: published checkpoints by file name (EERs from clovaai/voxceleb_trainer ``README.md``;
#: input scales from its issue #144)
KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "baseline_lite_ap.model": KnownCheckpoint(
        "resnet_se34l",
        "angleproto",
        32768.0,
        "ResNetSE34L SAP angleproto (2020, int16-scale input); Vox1-O EER 2.1792% at 400 frames",
    ),
    "baseline_v2_ap.model": KnownCheckpoint(
        "resnet_se34v2",
        "softmaxproto",
        32768.0,
        "ResNetSE34V2 ASP 64 mels softmaxproto (2020, int16-scale input); Vox1-O EER 1.1771%",
    ),
    "baseline_v2_smproto.model": KnownCheckpoint(
        "resnet_se34v2",
        "softmaxproto",
        1.0,
        "ResNetSE34V2 ASP 64 mels softmaxproto (soundfile-scale input); Vox1-O EER 1.0180%",
    ),
}


@dataclass
class FrontendCheck:
    """One front-end buffer of the source compared with speechkit's own.

    Attributes:
        key: the source key (``__S__.torchfb.mel_scale.fb`` ...).
        ok: whether the buffers agree within :data:`FRONTEND_ATOL`.
        message: what was compared and, on a mismatch, what differs.
        max_abs_diff: largest absolute difference (``None`` when the shapes differ or the
            buffer has no speechkit counterpart).
    """

    key: str
    ok: bool
    message: str
    max_abs_diff: float | None = None


@dataclass
class ConversionReport:
    """What a conversion mapped, dropped and assumed.

    Attributes:
        source: the input file (or ``"<state_dict>"``).
        layout: ``"legacy"``, ``"new"`` or ``"rawnet3"``.
        model: speechkit model name; ``criterion``: speechkit criterion name.
        model_cfg, criterion_cfg: the configs written to the checkpoint.
        input_scale: the recorded waveform multiplier; ``input_scale_source``: why.
        mapped: number of source tensors copied into the model and the criterion.
        unmapped: source keys with no speechkit destination (they are not converted).
        missing: speechkit keys the source does not provide (they would keep random values).
        shape_mismatch: ``(key, source shape, speechkit shape)`` of keys that do not fit.
        frontend_checks: one entry per source front-end buffer (and per missing one).
        notes: assumptions made (values the weights cannot tell).
    """

    source: str
    layout: str
    model: str
    criterion: str
    model_cfg: dict[str, Any]
    criterion_cfg: dict[str, Any]
    input_scale: float
    input_scale_source: str
    mapped: int = 0
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    frontend_checks: list[FrontendCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def frontend_mismatches(self) -> list[FrontendCheck]:
        """The failed front-end checks."""
        return [c for c in self.frontend_checks if not c.ok]

    def problems(
        self, allow_unmapped: bool = False, allow_frontend_mismatch: bool = False
    ) -> list[str]:
        """Reasons the converted checkpoint would not reproduce the source model (empty: none).

        Missing keys and shape mismatches are always problems; unmapped keys and front-end
        mismatches unless allowed.
        """
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} speechkit key(s) missing from the source: "
                f"{_first(self.missing)}"
            )
        if self.shape_mismatch:
            items = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.shape_mismatch]
            out.append(f"{len(items)} shape mismatch(es) (source vs speechkit): {_first(items)}")
        if self.unmapped and not allow_unmapped:
            out.append(
                f"{len(self.unmapped)} source key(s) have no speechkit destination: "
                f"{_first(self.unmapped)} (allow with allow_unmapped / --allow-unmapped)"
            )
        if self.frontend_mismatches and not allow_frontend_mismatch:
            items = [f"{c.key}: {c.message}" for c in self.frontend_mismatches]
            out.append(
                "front-end differs from speechkit's: "
                + "; ".join(items)
                + " (allow with allow_frontend_mismatch / --allow-frontend-mismatch)"
            )
        return out

    def format(self) -> str:
        """A multi-line human-readable report."""
        lines = [
            f"source: {self.source} ({self.layout} voxceleb_trainer layout)",
            f"model: {self.model} {_cfg_text(self.model_cfg)}",
            f"criterion: {self.criterion} {_cfg_text(self.criterion_cfg)}",
            f"input_scale: {self.input_scale:g} ({self.input_scale_source})",
            f"mapped tensors: {self.mapped}",
            f"unmapped source keys: {len(self.unmapped)}" + _list_suffix(self.unmapped),
            f"missing speechkit keys: {len(self.missing)}" + _list_suffix(self.missing),
            f"shape mismatches: {len(self.shape_mismatch)}"
            + _list_suffix([f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.shape_mismatch]),
        ]
        if self.frontend_checks:
            lines.append("front-end checks:")
            for c in self.frontend_checks:
                lines.append(f"  [{'ok' if c.ok else 'MISMATCH'}] {c.key}: {c.message}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)


@dataclass
class SourceCheckpoint:
    """A voxceleb_trainer state dict with normalised keys (``__S__.*`` / ``__L__.*``).

    Attributes:
        state: key -> tensor, ``module.`` prefixes removed, RawNet3 keys given ``__S__.``.
        layout: ``"legacy"``, ``"new"`` or ``"rawnet3"``.
        path: the file read (``None`` for an in-memory state dict).
        epoch: the training epoch stored in the new layout (else ``None``).
        sha256: hex digest of the file (``None`` for an in-memory state dict).
    """

    state: dict[str, torch.Tensor]
    layout: str
    path: Path | None = None
    epoch: int | None = None
    sha256: str | None = None


# ------------------------------------------------------------------------------------------------
# reading


def _first(items: list[str], n: int = 5) -> str:
    more = f" ... (+{len(items) - n})" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _list_suffix(items: list[str], n: int = 10) -> str:
    return f" ({_first(items, n)})" if items else ""


def _cfg_text(cfg: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.items() if k != "_name")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def _tensor_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """``obj`` as ``{str: Tensor}`` with ``module.`` prefixes stripped, or ``CheckpointError``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}: expected a state dict (a mapping of tensors), got {type(obj).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise CheckpointError(
                f"{where}: expected a state dict of tensors, but entry {key!r} holds "
                f"{type(value).__name__}"
            )
        name = _strip_module(key)
        if name in out:
            raise CheckpointError(
                f"{where}: key {key!r} collides with {name!r} once the 'module.' prefix is removed"
            )
        out[name] = value
    return out


def _parse_layout(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], str, int | None]:
    """Recognise the three voxceleb_trainer layouts; returns (state, layout, epoch)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}: not a voxceleb_trainer checkpoint (top level is "
            f"{type(obj).__name__}, expected a dict)"
        )
    if "speechkit_version" in obj and "cfg" in obj:
        raise CheckpointError(f"{where} is already a speechkit checkpoint; nothing to convert")
    if "model_state_dict" in obj:
        epoch = obj.get("epoch")
        state = _tensor_dict(obj["model_state_dict"], f"{where} ['model_state_dict']")
        return state, "new", int(epoch) if isinstance(epoch, int) else None
    if set(obj.keys()) == {"model"}:
        inner = _tensor_dict(obj["model"], f"{where} ['model']")
        state = {k if k.startswith(MODEL_PREFIX) else MODEL_PREFIX + k: v for k, v in inner.items()}
        return state, "rawnet3", None
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        state = _tensor_dict(obj, where)
        if not any(k.startswith((MODEL_PREFIX, LOSS_PREFIX)) for k in state):
            raise CheckpointError(
                f"{where}: a state dict without '__S__.' / '__L__.' keys (first keys: "
                f"{_first(list(state), 3)}); voxceleb_trainer checkpoints name the model "
                "'__S__' and the loss '__L__'"
            )
        return state, "legacy", None
    raise CheckpointError(
        f"{where}: unknown layout (top-level keys: {_first([str(k) for k in obj], 8)}); expected "
        "a voxceleb_trainer state dict ('__S__.*' / '__L__.*' keys), a dict with "
        "'model_state_dict', or RawNet3's {'model': state_dict}"
    )


def load_voxceleb_trainer_file(path: str | os.PathLike) -> SourceCheckpoint:
    """Read a voxceleb_trainer checkpoint safely and normalise its keys.

    Args:
        path: a ``.model`` / ``.pt`` file in any of the three layouts (module docstring).

    Returns:
        :class:`SourceCheckpoint` with ``__S__.`` / ``__L__.`` keys.

    Raises:
        CheckpointError: the file is missing or unreadable, holds a pickle that constructs
            anything but tensors and plain containers (refused, never executed), or has an
            unknown layout.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"voxceleb_trainer checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain "
            f"containers, which could execute code ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {e}") from None
    state, layout, epoch = _parse_layout(obj, str(path))
    return SourceCheckpoint(state, layout, path, epoch, _file_sha256(path))


# ------------------------------------------------------------------------------------------------
# inferring the configs


def _shape(t: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if t is None else tuple(t.shape)


def detect_model(model_state: Mapping[str, torch.Tensor]) -> str:
    """speechkit model name for a voxceleb_trainer ``__S__`` state dict (prefix removed).

    ``netcnn.*`` -> ``vggvox40``; ``conv1.filterbank.*`` / ``fc6.*`` -> ``rawnet3``; a ResNet
    stem ``conv1.weight`` of (16, 1, 7, 7) with ``sap_linear`` -> ``resnet_se34l``; (32, 1, 3, 3)
    with the ``attention.0`` conv -> ``resnet_se34v2``.

    Raises:
        CheckpointError: another architecture (e.g. the deleted ResNetSE34 / ResNetSE34Half,
            Res2Net), naming what was found.
    """
    if "netcnn.0.weight" in model_state:
        return "vggvox40"
    if "conv1.filterbank.low_hz_" in model_state or "fc6.weight" in model_state:
        return "rawnet3"
    stem = _shape(model_state.get("conv1.weight"))
    if stem is not None and "layer1.0.conv1.weight" in model_state:
        if stem == (16, 1, 7, 7) and "sap_linear.weight" in model_state:
            return "resnet_se34l"
        if stem == (32, 1, 3, 3) and "attention.0.weight" in model_state:
            return "resnet_se34v2"
        raise CheckpointError(
            f"a ResNet whose stem conv1.weight is {stem} is not one speechkit implements "
            "(ResNetSE34L: (16, 1, 7, 7) + sap_linear; ResNetSE34V2: (32, 1, 3, 3) + attention); "
            "the older ResNetSE34 / ResNetSE34Half / Res2Net models are not supported"
        )
    raise CheckpointError(
        f"cannot tell the architecture from the '__S__' keys (first: "
        f"{_first(sorted(model_state), 4)}); speechkit converts {', '.join(SUPPORTED_MODELS)}"
    )


_LOSS_SIGNATURES: list[tuple[frozenset[str], str]] = [
    (
        frozenset({"softmax.fc.weight", "softmax.fc.bias", "angleproto.w", "angleproto.b"}),
        "softmaxproto",
    ),
    (frozenset({"fc.weight", "fc.bias"}), "softmax"),
    (frozenset({"W"}), "amsoftmax"),
    (frozenset({"weight"}), "aamsoftmax"),
    (frozenset({"w", "b"}), "angleproto"),
]


def detect_loss(loss_state: Mapping[str, torch.Tensor]) -> str | None:
    """speechkit criterion name for a ``__L__`` state dict (prefix removed).

    Returns ``None`` when it is empty (proto / triplet have no parameters, or the loss was not
    saved) or matches no known loss. ``{w, b}`` is angleproto or GE2E: ``angleproto`` is returned.
    """
    keys = frozenset(loss_state)
    for signature, name in _LOSS_SIGNATURES:
        if keys == signature:
            return name
    return None


def _frontend_n_mels(frontend_state: Mapping[str, torch.Tensor]) -> int | None:
    for key, value in frontend_state.items():
        if key.endswith("mel_scale.fb") and value.dim() == 2 and value.numel() > 0:
            return int(value.shape[1])
    return None


def infer_model_config(
    model: str,
    model_state: Mapping[str, torch.Tensor],
    frontend_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Model config fields implied by the weights, and notes on what had to be assumed.

    * ``resnet_se34l``: ``embed_dim`` = ``fc.weight`` rows; ASP when ``fc`` takes twice the
      ``sap_linear`` width; ``n_mels`` from the mel bank ``torchfb.mel_scale.fb`` [257, n_mels]
      (the convolutions do not depend on it; 40 when absent).
    * ``resnet_se34v2``: ``n_mels = 8 * attention.0 input channels / 256``; ASP when ``fc`` takes
      twice that width; ``embed_dim`` from ``fc``.
    * ``vggvox40``: SAP when ``sap_linear`` exists; MAX vs TAP cannot be told (``encoder_type``
      must then be given); ``embed_dim`` from ``fc``.
    * ``rawnet3``: ``channels`` from ``layer4`` (3C inputs); ``embed_dim`` from ``fc6``; ECA
      (1536 attention outputs) vs ASP (1); ``context`` from the attention input (4608 vs 1536).
      ``sinc_stride`` is not in the weights (10 assumed).

    ``log_input`` is never in the weights: True (as the published models) is assumed.

    Raises:
        CheckpointError: a key the inference needs is absent or has an unexpected shape.
    """
    frontend_state = frontend_state or {}
    notes: list[str] = []
    cfg: dict[str, Any] = {}

    def need(key: str, dims: int) -> torch.Tensor:
        value = model_state.get(key)
        if value is None or value.dim() != dims:
            raise CheckpointError(
                f"{model}: cannot infer the config: '{MODEL_PREFIX}{key}' is "
                f"{'absent' if value is None else f'of shape {tuple(value.shape)}'} "
                f"(expected a {dims}-D tensor)"
            )
        return value

    if model in ("resnet_se34l", "resnet_se34v2", "vggvox40"):
        notes.append(
            "log_input is not stored in the weights; assumed True (as the published "
            "models; override with log_input=False)"
        )
    if model == "resnet_se34l":
        fc = need("fc.weight", 2)
        width = need("sap_linear.weight", 2).shape[0]
        cfg["embed_dim"] = int(fc.shape[0])
        cfg["encoder_type"] = "ASP" if fc.shape[1] == 2 * width else "SAP"
        n_mels = _frontend_n_mels(frontend_state)
        if n_mels is None:
            n_mels = 40
            notes.append(
                "n_mels cannot be told from ResNetSE34L's weights and the file has no "
                "mel bank; assumed 40 (override with n_mels)"
            )
        cfg["n_mels"] = n_mels
    elif model == "resnet_se34v2":
        fc = need("fc.weight", 2)
        channels = int(need("attention.0.weight", 3).shape[1])
        if channels % 256 != 0:
            raise CheckpointError(
                f"resnet_se34v2: attention.0 takes {channels} channels, "
                "expected a multiple of 256 (256 * n_mels / 8)"
            )
        cfg["n_mels"] = channels // 256 * 8
        cfg["encoder_type"] = "ASP" if fc.shape[1] == 2 * channels else "SAP"
        cfg["embed_dim"] = int(fc.shape[0])
    elif model == "vggvox40":
        cfg["embed_dim"] = int(need("fc.weight", 2).shape[0])
        if "sap_linear.weight" in model_state:
            cfg["encoder_type"] = "SAP"
        else:
            cfg["encoder_type"] = None  # MAX or TAP: parameter-free, must be given
    elif model == "rawnet3":
        cfg["channels"] = int(need("layer4.weight", 3).shape[1]) // 3
        cfg["embed_dim"] = int(need("fc6.weight", 2).shape[0])
        attention_in = need("attention.0.weight", 3).shape[1]
        attention_out = need("attention.3.weight", 3).shape[0]
        cfg["encoder_type"] = "ECA" if attention_out > 1 else "ASP"
        cfg["context"] = bool(attention_in == 3 * 1536)
        notes.append(
            "sinc_stride, log_sinc, norm_sinc and out_bn are not stored in the weights; "
            "assumed RawNet3_AAM's 10, True, 'mean', False"
        )
    else:
        raise CheckpointError(
            f"unknown model '{model}'; speechkit converts {', '.join(SUPPORTED_MODELS)}"
        )
    return cfg, notes


# ------------------------------------------------------------------------------------------------
# front-end checks


def _frontend_reference(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """speechkit's counterparts of torchaudio's buffers: suffix -> tensor (None: not used)."""
    frontend = getattr(model, "frontend", None)
    if frontend is None or not hasattr(frontend, "mel"):
        return {}
    pre = getattr(frontend, "pre_emphasis", None)
    return {
        "spectrogram.window": frontend.mel.window,
        "mel_scale.fb": frontend.mel.fb,
        "flipped_filter": None if pre is None else pre.flipped_filter,
    }


#: buffers that live in the state dict of speechkit's RawNet3 as well (checked and loaded)
_STATE_BUFFERS = ("preprocess.0.flipped_filter", "conv1.filterbank.window_", "conv1.filterbank.n_")


def _compare(key: str, source: torch.Tensor, ours: torch.Tensor, what: str) -> FrontendCheck:
    if tuple(source.shape) != tuple(ours.shape):
        return FrontendCheck(
            key, False, f"{what}: shape {tuple(source.shape)}, speechkit's {tuple(ours.shape)}"
        )
    diff = float((source.double() - ours.double()).abs().max()) if source.numel() else 0.0
    ok = diff <= FRONTEND_ATOL
    verdict = "equal to" if ok else "DIFFERENT from"
    return FrontendCheck(key, ok, f"{what} {verdict} speechkit's (max |diff| {diff:.2e})", diff)


def _check_frontend(
    model_name: str,
    model: torch.nn.Module,
    frontend_state: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
) -> tuple[list[FrontendCheck], list[str]]:
    """Compare the source's front-end buffers with ``model``'s; returns (checks, unmapped)."""
    checks: list[FrontendCheck] = []
    unmapped: list[str] = []
    reference = _frontend_reference(model)
    seen: set[str] = set()
    for key, value in frontend_state.items():
        full = MODEL_PREFIX + key
        parts = key[len(FRONTEND_PREFIX) :].split(".")
        suffix = ".".join(parts[1:] if parts[0].isdigit() else parts)
        if suffix not in reference:
            unmapped.append(full)
            continue
        seen.add(suffix)
        ours = reference[suffix]
        if ours is None:
            checks.append(
                FrontendCheck(
                    full,
                    False,
                    f"the source applies pre-emphasis "
                    f"{value.flatten().tolist()} but speechkit's "
                    f"{model_name} has none",
                )
            )
        elif value.numel() == 0:
            checks.append(
                FrontendCheck(
                    full, True, "empty in the source (built lazily by old torchaudio); not compared"
                )
            )
        else:
            what = {
                "spectrogram.window": "analysis window",
                "mel_scale.fb": "mel filterbank",
                "flipped_filter": "pre-emphasis filter",
            }[suffix]
            checks.append(_compare(full, value, ours, what))
    if (
        frontend_state
        and reference.get("flipped_filter") is not None
        and "flipped_filter" not in seen
    ):
        checks.append(
            FrontendCheck(
                f"{MODEL_PREFIX}torchfb.*flipped_filter",
                False,
                f"speechkit's {model_name} applies pre-emphasis but the "
                "source's saved front-end has none",
            )
        )
    if model_name == "rawnet3":
        own = model.state_dict()
        for key in _STATE_BUFFERS:
            if key in model_state and key in own:
                checks.append(
                    _compare(
                        MODEL_PREFIX + key,
                        model_state[key],
                        own[key],
                        key.rsplit(".", 1)[-1] + " buffer",
                    )
                )
    return checks, unmapped


# ------------------------------------------------------------------------------------------------
# mapping


def _map_tensors(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], prefix: str
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[tuple]]:
    """Match ``source`` keys to ``target`` keys by name.

    Returns (loadable state dict, unmapped source keys (with ``prefix``), missing target keys,
    shape mismatches). A one-element tensor may change shape (``[1]`` <-> ``[]``); values are
    cast to the target dtype.
    """
    loadable: dict[str, torch.Tensor] = {}
    unmapped, mismatch = [], []
    for key, value in source.items():
        if key not in target:
            unmapped.append(prefix + key)
            continue
        want = target[key]
        if tuple(value.shape) != tuple(want.shape):
            if value.numel() == 1 and want.numel() == 1:
                value = value.reshape(want.shape)
            else:
                mismatch.append((prefix + key, tuple(value.shape), tuple(want.shape)))
                continue
        loadable[key] = value.detach().to(dtype=want.dtype).clone()
    missing = [k for k in target if k not in source]
    return loadable, unmapped, missing, mismatch


def _plain_cfg(obj: Any, name: str) -> dict[str, Any]:
    cfg = dataclasses.asdict(obj)
    cfg["_name"] = name
    return cfg


def _resolve_input_scale(
    explicit: float | None, known: KnownCheckpoint | None, file_name: str | None, layout: str
) -> tuple[float, str]:
    if explicit is not None:
        return float(explicit), "given explicitly"
    if known is not None:
        return known.input_scale, f"published checkpoint {file_name}: {known.note}"
    if layout in ("new", "rawnet3"):
        return 1.0, f"{layout} layout: trained by current code on soundfile-scale audio"
    return 1.0, (
        "not stored in the file; assumed 1.0 (voxceleb_trainer since 2021-04); pass "
        "input_scale=32768 for a model trained by older code on int16-scale audio"
    )


def convert_voxceleb_trainer(
    source: str | os.PathLike | Mapping[str, Any],
    model: str | None = None,
    loss: str | None = None,
    input_scale: float | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    criterion_overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], ConversionReport]:
    """Convert a voxceleb_trainer checkpoint into a speechkit checkpoint dict.

    Args:
        source: a checkpoint file, or an already loaded object in one of the three layouts.
        model: speechkit model name; default: detected from the keys (:func:`detect_model`).
        loss: speechkit criterion name; default: detected from the ``__L__`` keys
            (:func:`detect_loss`), else the published checkpoint's, else ``angleproto``
            (RawNet3: ``aamsoftmax``).
        input_scale: waveform multiplier the model expects (32768 for int16-scale training);
            default from :data:`KNOWN_CHECKPOINTS` by file name, else 1.0.
        model_overrides: model config fields that replace the inferred ones (``n_mels``,
            ``encoder_type``, ``log_input``, ``sinc_stride`` ...).
        criterion_overrides: criterion config fields (``margin``, ``scale`` ...).

    Returns:
        ``(checkpoint, report)``. ``checkpoint`` has ``cfg`` (``task``, ``model`` with ``_name``
        and ``input_scale``, ``criterion`` with ``_name``), ``model`` and ``criterion`` state
        dicts (the criterion's is empty when the source has no loss weights),
        ``speechkit_version`` and ``converted_from``. Check ``report.problems()`` before using
        it: unmapped, missing or mis-shaped keys and front-end mismatches are reported, not
        raised.

    Raises:
        CheckpointError: unreadable or unsafe file, unknown layout or architecture, or a config
            that cannot be inferred (e.g. VGGVox40 MAX vs TAP without ``encoder_type``).
        ConfigError: an override the model or criterion config rejects.
    """
    import speechkit
    from speechkit import components
    from speechkit.registry import MODEL_REGISTRY

    components.import_all()
    if isinstance(source, Mapping):
        state, layout, epoch = _parse_layout(source, "<state_dict>")
        src = SourceCheckpoint(state, layout, None, epoch, None)
    else:
        src = load_voxceleb_trainer_file(source)
    where = str(src.path) if src.path is not None else "<state_dict>"
    file_name = src.path.name if src.path is not None else None
    known = KNOWN_CHECKPOINTS.get(file_name) if file_name else None

    model_state = {
        k[len(MODEL_PREFIX) :]: v for k, v in src.state.items() if k.startswith(MODEL_PREFIX)
    }
    loss_state = {
        k[len(LOSS_PREFIX) :]: v for k, v in src.state.items() if k.startswith(LOSS_PREFIX)
    }
    other = [k for k in src.state if not k.startswith((MODEL_PREFIX, LOSS_PREFIX))]
    if not model_state:
        raise CheckpointError(f"{where}: no '__S__.*' (embedding model) weights in the file")
    frontend_state = {k: v for k, v in model_state.items() if k.startswith(FRONTEND_PREFIX)}
    body_state = {k: v for k, v in model_state.items() if not k.startswith(FRONTEND_PREFIX)}

    model_name = model or detect_model(body_state)
    inferred, notes = infer_model_config(model_name, body_state, frontend_state)
    cfg = {k: v for k, v in inferred.items() if v is not None}
    cfg.update(model_overrides or {})
    if input_scale is None and cfg.get("input_scale") is not None:
        input_scale = float(cfg["input_scale"])
    if model_name == "vggvox40" and cfg.get("encoder_type") is None:
        raise CheckpointError(
            f"{where}: VGGVox40 without sap_linear was trained with MAX or "
            "TAP pooling, which the weights cannot tell; pass "
            "encoder_type=MAX or TAP (--encoder-type)"
        )
    scale, scale_source = _resolve_input_scale(input_scale, known, file_name, src.layout)
    cfg["input_scale"] = scale
    net = MODEL_REGISTRY.build({"_name": model_name, **cfg})
    net_cfg = _plain_cfg(net.cfg, model_name)

    checks, unmapped_frontend = _check_frontend(model_name, net, frontend_state, body_state)
    loadable, unmapped, missing, mismatch = _map_tensors(body_state, net.state_dict(), MODEL_PREFIX)
    net.load_state_dict(loadable, strict=False)

    crit_cfg, crit_state, crit_result = _convert_loss(
        loss, loss_state, known, model_name, int(net_cfg["embed_dim"]), criterion_overrides, notes
    )
    crit_loaded, crit_unmapped, crit_missing, crit_mismatch = crit_result

    report = ConversionReport(
        source=where,
        layout=src.layout,
        model=model_name,
        criterion=crit_cfg["_name"],
        model_cfg=net_cfg,
        criterion_cfg=crit_cfg,
        input_scale=scale,
        input_scale_source=scale_source,
        mapped=len(loadable) + crit_loaded,
        unmapped=unmapped_frontend + unmapped + crit_unmapped + other,
        missing=[MODEL_PREFIX + k for k in missing] + crit_missing,
        shape_mismatch=mismatch + crit_mismatch,
        frontend_checks=checks,
        notes=notes,
    )
    checkpoint = {
        "speechkit_version": str(speechkit.__version__),
        "cfg": {
            "task": {"_name": "speaker_verification"},
            "model": net_cfg,
            "criterion": crit_cfg,
        },
        "model": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "criterion": crit_state,
        "converted_from": {
            "format": "voxceleb_trainer",
            "layout": src.layout,
            "file": file_name or "<state_dict>",
            "sha256": src.sha256,
            "epoch": src.epoch,
            "input_scale_source": scale_source,
            "dropped_keys": sorted(MODEL_PREFIX + k for k in frontend_state),
        },
    }
    return checkpoint, report


def _convert_loss(
    loss: str | None,
    loss_state: Mapping[str, torch.Tensor],
    known: KnownCheckpoint | None,
    model_name: str,
    embed_dim: int,
    overrides: Mapping[str, Any] | None,
    notes: list[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor], tuple[int, list, list, list]]:
    """Pick the criterion, build its config and map the ``__L__`` weights into it.

    Returns (criterion cfg, criterion state dict (empty without loss weights), (number mapped,
    unmapped keys, missing keys, shape mismatches)); appends assumptions to ``notes``.
    """
    from speechkit.registry import CRITERION_REGISTRY

    detected = detect_loss(loss_state)
    why = None
    if loss is not None:
        name = loss
    elif detected is not None:
        name = detected
        if detected == "angleproto" and not (known and known.loss == "angleproto"):
            notes.append(
                "__L__.w / __L__.b are shared by angleproto and ge2e; assumed angleproto "
                "(pass loss='ge2e' / --loss ge2e)"
            )
    elif known is not None:
        name, why = known.loss, f"the published checkpoint's loss ({known.loss})"
    else:
        name = "aamsoftmax" if model_name == "rawnet3" else "angleproto"
        why = f"assumed {name} (pass loss= / --loss)"
    if loss_state and detected is None and loss is None:
        notes.append(
            f"__L__ keys {_first(sorted(loss_state), 4)} match no known loss; they are unmapped"
        )
    if not loss_state and why:
        notes.append(f"the file holds no loss weights; criterion: {why}")

    cfg_in: dict[str, Any] = {"_name": name}
    fields = {f.name for f in dataclasses.fields(CRITERION_REGISTRY.dataclass(name))}
    if "embed_dim" in fields:
        cfg_in["embed_dim"] = embed_dim
    classes = _loss_num_classes(name, loss_state)
    if "num_classes" in fields and classes is not None:
        cfg_in["num_classes"] = classes
    cfg_in.update(overrides or {})
    if not loss_state or (detected is None and loss is None):
        _, cfg_obj = CRITERION_REGISTRY.resolve_config(cfg_in)
        unmapped = [LOSS_PREFIX + k for k in loss_state]
        return _plain_cfg(cfg_obj, name), {}, (0, unmapped, [], [])
    criterion = CRITERION_REGISTRY.build(cfg_in, None)
    loadable, unmapped, missing, mismatch = _map_tensors(
        loss_state, criterion.state_dict(), LOSS_PREFIX
    )
    criterion.load_state_dict(loadable, strict=False)
    state = {k: v.detach().clone() for k, v in criterion.state_dict().items()}
    missing = [LOSS_PREFIX + k for k in missing]
    return _plain_cfg(criterion.cfg, name), state, (len(loadable), unmapped, missing, mismatch)


def _loss_num_classes(loss: str, loss_state: Mapping[str, torch.Tensor]) -> int | None:
    """Number of training speakers from the classifier weights, if the loss has them."""
    weight = {
        "softmax": ("fc.weight", 0),
        "softmaxproto": ("softmax.fc.weight", 0),
        "aamsoftmax": ("weight", 0),
        "amsoftmax": ("W", 1),  # (D, C): transposed
    }.get(loss)
    if weight is None or weight[0] not in loss_state or loss_state[weight[0]].dim() != 2:
        return None
    return int(loss_state[weight[0]].shape[weight[1]])


def save_converted(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a converted checkpoint atomically (loadable with ``load_checkpoint_file``).

    Raises:
        OSError: the folder is not writable (``path`` is then untouched).
    """
    from speechkit.trainer.checkpoint import atomic_torch_save

    atomic_torch_save(dict(checkpoint), path)

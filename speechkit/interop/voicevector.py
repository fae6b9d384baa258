"""Convert the VoiceVector reference's weights to speechkit ``voicevector_ae`` /
``voicevector_av`` and the composites ``voicevector_avem`` / ``voicevector_vem`` /
``voicevector_ivem``.

Upstream: ``akamrahimi/VoiceVector`` (Rahimi, Afouras, Zisserman, "VoiceVector: multimodal
enrolment vectors for speaker separation", ICASSP 2024), ``src/models/components/
voiceFormerAE.py`` (class ``VoiceFormerAE``) and the composites ``voiceFormerVEM.py`` /
``voiceFormerAVEM2.py`` / ``voiceFormerIVEM.py``, whose separation net is a ``VoiceFormerAE``
under ``speaker_separation``. Released files: ``ae.ckpt`` (a Lightning checkpoint: the weights
are ``ckpt["state_dict"]`` with keys ``net.*``; the reference's loader also renames ``demucs.``
to ``net.``) and ``avem3.pth`` / ``vem.pth`` / ``ivem.pth`` (raw state dicts without ``net.``,
keys ``speaker_separation.*`` plus the enrolment net ``av_speaker_embedding.*`` /
``v_speaker_embedding.*`` / ``iv_speaker_embedding.*``). A composite converts to the speechkit
composite (:mod:`speechkit.models.voicevector_composite`): ``speaker_separation.*`` ->
``separation.*`` with the map below, the enrolment net -> ``enrolment.*`` with the enrolment
map further down.

The map is NOT the identity; reference name (after the prefix strip) -> speechkit name:

- ``encoder.{i}.{0,2}.*`` -> ``encoder.{i}.{0,2}.*`` (same)
- ``decoder.{j}.{0,2}.*`` -> ``decoder.{depth-1-j}.{0,2}.*`` (the reference inserts each level
  at the front, so its ``decoder.0`` is the deepest level; speechkit's ``decoder[i]`` mirrors
  ``encoder[i]``)
- ``norm_layers.0.0.*`` / ``norm_layers.0.1.*`` -> ``input_conv.*`` / ``input_norm.*``
- ``adaptive_layer.0.{0,1,2}.*`` -> ``enrol_adapter.{conv1,norm,conv2}.*``
- ``positive_negative_embedding.weight`` -> ``enrol_type_embed.weight``
- ``transformer.transformer_encoder.layers.{k}.*`` -> ``transformer.layers.{k}.*``
- ``transformer.decoder.*`` -> ``head.*``
- ``transformer.pos_encoder.pe`` (a persistent (max_len, 1, d_model) sinusoid; speechkit's is
  recomputed) and torchaudio ``Resample`` kernels (``upsample.kernel`` / ``downsample.kernel``,
  present only in files from old torchaudio versions) are checked / dropped, not loaded.

The config is read from the weights: ``hidden``, ``growth`` and ``depth`` (encoder widths),
``kernel_size``, ``ffn_dim``, ``transformer_layers``, ``max_len`` (the PE table), ``emb_dim`` and
``enrol_hidden``. ``heads`` leaves no trace in the weights (the reference uses 8).

The reference's ``VoiceFormerAV`` (``voicevectorav``, ``src/models/components/voiceFormerAV.py``;
no released weights) is recognised by its video PE table ``transformer.pos_encoder_vid.pe`` and
converts to ``voicevector_av`` with a map of its own:

- ``norm_layers.0.0.*`` (the bottleneck GroupNorm(1, d_model)) -> ``bottleneck_norm.*``
- ``adaptive_layer.0.{0,1}.*`` (lip 1x1 conv, GroupNorm) -> ``video_adapter.{conv,norm}.*``
- encoder, decoder, transformer layers and head as above
- ``transformer.pos_encoder_aud.pe`` (the sinusoid) and ``transformer.pos_encoder_vid.pe`` (the
  sinusoid upsampled x2 along time, nearest: row k = ``pe[k // 2]``) are checked and dropped.

``lip_dim`` is read from ``adaptive_layer.0.0.weight`` and ``max_len`` from the audio PE table.

Enrolment nets (upstream ``EmbeddingAV2.py`` under ``av_speaker_embedding`` ->
``voicevector_embedding_av``, ``EmbeddingV2.py`` under ``v_speaker_embedding`` ->
``voicevector_embedding_v``, ``EmbeddingIV2.py`` under ``iv_speaker_embedding`` ->
``voicevector_embedding_iv``; :mod:`speechkit.models.voicevector_enrolment`):

- ``adaptive_layer.0.{0,1}.*`` (lip 1x1 conv, GroupNorm) -> ``video_adapter.{conv,norm}.*``
- ``transformer.transformer_encoder.layers.{k}.*`` -> ``transformer.layers.{k}.*``;
  ``transformer.decoder.*`` -> ``head.*``
- ``linear_layers.0.0.*`` (1x1 conv d_model -> 384) -> ``speaker_head.proj.*``
- ``ECAPA.*`` (SpeechBrain ``ECAPA_TDNN`` names) -> ``speaker_head.ecapa.*`` with the map of
  :func:`speechkit.interop.speechbrain_ecapa.speechkit_key`
- AV: ``encoder.{i}.{0,2}.*`` as above, ``norm_layers.0.0.*`` -> ``bottleneck_norm.*``; its
  ``decoder.*`` (built, never used upstream) is dropped
- IV: ``face_embedding_adaptive_layer.0.{0,1}.*`` -> ``face_adapter.{conv,norm}.*``,
  ``face_positional_embedding.weight`` -> ``face_type_embed.weight``
- PE tables (``transformer.pos_encoder_aud.pe`` plain and ``transformer.pos_encoder_vid.pe``
  upsampled x2 in V / AV, ``transformer.pos_encoder.pe`` plain in IV) are checked and dropped.

The enrolment-net key names follow the upstream source files named above; they were NOT checked
against a released ``avem3.pth`` / ``vem.pth`` / ``ivem.pth`` (the map is strict, so a file
that differs is refused with the keys named, never loaded partially). Sizes are read from the
weights (``lip_dim``, ``d_model``, layers, FFN, ``max_len``, ``proj_dim``, ``face_dim``, the
ECAPA sizes; for AV the U-Net widths); ``heads`` (8) and the ECAPA dilations (SpeechBrain's
1/2/3/4/1 for five layers) are not stored.

Example::

    checkpoint, report = convert_voicevector_file("ae.ckpt")
    save_converted(checkpoint, "voicevector_ae.pt")
    checkpoint, report = convert_voicevector_file("vem.pth")  # -> voicevector_vem
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from speechkit.errors import CheckpointError

__all__ = [
    "AV_MODEL_NAME",
    "ENROLMENT_NAMESPACES",
    "ConversionReport",
    "load_voicevector_state_dict",
    "convert_voicevector",
    "speechkit_checkpoint",
    "convert_voicevector_file",
    "save_converted",
]

MODEL_NAME = "voicevector_ae"
AV_MODEL_NAME = "voicevector_av"
ENROLMENT_NAMESPACES = ("av_speaker_embedding", "v_speaker_embedding", "iv_speaker_embedding")
"""Enrolment-net namespaces of the reference's composite models (avem / vem / ivem)."""
COMPOSITES = {  # namespace -> (speechkit composite, its enrolment net)
    "av_speaker_embedding": ("voicevector_avem", "voicevector_embedding_av"),
    "v_speaker_embedding": ("voicevector_vem", "voicevector_embedding_v"),
    "iv_speaker_embedding": ("voicevector_ivem", "voicevector_embedding_iv"),
}
SEPARATION_NAMESPACE = "speaker_separation"

_SHARED = [  # the same in the reference's AE and AV nets
    (
        re.compile(r"transformer\.transformer_encoder\.layers\.(\d+)\.(.+)$"),
        r"transformer.layers.\1.\2",
    ),
    (re.compile(r"transformer\.decoder\.(weight|bias)$"), r"head.\1"),
    (re.compile(r"encoder\.(\d+)\.([02])\.(weight|bias)$"), r"encoder.\1.\2.\3"),
]
_FIXED = [
    (re.compile(r"norm_layers\.0\.0\.(weight|bias)$"), r"input_conv.\1"),
    (re.compile(r"norm_layers\.0\.1\.(weight|bias)$"), r"input_norm.\1"),
    (re.compile(r"adaptive_layer\.0\.0\.(weight|bias)$"), r"enrol_adapter.conv1.\1"),
    (re.compile(r"adaptive_layer\.0\.1\.(weight|bias)$"), r"enrol_adapter.norm.\1"),
    (re.compile(r"adaptive_layer\.0\.2\.(weight|bias)$"), r"enrol_adapter.conv2.\1"),
    (re.compile(r"positive_negative_embedding\.weight$"), "enrol_type_embed.weight"),
    *_SHARED,
]
_FIXED_AV = [
    (re.compile(r"norm_layers\.0\.0\.(weight|bias)$"), r"bottleneck_norm.\1"),
    (re.compile(r"adaptive_layer\.0\.0\.(weight|bias)$"), r"video_adapter.conv.\1"),
    (re.compile(r"adaptive_layer\.0\.1\.(weight|bias)$"), r"video_adapter.norm.\1"),
    *_SHARED,
]
_ENROL = [  # shared by the three enrolment nets (EmbeddingV2 / AV2 / IV2)
    (re.compile(r"adaptive_layer\.0\.0\.(weight|bias)$"), r"video_adapter.conv.\1"),
    (re.compile(r"adaptive_layer\.0\.1\.(weight|bias)$"), r"video_adapter.norm.\1"),
    (re.compile(r"linear_layers\.0\.0\.(weight|bias)$"), r"speaker_head.proj.\1"),
    *_SHARED[:2],
]
_ENROL_AV = [
    (re.compile(r"norm_layers\.0\.0\.(weight|bias)$"), r"bottleneck_norm.\1"),
    _SHARED[2],
]
_ENROL_IV = [
    (re.compile(r"face_embedding_adaptive_layer\.0\.0\.(weight|bias)$"), r"face_adapter.conv.\1"),
    (re.compile(r"face_embedding_adaptive_layer\.0\.1\.(weight|bias)$"), r"face_adapter.norm.\1"),
    (re.compile(r"face_positional_embedding\.weight$"), "face_type_embed.weight"),
]
_PLAIN_PE = "transformer.pos_encoder.pe"
_DECODER = re.compile(r"decoder\.(\d+)\.([02])\.(weight|bias)$")
_AUD_PE, _VID_PE = "transformer.pos_encoder_aud.pe", "transformer.pos_encoder_vid.pe"
_DROPPED = ("transformer.pos_encoder.pe", "upsample.kernel", "downsample.kernel")
_DROPPED_AV = (_AUD_PE, _VID_PE, "upsample.kernel", "downsample.kernel")


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did: the variant found, the keys left out and why."""

    variant: str = "ae"  # "ae" (ae.ckpt), "av" (voicevectorav) or the composite's namespace
    model: str = MODEL_NAME  # the speechkit model converted to
    enrolment: str = ""  # composites: the enrolment net converted to (voicevector_embedding_*)
    enrolment_tensors: int = 0  # composites: tensors mapped into enrolment.*
    dropped: list[str] = dataclasses.field(default_factory=list)  # PE tables, kernels, unused

    def lines(self) -> list[str]:
        out = [f"source: VoiceVector {self.variant} separation net -> {self.model}"]
        if self.enrolment:
            out.append(
                f"enrolment net: {self.variant}.* -> enrolment.* ({self.enrolment}, "
                f"{self.enrolment_tensors} tensors)"
            )
        if self.dropped:
            out.append(f"fixed buffers checked and dropped: {', '.join(self.dropped)}")
        return out


def _first(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------------------------------------
# reading
class _Opaque:
    """Inert stand-in for a pickled object outside the allow-list (Lightning's hyper-parameters,
    ``functools.partial`` optimizers ...): it is never called with pickled code, only holds the
    pickled state, and cannot end up in the weights (those must all be tensors)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _lenient_module() -> types.ModuleType:
    from speechkit.interop.fairseq import RestrictedUnpickler

    class LenientUnpickler(RestrictedUnpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except pickle.UnpicklingError:
                return _Opaque

    mod = types.ModuleType("speechkit_voicevector_pickle")
    mod.Unpickler = LenientUnpickler
    mod.load = lambda f, **kw: LenientUnpickler(f, **kw).load()
    mod.loads = lambda b, **kw: LenientUnpickler(io.BytesIO(b), **kw).load()
    mod.UnpicklingError = pickle.UnpicklingError
    mod.__version__ = "1"
    return mod


def load_voicevector_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a reference file, prefix ``net.`` / ``demucs.`` removed.

    A Lightning ``.ckpt`` gives ``ckpt["state_dict"]``; a ``.pth`` (or any file whose top level
    is a flat mapping of tensors) is taken as the raw state dict. Reading never runs pickled
    code: ``torch.load(weights_only=True)`` first; a Lightning file whose hyper-parameters pickle
    other objects is read again with speechkit's restricted unpickler, which keeps tensors and
    plain containers and replaces every other object by an inert placeholder.

    Raises:
        CheckpointError: missing / damaged file, no ``state_dict``, or non-tensor weights.
    """
    from speechkit.trainer.checkpoint import CorruptCheckpointError, load_checkpoint_file

    path = Path(path)
    try:
        obj = load_checkpoint_file(path)
    except CorruptCheckpointError:
        raise
    except CheckpointError:
        if not path.is_file():
            raise
        try:
            obj = torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_lenient_module()
            )
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise CheckpointError(f"cannot read VoiceVector checkpoint {path}: {e}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: 'state_dict' is not a non-empty mapping of tensors")
    bad = [repr(k) for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"{path}: expected a state dict of tensors (a Lightning 'state_dict' or a raw .pth); "
            f"entries {_first(bad)} are not tensors"
        )
    out = {}
    for key, value in state.items():
        for prefix in ("net.", "demucs."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# mapping
def _shape(state: Mapping[str, torch.Tensor], key: str, dims: int, where: str) -> tuple:
    if key not in state:
        raise CheckpointError(f"{where}: missing key {key!r} (not a VoiceVector net?)")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise CheckpointError(f"{where}: {key} has shape {shape}, expected {dims} dims")
    return shape


def _split(state: dict[str, torch.Tensor], where: str) -> tuple[dict, dict, ConversionReport]:
    """Separation-net keys and enrolment-net keys (composite namespaces removed; the latter
    empty for a plain separation net) and the report."""
    report = ConversionReport()
    tops = {k.split(".", 1)[0] for k in state}
    if SEPARATION_NAMESPACE not in tops:
        stray = sorted(k for k in state if k.split(".", 1)[0] in ENROLMENT_NAMESPACES)
        if stray:
            raise CheckpointError(
                f"{where}: enrolment-net weights ({_first(stray)}) without a "
                f"'{SEPARATION_NAMESPACE}.*' separation net"
            )
        return state, {}, report
    sep, enrol, unknown = {}, {}, []
    for key, value in state.items():
        top, _, rest = key.partition(".")
        if top == SEPARATION_NAMESPACE:
            sep[rest] = value
        elif top in ENROLMENT_NAMESPACES:
            enrol.setdefault(top, {})[rest] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{where}: composite checkpoint with keys outside '{SEPARATION_NAMESPACE}.*' and the "
            f"enrolment nets {ENROLMENT_NAMESPACES}: {_first(sorted(unknown))}"
        )
    if len(enrol) > 1:
        raise CheckpointError(
            f"{where}: composite checkpoint with several enrolment nets ({', '.join(sorted(enrol))}"
            "); expected one"
        )
    report.variant = next(iter(enrol), SEPARATION_NAMESPACE)
    return sep, next(iter(enrol.values()), {}), report


def _infer_unet(state: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    """``hidden``, ``depth``, ``growth`` and ``kernel_size`` from the ``encoder.*`` weights."""
    widths, kernel = [], None
    while f"encoder.{len(widths)}.0.weight" in state:
        c_out, c_in, k = _shape(state, f"encoder.{len(widths)}.0.weight", 3, where)
        if c_in != (widths[-1] if widths else 1):
            raise CheckpointError(
                f"{where}: encoder.{len(widths)}.0.weight has {c_in} input channels, expected "
                f"{widths[-1] if widths else 1}"
            )
        widths.append(c_out)
        kernel = k
    if not widths:
        raise CheckpointError(f"{where}: no encoder.0.0.weight (not a VoiceVector separation net)")
    growth = widths[1] // widths[0] if len(widths) > 1 else 2
    if [widths[0] * growth**i for i in range(len(widths))] != widths:
        raise CheckpointError(
            f"{where}: encoder widths {widths} do not grow by a constant integer factor "
            "(speechkit's VoiceVector nets need hidden * growth ** i)"
        )
    return {"hidden": widths[0], "depth": len(widths), "growth": growth, "kernel_size": kernel}


def _infer_transformer(state: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    """``transformer_layers`` and ``ffn_dim`` from the reference's transformer weights."""
    layers = 0
    while f"transformer.transformer_encoder.layers.{layers}.linear1.weight" in state:
        layers += 1
    if not layers:
        raise CheckpointError(f"{where}: no transformer.transformer_encoder.layers.0.* weights")
    ffn = _shape(state, "transformer.transformer_encoder.layers.0.linear1.weight", 2, where)[0]
    return {"transformer_layers": layers, "ffn_dim": ffn}


def _infer_config(state: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    fields = {**_infer_unet(state, where), **_infer_transformer(state, where)}
    adapt = _shape(state, "adaptive_layer.0.0.weight", 3, where)
    if _VID_PE in state:  # voicevectorav: the adaptive layer is the lip projection
        fields["max_len"] = _shape(state, _AUD_PE, 3, where)[0]
        fields["lip_dim"] = adapt[1]
    else:
        fields["max_len"] = _shape(state, "transformer.pos_encoder.pe", 3, where)[0]
        fields["emb_dim"], fields["enrol_hidden"] = adapt[1], adapt[0]
    return fields


def _check_pe(pe: torch.Tensor, where: str, key: str, upsample: int = 1) -> None:
    """The reference's PE buffer (n, 1, d) must be the fixed sinusoid speechkit recomputes,
    upsampled ``upsample`` x along time (nearest: row k = sinusoid[k // upsample])."""
    n, _, d = pe.shape
    pos = (torch.arange(n) // upsample).to(torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(1e4) / d))
    ref = torch.zeros(n, d, dtype=torch.float64)
    ref[:, 0::2] = torch.sin(pos * freq)
    ref[:, 1::2] = torch.cos(pos * freq)
    err = (pe[:, 0].double() - ref).abs().max().item()
    if err > 1e-3:
        kind = "sinusoidal table" + (f" upsampled x{upsample} (nearest)" if upsample > 1 else "")
        raise CheckpointError(
            f"{where}: {key} is not the standard {kind} (max deviation {err:.3g}); speechkit "
            "recomputes it"
        )


def _speechkit_key(key: str, depth: int, av: bool = False) -> str | None:
    m = _DECODER.match(key)
    if m:
        j = int(m.group(1))
        return f"decoder.{depth - 1 - j}.{m.group(2)}.{m.group(3)}" if j < depth else None
    for pattern, repl in _FIXED_AV if av else _FIXED:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _fill(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    key_fn: Any,
    dropped: tuple[str, ...],
    report: ConversionReport,
    failure: str,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Strict map: every ``source`` key (bar ``dropped``) to one ``target`` key of the same
    shape via ``key_fn(key) -> (name, squeeze) | name | None``, every target key filled.
    ``prefix`` is prepended to reference keys in messages and in ``report.dropped``.

    Raises:
        CheckpointError: ``failure`` + unmapped / unfilled / mismatched keys (named).
    """
    out, unmapped, mismatched = {}, [], []
    for key, value in source.items():
        if key in dropped:
            report.dropped.append(prefix + key)
            continue
        new, squeeze = key_fn(key), False
        if isinstance(new, tuple):
            new, squeeze = new
        if squeeze and value.dim() == 3 and value.shape[-1] == 1:
            value = value[..., 0]
        if new is None or new not in target:
            unmapped.append(prefix + key)
        elif tuple(value.shape) != tuple(target[new].shape):
            mismatched.append(
                f"{prefix}{key} {tuple(value.shape)} -> {new} {tuple(target[new].shape)}"
            )
        else:
            out[new] = value.detach().clone().to(target[new].dtype)
    missing = sorted(set(target) - set(out))
    problems = []
    if unmapped:
        problems.append(f"unmapped reference keys {_first(sorted(unmapped))}")
    if missing:
        problems.append(f"speechkit keys not filled {_first(missing)}")
    if mismatched:
        problems.append(f"shape mismatches {_first(mismatched, 3)}")
    if problems:
        raise CheckpointError(f"{failure}: " + "; ".join(problems))
    return out


def _enrolment_key(key: str, kind: str) -> tuple[str, bool] | str | None:
    """speechkit name of an enrolment-net key (namespace removed) of kind "av" / "v" / "iv"."""
    from speechkit.interop.speechbrain_ecapa import speechkit_key as ecapa_key

    if key.startswith("ECAPA."):
        mapped = ecapa_key(key[len("ECAPA.") :])
        return None if mapped is None else ("speaker_head.ecapa." + mapped[0], mapped[1])
    rules = _ENROL + (_ENROL_AV if kind == "av" else _ENROL_IV if kind == "iv" else [])
    for pattern, repl in rules:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _convert_enrolment(
    state: dict[str, torch.Tensor],
    namespace: str,
    where: str,
    overrides: Mapping[str, Any],
    report: ConversionReport,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One reference enrolment net (``namespace`` removed) -> (speechkit weights, config)."""
    from speechkit.interop.speechbrain_ecapa import infer_config as ecapa_config
    from speechkit.models.voicevector_enrolment import (
        VoiceVectorEmbeddingAV,
        VoiceVectorEmbeddingAVConfig,
        VoiceVectorEmbeddingConfig,
        VoiceVectorEmbeddingIV,
        VoiceVectorEmbeddingV,
    )

    kind = namespace.split("_", 1)[0]  # av / v / iv
    here = f"{where} ({namespace}.*)"
    adapt = _shape(state, "adaptive_layer.0.0.weight", 3, here)
    fields: dict[str, Any] = {
        "d_model": adapt[0],
        "lip_dim": adapt[1],
        "proj_dim": _shape(state, "linear_layers.0.0.weight", 3, here)[0],
        **_infer_transformer(state, here),
    }
    ecapa = {k[len("ECAPA.") :]: v for k, v in state.items() if k.startswith("ECAPA.")}
    for key, value in ecapa_config(ecapa, where=f"{here} ECAPA.*").items():
        if key == "n_mels":
            continue  # the ECAPA input is proj_dim (a mismatch shows as a shape error)
        fields["out_dim" if key == "embed_dim" else "ecapa_" + key] = value
    pe_key = _PLAIN_PE if kind == "iv" else _AUD_PE
    fields["max_len"] = _shape(state, pe_key, 3, here)[0]
    _check_pe(state[pe_key], here, pe_key)
    if _VID_PE in state:
        _check_pe(state[_VID_PE], here, _VID_PE, upsample=2)
    dropped = ("upsample.kernel", "downsample.kernel", _AUD_PE, _VID_PE, _PLAIN_PE)
    if kind == "av":
        fields.update(_infer_unet(state, here))
        # EmbeddingAV2 builds a decoder it never runs: dropped
        dropped += tuple(k for k in state if _DECODER.match(k))
        cls, cfg_cls = VoiceVectorEmbeddingAV, VoiceVectorEmbeddingAVConfig
    else:
        cls = VoiceVectorEmbeddingIV if kind == "iv" else VoiceVectorEmbeddingV
        cfg_cls = VoiceVectorEmbeddingConfig
    if kind == "iv":
        fields["face_dim"] = _shape(state, "face_embedding_adaptive_layer.0.0.weight", 3, here)[1]
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    fields.update({k: v for k, v in overrides.items() if k in names})
    try:
        model = cls(cfg_cls(**fields))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{here}: inferred config {fields} is invalid: {e}") from None
    out = _fill(
        state,
        model.state_dict(),
        lambda k: _enrolment_key(k, kind),
        dropped,
        report,
        f"{here}: not a VoiceVector enrolment net matching {COMPOSITES[namespace][1]} ({fields})",
        prefix=namespace + ".",
    )
    cfg = dataclasses.asdict(model.cfg)
    cfg.pop("_name", None)
    return out, cfg


def convert_voicevector(
    state: Mapping[str, torch.Tensor],
    where: str = "checkpoint",
    model_overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], ConversionReport]:
    """Reference state dict (``net.`` already removed) -> (speechkit state dict, model config
    with ``_name``, :class:`ConversionReport`). ``_name`` is ``voicevector_ae``,
    ``voicevector_av`` for the reference's AV net, or for a composite file
    ``voicevector_avem`` / ``voicevector_vem`` / ``voicevector_ivem`` (state ``separation.*`` +
    ``enrolment.*``, config ``separation`` + ``enrolment`` sub-configs).

    ``model_overrides`` sets config fields the weights do not fix (``heads``, ``dropout``,
    ``sample_rate`` ...); for a composite, each applies to every sub-config that has it.

    Raises:
        CheckpointError: not a VoiceVector net; ``voicevectorave`` (no type embedding); a PE
            table that is not the (upsampled) sinusoid; keys that map to nothing, speechkit
            keys left unfilled, or shape mismatches (all named).
    """
    from speechkit.models.voicevector import (
        VoiceVectorAE,
        VoiceVectorAV,
        VoiceVectorAVConfig,
        VoiceVectorConfig,
    )

    sep, enrol, report = _split(dict(state), where)
    av = _VID_PE in sep
    if av and enrol:
        raise CheckpointError(
            f"{where}: a composite whose separation net is an AV net (voicevectorav); expected "
            "the AE net (VoiceFormerAE) under speaker_separation.*"
        )
    if av:
        report.model = AV_MODEL_NAME
        if report.variant == "ae":
            report.variant = "av"
    elif "positive_negative_embedding.weight" not in sep and "adaptive_layer.0.0.weight" in sep:
        raise CheckpointError(
            f"{where}: no positive_negative_embedding.weight: a voicevectorave net (no "
            "positive / negative type embedding), which speechkit's voicevector_ae does not build"
        )
    fields = _infer_config(sep, where)
    fields.update(model_overrides or {})
    try:
        if av:
            model = VoiceVectorAV(VoiceVectorAVConfig(**fields))
        else:
            model = VoiceVectorAE(VoiceVectorConfig(**fields))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: inferred config {fields} is invalid: {e}") from None
    if av:
        _check_pe(sep[_AUD_PE], where, _AUD_PE)
        _check_pe(sep[_VID_PE], where, _VID_PE, upsample=VoiceVectorAV.video_pe_upsample)
    else:
        _check_pe(sep["transformer.pos_encoder.pe"], where, "transformer.pos_encoder.pe")
    prefix = f"{SEPARATION_NAMESPACE}." if enrol else ""
    out = _fill(
        sep,
        model.state_dict(),
        lambda k: _speechkit_key(k, model.cfg.depth, av),
        _DROPPED_AV if av else _DROPPED,
        report,
        f"{where}: not a VoiceVector separation net matching {report.model} ({fields})",
        prefix=prefix,
    )
    cfg = dataclasses.asdict(model.cfg)
    cfg["_name"] = report.model
    if not enrol:
        return out, cfg, report
    enrol_state, enrol_cfg = _convert_enrolment(
        enrol, report.variant, where, model_overrides or {}, report
    )
    report.model, report.enrolment = COMPOSITES[report.variant]
    report.enrolment_tensors = len(enrol_state)
    cfg.pop("_name")
    composite = {
        "_name": report.model,
        "separation": cfg,
        "enrolment": enrol_cfg,
        "enrolment_checkpoint": "",
        "separation_init": "",
    }
    weights = {f"separation.{k}": v for k, v in out.items()}
    weights.update({f"enrolment.{k}": v for k, v in enrol_state.items()})
    return weights, composite, report


# ---------------------------------------------------------------------------------------------
# writing
def speechkit_checkpoint(
    state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], source: str, sha256: str = ""
) -> dict[str, Any]:
    """A ``target_speaker_separation`` checkpoint dict (``Separator.from_checkpoint``,
    ``checkpoint.finetune_from_model``); ``converted_from`` records the file and its sha256."""
    import speechkit

    return {
        "speechkit_version": str(speechkit.__version__),
        "cfg": {"task": {"_name": "target_speaker_separation"}, "model": dict(cfg)},
        "model": dict(state),
        "converted_from": {"format": "voicevector", "file": source, "sha256": sha256},
    }


def convert_voicevector_file(
    path: str | os.PathLike, model_overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], ConversionReport]:
    """:func:`load_voicevector_state_dict` + :func:`convert_voicevector` +
    :func:`speechkit_checkpoint` for ``ae.ckpt`` / ``*.pth``.

    Raises:
        CheckpointError: see those functions.
    """
    state = load_voicevector_state_dict(path)
    model_state, cfg, report = convert_voicevector(state, os.fspath(path), model_overrides)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    checkpoint = speechkit_checkpoint(model_state, cfg, os.path.basename(path), digest.hexdigest())
    return checkpoint, report


def save_converted(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a converted checkpoint atomically (readable by ``load_checkpoint_file``).

    Raises:
        OSError: the folder is not writable (``path`` is then untouched).
    """
    from speechkit.trainer.checkpoint import atomic_torch_save

    atomic_torch_save(dict(checkpoint), path)

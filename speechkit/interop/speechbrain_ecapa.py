"""Convert SpeechBrain ECAPA-TDNN weights (``embedding_model.ckpt``) to ``ecapa_tdnn_speechbrain``.

SpeechBrain's ``spkrec-ecapa-voxceleb`` ships its speaker encoder as ``embedding_model.ckpt``, a
plain ``torch.save`` of ``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN.state_dict()``. Its
keys wrap every ``nn.Conv1d`` / ``nn.BatchNorm1d`` once more (``conv.conv.weight``,
``norm.norm.running_var``); speechkit's :class:`~speechkit.models.ecapa_tdnn_speechbrain.
ECAPATDNNSpeechBrain` holds the same tensors under its own names. The map is strict
(:func:`speechkit_key`): every source key must map to exactly one speechkit key of the same
shape and every speechkit key must be filled, otherwise :class:`~speechkit.errors.
CheckpointError` names the offending keys. The squeeze-excitation and final ``fc`` 1x1
convolutions become ``nn.Linear`` weights (their trailing kernel axis of size 1 is dropped).

The architecture is read from the weights: input size (mel bands), ``channels``,
``kernel_sizes``, ``res2net_scale``, ``se_channels``, ``attention_channels``,
``global_context`` and ``lin_neurons`` (``embed_dim``). Dilations leave no trace in the weights:
they default to SpeechBrain's ``[1, 2, 3, 4, 1]`` for five layers and must be given otherwise.

The front-end is not part of the state dict; speechkit reproduces SpeechBrain's ``Fbank`` and the
``InputNormalization(norm_type="sentence", std_norm=False)`` of ``spkrec-ecapa-voxceleb``
(:mod:`speechkit.modules.speechbrain_fbank`), so a converted checkpoint gives
``EncoderClassifier.encode_batch(wav)`` (``normalize=False``) from a 16 kHz waveform. The
optional ``mean_var_norm_emb.ckpt`` (only used with ``normalize=True``) is not converted.

Example::

    state = load_speechbrain_state_dict("embedding_model.ckpt")
    model_state, model_cfg = convert_speechbrain_ecapa(state)
    save_converted(speechkit_checkpoint(model_state, model_cfg, source="..."), "ecapa_sb.pt")
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from speechkit.errors import CheckpointError

__all__ = [
    "MODEL_NAME",
    "DEFAULT_DILATIONS",
    "speechkit_key",
    "infer_config",
    "convert_speechbrain_ecapa",
    "load_speechbrain_state_dict",
    "speechkit_checkpoint",
    "convert_speechbrain_ecapa_file",
    "save_converted",
]

MODEL_NAME = "ecapa_tdnn_speechbrain"
DEFAULT_DILATIONS = (1, 2, 3, 4, 1)
"""SpeechBrain's ``ECAPA_TDNN`` default (and ``spkrec-ecapa-voxceleb``'s) for five layers."""

_BN = r"norm\.norm\.(weight|bias|running_mean|running_var|num_batches_tracked)"
_CONV = r"conv\.conv\.(weight|bias)"
# (source pattern, target template, squeeze the trailing kernel axis); {b} is the block index - 1
_RULES: tuple[tuple[str, str, bool], ...] = (
    (rf"blocks\.0\.{_CONV}", "stem.conv.{0}", False),
    (rf"blocks\.0\.{_BN}", "stem.bn.{0}", False),
    (rf"blocks\.(\d+)\.(tdnn[12])\.{_CONV}", "blocks.{b}.{1}.conv.{2}", False),
    (rf"blocks\.(\d+)\.(tdnn[12])\.{_BN}", "blocks.{b}.{1}.bn.{2}", False),
    (
        rf"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.{_CONV}",
        "blocks.{b}.res2net.tdnns.{1}.conv.{2}",
        False,
    ),
    (
        rf"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.{_BN}",
        "blocks.{b}.res2net.tdnns.{1}.bn.{2}",
        False,
    ),
    (r"blocks\.(\d+)\.se_block\.conv1\.conv\.(weight|bias)", "blocks.{b}.se.linear1.{1}", True),
    (r"blocks\.(\d+)\.se_block\.conv2\.conv\.(weight|bias)", "blocks.{b}.se.linear2.{1}", True),
    (r"blocks\.(\d+)\.shortcut\.conv\.(weight|bias)", "blocks.{b}.shortcut.{1}", False),
    (rf"mfa\.{_CONV}", "mfa.conv.{0}", False),
    (rf"mfa\.{_BN}", "mfa.bn.{0}", False),
    (rf"asp\.tdnn\.{_CONV}", "pooling.tdnn.conv.{0}", False),
    (rf"asp\.tdnn\.{_BN}", "pooling.tdnn.bn.{0}", False),
    (r"asp\.conv\.conv\.(weight|bias)", "pooling.proj.{0}", False),
    (r"asp_bn\.norm\.(weight|bias|running_mean|running_var|num_batches_tracked)", "bn.{0}", False),
    (r"fc\.conv\.(weight|bias)", "fc.{0}", True),
)
_COMPILED = tuple((re.compile(p), t, s) for p, t, s in _RULES)


def _first(items: Sequence[str], n: int = 6) -> str:
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def speechkit_key(key: str) -> tuple[str, bool] | None:
    """speechkit name of SpeechBrain ``ECAPA_TDNN`` state-dict ``key``, or None if unknown.

    Returns:
        ``(name, squeeze)``: ``squeeze`` says the tensor loses its trailing kernel axis (1x1
        conv -> Linear). ``blocks.0`` is the stem; ``blocks.{i}`` (i >= 1) become
        ``blocks.{i-1}``.
    """
    for pattern, template, squeeze in _COMPILED:
        m = pattern.fullmatch(key)
        if m is None:
            continue
        groups = m.groups()
        if template.startswith("blocks.{b}"):
            block = int(groups[0])
            if block < 1:
                return None
            return template.format(*groups, b=block - 1), squeeze
        return template.format(*groups), squeeze
    return None


def _need(state: Mapping[str, torch.Tensor], key: str, dims: int, where: str) -> torch.Tensor:
    value = state.get(key)
    if value is None or value.dim() != dims:
        got = "absent" if value is None else f"shape {tuple(value.shape)}"
        raise CheckpointError(
            f"{where}: cannot read the ECAPA-TDNN architecture: {key!r} is {got}, expected a "
            f"{dims}-d tensor (is this a SpeechBrain ECAPA_TDNN embedding_model.ckpt?)"
        )
    return value


def infer_config(
    state: Mapping[str, torch.Tensor],
    dilations: Sequence[int] | None = None,
    where: str = "<state_dict>",
) -> dict[str, Any]:
    """``ecapa_tdnn_speechbrain`` config fields read from SpeechBrain ECAPA_TDNN weights.

    Args:
        state: SpeechBrain ``ECAPA_TDNN`` state dict.
        dilations: one per layer (stem, blocks, mfa); default :data:`DEFAULT_DILATIONS` when the
            weights have five layers.
        where: the source, named in errors.

    Returns:
        ``{"n_mels", "embed_dim", "channels", "kernel_sizes", "dilations",
        "attention_channels", "res2net_scale", "se_channels", "global_context"}``.

    Raises:
        CheckpointError: a key needed to read the architecture is absent or mis-shaped, the
            blocks are not numbered 1..N, or ``dilations`` is missing or of the wrong length.
    """
    stem = _need(state, "blocks.0.conv.conv.weight", 3, where)
    indices = sorted(
        {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.tdnn1\.", k))}
    )
    if not indices or indices != list(range(1, len(indices) + 1)):
        raise CheckpointError(
            f"{where}: expected SE-Res2Net blocks numbered blocks.1 .. blocks.N (tdnn1 keys), "
            f"found {indices or 'none'}"
        )
    channels, kernels = [int(stem.shape[0])], [int(stem.shape[2])]
    scales, se = set(), set()
    for i in indices:
        channels.append(int(_need(state, f"blocks.{i}.tdnn1.conv.conv.weight", 3, where).shape[0]))
        res2 = f"blocks.{i}.res2net_block.blocks."
        kernels.append(int(_need(state, f"{res2}0.conv.conv.weight", 3, where).shape[2]))
        scales.add(1 + len({k[len(res2) :].split(".")[0] for k in state if k.startswith(res2)}))
        se.add(int(_need(state, f"blocks.{i}.se_block.conv1.conv.weight", 3, where).shape[0]))
    if len(scales) != 1 or len(se) != 1:
        raise CheckpointError(
            f"{where}: blocks differ in Res2Net scale {sorted(scales)} or SE width {sorted(se)}; "
            "SpeechBrain's ECAPA_TDNN uses one of each"
        )
    mfa = _need(state, "mfa.conv.conv.weight", 3, where)
    channels.append(int(mfa.shape[0]))
    kernels.append(int(mfa.shape[2]))
    attention = _need(state, "asp.tdnn.conv.conv.weight", 3, where)
    if dilations is None:
        if len(channels) != len(DEFAULT_DILATIONS):
            raise CheckpointError(
                f"{where}: {len(channels)} layers; the weights do not record dilations, so give "
                f"{len(channels)} of them (SpeechBrain's default {list(DEFAULT_DILATIONS)} is for 5)"
            )
        dilations = DEFAULT_DILATIONS
    if len(dilations) != len(channels):
        raise CheckpointError(
            f"{where}: {len(dilations)} dilations given for {len(channels)} layers "
            f"(channels {channels})"
        )
    return {
        "n_mels": int(stem.shape[1]),
        "embed_dim": int(_need(state, "fc.conv.weight", 3, where).shape[0]),
        "channels": channels,
        "kernel_sizes": kernels,
        "dilations": [int(d) for d in dilations],
        "attention_channels": int(attention.shape[0]),
        "res2net_scale": scales.pop(),
        "se_channels": se.pop(),
        "global_context": int(attention.shape[1]) == 3 * channels[-1],
    }


def convert_speechbrain_ecapa(
    state_dict: Mapping[str, Any],
    dilations: Sequence[int] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    where: str = "<state_dict>",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a SpeechBrain ECAPA_TDNN state dict onto ``ecapa_tdnn_speechbrain``.

    Args:
        state_dict: SpeechBrain ``ECAPA_TDNN.state_dict()`` (the content of
            ``embedding_model.ckpt``).
        dilations: per layer; see :func:`infer_config`.
        model_overrides: extra config fields, e.g. front-end ``f_min`` / ``f_max`` /
            ``top_db`` / ``mean_norm`` when the source recipe changed them (architecture fields
            read from the weights are overridden too; a wrong one surfaces as a shape error).
        where: the source, named in errors.

    Returns:
        ``(state, cfg)``: speechkit state dict (float tensors cloned, loadable with
        ``strict=True``) and the model config dict with ``_name`` =
        ``"ecapa_tdnn_speechbrain"``.

    Raises:
        CheckpointError: not a state dict of tensors; the architecture cannot be read; or the
            strict map fails: source keys with no speechkit counterpart ("unmapped"), speechkit
            keys no source key fills ("missing") or shape mismatches, each list naming the keys.
        ConfigError: an override the config rejects.
    """
    from speechkit import components
    from speechkit.registry import MODEL_REGISTRY

    state = _tensor_dict(state_dict, where)
    fields = infer_config(state, dilations, where)
    fields.update(model_overrides or {})
    components.import_all()
    model = MODEL_REGISTRY.build({"_name": MODEL_NAME, **fields})
    target = model.state_dict()

    out: dict[str, torch.Tensor] = {}
    unmapped, mismatch, duplicate = [], [], []
    for key, value in state.items():
        mapped = speechkit_key(key)
        if mapped is None or mapped[0] not in target:
            unmapped.append(key)
            continue
        name, squeeze = mapped
        if squeeze and value.dim() == 3 and value.shape[-1] == 1:
            value = value[..., 0]
        want = target[name]
        if tuple(value.shape) != tuple(want.shape):
            mismatch.append(f"{key} {tuple(value.shape)} -> {name} {tuple(want.shape)}")
            continue
        if name in out:
            duplicate.append(key)
            continue
        out[name] = value.detach().to(dtype=want.dtype).clone()
    missing = [k for k in target if k not in out]
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} unmapped source key(s): {_first(unmapped)}")
    if missing:
        problems.append(f"{len(missing)} missing speechkit key(s): {_first(missing)}")
    if mismatch:
        problems.append(f"{len(mismatch)} shape mismatch(es): {_first(mismatch, 3)}")
    if duplicate:
        problems.append(f"{len(duplicate)} duplicate key(s): {_first(duplicate)}")
    if problems:
        arch = " ".join(f"{k}={v}" for k, v in fields.items())
        raise CheckpointError(
            f"{where}: not a SpeechBrain ECAPA_TDNN state dict matching {MODEL_NAME} ({arch}): "
            + "; ".join(problems)
        )
    cfg = dataclasses.asdict(model.cfg)
    cfg["_name"] = MODEL_NAME
    return out, cfg


def _tensor_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}: expected a state dict (a mapping of tensors), got {type(obj).__name__}"
        )
    bad = [repr(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"{where}: expected a state dict of tensors; entries {_first(bad)} are not tensors "
            "(SpeechBrain's embedding_model.ckpt holds only tensors)"
        )
    return dict(obj)


def load_speechbrain_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``embedding_model.ckpt`` safely (``torch.load(weights_only=True)``).

    Raises:
        CheckpointError: missing, unreadable or unsafe file (a pickle that would construct
            anything but tensors and containers is refused, never executed), or a file that is
            not a flat state dict of tensors.
    """
    from speechkit.trainer.checkpoint import load_checkpoint_file

    return _tensor_dict(load_checkpoint_file(path), os.fspath(path))


def speechkit_checkpoint(
    state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], source: str, sha256: str = ""
) -> dict[str, Any]:
    """A speechkit speaker-model checkpoint dict for ``SpeakerEmbedding.from_checkpoint``.

    ``cfg`` holds ``task`` (``speaker_verification``) and ``model``; ``converted_from`` records
    the source file and its sha256. No criterion state: SpeechBrain's AAM-softmax classifier
    (``classifier.ckpt``) is not converted.
    """
    import speechkit

    return {
        "speechkit_version": str(speechkit.__version__),
        "cfg": {"task": {"_name": "speaker_verification"}, "model": dict(cfg)},
        "model": dict(state),
        "converted_from": {"format": "speechbrain_ecapa", "file": source, "sha256": sha256},
    }


def convert_speechbrain_ecapa_file(
    path: str | os.PathLike,
    dilations: Sequence[int] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`load_speechbrain_state_dict` + :func:`convert_speechbrain_ecapa` +
    :func:`speechkit_checkpoint`: the speechkit checkpoint dict of ``embedding_model.ckpt``.

    Raises:
        CheckpointError: see the three functions.
    """
    import hashlib

    state = load_speechbrain_state_dict(path)
    model_state, cfg = convert_speechbrain_ecapa(state, dilations, model_overrides, os.fspath(path))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return speechkit_checkpoint(model_state, cfg, os.path.basename(path), digest.hexdigest())


def save_converted(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a converted checkpoint atomically (readable by ``load_checkpoint_file``).

    Raises:
        OSError: the folder is not writable (``path`` is then untouched).
    """
    from speechkit.trainer.checkpoint import atomic_torch_save

    atomic_torch_save(dict(checkpoint), path)

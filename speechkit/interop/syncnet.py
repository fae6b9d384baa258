"""Read joonson/syncnet_trainer checkpoints into speechkit's ``syncnet_fbank`` + ``syncnet``.

syncnet_trainer saves ``SyncNet.state_dict()`` bare (``SyncNetDist.py::saveParameters``):
``__S__.netcnnaud.*``, ``__S__.netcnnlip.*``, ``__S__.netfc{aud,spk,lip,face}.*``, the torchaudio
front-end buffers ``__S__.torchfb.*`` and the loss scales ``__L__.{wI,bI,wC,bC}``. speechkit's
model and criterion use the same names without the prefixes; the front-end buffers are dropped
(speechkit computes its own hann window and HTK mel bank). The file is read with
``torch.load(weights_only=True)`` (a pickle holding anything but tensors is refused, never run).

Not in the weights, so taken from the arguments: ``temporal_stride`` (the VoxSRC 2020 baseline
``voxsrc2020_baseline.model`` used 2) and ``input_scale`` (the reference read int16-scale audio
with scipy: 32768 reproduces its input exactly; the log-mel's instance norm makes the two
scales differ only through the ``+1e-6`` floor). ``embed_dim`` is read from the heads.

syncnet_python's ``syncnet_v2.model`` (MFCC audio stream, unprefixed keys, linear heads) is a
different network and is refused with a message saying so.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import speechkit
from speechkit.errors import CheckpointError
from speechkit.interop.voxceleb_trainer import load_voxceleb_trainer_file
from speechkit.models.syncnet import SyncNetConfig, SyncNetFBank

__all__ = ["convert_syncnet_trainer"]

MODEL_PREFIX = "__S__."
LOSS_PREFIX = "__L__."
FRONTEND_PREFIX = "__S__.torchfb."
LOSS_KEYS = ("wI", "bI", "wC", "bC")


def convert_syncnet_trainer(
    path: str | os.PathLike, temporal_stride: int = 2, input_scale: float = 32768.0
) -> dict[str, Any]:
    """Convert a syncnet_trainer ``model*.model`` file into a speechkit checkpoint dict.

    Args:
        path: the reference's checkpoint (a bare state dict, ``module.`` prefixes allowed).
        temporal_stride: the stride it was trained with (not stored in the weights).
        input_scale: waveform scale of its training input (32768: int16 scale).

    Returns:
        ``{"cfg": {"task", "model", "criterion"}, "model", "criterion", "converted_from", ...}``,
        loadable with ``speechkit.trainer.checkpoint.load_checkpoint_file`` and usable for
        ``checkpoint.finetune_from_model``.

    Raises:
        CheckpointError: unreadable or unsafe file, syncnet_python's ``syncnet_v2`` layout, or
            keys missing / unexpected / of the wrong shape for ``syncnet_fbank``.
    """
    try:
        src = load_voxceleb_trainer_file(path)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} [syncnet_trainer files are '__S__.*' / '__L__.*' state dicts; syncnet_python's "
            "unprefixed syncnet_v2.model is a different network (MFCC audio stream)]"
        ) from None
    state = src.state
    if not any(k.startswith(MODEL_PREFIX + "netcnnlip.") for k in state):
        raise CheckpointError(
            f"{path}: no '__S__.netcnnlip.*' keys: not a syncnet_trainer checkpoint "
            "(syncnet_python's syncnet_v2, with an MFCC audio stream, is a different network)"
        )
    if any(k.startswith(MODEL_PREFIX + "netfcaud.") and k.endswith(".weight") and v.dim() == 2
           for k, v in state.items()):  # fmt: skip
        raise CheckpointError(
            f"{path}: linear heads: this is syncnet_python's syncnet_v2 layout, not "
            "syncnet_trainer's SyncNetModelFBank"
        )
    head = state.get(MODEL_PREFIX + "netfcaud.3.weight")
    if head is None or head.dim() != 3:
        raise CheckpointError(f"{path}: '__S__.netfcaud.3.weight' missing or not a Conv1d weight")
    cfg = SyncNetConfig(
        embed_dim=int(head.shape[0]), temporal_stride=temporal_stride, input_scale=input_scale
    )
    model = SyncNetFBank(cfg)
    model_state = {
        k[len(MODEL_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(MODEL_PREFIX) and not k.startswith(FRONTEND_PREFIX)
    }
    ours = model.state_dict()
    missing = sorted(set(ours) - set(model_state))
    unexpected = sorted(set(model_state) - set(ours))
    wrong = sorted(k for k in set(ours) & set(model_state) if ours[k].shape != model_state[k].shape)
    loss_state = {k[len(LOSS_PREFIX) :]: v for k, v in state.items() if k.startswith(LOSS_PREFIX)}
    other = sorted(
        k for k in state if not k.startswith(MODEL_PREFIX) and not k.startswith(LOSS_PREFIX)
    )
    missing_loss = [k for k in LOSS_KEYS if k not in loss_state]
    problems = [
        *(f"missing {MODEL_PREFIX}{k}" for k in missing),
        *(f"unexpected {MODEL_PREFIX}{k}" for k in unexpected),
        *(
            f"{MODEL_PREFIX}{k}: shape {tuple(model_state[k].shape)}, expected "
            f"{tuple(ours[k].shape)}"
            for k in wrong
        ),
        *(f"missing {LOSS_PREFIX}{k}" for k in missing_loss),
        *(f"unexpected {k}" for k in other),
    ]
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        raise CheckpointError(f"{path}: does not map onto syncnet_fbank: {shown}")
    model.load_state_dict(model_state)
    return {
        "speechkit_version": str(speechkit.__version__),
        "cfg": {
            "task": {"_name": "syncnet"},
            "model": {**dataclasses.asdict(cfg), "_name": "syncnet_fbank"},
            "criterion": {"_name": "syncnet"},
        },
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "criterion": {k: loss_state[k].detach().clone().reshape(()) for k in LOSS_KEYS},
        "converted_from": {
            "format": "syncnet_trainer",
            "file": os.fspath(path),
            "sha256": src.sha256,
            "dropped_keys": sorted(k for k in state if k.startswith(FRONTEND_PREFIX)),
        },
    }

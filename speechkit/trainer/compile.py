"""``common.compile``: the training forward pass through ``torch.compile``.

What is compiled is the unit the trainer calls in training, ``criterion(model, sample)``, *after*
DistributedDataParallel has wrapped it: PyTorch's documented order is ``torch.compile(DDP(m))``,
so that TorchDynamo sees DDP and splits the graph at the gradient-bucket boundaries
(``DDPOptimizer``), overlapping the all-reduce with the backward pass as eager DDP does
(PyTorch docs, "torch.compile and DistributedDataParallel"). The model and criterion objects
themselves stay uncompiled: their ``state_dict`` keys carry no ``_orig_mod.`` prefix, so a
checkpoint of a compiled run is the checkpoint an eager run writes and loads either way, and
validation runs them eagerly.

Shapes: with ``dynamic=None`` (torch's default) the first call specialises on the batch shape
and a later call with a new shape recompiles once with the changing dimensions marked dynamic.
Length-bucketed batches (HuBERT / ContentVec: ``batch_by_size`` with ``dataset.max_tokens``)
keep the set of shapes small; tasks with fixed crops (speaker verification) have one shape.
Integer attributes of modules (``num_updates``, read by schedules in a forward pass) are
symbolic, not constants, so a per-update counter does not recompile the graph; this sets
``torch._dynamo.config.allow_unspec_int_on_nn_module`` for the whole process.
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from speechkit.errors import ConfigError

__all__ = ["COMPILE_MODES", "maybe_compile"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""The ``mode`` values of ``torch.compile`` (``common.compile_mode``)."""


def maybe_compile(module: nn.Module, common: object, device: torch.device) -> nn.Module:
    """``torch.compile(module, mode=common.compile_mode)`` when ``common.compile``, else module.

    Args:
        module: the (possibly DDP-wrapped) training unit; it is not modified, and the returned
            ``OptimizedModule`` forwards attribute access (``no_sync``) to it.
        common: the ``common`` config section (``compile``, ``compile_mode``).
        device: the training device; on the CPU, Inductor builds C++ kernels.

    Returns:
        The compiled wrapper, or ``module`` itself when ``common.compile`` is false.

    Raises:
        ConfigError: ``common.compile_mode`` is not one of ``COMPILE_MODES``, or the device is
            the CPU and no C++ compiler (``$CXX``, else ``g++``, ``c++``, ``clang++``) is on PATH.
    """
    if not common.compile:
        return module
    mode = str(common.compile_mode)
    if mode not in COMPILE_MODES:
        raise ConfigError(f"common.compile_mode must be one of {COMPILE_MODES}, got {mode!r}")
    if device.type == "cpu":
        candidates = [os.environ.get("CXX") or "g++", "c++", "clang++"]
        if not any(shutil.which(c) for c in candidates):
            raise ConfigError(
                "common.compile=true on the CPU needs a C++ compiler for Inductor's kernels; "
                f"none of {candidates} is on PATH (install g++ or set common.compile=false)"
            )
    # an int attribute that changes every update (``set_num_updates``: ContentVec's loss weight,
    # AAM margin ramps) would otherwise be a constant of the graph: one recompilation per update
    # until torch's recompile limit, then eager. As a symbolic input it costs one recompilation.
    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    return torch.compile(module, mode=mode, dynamic=None)

"""Capture and restore the random number generators (python, numpy, torch CPU, CUDA).

States are converted to tensors and plain containers so that checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npst["bit_generator"],
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
            "has_gauss": npst["has_gauss"],
            "gauss": npst["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def configure_determinism(deterministic: bool, num_threads: int | None = None) -> None:
    """Apply ``common.deterministic`` and ``common.num_threads`` to this process.

    Args:
        deterministic: ``torch.use_deterministic_algorithms(True)`` (with
            ``warn_only=False``: an op without a deterministic kernel raises). ``False`` leaves
            torch's current setting alone, so a caller that enabled it keeps it.
        num_threads: intra-op CPU threads (``torch.set_num_threads``); ``None`` leaves torch's
            setting (``OMP_NUM_THREADS`` or the core count). CPU results depend on the thread
            count (reductions are split differently), so a fixed value makes runs repeatable
            across machines with different core counts.

    Raises:
        ConfigError: ``num_threads < 1``.
    """
    if num_threads is not None:
        if num_threads < 1:
            from speechkit.errors import ConfigError

            raise ConfigError(f"common.num_threads must be >= 1 or null, got {num_threads}")
        if torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic matmuls (read when its handle is made)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def restore_rank_rng(states: list[dict], rank: int, world_size: int) -> None:
    """Restore this rank's generators from a checkpoint's per-rank ``states`` (one per rank of
    the run that wrote it); a checkpoint of another world size leaves them as seeded, with a
    warning (the run then continues exactly, but not bit for bit)."""
    if len(states) == world_size:
        set_rng_state(states[rank])
    elif states:
        logging.getLogger("speechkit.trainer").warning(
            "checkpoint was written by %d rank(s), this run has %d: RNG states not restored",
            len(states),
            world_size,
        )

"""Process-group set-up from the launcher's environment, DDP wrapping and small collectives.

Detection order (first match wins):

1. torchrun / torch.distributed.run: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
   ``MASTER_PORT`` are set.
2. slurm ``srun`` with one task per GPU: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``;
   the master address is the first host of ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST``
   (expanded with ``scontrol show hostnames``, or parsed when scontrol is absent) and the port
   is ``MASTER_PORT`` or 10000 + (job id mod 20000), the same on every task.
3. a single process.

speechkit never spawns processes itself: one process per device is the launcher's job.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from speechkit.errors import ConfigError


@dataclass
class DistributedEnv:
    """Where this process sits: ``rank`` in ``[0, world_size)``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # "torchrun" | "slurm" | "single"

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a slurm node list (``gpu[01-03,07],login1``) into host names.

    Uses ``scontrol show hostnames`` when available and falls back to a parser that handles
    bracketed ranges with zero padding.
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"(.*)\[(.*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for rng in ranges.split(","):
            if "-" in rng:
                lo, hi = rng.split("-")
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{rng}{suffix}")
    return hosts


def detect_env(environ: dict[str, str] | None = None) -> DistributedEnv:
    """Read the launcher's variables (see the module docstring); never starts anything."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistributedEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        hosts = expand_slurm_nodelist(nodelist) if nodelist else []
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        return DistributedEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT") or 10000 + job_id % 20000),
            launcher="slurm",
        )
    return DistributedEnv()


def init_distributed(
    env: DistributedEnv,
    expected_world_size: int | None = None,
    backend: str = "auto",
    use_cuda: bool = True,
    timeout_minutes: int = 30,
) -> torch.device:
    """Initialise the process group for ``env`` and return this process's device.

    Raises:
        ConfigError: ``expected_world_size`` disagrees with the launcher's world size.
    """
    if expected_world_size is not None and expected_world_size != env.world_size:
        raise ConfigError(
            f"distributed.world_size={expected_world_size} but the launcher ({env.launcher}) "
            f"started {env.world_size} process(es); launch {expected_world_size} processes "
            "(torchrun --nproc_per_node / srun --ntasks) or drop the override"
        )
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if env.is_distributed and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if cuda else "gloo"
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if backend == "nccl" else None,
        )
    return device


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sums(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (float64). Identity without a process group."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_dict(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of numbers over all ranks in one all-reduce (float64); every rank must pass
    the same keys. A copy of ``values`` without a process group."""
    keys = sorted(values)
    return dict(zip(keys, all_reduce_sums([values[k] for k in keys], device)))


def all_gather_object(obj: object) -> list[object]:
    """Gather a picklable object from every rank (used for small checkpoint state only)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_shards(items: list[object]) -> list[object]:
    """Undo ``speechkit.data.epoch_iterator.shard(..., drop_uneven=False)``: every rank passes
    its items (rank r: global items r, r + W, ...) and every rank gets all of them back in
    global order. Identity without a process group."""
    parts = all_gather_object(items)
    longest = max(len(p) for p in parts)
    return [p[j] for j in range(longest) for p in parts if j < len(p)]


def broadcast_object(obj: object, src: int = 0) -> object:
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(module: torch.nn.Module, device: torch.device, cfg: Any = None) -> torch.nn.Module:
    """Wrap ``module`` in DistributedDataParallel when a process group with >1 rank exists.

    Args:
        cfg: the ``distributed`` config section (``find_unused_parameters``,
            ``gradient_as_bucket_view``, ``bucket_cap_mb``); None: torch's defaults.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return module
    if not any(p.requires_grad for p in module.parameters()):
        return module
    options = {}
    if cfg is not None:
        options = {
            "find_unused_parameters": cfg.find_unused_parameters,
            "gradient_as_bucket_view": cfg.gradient_as_bucket_view,
            "bucket_cap_mb": cfg.bucket_cap_mb,
        }
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, **options
    )

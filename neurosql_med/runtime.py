"""Device choice, CPU threads and seeding: the same seed on the same device gives the same bytes."""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from neurosql_med.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)


CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs a cgroup quota grants (v2 ``cpu.max``, else v1 ``cpu/cpu.cfs_quota_us``); None when unlimited.

    Read where a container sees its own cgroup. A file that is missing or unreadable
    means no quota: the limit is advice for the thread count, never a reason to fail.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    """CPUs this process can really use: its affinity mask, capped by a cgroup quota.

    ``os.cpu_count()`` (and torch's default thread count) count the host's cores; in a
    container limited to 2 CPUs on a 64-core host, 64 threads would queue for 2 CPUs.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    return max(1, min(cpus, math.floor(quota))) if quota is not None else cpus


def configure_threads(threads: int | None) -> int:
    """Set torch's CPU thread count once per command: ``threads``, or the available CPUs when 0/None.

    More threads than CPUs never speeds up compute, and torch crashes at exit when asked
    for absurd counts, so the machine's CPU count is the ceiling. Under torchrun the
    automatic count is shared among the processes of this machine (LOCAL_WORLD_SIZE).
    """
    most = os.cpu_count() or 1
    if threads is not None and not 0 <= threads <= most:
        raise UserError(f"--threads must be between 0 (automatic) and {most} (this machine's CPUs), got {threads}")
    count = threads or max(1, available_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(count)
    return count


def fast_cpu_math() -> None:
    """Flush denormal floats to zero: near-zero activations made some CPU epochs 2.5x slower.

    Called by everything that trains or decodes, so training, synthesis and `reproduce`
    always compute with the same setting (and so the same bytes).
    """
    torch.set_flush_denormal(True)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bfloat16 mixed precision on CUDA when the config's ``train.amp`` asks for it; full float32 on a CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through page-locked (pinned) memory, copied without blocking the host."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    fast_cpu_math()
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True

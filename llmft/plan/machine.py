"""Machine probes for the memory plan: how much memory this machine has, and how much a run
starting now can use."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def machine_memory() -> tuple[int, str]:
    """Memory of this machine's first GPU, or (no GPU) its RAM."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"GPU 0 ({props.name})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM (no GPU)"


def available_memory() -> tuple[int, str]:
    """What a run starting now can use: a GPU's whole memory, or (no GPU) the RAM the kernel reports
    available plus what this process already holds (the plan counts that too: framework, weights)."""
    if torch.cuda.is_available():
        return machine_memory()
    try:
        free = _proc_bytes("/proc/meminfo", "MemAvailable") + _proc_bytes("/proc/self/status", "VmRSS")
    except (OSError, KeyError, ValueError):  # not Linux
        return machine_memory()
    return min(free, machine_memory()[0]), "this machine's available RAM (no GPU)"


def free_memory(device: torch.device) -> int:
    """Bytes that can be allocated now on `device`: a GPU's free memory, or the RAM the kernel
    reports available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return _proc_bytes("/proc/meminfo", "MemAvailable")
    except (OSError, KeyError, ValueError):  # not Linux
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _proc_bytes(path: str, key: str) -> int:
    """A `key: N kB` line of a /proc file, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
    return int(fields[key].split()[0]) * 1024

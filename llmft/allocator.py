"""How the training process allocates host memory: `training.allocator`, `training.release_memory`,
and caps on the CPU kernel caches.

Measured on the issue-6 benchmark (SmolLM2-135M LoRA, 2 cores; docs/performance.md):

- glibc's malloc keeps what each step freed in a heap that fragments as activation sizes change from
  micro-batch to micro-batch. tcmalloc (gperftools) reuses it better: 1,756 MB peak instead of 2,054
  (two alternating runs each, same speed within 2%; it was also 13% faster while every pass allocated
  a 113 MB fp32 copy of the head weight). It must be loaded when the process starts, so `llmft train`
  re-executes itself once with `LD_PRELOAD` when it finds the library (`auto`).
- oneDNN (bf16 matmuls on CPU) keeps a compiled kernel for every matmul shape it meets in two caches
  of 1,024 entries each (~0.3-0.6 MB per shape); with padding-free batches every micro-batch length is
  a new shape, so a run grew by ~500 MB. llmft caps both caches at 128 entries unless the environment
  sets them (ONEDNN_PRIMITIVE_CACHE_CAPACITY, LRU_CACHE_CAPACITY): no measurable cost in speed.
- `training.release_memory` (glibc only) keeps blocks from 256 KiB up on mmap, returned at once when
  freed: lower peak, but every allocation faults in fresh zeroed pages (1.7x slower). Opt-in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("llmft")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024  # blocks from 256 KiB up are mmapped (and returned when freed)
TRIM_THRESHOLD = 1024 * 1024

#: Kernel-cache capacities set unless the environment already has them (read at the first bf16 matmul).
KERNEL_CACHE_CAPS = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128", "LRU_CACHE_CAPACITY": "128"}
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
#: Set on the re-executed process, so `llmft train` re-executes at most once.
REEXEC_MARK = "LLMFT_ALLOCATOR_REEXEC"
INSTALL_HINT = (
    "Debian/Ubuntu: apt install libtcmalloc-minimal4; Fedora: dnf install gperftools-libs; conda: conda install gperftools"
)


MISSING_TCMALLOC = f"tcmalloc was not found on this machine ({INSTALL_HINT}); or set training.allocator: system"


def allocator_problems(training: Any) -> list[tuple[str, str]]:
    """(key, problem) when `training.allocator: tcmalloc` asks for a library this machine lacks
    (`llmft train` preloads it when it is there)."""
    if training.allocator == "tcmalloc" and find_tcmalloc() is None:
        return [("training.allocator", MISSING_TCMALLOC)]
    return []


def find_tcmalloc(dirs: tuple[str, ...] | None = None) -> str | None:
    """Path of a tcmalloc shared library on this machine (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    for directory in (*(dirs if dirs is not None else LIBRARY_DIRS), str(Path(sys.prefix) / "lib")):
        for name in TCMALLOC_NAMES:
            if (Path(directory) / name).is_file():
                return str(Path(directory) / name)
    return None


def tcmalloc_loaded() -> bool:
    try:
        return "libtcmalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def wants_tcmalloc(training: Any) -> bool:
    """`auto` means tcmalloc unless `release_memory` asks for glibc's thresholds."""
    return training.allocator == "tcmalloc" or (training.allocator == "auto" and not training.release_memory)


def preload_environment(training: Any, environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-execute with so that tcmalloc is loaded; None when there is nothing to do."""
    environ = dict(os.environ if environ is None else environ)
    if not wants_tcmalloc(training) or environ.get(REEXEC_MARK) or tcmalloc_loaded():
        return None
    library = find_tcmalloc()
    if library is None:
        return None
    preload = environ.get("LD_PRELOAD")
    return {**environ, "LD_PRELOAD": f"{library}:{preload}" if preload else library, REEXEC_MARK: library}


def reexec_with_tcmalloc(training: Any) -> None:
    """Re-run this exact command with tcmalloc preloaded (does not return), when wanted and found."""
    env = preload_environment(training)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])), env)


def cap_kernel_caches() -> None:
    for name, value in KERNEL_CACHE_CAPS.items():
        os.environ.setdefault(name, value)


def return_freed_memory() -> bool:
    """Set glibc's thresholds once for this process; False where there is no glibc."""
    if not sys.platform.startswith("linux") or tcmalloc_loaded():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def configure(training: Any) -> str:
    """Set this process up as the recipe says (before the first matmul); returns the run-log line.
    An explicit `allocator: tcmalloc` that is not loaded is a UserError naming the key."""
    from llmft.errors import UserError

    cap_kernel_caches()
    if tcmalloc_loaded():
        return "allocator: tcmalloc"
    library = find_tcmalloc()
    if training.allocator == "tcmalloc":
        if library is None:
            raise UserError(f"training.allocator: {MISSING_TCMALLOC}")
        raise UserError(
            f"training.allocator: tcmalloc must be loaded when the process starts: run `llmft train`, "
            f"which preloads it, or start Python with LD_PRELOAD={library}"
        )
    if training.release_memory:
        if return_freed_memory():
            return "allocator: glibc malloc, freed memory goes back to the OS (training.release_memory)"
        return "allocator: training.release_memory has no effect here (no glibc)"
    if training.allocator == "system":
        return "allocator: the system's malloc (training.allocator: system)"
    if library is None and sys.platform.startswith("linux"):
        return f"allocator: glibc malloc; tcmalloc would train in less memory on CPU ({INSTALL_HINT})"
    if library is not None:
        return f"allocator: the system's malloc (start with `llmft train` to preload {library})"
    return "allocator: the system's malloc"

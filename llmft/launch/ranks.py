"""Which process writes, and waiting for the others. Reads the launcher's RANK so it also works
before the process group exists (llmft checks and logs before the Trainer creates it)."""

from __future__ import annotations

import logging
import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Process 0 of the whole run: the one that logs and writes the run's files."""
    return rank() == 0


def wait_for_everyone() -> None:
    """A barrier when several processes train; nothing in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def quiet_other_ranks() -> None:
    """llmft's progress lines come from process 0 only; the others still report errors."""
    if not is_main_process():
        logging.getLogger("llmft").setLevel(logging.ERROR)

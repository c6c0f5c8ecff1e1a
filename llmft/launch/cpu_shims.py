"""The one shim DeepSpeed needs on CPU-only machines. Active only in launched processes that use
DeepSpeed on a machine without CUDA (`llmft.launch.child.enter_process`).

Needed with accelerate 1.15 / transformers 5.23 / deepspeed 0.19.8: on a CPU, accelerate sets the
process group up through torch.distributed alone (`PartialState(cpu=True)`: MULTI_CPU over gloo)
and never calls `deepspeed.comm.init_distributed`, which it does on GPUs. DeepSpeed code that runs
before `deepspeed.initialize` then sees a world of 1: transformers' `zero.Init` (ZeRO-3, when the
model loads after TrainingArguments, as in the TRL stages) fails the "auto" batch check with
"train_batch_size ... 8 != 4 * 1 * 1". Initialising DeepSpeed's communication first, over gloo
from the launcher's RANK/WORLD_SIZE/MASTER_ADDR, gives both libraries the same process group.
"""

from __future__ import annotations


def needed(cuda_available: bool, uses_deepspeed: bool, launched: bool) -> bool:
    return launched and uses_deepspeed and not cuda_available


def init_deepspeed_comm() -> None:
    """Start DeepSpeed's communication (and with it torch.distributed) over gloo, once."""
    import deepspeed
    import deepspeed.comm as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)

"""Dtype rules, in one place: which compute precision a run uses (decided once and explained),
the storage dtype of loaded weights, and the dtypes quantized layers compute in.

`llmft.resolve.resolve` calls these once per run (and once per `llmft plan`); everything else reads
its result.
"""

from __future__ import annotations

import torch

from llmft.config.finetune import FullFinetune, QLoraFinetune
from llmft.config.model import ModelConfig
from llmft.config.training import TrainingConfig
from llmft.errors import UserError

#: training.precision (resolved) -> the dtype matmuls run in.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Dtype names as recipes spell them (model.dtype, finetune.compute_dtype) -> dtype.
NAMED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (measured ~2.8x fp32 on such a CPU)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(training: TrainingConfig, deepspeed: bool = False, device: str | None = None) -> tuple[str, str]:
    """Return (precision, reason) for `device` (cuda | cpu; default: this machine). Refuses precisions
    the device cannot run usefully. Planning for a GPU this machine does not have, `auto` is bf16
    (what a recent GPU gets) and nothing can be probed."""
    cuda_here = torch.cuda.is_available()
    cuda = (device or ("cuda" if cuda_here else "cpu")) == "cuda"
    wanted = training.precision
    if cuda and not cuda_here:
        return ("bf16", "auto: planned as bf16, what a recent GPU gets") if wanted == "auto" else (wanted, "set in the recipe")
    if deepspeed and not cuda:
        # measured (deepspeed 0.19.8, transformers 5.23): bf16/fp16 through the HF DeepSpeed
        # integration fail on a CPU; fp32 trains
        if wanted in ("bf16", "fp16"):
            raise UserError(
                f"training.precision: {wanted} does not train under DeepSpeed on a CPU "
                "(distributed.zero_stage / deepspeed_config); use fp32 or auto"
            )
        if wanted == "auto":
            return "fp32", "auto: DeepSpeed on a CPU trains in fp32"
    if wanted == "fp16" and not cuda:
        raise UserError(
            "training.precision: fp16 needs a CUDA GPU; on a CPU it runs at ~2 GFLOP/s. "
            "Use bf16 (if the CPU has AVX512-BF16/AMX) or fp32."
        )
    bf16_ok = torch.cuda.is_bf16_supported() if cuda else cpu_has_fast_bf16()
    if wanted == "bf16" and not bf16_ok:
        where = "this GPU" if cuda else "this CPU (no AVX512-BF16/AMX)"
        raise UserError(f"training.precision: bf16 is not supported on {where}; use fp32" + (" or fp16" if cuda else ""))
    if wanted != "auto":
        return wanted, "set in the recipe"
    if bf16_ok:
        return "bf16", "auto: the device has fast bf16"
    return "fp32", "auto: the device has no fast bf16"


def weight_dtype(model: ModelConfig, finetune: object, precision: str) -> torch.dtype:
    """Storage dtype of the loaded weights (see `model.dtype`)."""
    if model.dtype != "auto":
        return NAMED_DTYPES[model.dtype]
    if isinstance(finetune, FullFinetune):
        return torch.float32  # trained weights keep fp32 master copies under mixed precision
    return DTYPES[precision]


def quantized_compute_dtype(finetune: QLoraFinetune, precision: str) -> torch.dtype:
    """The dtype bitsandbytes layers compute in (`finetune.compute_dtype`; `auto` follows the precision)."""
    return DTYPES[precision] if finetune.compute_dtype == "auto" else NAMED_DTYPES[finetune.compute_dtype]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in under mixed precision; None for fp32 (no autocast)."""
    return DTYPES[precision] if precision in ("bf16", "fp16") else None

"""QLoRA: the frozen base quantized by bitsandbytes (4-bit nf4/fp4 or 8-bit), LoRA on top."""

from __future__ import annotations

from typing import Any

import torch

from llmft.config.finetune import QLoraFinetune
from llmft.config.training import BNB_OPTIMIZERS
from llmft.errors import UserError


def bitsandbytes_problems(finetune: Any, optimizer: str, cuda: bool = True, probe: bool = True) -> list[tuple[str, str]]:
    """(key, problem) pairs for what needs bitsandbytes: `finetune.mode: qlora` and the bitsandbytes
    optimizers (`training.optimizer`), on a device with (`cuda`) or without a CUDA GPU; `probe`: that
    device is this machine, so whether the package is installed counts. QLoRA runs on a CPU
    (bitsandbytes >= 0.45 has a CPU backend); the optimizers need CUDA kernels."""
    import importlib.util

    problems = []
    if isinstance(finetune, QLoraFinetune) and finetune.init == "loftq" and not cuda:
        # peft 0.21's replace_lora_weights_loftq computes on "cuda" (or "xpu") unconditionally
        problems.append(
            (
                "finetune.init",
                "loftq needs a CUDA GPU (peft computes its decomposition there); on this machine "
                "use init: default (plain QLoRA) or mode: lora with init: pissa",
            )
        )
    if optimizer in BNB_OPTIMIZERS and not cuda:
        problems.append(
            ("training.optimizer", f"{optimizer} comes from bitsandbytes and needs a CUDA GPU; use adamw_torch on this machine")
        )
    if probe and importlib.util.find_spec("bitsandbytes") is None:
        if isinstance(finetune, QLoraFinetune):
            problems.append(("finetune.mode", "qlora needs the bitsandbytes package (pip install bitsandbytes)"))
        if optimizer in BNB_OPTIMIZERS and cuda:
            problems.append(
                (
                    "training.optimizer",
                    f"{optimizer} needs the bitsandbytes package (pip install bitsandbytes); or use adamw_torch",
                )
            )
    return problems


def bnb_config(finetune: QLoraFinetune, compute: torch.dtype, zero3: bool = False) -> Any:
    """The BitsAndBytesConfig of `finetune`, computing in `compute` (`precision.quantized_compute_dtype`).
    `zero3`: DeepSpeed ZeRO-3 shards these weights; they are then stored in the compute dtype
    (`bnb_4bit_quant_storage`), so every parameter ZeRO-3 partitions has one dtype."""
    for key, problem in bitsandbytes_problems(finetune, optimizer=""):
        raise UserError(f"{key}: {problem}")
    from transformers import BitsAndBytesConfig

    if finetune.bits == 8:
        if zero3:
            raise UserError(
                "finetune.bits: 8-bit bitsandbytes weights cannot be sharded by ZeRO-3 "
                "(distributed.deepspeed_config); use bits: 4 or ZeRO stage 1-2"
            )
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=finetune.quant_type,
        bnb_4bit_use_double_quant=finetune.double_quant,
        bnb_4bit_compute_dtype=compute,
        **({"bnb_4bit_quant_storage": compute} if zero3 else {}),
    )


def keep_cpu_gradients(model: Any) -> int:
    """bitsandbytes (0.50) repacks 4-bit weights for CPU inference after any no-grad eval-mode
    forward; gradients then silently stop reaching the LoRA layers below (the loss still moves).
    Turning that path off on every Linear4bit keeps training correct on CPUs. Returns the count."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for layer in layers:
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False
    return len(layers)


def prepare_quantized(model: Any) -> Any:
    from peft import prepare_model_for_kbit_training

    keep_cpu_gradients(model)
    # gradient checkpointing is the Trainer's to switch on (training.gradient_checkpointing)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

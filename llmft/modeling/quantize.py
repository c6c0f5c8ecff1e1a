"""QLoRA: the frozen base quantized by bitsandbytes (4-bit nf4/fp4 or 8-bit), LoRA on top."""

from __future__ import annotations

from typing import Any

import torch

from llmft.config.finetune import QLoraFinetune
from llmft.errors import UserError


def bnb_config(finetune: QLoraFinetune, compute: torch.dtype, zero3: bool = False) -> Any:
    """The BitsAndBytesConfig of `finetune`, computing in `compute` (`precision.quantized_compute_dtype`).
    `zero3`: DeepSpeed ZeRO-3 shards these weights; they are then stored in the compute dtype
    (`bnb_4bit_quant_storage`), so every parameter ZeRO-3 partitions has one dtype."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("finetune.mode: qlora needs the bitsandbytes package (pip install bitsandbytes)")
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

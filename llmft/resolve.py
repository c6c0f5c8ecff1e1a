"""What a recipe means on the machine it runs on (or is planned for), decided once: the compute
precision, the dtypes that follow from it, and the DeepSpeed config with its ZeRO stage (the user's
own JSON read). `llmft.run` resolves it when it builds the run context, `llmft plan` for the
device it plans; nothing else re-derives these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmft.config.recipe import Recipe
from llmft.launch.deepspeed import deepspeed_config, offloads
from llmft.modeling.precision import DTYPES, autocast_dtype, resolve_precision, weight_dtype


@dataclass(frozen=True)
class Resolved:
    device: str  # cuda | cpu
    precision: str  # bf16 | fp16 | fp32
    precision_reason: str
    weight_dtype: torch.dtype  # storage dtype of the loaded (not quantized) weights
    deepspeed: dict[str, Any] | None  # the DeepSpeed config the run trains with; None without DeepSpeed

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage the run trains with (0: no DeepSpeed)."""
        return 0 if self.deepspeed is None else int(self.deepspeed["zero_optimization"]["stage"])

    @property
    def zero3(self) -> bool:
        """ZeRO-3: parameters are sharded across processes (none is whole on any one)."""
        return self.zero_stage == 3

    @property
    def offload(self) -> str:
        """What DeepSpeed keeps in CPU memory, in `distributed.offload`'s terms."""
        moved = offloads(self.deepspeed)
        return "optimizer_and_params" if "param" in moved else "optimizer" if moved else "none"

    @property
    def frozen_dtype(self) -> torch.dtype:
        """Dtype of frozen models loaded beside the trained one (a reward model): the compute precision's."""
        return DTYPES[self.precision]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs matmuls in under mixed precision; None for fp32."""
        return autocast_dtype(self.precision)


def resolve(recipe: Recipe, device: str | None = None) -> Resolved:
    """Resolve `recipe` for `device` (cuda | cpu; default: this machine). Raises UserError (naming the
    key) for a precision the device cannot run or a DeepSpeed JSON that cannot be used."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    deepspeed = deepspeed_config(recipe.distributed)
    precision, reason = resolve_precision(recipe.training, deepspeed=deepspeed is not None, device=device)
    return Resolved(device, precision, reason, weight_dtype(recipe.model, recipe.finetune, precision), deepspeed)

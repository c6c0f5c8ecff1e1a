"""Which DeepSpeed JSON a recipe trains with: a bundled one chosen by `distributed.zero_stage` and
`distributed.offload`, or the user's own `distributed.deepspeed_config`.

The bundled files live in `deepspeed_configs/` (shipped inside the package as
`llmft/deepspeed_configs/`). They say `"auto"` for everything the recipe decides (batch sizes,
accumulation, clipping, bf16/fp16, ZeRO-3 bucket sizes), so the HF integration fills those from
`training:` and a JSON can never disagree with the recipe. They carry no optimizer or scheduler
block: `training.optimizer` and `training.scheduler` apply under DeepSpeed too.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from llmft.config.distributed import DistributedConfig
from llmft.errors import UserError

#: (zero_stage, offload) -> bundled file. The two combinations without a file of their own are
#: that stage's file with the offload blocks the recipe asks for (see `offload_blocks`).
BUNDLED = {
    (1, "none"): "zero1.json",
    (1, "optimizer"): "zero1.json",
    (2, "none"): "zero2.json",
    (2, "optimizer"): "zero2_offload.json",
    (3, "none"): "zero3.json",
    (3, "optimizer"): "zero3.json",
    (3, "optimizer_and_params"): "zero3_offload.json",
}
#: What `offload` moves to CPU memory, as DeepSpeed `zero_optimization` blocks.
OFFLOAD_TARGETS = {
    "none": (),
    "optimizer": ("offload_optimizer",),
    "optimizer_and_params": ("offload_optimizer", "offload_param"),
}
CPU_BLOCK = {"device": "cpu", "pin_memory": True}


def bundled_path(name: str) -> Path:
    """A bundled JSON's path, whether llmft is installed editable or from a wheel."""
    return Path(str(resources.files("llmft") / "deepspeed_configs" / name))


def offload_blocks(zero: dict[str, Any], offload: str) -> dict[str, Any]:
    """`zero_optimization` with exactly the offload blocks `offload` asks for. The optimizer step of
    offloaded states runs on the CPU with `training.optimizer` (hence `zero_force_ds_cpu_optimizer:
    false` in the config): no JIT-built DeepSpeed CPU Adam is needed."""
    zero = {k: v for k, v in zero.items() if k not in ("offload_optimizer", "offload_param")}
    for target in OFFLOAD_TARGETS[offload]:
        zero[target] = dict(CPU_BLOCK)
    return zero


def read_json(path: Path, key: str) -> dict[str, Any]:
    """A DeepSpeed JSON, checked enough to fail here rather than deep inside DeepSpeed."""
    if not path.is_file():
        raise UserError(f"{key}: file not found: {path}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{key}: {path} is not valid JSON ({exc})") from None
    zero = config.get("zero_optimization") if isinstance(config, dict) else None
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3):
        raise UserError(f"{key}: {path} has no zero_optimization.stage (0-3); DeepSpeed needs it (got {stage!r})")
    if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        # without it the Trainer saves an empty model (each process only holds shards)
        raise UserError(
            f"{key}: {path} is ZeRO-3 without zero_optimization.stage3_gather_16bit_weights_on_model_save: "
            "true; llmft needs it to save the whole trained model (or LoRA adapter) at the end"
        )
    return config


def replaced_training_keys(config: dict[str, Any]) -> list[str]:
    """Recipe keys a user's JSON takes over: its own optimizer/scheduler blocks win over the recipe's."""
    return [key for block, key in (("optimizer", "training.optimizer"), ("scheduler", "training.scheduler")) if block in config]


def deepspeed_config(distributed: DistributedConfig) -> dict[str, Any] | None:
    """The DeepSpeed config this recipe trains with, or None without DeepSpeed."""
    if not distributed.uses_deepspeed:
        return None
    if distributed.deepspeed_config is not None:
        return read_json(Path(distributed.deepspeed_config).expanduser(), "distributed.deepspeed_config")
    name = BUNDLED[(distributed.zero_stage, distributed.offload)]
    config = copy.deepcopy(read_json(bundled_path(name), f"bundled {name}"))
    config["zero_optimization"] = offload_blocks(config["zero_optimization"], distributed.offload)
    if distributed.offload != "none":
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def config_source(distributed: DistributedConfig) -> str:
    """Where the config comes from, for logs: the user's file or the bundled file's name."""
    if distributed.deepspeed_config is not None:
        return distributed.deepspeed_config
    name = BUNDLED[(distributed.zero_stage, distributed.offload)]
    exact = OFFLOAD_TARGETS[distributed.offload] == tuple(
        k for k in ("offload_optimizer", "offload_param") if k in json.loads(bundled_path(name).read_text())["zero_optimization"]
    )
    return name if exact else f"{name} + offload {distributed.offload}"


def zero_stage(distributed: DistributedConfig) -> int:
    """The ZeRO stage the recipe trains with (read from the user's JSON when it brings one)."""
    config = deepspeed_config(distributed)
    return 0 if config is None else int(config["zero_optimization"]["stage"])


def offloads(config: dict[str, Any] | None) -> set[str]:
    """Which of `optimizer`/`param` a DeepSpeed config offloads (to cpu or nvme)."""
    zero = (config or {}).get("zero_optimization", {})
    return {
        name
        for name in ("optimizer", "param")
        if str((zero.get(f"offload_{name}") or {}).get("device", "none")).lower() not in ("none", "")
    }

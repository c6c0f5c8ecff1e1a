"""Is this process one of several started by a launcher, and does that launcher agree with the
recipe? Pure functions of the environment variables launchers export (torchrun/accelerate 1.15:
WORLD_SIZE, LOCAL_WORLD_SIZE, RANK, LOCAL_RANK; accelerate: ACCELERATE_USE_DEEPSPEED,
ACCELERATE_DEEPSPEED_ZERO_STAGE, ACCELERATE_DEEPSPEED_CONFIG_FILE, offload devices).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmft.config.distributed import DistributedConfig
from llmft.errors import UserError
from llmft.launch.argv import LAUNCHED_MARKER

#: Any of these means a launcher started this process (ACCELERATE_MIXED_PRECISION: every
#: `accelerate launch` sets it, also the single-process `--cpu` one that sets no WORLD_SIZE).
LAUNCHER_VARIABLES = (LAUNCHED_MARKER, "LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION")


@dataclass(frozen=True)
class Launcher:
    """What the launcher that started this process set up."""

    world_size: int
    local_world_size: int
    rank: int
    deepspeed: bool
    zero_stage: int | None  # None: DeepSpeed without a stage we can read
    offload_optimizer: str | None
    offload_param: str | None
    ours: bool  # started by `llmft train` itself
    accelerate: bool  # started by `accelerate launch` (which says whether DeepSpeed is on; torchrun does not)

    @property
    def num_machines(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in LAUNCHER_VARIABLES)


def _flag(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def _stage_from_file(path: str) -> int | None:
    try:
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return stage if isinstance(stage, int) else None


def read_launcher(environ: Mapping[str, str]) -> Launcher | None:
    """The launcher's setup, or None when no launcher started this process."""
    if not launched(environ):
        return None
    world = int(environ.get("WORLD_SIZE", "1"))
    deepspeed = _flag(environ.get("ACCELERATE_USE_DEEPSPEED"))
    stage: int | None = None
    if deepspeed:
        if environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
            stage = int(environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
        elif environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            stage = _stage_from_file(environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
    return Launcher(
        world_size=world,
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", str(world))),
        rank=int(environ.get("RANK", "0")),
        deepspeed=deepspeed,
        zero_stage=stage,
        offload_optimizer=environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
        offload_param=environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"),
        ours=bool(environ.get(LAUNCHED_MARKER)),
        accelerate=bool(environ.get("ACCELERATE_MIXED_PRECISION")),
    )


def mismatches(distributed: DistributedConfig, recipe_stage: int, recipe_offloads: set[str], launcher: Launcher) -> list[str]:
    """Every way the recipe's `distributed:` section contradicts the launcher, each naming the
    recipe key and the launcher's value. `recipe_stage`/`recipe_offloads` come from the recipe's
    DeepSpeed JSON (`llmft.launch.deepspeed`), so a user's own JSON is compared by content."""
    out = []
    if distributed.num_processes != launcher.world_size:
        out.append(
            f"distributed.num_processes is {distributed.num_processes} but the launcher started "
            f"{launcher.world_size} process{'es' if launcher.world_size != 1 else ''} (WORLD_SIZE)"
        )
    if distributed.num_machines != launcher.num_machines:
        out.append(
            f"distributed.num_machines is {distributed.num_machines} but the launcher spans {launcher.num_machines} "
            f"(WORLD_SIZE {launcher.world_size} / LOCAL_WORLD_SIZE {launcher.local_world_size})"
        )
    if distributed.uses_deepspeed and launcher.accelerate and not launcher.deepspeed:
        out.append(
            f"distributed.zero_stage is {recipe_stage} (DeepSpeed) but the launcher is not set up for DeepSpeed "
            "(ACCELERATE_USE_DEEPSPEED unset)"
        )
    if launcher.deepspeed and not distributed.uses_deepspeed:
        shown = "" if launcher.zero_stage is None else f" ZeRO-{launcher.zero_stage}"
        out.append(
            f"distributed.zero_stage is 0 (no DeepSpeed) but the launcher runs DeepSpeed{shown} (ACCELERATE_USE_DEEPSPEED=true)"
        )
    if launcher.deepspeed and distributed.uses_deepspeed and launcher.zero_stage not in (None, recipe_stage):
        key = (
            "distributed.deepspeed_config's zero_optimization.stage" if distributed.deepspeed_config else "distributed.zero_stage"
        )
        out.append(f"{key} is {recipe_stage} but the launcher runs ZeRO-{launcher.zero_stage}")
    if launcher.deepspeed and distributed.uses_deepspeed:
        for name, device in (("optimizer", launcher.offload_optimizer), ("param", launcher.offload_param)):
            if device is None:
                continue
            theirs, ours = device.lower() not in ("none", ""), name in recipe_offloads
            if theirs != ours:
                out.append(
                    f"distributed.offload is {distributed.offload!r} but the launcher offloads "
                    f"{name}s to {device!r} (ACCELERATE_DEEPSPEED_OFFLOAD_{name.upper()}_DEVICE)"
                )
    return out


def check_launcher(distributed: DistributedConfig, recipe_stage: int, recipe_offloads: set[str], launcher: Launcher) -> None:
    """Refuse a recipe that contradicts the launcher that started it: one error, every mismatch."""
    found = mismatches(distributed, recipe_stage, recipe_offloads, launcher)
    if found:
        raise UserError(
            "the recipe's distributed: section contradicts the launcher that started this process:\n"
            + "\n".join(f"  - {m}" for m in found)
            + "\nMake them agree (e.g. `llmft train RECIPE` launches by itself from the recipe), or fix the launcher's config."
        )

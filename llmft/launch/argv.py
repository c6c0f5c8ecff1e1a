"""The `accelerate launch` command that runs a recipe on several processes, and the accelerate
config it reads. Pure: the recipe's `distributed:` section in, a dict and an argv out.

Why these choices (accelerate 1.15):
- `distributed_type: MULTI_GPU` (or `DEEPSPEED`) also on CPU-only machines, with `use_cpu: true`:
  both start the processes through torchrun. `accelerate launch --cpu --num_processes 2` would
  run ONE process without saying so (its simple launcher ignores `--num_processes`).
- DeepSpeed settings travel as a JSON file (`deepspeed_config_file`) and nothing else: accelerate
  refuses a config file combined with DeepSpeed keys in its own config (zero_stage, mixed
  precision, ...), and the recipe's JSON already decides them.
- `deepspeed_multinode_launcher: standard`: on several machines each one runs its own launcher
  (torchrun), instead of machine 0 reaching the others over pdsh/ssh.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from llmft.config.distributed import DistributedConfig

#: Set in every launched process, so a child never launches again.
LAUNCHED_MARKER = "LLMFT_LAUNCHED"


def accelerate_config(distributed: DistributedConfig, deepspeed_file: Path | None, use_cpu: bool) -> dict:
    """The accelerate config (as YAML would hold it) for this recipe on this machine."""
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED" if deepspeed_file is not None else "MULTI_GPU",
        "num_processes": distributed.num_processes,
        "num_machines": distributed.num_machines,
        "machine_rank": distributed.machine_rank,
        "main_process_port": distributed.main_process_port,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": use_cpu,
        "debug": False,
    }
    if distributed.num_machines > 1:
        config["main_process_ip"] = distributed.main_process_ip
    if deepspeed_file is not None:
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(deepspeed_file),
            "deepspeed_multinode_launcher": "standard",
        }
    return config


def launch_argv(
    config_file: Path, recipe_path: str, overrides: Sequence[str], verbose: bool = False, python: str = sys.executable
) -> list[str]:
    """`python -m accelerate.commands.launch --config_file F -m llmft train RECIPE OVERRIDES...`.
    The launcher runs with this interpreter (not whatever `accelerate` is first on PATH), and the
    children read the same recipe with the same overrides."""
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        "-m",
        "llmft",
        *(["--verbose"] if verbose else []),
        "train",
        str(recipe_path),
        *overrides,
    ]

"""`llmft train` on several processes: write the accelerate config and the DeepSpeed JSON to a
temporary directory, run `accelerate launch` on them, wait, pass the exit code on."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmft.config.distributed import DistributedConfig
from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.launch.argv import LAUNCHED_MARKER, accelerate_config, launch_argv
from llmft.launch.deepspeed import config_source
from llmft.launch.environment import launched

log = logging.getLogger("llmft")


def needs_launch(recipe: Recipe, environ: Mapping[str, str]) -> bool:
    """More than one process, or DeepSpeed (which needs a process group even for one), and no
    launcher has started this process yet."""
    d = recipe.distributed
    return (d.launches or d.uses_deepspeed) and not launched(environ)


def check_devices(d: DistributedConfig, gpus: int) -> None:
    """One process per GPU: refuse more processes on this machine than it has GPUs (on a CPU-only
    machine, gpus is 0 and the processes share the cores)."""
    here = d.num_processes // d.num_machines
    if gpus and here > gpus:
        where = f" (num_processes / num_machines = {d.num_processes} / {d.num_machines})" if d.num_machines > 1 else ""
        raise UserError(
            f"distributed.num_processes: {here} processes on this machine{where}, but it has {gpus} GPU"
            f"{'s' if gpus > 1 else ''}; one process per GPU"
        )


@dataclass
class Launched:
    returncode: int
    signal_name: str | None  # SIGINT/SIGTERM passed on to the processes, which checkpoint and stop


def relaunch(
    recipe: Recipe, deepspeed: dict | None, recipe_path: str, overrides: Sequence[str], verbose: bool = False
) -> Launched:
    """Run the recipe through `accelerate launch` with its resolved DeepSpeed config, and wait for it."""
    import torch

    d = recipe.distributed
    check_devices(d, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    with tempfile.TemporaryDirectory(prefix="llmft-launch-") as tmp:
        ds_file, ds = None, deepspeed
        if ds is not None:
            ds_file = Path(tmp) / "deepspeed.json"
            ds_file.write_text(json.dumps(ds, indent=2))
        config_file = Path(tmp) / "accelerate.yaml"
        config_file.write_text(
            yaml.safe_dump(accelerate_config(d, ds_file, use_cpu=not torch.cuda.is_available()), sort_keys=False)
        )
        argv = launch_argv(config_file, recipe_path, overrides, verbose=verbose)
        here = d.num_processes // d.num_machines
        count = f"{here} process{'es' if here > 1 else ''}"
        if d.num_machines > 1:
            count += f" on machine {d.machine_rank} ({d.num_processes} on {d.num_machines} machines)"
        zero = f", DeepSpeed {config_source(d)}" if ds is not None else ""
        log.info("launching %s%s: %s", count, zero, shlex.join(argv))
        # Its own session: a Ctrl-C or a SIGTERM to this process group reaches the launcher once,
        # from here; the launcher (torchrun) passes it on to every process, which finish their step,
        # checkpoint and stop (torchrun kills them if that takes more than 30 s).
        process = subprocess.Popen(argv, env={**os.environ, LAUNCHED_MARKER: "1"}, start_new_session=True)
        received: list[str] = []

        def forward(signum: int, frame: object) -> None:
            received.append(signal.Signals(signum).name)
            process.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return Launched(code, received[0] if received else None)

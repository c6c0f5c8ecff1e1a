"""Everything `llmft train` refuses before it loads or writes anything, found at once: the files a
run reads and writes (output.dir, data, model, reward models and reward inputs, the DeepSpeed JSON),
whether a hub id can be fetched here (cached when offline, the hub reachable otherwise), and what the
machine can run (CUDA-only optimizers, flash-attention, bitsandbytes, the precision,
tcmalloc, the packages of training.report_to's trackers). `llmft train`, `validate` and `plan` all call `machine_problems`, so none accepts what
another refuses. Each problem is a (dotted.key, problem) pair naming the fix.

Checks follow the device a run is planned for (`device`: cuda | cpu; default this machine's): a
plan for a GPU made on a CPU machine does not refuse a CUDA-only optimizer, and what only that
machine could tell (its packages) is not probed here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmft.allocator import allocator_problems
from llmft.config.recipe import Recipe
from llmft.data.hub import hub_problem as hub_dataset_problem
from llmft.data.hub import is_hub as is_hub_data
from llmft.errors import MachineError, UserError
from llmft.launch.deepspeed import deepspeed_config
from llmft.modeling.hub import hub_problems, unreachable
from llmft.modeling.load import attention_problems, model_path_problem
from llmft.modeling.precision import resolve_precision
from llmft.modeling.quantize import bitsandbytes_problems
from llmft.rewards import input_problems
from llmft.rundir import RUN_MARKERS
from llmft.trackers import tracker_problems

Problem = tuple[str, str]
#: `key: problem` as the existing checks word their UserErrors.
_KEYED = re.compile(r"^([A-Za-z_][\w.\-]*): (.*)$", re.DOTALL)
DEVICE_NAMES = {"cuda": "CUDA GPU", "cpu": "CPU"}
#: What `llmft validate` and `plan` say after the count of problems.
WOULD_STOP = " that `llmft train` would stop on"


def this_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_problems(recipe: Recipe, device: str | None = None) -> list[Problem]:
    """Every path and machine problem of `recipe` for a run on `device` (default: this machine's),
    as (key, problem) pairs; nothing is loaded, written or raised."""
    here = this_device()
    device = device or here
    cuda, probe = device == "cuda", device == here  # probe: the run's machine is this one
    found: list[Problem] = []
    found += output_dir_problems(recipe)
    found += data_path_problems(recipe)
    found += stage_input_problems(recipe)
    model = model_path_problem(recipe.model)
    found += [model] if model is not None else []
    found += hub_problems(recipe.model) if probe else []  # this machine's cache and network
    found += hub_data_problems(recipe) if probe else []
    found += bitsandbytes_problems(recipe.finetune, recipe.training.optimizer, cuda=cuda, probe=probe)
    found += attention_problems(recipe.model, cuda=cuda, probe=probe)
    found += _raised(lambda: resolve_precision(recipe.training, deepspeed=recipe.distributed.uses_deepspeed, device=device))
    found += _raised(lambda: deepspeed_config(recipe.distributed))
    found += allocator_problems(recipe.training) if probe else []
    found += tracker_problems(recipe.training.report_to) if probe else []  # this machine's packages
    return found


def this_machine() -> str:
    return f"this machine ({'with a CUDA GPU' if this_device() == 'cuda' else 'no CUDA GPU'})"


def planned_for(device: str | None) -> str:
    """`, for a CUDA GPU run (...)` when the checks were for another device than this machine's; else ``."""
    if device is None or device == this_device():
        return ""
    return f", for a {DEVICE_NAMES[device]} run (what only that machine can tell is left out)"


def machine_error(
    problems: list[Problem], device: str | None = None, source: str | None = None, then: str = "", footer: str = ""
) -> MachineError:
    """The error listing `problems`, headed by which machine they are about (`source`: the recipe
    file, named first; `then`: what the header goes on to say)."""
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    header = f"{source + ': ' if source else ''}{count} on {this_machine()}{then}{planned_for(device)}:"
    return MachineError(header, problems, footer)


def preflight(recipe: Recipe) -> Path:
    """Refuse, before anything is loaded or written, every problem `machine_problems` finds on this
    machine (all listed at once); returns the output directory."""
    found = machine_problems(recipe)
    if found:
        raise machine_error(found, then="; nothing was loaded or written")
    return Path(recipe.output.dir).expanduser()


def output_dir_problems(recipe: Recipe) -> list[Problem]:
    out = Path(recipe.output.dir).expanduser()
    if out.exists() and not out.is_dir():
        return [("output.dir", f"{out} is a file")]
    if out.is_dir() and recipe.training.resume_from_checkpoint is None:
        found = [name for name in RUN_MARKERS if (out / name).exists()]
        found += sorted(p.name for p in out.glob("checkpoint-*"))[:3]
        if found:
            return [
                (
                    "output.dir",
                    f"{out} already holds a run ({', '.join(found)}); llmft never writes over "
                    "a run. Choose a new output.dir, resume it (training.resume_from_checkpoint=auto), or "
                    "delete that directory if you no longer need it.",
                )
            ]
    return []


def data_path_problems(recipe: Recipe) -> list[Problem]:
    return [
        (f"data.{split}.{i}.path", f"file not found: {spec.path}")
        for split in ("train", "eval")
        for i, spec in enumerate(getattr(recipe.data, split))
        if not is_hub_data(spec.path) and not Path(spec.path).expanduser().exists()
    ]


def hub_data_problems(recipe: Recipe) -> list[Problem]:
    """Hub datasets (`hub:ID`) this machine cannot load: offline, not in the datasets cache; online,
    the hub unreachable and no cached copy."""
    found = []
    for split in ("train", "eval"):
        for i, spec in enumerate(getattr(recipe.data, split)):
            key = f"data.{split}.{i}.path"
            if is_hub_data(spec.path) and (problem := hub_dataset_problem(spec.path, key, unreachable)) is not None:
                found.append((key, problem))
    return found


def stage_input_problems(recipe: Recipe) -> list[Problem]:
    """The runs a stage reads besides its model (a reward model) must exist, and its rewards' inputs
    must be usable: JSON Schema files valid, python rewards importable (`llmft.rewards.input_problems`)."""
    found = [
        (key, f"directory not found: {path}") for key, path in recipe.stage.input_dirs() if not Path(path).expanduser().is_dir()
    ]
    return found + [_keyed(message) for message in input_problems(recipe.stage.reward_entries())]


def check_stage_inputs(recipe: Recipe) -> None:
    """Raise `stage_input_problems`, one per line, if any."""
    found = stage_input_problems(recipe)
    if found:
        raise UserError("\n".join(f"{key}: {problem}" for key, problem in found))


def _raised(check: Callable[[], Any]) -> list[Problem]:
    """Run a check that raises a UserError (`key: problem`) at its first problem; its problem, if any."""
    try:
        check()
    except UserError as exc:
        return [_keyed(str(exc))]
    return []


def _keyed(message: str) -> Problem:
    match = _KEYED.match(message)
    return (match.group(1), match.group(2)) if match else ("", message)

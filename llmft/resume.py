"""Resuming a run: which checkpoint, and refusing to resume under a different recipe.

A checkpoint counts as complete only when its `trainer_state.json` exists: the Trainer writes it
after the weights, optimizer, scheduler and RNG states, so a crash mid-save leaves a folder that
is never picked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from llmft.config.recipe import Recipe
from llmft.errors import UserError

#: Keys that may differ between the interrupted run and the resumed one (each machine of a
#: multi-machine run has its own machine_rank; the rendezvous address may move).
MAY_CHANGE = {
    ("training", "resume_from_checkpoint"),
    ("training", "logging_steps"),
    ("training", "report_to"),
    ("distributed", "machine_rank"),
    ("distributed", "main_process_ip"),
    ("distributed", "main_process_port"),
}


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state.json").is_file()


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_checkpoint(recipe: Recipe, output_dir: Path) -> Path | None:
    """The checkpoint `training.resume_from_checkpoint` names, checked; None when not resuming."""
    wanted = recipe.training.resume_from_checkpoint
    if wanted is None:
        return None
    if wanted == "auto":
        found = checkpoints(output_dir)
        if not found:
            raise UserError(
                f"training.resume_from_checkpoint: auto found no complete checkpoint-N in {output_dir}; "
                "remove the key to start a new run"
            )
        return found[-1]
    path = Path(wanted).expanduser()
    if not path.is_dir():
        raise UserError(f"training.resume_from_checkpoint: {wanted} is not a directory")
    if not is_complete(path):
        raise UserError(f"training.resume_from_checkpoint: {wanted} is incomplete (no trainer_state.json); pick an earlier one")
    return path


def recipe_differences(saved: dict[str, Any], current: dict[str, Any], prefix: tuple = ()) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        here = (*prefix, key)
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, here)
        elif a != b and here not in MAY_CHANGE:
            out.append(f"{'.'.join(here)}: {a!r} -> {b!r}")
    return out


def check_same_recipe(recipe: Recipe, output_dir: Path, resolved_name: str) -> None:
    """Resuming under another recipe would silently train something else: list every change."""
    saved_file = output_dir / resolved_name
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text())
    current = recipe.model_dump(mode="json")
    if not recipe.evaluates:
        current["training"]["eval_strategy"] = "no"
    changes = recipe_differences(saved, current)
    if changes:
        raise UserError(
            "training.resume_from_checkpoint: the recipe differs from the run being resumed ("
            + "; ".join(changes)
            + "). Resume with the same recipe, or start a new output.dir."
        )

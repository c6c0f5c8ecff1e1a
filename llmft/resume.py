"""Resuming a run: which checkpoint, and refusing to resume under a different recipe.

A checkpoint is complete when its manifest (`rundir.CHECKPOINT_MANIFEST`, written last by every
save) is there and every file it lists is present, of its size and with its checksum
(`llmft.checkpoint`). `auto` takes the newest complete checkpoint, saying which ones it skipped and
why; a named checkpoint that is not complete is refused, naming the file at fault.

Checkpoints without a manifest (the rule): one that comes after a checkpoint with a manifest is a
save that did not finish, and is never used. One that comes before every checkpoint with a manifest
(all of an older llmft's run, or the part of it before this llmft continued it) is checked by its
files' presence and structure instead (safetensors headers, torch archives, JSON), not their
contents, and the log says so.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from llmft.checkpoint import (
    checkpoint_dirs,
    describe,
    has_manifest,
    manifest_problems,
    step_of,
    structure_problems,
)
from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.rundir import CHECKPOINT_MANIFEST, TRAIN_RESULTS, absolute_model_dirs, recorded

log = logging.getLogger("llmft")

#: Keys that may differ between the interrupted run and the resumed one (each machine of a
#: multi-machine run has its own machine_rank; the rendezvous address may move; a run directory may
#: be moved or copied: it is found where the recipe now says, and holds no path to itself).
MAY_CHANGE = {
    ("training", "resume_from_checkpoint"),
    ("training", "logging_steps"),
    ("training", "report_to"),
    ("distributed", "machine_rank"),
    ("distributed", "main_process_ip"),
    ("distributed", "main_process_port"),
    ("output", "dir"),
}
KEY = "training.resume_from_checkpoint"


def problems(checkpoint: Path, contents: bool = True) -> tuple[list[tuple[str, str]], bool]:
    """(what is wrong with `checkpoint`, each naming its file; whether it has no manifest and was
    judged by its files' structure alone). No problems: it can be resumed from."""
    if has_manifest(checkpoint):
        return manifest_problems(checkpoint, contents), False
    named = re.fullmatch(r"checkpoint-\d+", checkpoint.name)  # one copied elsewhere is judged on its own
    step = step_of(checkpoint) if named else -1
    earlier = [p for p in checkpoint_dirs(checkpoint.parent) if step_of(p) < step and has_manifest(p)]
    if earlier:
        return [(CHECKPOINT_MANIFEST, f"is missing: its save did not finish ({earlier[-1].name}, before it, has one)")], False
    return structure_problems(checkpoint), True


def checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints that finished saving, oldest first: files present and of their sizes, headers
    whole (contents not read through; `resolve_checkpoint` reads them)."""
    return [p for p in checkpoint_dirs(output_dir) if not problems(p, contents=False)[0]]


def _unchecked_note(checkpoint: Path) -> None:
    log.warning(
        "%s: %s has no %s (an older llmft's checkpoint, or a save cut off before its last step): its files were "
        "checked for presence and structure, not for their contents",
        KEY,
        checkpoint.name,
        CHECKPOINT_MANIFEST,
    )


def resolve_checkpoint(recipe: Recipe, output_dir: Path) -> Path | None:
    """The checkpoint `training.resume_from_checkpoint` names, checked; None when not resuming, or
    when `auto` finds no complete checkpoint (a new run, which the log announces)."""
    wanted = recipe.training.resume_from_checkpoint
    if wanted is None:
        return None
    if wanted == "auto":
        return _newest_complete(output_dir)
    path = Path(wanted).expanduser()
    if not path.is_dir():
        raise UserError(f"{KEY}: {wanted} is not a directory")
    found, unchecked = problems(path)
    if found:
        raise UserError(
            f"{KEY}: {path} cannot be resumed from: {describe(found)}. Name another checkpoint, or use auto to take the "
            "newest complete one."
        )
    if unchecked:
        _unchecked_note(path)
    return path


def _newest_complete(output_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(output_dir) if output_dir.is_dir() else []
    for checkpoint in reversed(dirs):
        found, unchecked = problems(checkpoint)
        if not found:
            if unchecked:
                _unchecked_note(checkpoint)
            if checkpoint != dirs[-1]:
                log.warning("%s: auto continues from %s, the newest complete checkpoint", KEY, checkpoint.name)
            return checkpoint
        log.warning("%s: auto skips %s: %s", KEY, checkpoint.name, describe(found))
    if (output_dir / TRAIN_RESULTS).is_file():
        raise UserError(
            f"{KEY}: auto found no complete checkpoint-N in {output_dir}, which holds a finished run ({TRAIN_RESULTS}); "
            "nothing to continue. Choose a new output.dir to train again."
        )
    if dirs:
        log.warning("%s: auto found no complete checkpoint in %s (see above); starting from step 0", KEY, output_dir)
    else:
        log.info("%s: auto found no checkpoint in %s; starting from step 0", KEY, output_dir)
    return None


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
    saved = absolute_model_dirs(yaml.safe_load(saved_file.read_text()), recipe)
    current = recorded(recipe)
    changes = recipe_differences(saved, current)
    if changes:
        raise UserError(
            "training.resume_from_checkpoint: the recipe differs from the run being resumed ("
            + "; ".join(changes)
            + "). Resume with the same recipe, or start a new output.dir."
        )

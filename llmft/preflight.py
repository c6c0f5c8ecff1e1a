"""Checks that need the machine or the file system, run before anything is loaded or written.
Each failure names the recipe key and the fix."""

from __future__ import annotations

from pathlib import Path

from llmft.config.recipe import Recipe
from llmft.config.training import BNB_OPTIMIZERS
from llmft.errors import UserError
from llmft.rundir import RUN_MARKERS


def check_output_dir(recipe: Recipe) -> Path:
    out = Path(recipe.output.dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"output.dir: {out} is a file")
    if out.is_dir() and recipe.training.resume_from_checkpoint is None:
        found = [name for name in RUN_MARKERS if (out / name).exists()]
        found += sorted(p.name for p in out.glob("checkpoint-*"))[:3]
        if found:
            raise UserError(
                f"output.dir: {out} already holds a run ({', '.join(found)}); llmft never writes over "
                "a run. Choose a new output.dir, resume it (training.resume_from_checkpoint=auto), or "
                "delete that directory if you no longer need it."
            )
    return out


def check_data_paths(recipe: Recipe) -> None:
    missing = [
        f"data.{split}.{i}.path: file not found: {spec.path}"
        for split in ("train", "eval")
        for i, spec in enumerate(getattr(recipe.data, split))
        if not Path(spec.path).expanduser().exists()
    ]
    if missing:
        raise UserError("\n".join(missing))


def check_stage_inputs(recipe: Recipe) -> None:
    """Runs the stage reads besides its model (a reward model) must exist, and its rewards' inputs
    must be usable: JSON Schema files valid, python rewards importable (`llmft.rewards.check_inputs`)."""
    from llmft.rewards import check_inputs

    missing = [
        f"{key}: directory not found: {path}" for key, path in recipe.stage.input_dirs() if not Path(path).expanduser().is_dir()
    ]
    if missing:
        raise UserError("\n".join(missing))
    check_inputs(recipe.stage.reward_entries())


def check_optimizer(recipe: Recipe) -> None:
    import torch

    name = recipe.training.optimizer
    if name in BNB_OPTIMIZERS and not torch.cuda.is_available():
        raise UserError(
            f"training.optimizer: {name} comes from bitsandbytes and needs a CUDA GPU; use adamw_torch on this machine"
        )


def preflight(recipe: Recipe) -> Path:
    """Everything that can be checked without loading a model; returns the output directory."""
    from llmft.modeling.load import check_attention, check_model_path

    out = check_output_dir(recipe)
    check_data_paths(recipe)
    check_stage_inputs(recipe)
    check_optimizer(recipe)
    check_attention(recipe.model)
    check_model_path(recipe.model)
    return out

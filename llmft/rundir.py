"""What an llmft run directory (`output.dir`) holds, by name, and the recipe it recorded: the one
place that knows the layout, for the commands that read a run back (merge, chat, reward models,
resume) and the checks that refuse to write over one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmft.config.model import ModelConfig
from llmft.errors import UserError

#: The run's exact recipe: every default filled in, interpolations resolved.
RESOLVED_RECIPE = "recipe.resolved.yaml"
#: Next to a LoRA adapter (the run's output and each checkpoint-N/): samples of the base weights
#: it was trained on, so that it is never merged into or loaded onto another base
#: (`llmft.modeling.fingerprint`).
BASE_FINGERPRINT = "base_fingerprint.json"
#: Files whose presence means a directory already holds a run.
RUN_MARKERS = (RESOLVED_RECIPE, "trainer_state.json", "adapter_model.safetensors", "model.safetensors")
#: The run's TensorBoard events (`training.report_to: [tensorboard]`), every stage, across resumes.
TENSORBOARD_DIR = "logs"
#: The picture of the run's logged curves (loss, eval loss, reward, accuracy), drawn when it ends.
CURVES = "curves.png"
TRAINER_STATE = "trainer_state.json"


def read_resolved(run_dir: str | Path) -> dict[str, Any] | None:
    """The recipe a run recorded (as a dict), or None when `run_dir` holds none."""
    path = Path(run_dir) / RESOLVED_RECIPE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def base_of(adapter_dir: str | Path) -> ModelConfig:
    """The base model an llmft run's adapter was trained on (from its recipe.resolved.yaml)."""
    recorded = read_resolved(adapter_dir)
    if recorded is None:
        raise UserError(f"--base: not given and {adapter_dir} has no {RESOLVED_RECIPE} naming it")
    return ModelConfig(**recorded["model"])


def newest_trainer_state(run_dir: str | Path) -> Path | None:
    """The newest trainer_state.json of a run: the finished run's own, or (a run in progress, or
    resumed after it finished) its newest checkpoint's; None when there is none."""
    run = Path(run_dir)
    found = [p for p in [run / TRAINER_STATE, *run.glob(f"checkpoint-*/{TRAINER_STATE}")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def usual_file_modes(directory: str | Path) -> None:
    """Give the files under `directory` the mode a new file gets under the process's umask (0o644
    under the usual 022). safetensors writes its files owner-only (0o600, a temporary file renamed
    into place), which hides a model from the other users of a shared machine; only files still
    owner-only are changed."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    usual = 0o666 & ~mask
    for path in Path(directory).rglob("*.safetensors"):
        mode = path.stat().st_mode & 0o777
        if mode == 0o600 and usual != 0o600:
            path.chmod(usual)

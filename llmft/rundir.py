"""What an llmft run directory (`output.dir`) holds, by name, and the recipe it recorded: the one
place that knows the layout, for the commands that read a run back (merge, chat, reward models,
resume, checkpoints) and the checks that refuse to write over one."""

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
#: In each checkpoint-N/, written last, once every other file of the save is on disk: each file's
#: size and checksum (`llmft.checkpoint`). A checkpoint is complete only when its files match it.
CHECKPOINT_MANIFEST = "llmft_checkpoint.json"
#: Written by a run's final save, after the model: the run finished.
TRAIN_RESULTS = "train_results.json"
#: Files whose presence means a directory already holds a run.
RUN_MARKERS = (RESOLVED_RECIPE, "trainer_state.json", "adapter_model.safetensors", "model.safetensors")


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

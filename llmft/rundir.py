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
#: The run's TensorBoard events (`training.report_to: [tensorboard]`), every stage, across resumes.
TENSORBOARD_DIR = "logs"
#: The picture of the run's logged curves (loss, eval loss, reward, accuracy), drawn when it ends.
CURVES = "curves.png"
TRAINER_STATE = "trainer_state.json"


def recorded(recipe: Any) -> dict[str, Any]:
    """The recipe as a run records it in recipe.resolved.yaml (and compares it on resume): every
    key's effective value, with each local model directory it reads by its absolute path
    (`absolute_model_dirs`), so that the run's model loads from any working directory (llmft chat,
    eval, merge, a later stage)."""
    data = recipe.model_dump(mode="json")
    if not recipe.evaluates:
        data["training"]["eval_strategy"] = "no"  # what the run did; keeps the file valid to load back
    return absolute_model_dirs(data, recipe)


def absolute_model_dirs(data: dict[str, Any], recipe: Any) -> dict[str, Any]:
    """`data` (a recipe as a dict, shaped like `recipe`) with the local directories of model.path,
    model.tokenizer, finetune.adapter_path and the stage's reward models made absolute; a hub id,
    or a path that is not there, is left as it is. Also applied to a recorded recipe of an older
    llmft, which kept them as written."""
    keys = ["model.path", "model.tokenizer", "finetune.adapter_path"] + [key for key, _ in recipe.stage.input_dirs()]
    for dotted in keys:
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            if isinstance(node, list):
                node = node[int(part)] if int(part) < len(node) else {}
            else:
                node = node.get(part) or {} if isinstance(node, dict) else {}
        value = node.get(last) if isinstance(node, dict) else None
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            node[last] = str(Path(value).expanduser().resolve())
    return data


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

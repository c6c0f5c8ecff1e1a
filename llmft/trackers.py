"""Experiment trackers of `training.report_to` besides TensorBoard: Weights & Biases and MLflow,
through transformers' own callbacks, kept local unless the user says otherwise:

- `wandb`: offline (`WANDB_MODE=offline` unless WANDB_MODE is set), the run in
  `<output.dir>/wandb/offline-run-*` (in `$WANDB_DIR/wandb/` if WANDB_DIR is set), project `llmft` (unless WANDB_PROJECT is set); `wandb sync` uploads it.
- `mlflow`: a file store in `<output.dir>/mlruns` (unless MLFLOW_TRACKING_URI is set), experiment
  `Default` (unless MLFLOW_EXPERIMENT_NAME is set).

Each gets the run's metrics as they are logged, and the resolved recipe (recipe.resolved.yaml) as
its config / params and as a file of the run. The runs end when llmft's run does, after the final
evaluation (`finish`), not when the trainer's loop ends."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import yaml

from llmft.rundir import RESOLVED_RECIPE

#: tracker -> the module it needs and the pip package that provides it
PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}
MLFLOW_STORE = "mlruns"


def tracker_problems(report_to: list[str]) -> list[tuple[str, str]]:
    """(key, problem) for each tracker in `report_to` whose package is not installed here."""
    return [
        (
            "training.report_to",
            f"{name} is not installed: pip install 'llmft[trackers]' (or pip install {PACKAGES[name][1]}), "
            f"or remove {name} from training.report_to",
        )
        for name in report_to
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name][0]) is None
    ]


def tracker_callbacks(report_to: list[str], output_dir: Path) -> list[Any]:
    """The callbacks for the trackers named in `report_to` (TensorBoard aside), for the main process."""
    made: list[Any] = []
    if "wandb" in report_to:
        made.append(wandb_callback(output_dir))
    if "mlflow" in report_to:
        made.append(mlflow_callback(output_dir))
    return made


def finish(callbacks: list[Any]) -> None:
    """End the tracker runs among `callbacks` (their files complete on disk)."""
    for callback in callbacks:
        end = getattr(callback, "finish_llmft_run", None)
        if end is not None:
            end()


def _recipe(output_dir: Path) -> tuple[Path, dict[str, Any]]:
    path = output_dir / RESOLVED_RECIPE
    return path, (yaml.safe_load(path.read_text()) if path.is_file() else {})


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"training.learning_rate": 0.0002, "data.train.0.path": ...}: a nested recipe as dotted keys."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def wandb_callback(output_dir: Path) -> Any:
    from transformers.integrations import WandbCallback

    class LlmftWandb(WandbCallback):
        def setup(self, args: Any, state: Any, model: Any, **kwargs: Any) -> None:
            if self._wandb is not None and self._wandb.run is None and state.is_world_process_zero:
                directory = Path(os.environ.get("WANDB_DIR") or output_dir)  # wandb adds wandb/ below it
                directory.mkdir(parents=True, exist_ok=True)
                self._wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "llmft"),
                    name=output_dir.name,
                    dir=str(directory),
                    **({} if os.environ.get("WANDB_MODE") else {"mode": "offline"}),
                )
            super().setup(args, state, model, **kwargs)
            if self._wandb is not None and state.is_world_process_zero:
                path, recipe = _recipe(output_dir)
                self._wandb.config.update({"recipe": recipe}, allow_val_change=True)
                if path.is_file():
                    self._wandb.save(str(path), base_path=str(output_dir), policy="now")

        def finish_llmft_run(self) -> None:
            if self._wandb is not None and self._wandb.run is not None:
                self._wandb.finish()
            self._initialized = False

    return LlmftWandb()


def mlflow_callback(output_dir: Path) -> Any:
    from transformers.integrations import MLflowCallback

    class LlmftMLflow(MLflowCallback):
        def setup(self, args: Any, state: Any, model: Any) -> None:
            if state.is_world_process_zero and not os.environ.get("MLFLOW_TRACKING_URI"):
                # MLflow 3 refuses its file store unless this is set; llmft's default is that store
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                self._ml_flow.set_tracking_uri((output_dir / MLFLOW_STORE).resolve().as_uri())
            super().setup(args, state, model)
            if state.is_world_process_zero and self._ml_flow.active_run() is not None:
                path, recipe = _recipe(output_dir)
                params = {f"recipe.{k}": str(v)[: self._MAX_PARAM_VAL_LENGTH] for k, v in flat(recipe).items()}
                items = list(params.items())
                for i in range(0, len(items), self._MAX_PARAMS_TAGS_PER_BATCH):
                    self._ml_flow.log_params(dict(items[i : i + self._MAX_PARAMS_TAGS_PER_BATCH]))
                if path.is_file():
                    self._ml_flow.log_artifact(str(path))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pass  # the final evaluation is logged after the loop: the run ends in finish_llmft_run

        def finish_llmft_run(self) -> None:
            if self._initialized and self._ml_flow.active_run() is not None:
                self._ml_flow.flush_async_logging()
                self._ml_flow.end_run()
            self._initialized = False

    return LlmftMLflow()

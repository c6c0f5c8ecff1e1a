"""What `run.train` needs from the object a builder returns. A `transformers.Trainer` (and TRL's
trainers) already satisfy it; llmft's own PPO trainer implements it."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TrainerLike(Protocol):
    model: Any
    args: Any  # has .output_dir
    state: Any  # has .log_history (list of dicts) and .global_step

    def train(self, resume_from_checkpoint: Any = None) -> Any:
        """Run training; return an object with a `.metrics` dict."""

    def save_model(self, output_dir: str | None = None) -> None:
        """Write the final weights (adapter or full model, safetensors) and the tokenizer."""

    def save_state(self) -> None:
        """Write trainer_state.json (with log_history)."""

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Write <split>_results.json."""

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the eval split; metric names prefixed with `eval_`."""

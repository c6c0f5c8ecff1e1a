"""llmft's training arguments as keyword arguments for a TRL config (`KTOConfig`, `GRPOConfig`, ...).

TRL's configs subclass `TrainingArguments`, so the mapping is the one `trainer.training_kwargs`
already does for the HF Trainer. TRL changes some TrainingArguments defaults (gradient
checkpointing on, bf16 on, logging every 10 steps, learning rate 1e-6); every one of those is a
recipe key that the mapping sets explicitly, so no TRL default silently overrides the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmft.builders.trainer import training_kwargs
from llmft.config.recipe import Recipe


def trl_config_kwargs(recipe: Recipe, precision: str, output_dir: Path) -> dict[str, Any]:
    """Every llmft training key as a TRL config keyword argument (a fresh dict the caller may extend)."""
    return dict(training_kwargs(recipe, precision, output_dir))

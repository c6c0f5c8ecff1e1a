"""The training pipeline, linear: no branching on stage or mode (the registry does that)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.config.recipe import Recipe

log = logging.getLogger("llmft")


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]]
    model: Any  # the trained model (a peft model for adapter modes), for callers that use it next


def prepare_tokenizer(recipe: Recipe) -> Any:
    """The tokenizer with the run's chat template and a pad token distinct from EOS."""
    from llmft.data.templates import install_template
    from llmft.modeling.load import arrange_pad_token, load_tokenizer

    tokenizer = load_tokenizer(recipe.model)
    if recipe.stage.name != "pt":
        log.info(install_template(tokenizer, recipe.data.template))
    log.info(arrange_pad_token(tokenizer))
    return tokenizer


def prepare(recipe: Recipe) -> Any:
    """Checks, precision, tokenizer and template: everything before the builder runs."""
    from transformers import set_seed

    from llmft.modeling.precision import resolve_precision
    from llmft.preflight import preflight
    from llmft.run_context import RunContext

    output_dir = preflight(recipe)
    precision, why = resolve_precision(recipe.training)
    log.info("precision: %s (%s)", precision, why)
    set_seed(recipe.training.seed)
    tokenizer = prepare_tokenizer(recipe)
    return RunContext(recipe=recipe, tokenizer=tokenizer, precision=precision, output_dir=output_dir)


def train(recipe: Recipe) -> RunResult:
    from llmft.outputs import merge_if_asked, save_final, write_resolved_recipe
    from llmft.registry import get_builder

    ctx = prepare(recipe)
    builder = get_builder(recipe.stage.name, recipe.finetune.mode)
    trainer = builder(ctx)
    write_resolved_recipe(recipe, ctx.output_dir)
    log.info("training: stage %s, finetune %s -> %s", recipe.stage.name, recipe.finetune.mode, ctx.output_dir)
    result = trainer.train()
    metrics = save_final(trainer, result, recipe.evaluates)
    merge_if_asked(recipe, ctx.output_dir)
    log.info("done: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return RunResult(ctx.output_dir, metrics, list(trainer.state.log_history), trainer.model)

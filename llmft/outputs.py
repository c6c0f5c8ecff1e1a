"""What a finished run leaves in `output.dir` (the layout users know from MedicalGPT):
adapter or model safetensors, tokenizer with its chat template, checkpoint-N/, trainer_state.json,
train_results.json, eval_results.json, logs/ and recipe.resolved.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.rundir import RESOLVED_RECIPE

log = logging.getLogger("llmft")


def write_resolved_recipe(recipe: Recipe, output_dir: Path) -> Path:
    """Every key with its effective value, interpolations resolved: the run's exact recipe."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RESOLVED_RECIPE
    data = recipe.model_dump(mode="json")
    if not recipe.evaluates:
        data["training"]["eval_strategy"] = "no"  # what the run did; keeps the file valid to load back
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def merge_if_asked(recipe: Recipe, output_dir: Path) -> Path | None:
    """`output.merge_adapter`: fold the saved adapter into its base under <output.dir>/merged."""
    if not recipe.output.merge_adapter:
        return None
    from llmft.modeling.merge import merge_adapter

    try:
        return merge_adapter(recipe.model, output_dir, output_dir / "merged").out_dir
    except UserError as exc:
        raise UserError(
            f"output.merge_adapter: training finished and its adapter is saved in {output_dir}, but it was not merged: {exc}"
        ) from None
    except Exception:  # e.g. out of memory: the float64 check holds 8 bytes per parameter
        log.error(
            "output.merge_adapter: training finished and its adapter is saved in %s, but merging it failed; "
            "merge it later with: llmft merge --adapter %s --out %s",
            output_dir,
            output_dir,
            output_dir / "merged",
        )
        raise


def save_final(trainer: Any, train_result: Any, evaluates: bool) -> dict[str, Any]:
    """Save the model (safetensors only), tokenizer, state and metrics; return all metrics."""
    from llmft.launch.ranks import is_main_process, wait_for_everyone

    # Every process takes part (ZeRO-3 gathers the sharded weights); process 0 writes.
    trainer.save_model()  # adapter for peft models, full weights otherwise; tokenizer alongside
    wait_for_everyone()
    # The Trainer also pickles its arguments; recipe.resolved.yaml says the same without pickle.
    if is_main_process():
        (Path(trainer.args.output_dir) / "training_args.bin").unlink(missing_ok=True)
    trainer.save_state()
    metrics = dict(train_result.metrics)
    trainer.save_metrics("train", metrics, combined=False)
    if evaluates:
        eval_metrics = trainer.evaluate()
        trainer.save_metrics("eval", eval_metrics, combined=False)
        metrics.update(eval_metrics)
    return metrics

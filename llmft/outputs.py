"""What a finished run leaves in `output.dir` (the layout users know from MedicalGPT):
adapter or model safetensors, tokenizer with its chat template, checkpoint-N/, trainer_state.json,
train_results.json, eval_results.json, logs/, curves.png and recipe.resolved.yaml."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.rundir import CURVES, RESOLVED_RECIPE, usual_file_modes

log = logging.getLogger("llmft")


def write_resolved_recipe(recipe: Recipe, output_dir: Path) -> Path:
    """Every key with its effective value, interpolations resolved: the run's exact recipe."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RESOLVED_RECIPE
    from llmft.config.rules import keys_without_effect
    from llmft.rundir import recorded

    data = recorded(recipe)
    for dotted in keys_without_effect(recipe.stage):  # defaults that mean nothing for this stage
        section, key = dotted.split(".")
        if key not in getattr(recipe, section).model_fields_set:
            data[section].pop(key, None)
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


def eval_if_asked(recipe: Recipe, output_dir: Path) -> list[Any]:
    """`output.eval`: measure the saved model (and the starting one, side by side) on the recipe's eval
    data; print the table, write `<dir>/eval/`. Returns the results (empty when not asked)."""
    spec = recipe.output.eval
    if spec is None:
        return []
    from llmft.evaluation import data as eval_data
    from llmft.evaluation.measures import EvalOptions
    from llmft.evaluation.report import table, write
    from llmft.evaluation.run import evaluate, free, load
    from llmft.modeling.sources import resolve_source, source_for_base

    data = eval_data.from_recipe(recipe, spec.max_samples)
    options = EvalOptions(
        metrics=tuple(spec.metrics) if spec.metrics else None,
        max_length=recipe.data.max_length,
        max_new_tokens=spec.max_new_tokens,
        rewards=tuple(getattr(recipe.stage, "rewards", ())),  # a grpo run: answers scored by its own rewards
        allow_python_rewards=getattr(recipe.stage, "allow_python_rewards", False),
    )
    compare = spec.compare_base if spec.compare_base is not None else recipe.stage.traits.task == "causal_lm"
    sources = [source_for_base(recipe, output_dir)] if compare else []
    sources.append(resolve_source(str(output_dir)))
    results = []
    for source in sources:
        try:
            loaded = load(source, judge=spec.reward_model)
            results.append(evaluate(loaded, data, options))
        except UserError as exc:
            raise UserError(
                f"output.eval: {exc} (the trained model is saved in {output_dir}; measure it again with "
                f"`llmft eval {output_dir} --recipe RECIPE`)"
            ) from None
        free(loaded)
    write(results, output_dir / "eval")
    log.info("output.eval (%s):\n%s", "before -> after" if compare else "the trained model", table(results))
    return results


def draw_curves(log_history: list[dict[str, Any]], output_dir: Path) -> Path | None:
    """`<output.dir>/curves.png` from the run's log_history. The run is saved by then, so a picture
    that cannot be drawn (no matplotlib, nothing logged) is a warning, not a failed run."""
    from llmft.curves import draw, series

    try:
        path = draw(series(log_history), output_dir / CURVES, str(output_dir))
    except UserError as exc:
        log.warning("WARNING: %s not drawn: %s", CURVES, exc)
        return None
    except Exception as exc:  # e.g. a matplotlib problem: the trained model is saved all the same
        log.warning("WARNING: %s not drawn (%s: %s); try again with: llmft plot %s", CURVES, type(exc).__name__, exc, output_dir)
        return None
    log.info("curves: %s", path)
    return path


def save_final(trainer: Any, train_result: Any, evaluates: bool, initial_adapter: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the model (safetensors only), tokenizer, state and metrics; return all metrics. A write
    that fails (a full disk) is a UserError naming output.dir and its free space; train_results.json,
    which marks a finished run, is written only after the model. `initial_adapter` (a pissa/olora/loftq
    run's adapter as initialised): the saved adapter is rewritten for the original base
    (`llmft.modeling.moved_base`)."""
    from llmft.checkpoint import final_guard
    from llmft.launch.ranks import is_main_process, wait_for_everyone

    output_dir = Path(trainer.args.output_dir)
    metrics = dict(train_result.metrics)
    with final_guard(output_dir):
        # Every process takes part (ZeRO-3 gathers the sharded weights); process 0 writes.
        trainer.save_model()  # adapter for peft models, full weights otherwise; tokenizer alongside
        wait_for_everyone()
        # The Trainer also pickles its arguments; recipe.resolved.yaml says the same without pickle.
        if is_main_process():
            if initial_adapter is not None:
                from llmft.modeling.moved_base import convert_saved

                convert_saved(initial_adapter, output_dir)
            usual_file_modes(output_dir)  # safetensors writes owner-only files
            (output_dir / "training_args.bin").unlink(missing_ok=True)
        trainer.save_state()
        trainer.save_metrics("train", metrics, combined=False)
    if evaluates:
        eval_metrics = final_evaluation(trainer.state) or trainer.evaluate()
        with final_guard(output_dir):
            trainer.save_metrics("eval", eval_metrics, combined=False)
        metrics.update(eval_metrics)
    return metrics


def final_evaluation(state: Any) -> dict[str, Any] | None:
    """The evaluation the trainer already ran on the final weights (at the last step, e.g. the end of
    the last epoch), so the run does not evaluate the same weights twice; None if there was none."""
    for entry in reversed(state.log_history):
        if entry.get("step") != state.global_step:
            return None
        if any(key.startswith("eval_") for key in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}
    return None

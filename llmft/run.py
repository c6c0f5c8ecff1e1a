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


def prepare(recipe: Recipe) -> Any:
    """Checks, precision, tokenizer and template: everything before the builder runs."""
    from transformers import set_seed

    from llmft.allocator import configure as configure_allocator
    from llmft.builders.context import RunContext
    from llmft.launch.child import enter_process
    from llmft.modeling.load import prepare_tokenizer
    from llmft.preflight import preflight
    from llmft.resolve import resolve

    output_dir = preflight(recipe)  # every path and machine problem at once, before anything is loaded or written
    settings = resolve(recipe)  # precision, dtypes, DeepSpeed config: decided once, here
    enter_process(recipe, settings.deepspeed)  # launched as the recipe says (one process, or several via a launcher)
    log.info(configure_allocator(recipe.training))  # before the first matmul; may refuse the recipe
    log.info("precision: %s (%s)", settings.precision, settings.precision_reason)
    set_seed(recipe.training.seed)
    tokenizer = prepare_tokenizer(recipe)
    return RunContext(recipe=recipe, tokenizer=tokenizer, settings=settings, output_dir=output_dir)


def _train_guarded(trainer: Any, checkpoint: Path | None) -> Any:
    """trainer.train with a NaN stop, a checkpoint-then-stop on SIGINT/SIGTERM, and checkpoint saves
    that fail on a full disk as a UserError."""
    import signal

    from llmft.callbacks import AlreadyDone, StopOnNonFinite, StopOnSignal, StopWhenDone, TrainingProgress, count_tokens
    from llmft.checkpoint import guard_trainer_saves
    from llmft.errors import TrainingInterrupted

    stopper = StopOnSignal()
    if hasattr(trainer, "add_callback"):  # a HF Trainer (llmft's PPO trainer guards its own saves)
        guard_trainer_saves(trainer)
        trainer.add_callback(stopper)
        trainer.add_callback(StopOnNonFinite())
        trainer.add_callback(StopWhenDone())
        trainer.args.logging_nan_inf_filter = False  # a NaN must be seen, not averaged away
    count_tokens(trainer)  # tokens/s for the progress bar
    callbacks = callbacks_of(trainer)
    previous = {sig: signal.signal(sig, stopper.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except AlreadyDone:  # resumed from the last step's checkpoint: its weights are loaded, nothing is left to train
        from transformers.trainer_utils import TrainOutput

        log.info("%s holds the last step (%d): nothing left to train", checkpoint, trainer.state.global_step)
        result = TrainOutput(trainer.state.global_step, float("nan"), {"epoch": trainer.state.epoch})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for callback in callbacks:
            if isinstance(callback, TrainingProgress):
                callback.close()  # the bar ends even when training stopped with an error
    if stopper.received:
        from llmft.resume import checkpoints

        found = checkpoints(Path(trainer.args.output_dir))
        raise TrainingInterrupted(stopper.received, str(found[-1]) if found else None)
    return result


def callbacks_of(trainer: Any) -> list[Any]:
    """A HF Trainer's callbacks, or llmft's PPO trainer's."""
    return getattr(getattr(trainer, "callback_handler", None), "callbacks", None) or getattr(trainer, "callbacks", [])


def train(recipe: Recipe) -> RunResult:
    from llmft import model_card
    from llmft.builders import get_builder
    from llmft.builders.protocol import TrainerLike
    from llmft.launch.ranks import is_main_process
    from llmft.modeling.fingerprint import write as write_fingerprint
    from llmft.outputs import draw_curves, eval_if_asked, merge_if_asked, save_final, write_resolved_recipe
    from llmft.resume import check_same_recipe, resolve_checkpoint
    from llmft.rundir import RESOLVED_RECIPE
    from llmft.trackers import finish as finish_trackers

    ctx = prepare(recipe)
    checkpoint = resolve_checkpoint(recipe, ctx.output_dir)
    if recipe.training.resume_from_checkpoint is not None:  # also when auto starts afresh in a run's directory
        check_same_recipe(recipe, ctx.output_dir, RESOLVED_RECIPE)
    builder = get_builder(recipe.stage.name, recipe.finetune.mode)
    trainer = builder(ctx)
    if not isinstance(trainer, TrainerLike):  # a builder's bug, not the recipe's
        raise TypeError(f"{builder.__module__}.{builder.__qualname__} returned {type(trainer).__name__}, not a TrainerLike")
    if is_main_process():  # the builder created the process group: every process has passed preflight
        write_resolved_recipe(recipe, ctx.output_dir)
        write_fingerprint(ctx.base_fingerprint, ctx.output_dir)  # before training, so every checkpoint gets a copy
    log.info(
        "training: stage %s, finetune %s -> %s%s",
        recipe.stage.name,
        recipe.finetune.mode,
        ctx.output_dir,
        f" (resuming {checkpoint.name})" if checkpoint else "",
    )
    try:
        result = _train_guarded(trainer, checkpoint)
        metrics = save_final(trainer, result, recipe.evaluates, ctx.initial_adapter)  # the final evaluation is logged too
    finally:
        finish_trackers(callbacks_of(trainer))  # W&B and MLflow runs end, their files complete
    if is_main_process():
        draw_curves(trainer.state.log_history, ctx.output_dir)
        model_card.write(recipe, ctx.output_dir, metrics)  # after the curves it names
        merge_if_asked(recipe, ctx.output_dir)
        eval_if_asked(recipe, ctx.output_dir)
    log.info("done: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return RunResult(ctx.output_dir, metrics, list(trainer.state.log_history), trainer.model)

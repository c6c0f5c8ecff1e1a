"""Shared by the builders: recipe -> TrainingArguments, and a HF Trainer with llmft's
collator and callbacks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.config.finetune import LoraFinetune
from llmft.config.recipe import Recipe
from llmft.resolve import Resolved

log = logging.getLogger("llmft")


def training_arguments(recipe: Recipe, settings: Resolved, output_dir: Path) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(recipe, settings, output_dir))


def trl_config(config_cls: type, ctx: RunContext, **stage_kwargs: Any) -> Any:
    """A TRL config (`RewardConfig`, `DPOConfig`, ...: subclasses of TrainingArguments) with every
    llmft training key, mapped once by `training_kwargs`, plus the stage's own knobs. TRL changes
    some TrainingArguments defaults (gradient_checkpointing, bf16, logging_steps, learning_rate);
    each of those is a recipe key set explicitly here, so no TRL default overrides the recipe."""
    kwargs = training_kwargs(ctx.recipe, ctx.settings, ctx.output_dir)
    clash = sorted(kwargs.keys() & stage_kwargs.keys())
    if clash:
        raise ValueError(f"stage kwargs would override llmft training keys: {', '.join(clash)}")
    return config_cls(**kwargs, **stage_kwargs)


def training_kwargs(recipe: Recipe, settings: Resolved, output_dir: Path) -> dict[str, Any]:
    """The recipe's training keys as TrainingArguments keyword arguments: the one mapping, shared by
    transformers' Trainer and TRL's trainers. Precision and DeepSpeed config as resolved for the run."""
    t, precision = recipe.training, settings.precision
    evaluates = recipe.evaluates
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps or t.warmup_ratio,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_alpha,
        torch_compile=t.torch_compile,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=None,  # llmft rotates (callbacks.CompleteCheckpoints): only once a newer checkpoint is complete
        eval_strategy=t.eval_strategy if evaluates else "no",
        eval_steps=(t.eval_steps or t.logging_steps) if evaluates else None,
        eval_on_start=t.eval_on_start and evaluates,
        report_to="none",  # tensorboard is attached explicitly, writing to <output>/logs
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if recipe.data.group_by_length else "random",
        disable_tqdm=True,
        use_cpu=settings.device == "cpu",
        deepspeed=settings.deepspeed,  # None without DeepSpeed
    )


def make_trainer(
    ctx: RunContext, train_dataset: Any, eval_dataset: Any | None, collator: Any, trainer_class: type | None = None
) -> TrainerLike:
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    from llmft.callbacks import callbacks_for

    recipe = ctx.recipe
    model = ctx.model
    trainer = (trainer_class or Trainer)(
        model=model,
        args=training_arguments(recipe, ctx.settings, ctx.output_dir),
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if recipe.evaluates else None,
        processing_class=ctx.tokenizer,
        callbacks=callbacks_for(recipe, ctx.output_dir, vocab_size=model.config.vocab_size),
    )
    trainer.remove_callback(PrinterCallback)  # llmft's LogLines prints instead
    return optimizer_groups(trainer, ctx)


def lora_plus_ratio(finetune: Any) -> float | None:
    """`finetune.lora_plus_ratio` of an adapter mode; None for full and freeze (no B matrices)."""
    return finetune.lora_plus_ratio if isinstance(finetune, LoraFinetune) else None


def optimizer_groups(trainer: Any, ctx: RunContext) -> Any:
    """A transformers/TRL trainer whose optimizer (built when training starts, also under DeepSpeed,
    whose JSONs carry no optimizer block) takes the recipe's parameter groups: LoRA+ puts the B
    matrices in their own groups at learning_rate x finetune.lora_plus_ratio (`llmft.modeling.lora_plus`)."""
    from llmft.modeling.lora_plus import install

    ratio = lora_plus_ratio(ctx.recipe.finetune)
    if ratio is not None:
        log.info("LoRA+: the B matrices train at learning_rate x %g, in their own optimizer groups", ratio)
    return install(trainer, ratio)


def next_token_trainer(ctx: RunContext) -> TrainerLike:
    """Prepare the train/eval examples of the run's stage (before loading the model, so data errors
    surface fast), choose the fast path (`llmft.fastpath.decide`, its passes sized by the memory plan),
    batch, build the Trainer."""
    from llmft.data.collate import FlatCollator, PackedCollator, PadCollator
    from llmft.data.dataset import ExampleDataset, log_prepared, prepare_for
    from llmft.data.packing import pack
    from llmft.fastpath.decide import apply, causal_lm, choose
    from llmft.fastpath.trainer import chunked_loss_trainer_class
    from llmft.plan.passes import settle_passes

    data = ctx.recipe.data
    if data.streaming:
        from llmft.data.streaming import stream_log_callback, streamed_data

        streamed, evaluation = streamed_data(ctx.recipe, ctx.tokenizer)
        train: Any = streamed
    else:
        prepared = prepare_for(ctx.recipe, ctx.tokenizer)
        log_prepared(prepared)
        train, evaluation = prepared.train, prepared.eval
    path = choose(ctx.recipe, ctx.model, ctx.settings)
    path = settle_passes(path, ctx.recipe, causal_lm(ctx.model).config, ctx.settings)
    apply(path, ctx.model, ctx.settings)
    log.info("path: %s", path.describe())
    if ctx.recipe.training.shift_attn:  # wraps the attention the path chose, in training only
        from llmft.modeling import shift_attn

        log.info(shift_attn.enable(ctx.model))
    pad_id = ctx.tokenizer.pad_token_id
    if path.batching == "packed":  # never streaming (refused in config/data.py)
        rows = pack(train, data.max_length)
        log.info(
            "packing: %d examples -> %d rows of <= %d tokens (%.0f%% filled)",
            len(train),
            len(rows),
            data.max_length,
            100 * sum(len(r.input_ids) for r in rows) / (len(rows) * data.max_length),
        )
        train, evaluation = rows, pack(evaluation, data.max_length) if evaluation else None
        collator: Any = PackedCollator(pad_id)
    elif path.batching == "padding-free":
        collator = FlatCollator()
    else:
        collator = PadCollator(pad_id)
    trainer_class = None
    if path.chunked_loss:
        trainer_class = chunked_loss_trainer_class(path.forward_tokens, head_dtype=ctx.settings.autocast_dtype)
    eval_dataset = ExampleDataset(evaluation) if evaluation else None
    if data.streaming:
        trainer = make_trainer(ctx, streamed, eval_dataset, collator, trainer_class)
        trainer.add_callback(stream_log_callback(streamed))
        return trainer
    return make_trainer(ctx, ExampleDataset(train), eval_dataset, collator, trainer_class)

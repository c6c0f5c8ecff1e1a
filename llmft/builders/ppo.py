"""ppo: proximal policy optimisation of the recipe's model (usually an SFT output) against a
reward model (`stage.reward_model`, an `rm` stage output) or rule rewards (`stage.rewards`, the
entries grpo takes), with llmft's own trainer (llmft/alignment/ppo_trainer.py)."""

from __future__ import annotations

import copy
import logging
from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.config.stage import Reference
from llmft.errors import UserError
from llmft.modeling.reward import load_reward_model
from llmft.registry import register_builder

log = logging.getLogger("llmft")


def read_prompts(ctx: RunContext) -> tuple[list[Any], list[Any] | None]:
    """Train (and eval) prompts (`llmft.data.prompts`: the rule grpo and `llmft data` share); every
    record holds the columns the rewards read."""
    from llmft.data.dataset import load_items
    from llmft.data.prompts import build_prompts, prompt_budget
    from llmft.data.trl_rows import check_columns

    recipe = ctx.recipe
    budget, limit = prompt_budget(recipe.stage, recipe.data.max_length)
    items = load_items(recipe.stage.name, recipe.data, recipe.training.seed)
    for source in items.sources:
        log.info(source.line())
    splits = {}
    for name, records in (("train", items.train), ("eval", items.eval if recipe.evaluates else None)):
        if records is None:
            continue
        check_columns(records, recipe.stage.record_columns())
        prompts, report = build_prompts(ctx.tokenizer, records, budget, limit)
        log.info(report.summary(f"data.{name}"))
        if not prompts:
            raise UserError(f"data.{name}: no usable prompts remain. {report.summary('data.' + name)}")
        splits[name] = prompts
    return splits["train"], splits.get("eval")


def reply_scorer(ctx: RunContext) -> Any:
    """`stage.reward_model`'s raw score, or the weighted sum of `stage.rewards`."""
    from llmft.alignment.scorers import RewardScorer, RuleScorer
    from llmft.data.tokenize import end_of_turn_ids
    from llmft.rewards import load_rewards

    stage = ctx.recipe.stage
    if stage.reward_model:
        model, tokenizer = load_reward_model(stage.reward_model, dtype=ctx.settings.frozen_dtype)
        log.info("reward model: %s", stage.reward_model)
        return RewardScorer(model, tokenizer, stage.mini_batch_size, ctx.settings.device)
    loaded = load_rewards(
        stage.rewards,
        end_ids=end_of_turn_ids(ctx.tokenizer),  # where rollouts stop
        allow_python=stage.allow_python_rewards,
        dtype=ctx.settings.frozen_dtype,
    )
    log.info("ppo: rewards %s", ", ".join(f"{r.name} x {r.weight:g}" for r in loaded))
    return RuleScorer(loaded)


@register_builder("ppo", modes=("full", "freeze", "lora", "qlora"))
def build_ppo(ctx: RunContext) -> TrainerLike:
    from llmft.alignment.ppo_trainer import PpoTrainer
    from llmft.builders.trainer import lora_plus_ratio, training_arguments
    from llmft.callbacks import callbacks_for
    from llmft.data.tokenize import end_of_turn_ids, turn_end_problem

    recipe, stage = ctx.recipe, ctx.recipe.stage
    if recipe.finetune.continues_adapter:
        log.warning(
            "WARNING: finetune.adapter_path: the PPO reference is the model with the adapter disabled, i.e. "
            "model.path without %s, so the KL penalty pulls towards the model before that adapter. To keep "
            "the adapter's model as the reference, merge it (llmft merge) and set model.path to the merged model.",
            recipe.finetune.adapter_path,
        )
    problem = turn_end_problem(ctx.tokenizer)
    if problem:
        log.warning("WARNING: %s; replies will run to stage.max_new_tokens", problem)
    if recipe.training.gradient_accumulation_steps != 1:
        log.warning(
            "WARNING: training.gradient_accumulation_steps is not used by ppo: each optimizer step takes "
            "stage.mini_batch_size rollouts, run in chunks of training.micro_batch_size"
        )
    if getattr(recipe.finetune, "dropout", 0):
        log.warning(
            "WARNING: finetune.dropout=%s is not applied in ppo: dropout is off so that the "
            "policy's log-probs in training match those of its rollouts",
            recipe.finetune.dropout,
        )
    train_prompts, eval_prompts = read_prompts(ctx)
    scorer = reply_scorer(ctx)

    policy = ctx.model
    reference = stage.reference_source(recipe.finetune)
    ref_model = None  # LoRA and QLoRA: the policy with its adapter disabled, no second copy
    if reference is Reference.FROZEN_COPY:
        ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
    log.info(reference.describe())
    if recipe.training.fused_ops:
        from llmft.fastpath.sampling import fast_sampling

        log.info(fast_sampling(policy))
    callbacks = callbacks_for(recipe, ctx.output_dir, vocab_size=policy.config.vocab_size)
    return PpoTrainer(
        model=policy,
        tokenizer=ctx.tokenizer,
        scorer=scorer,
        stage=stage,
        args=training_arguments(recipe, ctx.settings, ctx.output_dir),
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        stop_ids=end_of_turn_ids(ctx.tokenizer),
        ref_model=ref_model,
        precision=ctx.precision,
        callbacks=callbacks,
        lora_plus_ratio=lora_plus_ratio(recipe.finetune),
    )

"""grpo: group relative policy optimisation (TRL's GRPOTrainer). For each prompt the policy samples
`num_generations` replies; each is scored by the recipe's `stage.rewards` (`llmft.rewards`: answer
accuracy, format and JSON checks, length, repetition, a clean end, an rm run's reward model, or
your own function), weighted, and the replies are pushed towards those above their group's mean.

Batch sizes count completions, as in TRL: `training.micro_batch_size` completions per forward
pass, and micro_batch_size x gradient_accumulation_steps completions (that many / num_generations
prompts) per generation round, which must hold whole groups.

Reference (only with `beta` > 0): LoRA — the base model with the adapter disabled (a continued
adapter: the adapter as it started); full — TRL reloads the model from `model.path`, checked to
equal the starting policy.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from llmft import rewards
from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import trl_config
from llmft.builders.trl_common import settle_lora_reference, take_fast_forward, trl_datasets, trl_trainer
from llmft.config.stage import Reference
from llmft.errors import UserError
from llmft.registry import register_builder

log = logging.getLogger("llmft")


def grpo_config(ctx: RunContext) -> Any:
    from trl import GRPOConfig

    recipe = ctx.recipe
    stage = recipe.stage  # its batch-shape rules are checked with the recipe (llmft/config/recipe.py)
    return trl_config(
        GRPOConfig,
        ctx,
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        beta=stage.beta,
        loss_type=stage.loss_type,
        # LUSPO is a sequence-level loss: TRL's paper setup weighs whole sequences
        importance_sampling_level="sequence" if stage.loss_type == "luspo" else "token",
        reward_weights=[entry.weight for entry in stage.rewards],
        disable_dropout=False,  # the model's own dropout is turned off by trl_trainer, LoRA's kept
    )


def completion_text(completion: Any) -> str:
    """A sampled completion as text: conversational completions are a list of assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if isinstance(m.get("content"), str))


class TrlReward:
    """One `llmft.rewards.Reward` in the shape GRPOTrainer calls: a batch of prompts, completions,
    their token ids and the rows' extra columns (`reference`, `record`, `where`) -> one reward per
    completion."""

    def __init__(self, reward: rewards.Reward):
        self.reward = reward
        self.__name__ = reward.name  # TRL logs rewards/<name>/mean

    def __call__(
        self,
        prompts: list,
        completions: list,
        completion_ids: list | None = None,
        reference: list | None = None,
        record: list | None = None,
        where: list | None = None,
        **_: Any,
    ) -> list[float | None]:
        count = len(completions)
        samples = [
            rewards.Sample(
                completion=completion_text(completions[i]),
                record=json.loads(record[i]) if record else {},
                completion_ids=completion_ids[i] if completion_ids is not None else None,
                prompt=prompts[i] if isinstance(prompts[i], list) else [{"role": "user", "content": prompts[i]}],
                reference=reference[i] if reference else None,
                where=where[i] if where else "<record>",
            )
            for i in range(count)
        ]
        return self.reward(samples)


def end_ids(ctx: RunContext) -> list[int]:
    """The tokens TRL stops generation at: the tokenizer's end of sequence and the model's declared ones."""
    generation = getattr(ctx.model, "generation_config", None)
    declared = getattr(generation, "eos_token_id", None)
    declared = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    return sorted({ctx.tokenizer.eos_token_id, *declared})


def reward_functions(ctx: RunContext) -> list[TrlReward]:
    stage = ctx.recipe.stage
    loaded = rewards.load_rewards(
        stage.rewards, end_ids=end_ids(ctx), allow_python=stage.allow_python_rewards, dtype=ctx.settings.frozen_dtype
    )
    return [TrlReward(reward) for reward in loaded]


def check_rebuilt_reference(trainer: Any, zero3: bool) -> None:
    """Full GRPO with beta > 0: TRL reloads the reference from the model's path. It must equal the
    policy as training starts (it would not after a resized vocabulary, for instance)."""
    import contextlib

    import torch

    ref = dict(trainer.accelerator.unwrap_model(trainer.ref_model).named_parameters())
    for name, param in trainer.accelerator.unwrap_model(trainer.model).named_parameters():
        other = ref.get(name)
        whole = contextlib.nullcontext()
        if other is not None and zero3:  # compare whole tensors, not this process's shards
            import deepspeed

            whole = deepspeed.zero.GatheredParameters([param, other])
        with whole:
            same = other is not None and other.shape == param.shape and torch.equal(other.to(param.device), param.detach())
        if not same:
            raise UserError(
                f"stage.beta: TRL rebuilt the reference model from model.path, and its {name} differs from the "
                "policy's; use finetune.mode: lora (reference = adapter disabled) or beta: 0"
            )


@register_builder("grpo", modes=("full", "freeze", "lora", "qlora"))
def build_grpo(ctx: RunContext) -> TrainerLike:
    from trl import GRPOTrainer

    from llmft.data.prompts import prompt_budget
    from llmft.data.trl_rows import prompt_rows

    recipe = ctx.recipe
    stage = recipe.stage
    config = grpo_config(ctx)
    budget = prompt_budget(stage, recipe.data.max_length)
    columns = stage.record_columns()
    train, evaluation = trl_datasets(ctx, lambda items: prompt_rows(items, ctx.tokenizer, budget, columns))
    trainer = trl_trainer(ctx, GRPOTrainer, config, train, evaluation, reward_funcs=reward_functions(ctx))
    weighted = ", ".join(f"{name} x {weight:g}" for name, weight in zip(trainer.reward_func_names, config.reward_weights))
    log.info("grpo: loss_type %s, %d completions per prompt, rewards %s", config.loss_type, stage.num_generations, weighted)
    reference = stage.reference_source(recipe.finetune)  # none with beta 0
    if reference is Reference.RELOADED:
        check_rebuilt_reference(trainer, ctx.settings.zero3)
    else:
        settle_lora_reference(trainer.accelerator.unwrap_model(trainer.model), keep_copy=not recipe.finetune.starts_at_base)
    log.info(reference.describe() + (" (beta 0)" if reference is Reference.NONE else ""))
    # TRL's head scores at the sampling temperature; llmft's does the same unless asked for an fp32 head
    own_head = not getattr(trainer.args, "cast_lm_head_to_fp32", False)
    take_fast_forward(ctx, trainer, own_head=own_head, temperature=trainer.temperature)
    if recipe.training.fused_ops:
        from llmft.fastpath.sampling import fast_sampling

        log.info(fast_sampling(ctx.model))
    return trainer

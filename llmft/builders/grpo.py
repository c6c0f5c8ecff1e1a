"""grpo: group relative policy optimisation (TRL's GRPOTrainer). For each prompt the policy samples
`num_generations` replies; each is scored by the built-in rewards (`llmft.rewards`) and/or an `rm`
run's reward model, and the replies are pushed towards those above their group's mean.

Batch sizes count completions, as in TRL: `training.micro_batch_size` completions per forward
pass, and micro_batch_size x gradient_accumulation_steps completions (that many / num_generations
prompts) per generation round, which must hold whole groups.

Reference (only with `beta` > 0): LoRA — the base model with the adapter disabled (a continued
adapter: the adapter as it started); full — TRL reloads the model from `model.path`, checked to
equal the starting policy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from llmft import rewards
from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import trl_config
from llmft.builders.trl_common import settle_lora_reference, trl_datasets, trl_trainer
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
        disable_dropout=False,  # the model's own dropout is turned off by trl_trainer, LoRA's kept
    )


def completion_text(completion: Any) -> str:
    """A sampled completion as text: conversational completions are a list of assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if isinstance(m.get("content"), str))


class BuiltinReward:
    """One `llmft.rewards` function in the shape GRPOTrainer calls: a batch of completions (plus
    their token ids and the data's columns) -> one reward per completion."""

    def __init__(self, name: str, end_ids: Sequence[int]):
        if name not in rewards.NAMES:
            raise ValueError(f"unknown reward {name!r}; built-in rewards are {rewards.NAMES}")
        self.__name__ = name  # TRL logs rewards/<name>/mean
        self.end_ids = tuple(end_ids)

    def __call__(
        self, prompts: list, completions: list, completion_ids: list, reference: list | None = None, **_: Any
    ) -> list[float | None]:
        texts = [completion_text(c) for c in completions]
        if self.__name__ == "length":
            return [rewards.length(text, ref) for text, ref in zip(texts, reference or [None] * len(texts))]
        if self.__name__ == "format":
            return [rewards.format(text) for text in texts]
        if self.__name__ == "no_repeat":
            return [rewards.no_repeat(text) for text in texts]
        return [rewards.ends_cleanly(ids, self.end_ids) for ids in completion_ids]


class RewardModelScore:
    """An `rm` run's model as a GRPO reward: each prompt + completion is rendered with the reward
    model's own tokenizer and template exactly as rm training rendered it
    (`llmft.modeling.reward.reward_input_ids`), and scored in one padded batch."""

    __name__ = "reward_model"

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer

    def __call__(self, prompts: list, completions: list, **_: Any) -> list[float]:
        import torch

        from llmft.modeling.reward import reward_input_ids

        replies = [[{"role": "assistant", "content": completion_text(c)}] for c in completions]
        sequences = [reward_input_ids(self.tokenizer, p, r) for p, r in zip(prompts, replies)]
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
        with torch.inference_mode():
            scores = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        return scores.float().tolist()


def load_reward_scorer(path: str, dtype: Any) -> RewardModelScore:
    import torch

    from llmft.modeling.reward import load_reward_model

    model, tokenizer = load_reward_model(path, dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    log.info("reward model: %s", path)
    return RewardModelScore(model, tokenizer)


def reward_functions(ctx: RunContext) -> list[Any]:
    stage = ctx.recipe.stage
    generation = getattr(ctx.model, "generation_config", None)
    declared = getattr(generation, "eos_token_id", None)
    declared = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    end_ids = sorted({ctx.tokenizer.eos_token_id, *declared})  # what TRL stops generation at
    funcs: list[Any] = [BuiltinReward(name, end_ids) for name in stage.reward_functions]
    if stage.reward_model:
        funcs.append(load_reward_scorer(stage.reward_model, ctx.settings.frozen_dtype))
    return funcs


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


@register_builder("grpo", modes=("full", "lora", "qlora"))
def build_grpo(ctx: RunContext) -> TrainerLike:
    from trl import GRPOTrainer

    from llmft.data.trl_rows import prompt_rows

    recipe = ctx.recipe
    stage = recipe.stage
    config = grpo_config(ctx)
    max_prompt = recipe.data.max_length - stage.max_completion_length  # >= 1: checked with the recipe
    train, evaluation = trl_datasets(ctx, lambda items: prompt_rows(items, ctx.tokenizer, max_prompt))
    trainer = trl_trainer(ctx, GRPOTrainer, config, train, evaluation, reward_funcs=reward_functions(ctx))
    log.info("grpo: rewards %s", ", ".join(trainer.reward_func_names))
    reference = stage.reference_source(recipe.finetune)  # none with beta 0
    if reference is Reference.RELOADED:
        check_rebuilt_reference(trainer, ctx.settings.zero3)
    else:
        settle_lora_reference(trainer.accelerator.unwrap_model(trainer.model), continued=recipe.finetune.continues_adapter)
    log.info(reference.describe() + (" (beta 0)" if reference is Reference.NONE else ""))
    return trainer

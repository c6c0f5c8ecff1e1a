"""kto: Kahneman-Tversky optimisation on single replies labelled desirable or not (TRL's KTOTrainer).

Reference: LoRA — the base model with the adapter disabled (a continued adapter: the adapter as
it started); full — a frozen copy of the starting model, made in memory (TRL would reload it from
`model.path`, which misses GGUF starts and resized vocabularies).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import training_kwargs
from llmft.builders.trl_common import settle_lora_reference, take_fast_forward, trl_datasets, trl_trainer
from llmft.config.stage import Reference
from llmft.registry import register_builder

log = logging.getLogger("llmft")


def kto_config(ctx: RunContext) -> Any:
    from trl import KTOConfig

    recipe = ctx.recipe
    stage = recipe.stage
    kwargs = training_kwargs(recipe, ctx.settings, ctx.output_dir)
    # the KL pairs are built from neighbouring rows, so TRL requires sequential sampling; the rows
    # are shuffled once (seeded) instead, see `build_kto`
    kwargs["train_sampling_strategy"] = "sequential"
    return KTOConfig(
        **kwargs,
        beta=stage.beta,
        desirable_weight=stage.desirable_weight,
        undesirable_weight=stage.undesirable_weight,
        max_length=recipe.data.max_length,
        disable_dropout=False,  # the model's own dropout is turned off by trl_trainer, LoRA's kept
    )


@register_builder("kto", modes=("full", "freeze", "lora", "qlora"))
def build_kto(ctx: RunContext) -> TrainerLike:
    import copy

    from trl import KTOTrainer

    from llmft.data.trl_rows import kto_rows
    from llmft.fastpath.kl_replies import KLAfterReplies

    recipe = ctx.recipe
    data = recipe.data
    config = kto_config(ctx)
    seed = recipe.training.seed

    def shuffled(rows: list[dict]) -> list[dict]:
        random.Random(seed).shuffle(rows)
        return rows

    train, evaluation = trl_datasets(
        ctx, lambda items: kto_rows(items, ctx.tokenizer, data.max_length, data.truncation), order=shuffled
    )
    labels = train["label"]
    log.info("kto: %d desirable, %d undesirable train replies", sum(labels), len(labels) - sum(labels))
    reference = recipe.stage.reference_source(recipe.finetune)
    ref_model = None  # LoRA: the base with the adapter disabled (or TRL's frozen copy of a continued adapter)
    if reference is Reference.FROZEN_COPY:
        ref_model = copy.deepcopy(ctx.model).eval().requires_grad_(False)
    trainer_cls = type("KTOTrainer", (KLAfterReplies, KTOTrainer), {})
    trainer = trl_trainer(ctx, trainer_cls, config, train, evaluation, ref_model=ref_model)
    settle_lora_reference(trainer.accelerator.unwrap_model(trainer.model), keep_copy=not recipe.finetune.starts_at_base)
    log.info(reference.describe())
    path = take_fast_forward(ctx, trainer, own_head=True)
    # a compiled model would trace the attention once, without the kept prompts it reads at run time
    if path.shares_prefixes and trainer.calculate_KL and not recipe.training.torch_compile:
        trainer.llmft_kl_after_replies = True
        log.info("kto: each KL reply scored after its prompt's keys and values kept from the reply pass")
    return trainer

"""sft: supervised fine-tuning on conversations, loss on assistant replies (see data.mask_prompt)."""

from __future__ import annotations

import logging

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import next_token_trainer
from llmft.data.tokenize import turn_end_problem
from llmft.registry import register_builder

log = logging.getLogger("llmft")


@register_builder("sft", modes=("full", "freeze", "lora", "qlora"))
def build_sft(ctx: RunContext) -> TrainerLike:
    problem = turn_end_problem(ctx.tokenizer)
    if problem:
        log.warning("WARNING: %s", problem)
    return next_token_trainer(ctx)

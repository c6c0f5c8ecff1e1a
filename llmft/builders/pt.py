"""pt: continued pre-training — next-token loss on every token of packed text blocks."""

from __future__ import annotations

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import next_token_trainer
from llmft.registry import register_builder


@register_builder("pt", modes=("full", "freeze", "lora", "qlora"))
def build_pt(ctx: RunContext) -> TrainerLike:
    return next_token_trainer(ctx)

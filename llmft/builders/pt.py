"""pt: continued pre-training — next-token loss on every token of packed text blocks."""

from __future__ import annotations

from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.trainer import next_token_trainer
from llmft.registry import register_builder


@register_builder("pt", modes=("full", "lora", "qlora"))
def build_pt(ctx: RunContext) -> Any:
    return next_token_trainer(ctx)

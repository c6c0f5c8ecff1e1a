"""A tiny one-score reward model built in code and saved like an `rm` run's full output."""

from __future__ import annotations

from pathlib import Path


def save_tiny_reward_model(directory: Path) -> Path:
    import torch
    from tiny import TINY_SIZES, build_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_SIZES,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

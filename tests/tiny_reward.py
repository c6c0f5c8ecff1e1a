"""A tiny one-score reward model built in code and saved like an `rm` run's full output."""

from __future__ import annotations

from pathlib import Path


def save_tiny_reward_model(directory: Path) -> Path:
    import torch
    from tiny import build_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

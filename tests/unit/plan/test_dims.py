"""Model dimensions come from the config alone, and match the model's real parameter count."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmft.plan import ModelDims, dims_from_config


def test_meta_count_matches_the_built_model():
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    dims = dims_from_config(config)
    model = LlamaForCausalLM(config)
    assert dims.exact
    assert dims.params == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert dims.linear_params == linear
    assert {l.name for l in dims.linears} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (dims.hidden, dims.layers, dims.heads, dims.kv_heads, dims.head_dim, dims.vocab) == (64, 3, 4, 2, 16, 300)


def test_formula_agrees_with_the_meta_count():
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    counted = dims_from_config(config)
    formula = ModelDims.llama(hidden=128, layers=2, heads=8, kv_heads=4, intermediate=320, vocab=1000, tied_embeddings=True)
    assert counted.params == formula.params and counted.linear_params == formula.linear_params
    assert not formula.exact


def test_reward_task_has_a_one_score_head():
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    causal, reward = dims_from_config(config), dims_from_config(config, task="reward")
    assert causal.params - reward.params == 300 * 64 - 64  # the vocabulary head vs a one-score head

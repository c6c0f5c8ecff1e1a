"""Batch layout and the fast path change the speed, never the loss: at learning rate 0 with the whole
dataset in one batch, padded batches with the model's own loss (the plain path), padding-free batches
and packed rows (with the chunked loss and fused ops) log the same mean supervised-token loss."""

from __future__ import annotations

import pytest
from conftest import CONVERSATIONS, make_recipe

from llmft.config import validate_recipe
from llmft.run import train

PLAIN = {"chunked_loss": False, "fused_ops": False}


def first_loss(tiny_model_dir, sft_file, out, attention="sdpa", training=None, mode="full", **data) -> float:
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        out,
        mode=mode,
        model={"attn_implementation": attention},
        data={"max_length": 128, "cache": False, **data},
        training={"max_steps": 1, "micro_batch_size": len(CONVERSATIONS), "learning_rate": 0.0, **(training or {})},
    )
    return [h["loss"] for h in train(validate_recipe(raw)).log_history if "loss" in h][0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_free_and_packed_losses_equal_the_plain_padded_loss(attention, tiny_model_dir, sft_file, tmp_path, caplog):
    import logging

    import yaml

    plain = first_loss(tiny_model_dir, sft_file, tmp_path / "a", attention, training=PLAIN, padding_free=False)
    with caplog.at_level(logging.INFO, logger="llmft"):
        caplog.clear()  # only this run's path line
        padding_free = first_loss(tiny_model_dir, sft_file, tmp_path / "b", attention)
    path = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("path: "))
    expected = "llmft_sdpa_varlen" if attention == "sdpa" else "eager"
    assert path.startswith(f"path: batches padding-free, attention {expected}, chunked cross-entropy, fused RMSNorm/SwiGLU")
    packed = first_loss(tiny_model_dir, sft_file, tmp_path / "c", attention, packing=True)
    assert abs(padding_free - plain) < 1e-4
    assert abs(packed - plain) < 1e-4
    resolved = yaml.safe_load((tmp_path / "c" / "recipe.resolved.yaml").read_text())
    assert resolved["data"]["packing"] is True


def test_cross_contamination_would_show(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """Guard the guard: with one position sequence for the whole row (examples attending to each
    other), the loss differs."""
    import llmft.data.packing as packing

    original = packing.concatenate

    def leaky(parts):
        row = original(parts)
        row.position_ids = list(range(len(row.input_ids)))
        return row

    monkeypatch.setattr(packing, "concatenate", leaky)
    plain = first_loss(tiny_model_dir, sft_file, tmp_path / "a", padding_free=False)
    packed = first_loss(tiny_model_dir, sft_file, tmp_path / "b", packing=True)
    padding_free = first_loss(tiny_model_dir, sft_file, tmp_path / "c")
    assert abs(packed - plain) > 1e-3
    assert abs(padding_free - plain) > 1e-3


@pytest.mark.skipif(not __import__("llmft.modeling.precision", fromlist=["x"]).cpu_has_fast_bf16(), reason="needs a bf16 CPU")
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_mixed_precision_projects_the_head_in_bf16_like_the_plain_path(mode, tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """bf16 mixed precision: the chunked loss projects onto the vocabulary in bf16 (what autocast does to the
    plain path's output layer) — for LoRA's bf16 weights and full fine-tuning's fp32 masters alike — and logs
    the plain path's loss."""
    import torch

    import llmft.fastpath.chunked_loss as chunked

    seen = []
    original = chunked.causal_lm_loss_sum

    def spy(hidden, weight, labels, dtype=None):
        seen.append((hidden.dtype, weight.dtype, dtype))
        return original(hidden, weight, labels, dtype)

    monkeypatch.setattr(chunked, "causal_lm_loss_sum", spy)
    bf16 = {"precision": "bf16"}
    plain = first_loss(tiny_model_dir, sft_file, tmp_path / "a", training={**PLAIN, **bf16}, padding_free=False, mode=mode)
    assert seen == []
    chunked_loss = first_loss(tiny_model_dir, sft_file, tmp_path / "b", training=bf16, padding_free=False, mode=mode)
    assert seen and all(dtype == torch.bfloat16 for _, _, dtype in seen)
    assert seen[0][1] == (torch.bfloat16 if mode == "lora" else torch.float32)
    assert abs(chunked_loss - plain) < 2e-3 * abs(plain)

"""`training.max_tokens_per_forward`: a micro-batch run as several forward/backward passes gives the
same step as running it whole (plain SGD, so gradients show in the weights unscaled) — same logged losses, same trained weights — and really runs the
passes."""

from __future__ import annotations

import logging

import torch
from conftest import make_recipe
from safetensors.torch import load_file

from llmft.config import validate_recipe
from llmft.run import train


def run(tiny_model_dir, sft_file, out, passes):
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        out,
        mode="full",
        data={"max_length": 128, "cache": False},
        training={
            "max_steps": 3,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.5,
            "optimizer": "sgd",
            "max_tokens_per_forward": passes,
        },
    )
    forwards = []
    original = torch.nn.Module.__call__

    def counting(module, *args, **kwargs):
        if type(module).__name__ == "LlamaForCausalLM":
            forwards.append(kwargs["input_ids"].shape[1])
        return original(module, *args, **kwargs)

    torch.nn.Module.__call__ = counting
    try:
        result = train(validate_recipe(raw))
    finally:
        torch.nn.Module.__call__ = original
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    return losses, forwards, load_file(str(out / "model.safetensors"))


def test_passes_give_the_whole_micro_batch_step(tiny_model_dir, sft_file, tmp_path, caplog):
    whole_losses, whole_forwards, whole = run(tiny_model_dir, sft_file, tmp_path / "whole", None)
    with caplog.at_level(logging.INFO, logger="llmft"):
        cut_losses, cut_forwards, cut = run(tiny_model_dir, sft_file, tmp_path / "cut", 40)
    assert any(r.getMessage().endswith("passes of <= 40 tokens") for r in caplog.records)
    assert len(whole_forwards) == 6  # 3 steps x 2 micro-batches
    assert len(cut_forwards) == 2 * len(whole_forwards)  # two examples per micro-batch, one per pass
    assert max(whole_forwards) > 40 and sum(cut_forwards) == sum(whole_forwards)
    assert max(abs(a - b) for a, b in zip(whole_losses, cut_losses)) < 1e-5
    assert whole.keys() == cut.keys()
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    changed = max((whole[k] - start[k]).abs().max().item() for k in whole if k in start)
    assert changed > 1e-3  # the weights did train
    assert max((whole[k] - cut[k]).abs().max().item() for k in whole) < 1e-5

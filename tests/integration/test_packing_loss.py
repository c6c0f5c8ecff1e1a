"""Packing changes the batch layout, never the loss: at learning rate 0 with the whole dataset in
one batch, the packed run logs the same mean supervised-token loss as the unpacked run."""

from __future__ import annotations

import pytest
from conftest import CONVERSATIONS, make_recipe

from llmft.config import validate_recipe
from llmft.run import train


def first_loss(tiny_model_dir, sft_file, out, attention="sdpa", **data) -> float:
    raw = make_recipe(
        tiny_model_dir, sft_file, out, mode="full", model={"attn_implementation": attention},
        data={"max_length": 128, "cache": False, **data},
        training={"max_steps": 1, "micro_batch_size": len(CONVERSATIONS), "learning_rate": 0.0},
    )
    return [h["loss"] for h in train(validate_recipe(raw)).log_history if "loss" in h][0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(attention, tiny_model_dir, sft_file, tmp_path):
    import yaml

    unpacked = first_loss(tiny_model_dir, sft_file, tmp_path / "a", attention)
    packed = first_loss(tiny_model_dir, sft_file, tmp_path / "b", attention, packing=True)
    assert abs(packed - unpacked) < 1e-4
    resolved = yaml.safe_load((tmp_path / "b" / "recipe.resolved.yaml").read_text())
    assert resolved["data"]["packing"] is True


def test_cross_contamination_would_show(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """Guard the guard: with one position sequence for the whole row (examples attending to each
    other), the loss differs."""
    import llmft.data.packing as packing

    original = packing._concatenate

    def leaky(parts):
        row = original(parts)
        row.position_ids = list(range(len(row.input_ids)))
        return row

    monkeypatch.setattr(packing, "_concatenate", leaky)
    unpacked = first_loss(tiny_model_dir, sft_file, tmp_path / "a")
    packed = first_loss(tiny_model_dir, sft_file, tmp_path / "b", packing=True)
    assert abs(packed - unpacked) > 1e-3

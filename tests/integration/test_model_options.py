"""`model:` keys change what is loaded; gradient checkpointing, the attention kernel, NEFTune, RoPE
scaling and S2-Attn each have their real effect."""

from __future__ import annotations

import json
import shutil
from typing import Any

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


# --- each option has its real effect -------------------------------------------------------


def _train_with_spy(monkeypatch, raw: dict, spy) -> Any:
    import llmft.callbacks

    original = llmft.callbacks.callbacks_for
    monkeypatch.setattr(llmft.callbacks, "callbacks_for", lambda *a, **k: original(*a, **k) + [spy])
    return train(validate_recipe(raw))


def test_gradient_checkpointing_recomputes_each_layer(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """With checkpointing each decoder layer's forward runs twice per micro-batch (forward, then again
    in backward to rebuild its activations); without it, once. Counted inside the layer (its rotary
    embedding): transformers checkpoints the layer's forward, so hooks on modules do not run again."""
    import transformers.models.llama.modeling_llama as llama

    calls = []
    rotary = llama.apply_rotary_pos_emb
    monkeypatch.setattr(llama, "apply_rotary_pos_emb", lambda *a, **k: calls.append(1) or rotary(*a, **k))
    counted = {}
    for checkpointing in (False, True):
        calls.clear()
        raw = make_recipe(
            tiny_model_dir,
            sft_file,
            tmp_path / f"gc{checkpointing}",
            training={"max_steps": 2, "gradient_checkpointing": checkpointing},
        )
        train(validate_recipe(raw))
        counted[checkpointing] = len(calls)
    assert counted == {False: 2 * 2, True: 2 * 2 * 2}  # steps x layers (x 2 when recomputed)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attn_implementation_picks_the_kernel_that_runs(tiny_model_dir, sft_file, tmp_path, monkeypatch, kernel):
    import transformers.models.llama.modeling_llama as llama

    ran = {"eager": 0, "sdpa": 0}
    eager, sdpa = llama.eager_attention_forward, torch.nn.functional.scaled_dot_product_attention

    def counting_eager(*a, **k):
        ran["eager"] += 1
        return eager(*a, **k)

    def counting_sdpa(*a, **k):
        ran["sdpa"] += 1
        return sdpa(*a, **k)

    monkeypatch.setattr(llama, "eager_attention_forward", counting_eager)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", training={"max_steps": 1})
    raw["model"]["attn_implementation"] = kernel
    train(validate_recipe(raw))
    other = "sdpa" if kernel == "eager" else "eager"
    assert ran[kernel] > 0 and ran[other] == 0, ran


def _embedding_modes(model) -> tuple[bool, bool]:
    """(two training-mode passes differ, training differs from eval) for the input embeddings."""
    embed = model.get_input_embeddings()
    ids = torch.arange(12)[None]
    was_training = model.training
    model.train()
    first, second = embed(ids), embed(ids)
    model.eval()
    evaluated = embed(ids)
    model.train(was_training)
    return not torch.equal(first, second), not torch.equal(first, evaluated)


@pytest.mark.parametrize("alpha", [None, 5.0])
def test_neftune_noises_embeddings_in_training_only(tiny_model_dir, sft_file, tmp_path, monkeypatch, alpha):
    from transformers import TrainerCallback

    seen = []

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(_embedding_modes(model))

    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", training={"max_steps": 2, "neftune_alpha": alpha})
    result = _train_with_spy(monkeypatch, raw, Spy())
    noisy = alpha is not None
    assert seen == [(noisy, noisy)] * 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.log_history if "loss" in h)
    assert _embedding_modes(result.model) == (False, False)  # the noise hook is gone after training


def test_rope_scaling_reaches_the_loaded_model(tiny_model_dir):
    plain = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32)
    scaled = load_model(ModelConfig(path=str(tiny_model_dir), rope_scaling={"type": "linear", "factor": 4}), torch.float32)
    assert scaled.config.rope_parameters["rope_type"] == "linear" and scaled.config.rope_parameters["factor"] == 4.0
    assert scaled.config.max_position_embeddings == 4 * plain.config.max_position_embeddings
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 4)
    ids = torch.arange(8)[None]
    assert not torch.allclose(scaled(ids).logits, plain(ids).logits)  # same weights, other positions


def test_training_with_rope_scaling(tiny_model_dir, sft_file, tmp_path):
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", training={"max_steps": 2}, mode="full")
    raw["model"]["rope_scaling"] = {"type": "yarn", "factor": 2.0}
    result = train(validate_recipe(raw))
    assert result.model.config.rope_parameters["rope_type"] == "yarn"
    saved = json.loads((result.output_dir / "config.json").read_text())
    assert saved["rope_parameters"]["rope_type"] == "yarn" and saved["rope_parameters"]["factor"] == 2.0


# --- training.shift_attn ------------------------------------------------------------------


def _shifted_tiny(tiny_model_dir):
    from llmft.modeling import shift_attn

    model = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32)
    plain = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32)
    shift_attn.enable(model)
    return model, plain


def test_shift_attn_is_full_attention_outside_training(tiny_model_dir):
    model, plain = _shifted_tiny(tiny_model_dir)
    model.eval(), plain.eval()
    ids = torch.randint(0, 300, (2, 37))
    torch.testing.assert_close(model(ids).logits, plain(ids).logits)


def test_shift_attn_is_group_local_in_training(tiny_model_dir):
    """32 tokens, groups of 8. After both layers, token 13 can only have seen tokens 4..13 (its
    group [8, 16), the shifted group [12, 20), and what token 8 saw in layer 1: [4, 12)); so a
    change to token 2 must not reach it in training, while it does with full attention (eval)."""
    model, _ = _shifted_tiny(tiny_model_dir)
    ids = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 300
    model.train()
    torch.testing.assert_close(model(ids).logits[0, 13], model(changed).logits[0, 13])
    assert not torch.allclose(model(ids).logits[0, 5], model(changed).logits[0, 5])
    model.eval()
    assert not torch.allclose(model(ids).logits[0, 13], model(changed).logits[0, 13])


def test_shift_attn_keeps_packed_examples_apart(tiny_model_dir):
    """A packed row (positions restart, no mask): the second example never sees the first."""
    model, _ = _shifted_tiny(tiny_model_dir)
    model.train()
    ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(10), torch.arange(14)])[None]
    changed = ids.clone()
    changed[0, 9] = (changed[0, 9] + 1) % 300
    a, b = model(ids, position_ids=positions).logits, model(changed, position_ids=positions).logits
    torch.testing.assert_close(a[0, 10:], b[0, 10:])


@pytest.mark.parametrize("data", [{}, {"packing": True}])
def test_training_with_shift_attn(tiny_model_dir, sft_file, tmp_path, monkeypatch, data):
    import llmft.modeling.shift_attn as shift_attn

    calls = []
    original = shift_attn.shifted_sparse_attention
    monkeypatch.setattr(shift_attn, "shifted_sparse_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", training={"max_steps": 2, "shift_attn": True}, data=data)
    raw["data"]["max_length"] = 64
    result = train(validate_recipe(raw))
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert len(calls) == 2 * 2  # every layer of every training step (2 layers, 2 steps, no eval)


def test_neftune_in_a_trl_stage(tiny_model_dir, tmp_path, monkeypatch):
    """TRL's trainers are HF Trainers: the same noise reaches a dpo run's policy in training."""
    from toy_pairs import write_toy
    from transformers import TrainerCallback

    seen = []

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(_embedding_modes(model))

    train_file, _ = write_toy(tmp_path)
    raw = make_recipe(
        tiny_model_dir,
        train_file,
        tmp_path / "run",
        stage="dpo",
        training={"max_steps": 2, "micro_batch_size": 4, "neftune_alpha": 5.0},
    )
    result = _train_with_spy(monkeypatch, raw, Spy())
    assert seen == [(True, True)] * 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.log_history if "loss" in h)

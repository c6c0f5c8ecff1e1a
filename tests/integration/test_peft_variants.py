"""The LoRA variants and `mode: freeze` on the tiny model: what each does to the layers, the starting
weights, the optimizer and the saved output; pissa/olora adapters saved for the original base (the
base fingerprint and `llmft merge`'s check pass against it); the recipe refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONVERSATIONS, make_recipe, write_jsonl
from safetensors.torch import load_file
from tiny import build_model, build_tokenizer

from llmft.builders import get_builder
from llmft.config import validate_recipe
from llmft.config.finetune import FreezeFinetune, LoraFinetune
from llmft.config.model import ModelConfig
from llmft.errors import RecipeError, UserError
from llmft.modeling.adapters import apply_finetune
from llmft.modeling.merge import merge_adapter
from llmft.run import prepare, train

pytestmark = pytest.mark.usefixtures("restore_process_state")
VOCAB = len(build_tokenizer())


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matmuls are microseconds; on a busy machine OpenMP's thread handoffs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sft_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS])


def lora(**knobs) -> LoraFinetune:
    return LoraFinetune(mode="lora", rank=4, alpha=8, dropout=0.0, **knobs)


def lora_layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 99, 7, 130, 64, 3, 250, 11]])


# --- what each variant does to the layers -------------------------------------------------------


def test_rslora_scales_by_alpha_over_sqrt_rank():
    plain = apply_finetune(build_model(VOCAB), lora())
    rs = apply_finetune(build_model(VOCAB), lora(use_rslora=True))
    assert {m.scaling["default"] for m in lora_layers(plain)} == {8 / 4}
    assert {m.scaling["default"] for m in lora_layers(rs)} == {8 / math.sqrt(4)}


def test_inits_set_the_starting_weights_as_named():
    default = lora_layers(apply_finetune(build_model(VOCAB), lora()))
    torch.manual_seed(0)
    gaussian = lora_layers(apply_finetune(build_model(VOCAB), lora(init="gaussian")))
    for layers in (default, gaussian):  # B starts at zero: the model starts as the base
        assert all(not m.lora_B["default"].weight.any() for m in layers)
    # default: Kaiming-uniform A, bounded by 1/sqrt(fan_in); gaussian: A ~ N(0, 1/rank)
    for m in default:
        a = m.lora_A["default"].weight
        assert a.abs().max() <= 1 / math.sqrt(a.shape[1])
    values = torch.cat([m.lora_A["default"].weight.flatten() for m in gaussian])
    assert values.mean().abs() < 0.02 and abs(values.std().item() - 1 / 4) < 0.02
    assert values.abs().max() > max(1 / math.sqrt(m.lora_A["default"].weight.shape[1]) for m in gaussian)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_move_the_base_but_start_at_the_same_logits(init):
    base = build_model(VOCAB).eval()
    expected = logits(base, IDS)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = apply_finetune(build_model(VOCAB), lora(init=init)).eval()
    layers = lora_layers(model)
    assert all(m.lora_B["default"].weight.any() for m in layers)  # the adapter holds part of W
    moved = [m for m in layers if not torch.equal(m.base_layer.weight, original[_base_name(model, m)])]
    assert len(moved) == len(layers) == 14
    assert torch.allclose(logits(model, IDS), expected, atol=1e-5)


def _base_name(model, module) -> str:
    name = next(n for n, m in model.get_base_model().named_modules() if m is module)
    return f"{name}.weight"


def test_dora_adds_magnitude_vectors_that_train(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    result = train(validate_recipe(make_recipe(tiny_model_dir, sft_data, out, finetune={"use_dora": True})))
    layers = lora_layers(result.model)
    assert len(layers) == 14 and all(m.use_dora["default"] for m in layers)
    for m in layers:
        magnitude = m.lora_magnitude_vector["default"].weight
        assert magnitude.requires_grad
        # it started as the row norms of the base weight (B = 0); three steps moved it
        assert not torch.allclose(magnitude, m.base_layer.weight.norm(dim=1), atol=1e-6)
    saved = load_file(out / "adapter_model.safetensors")
    assert sum(k.endswith("lora_magnitude_vector") for k in saved) == 14
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True


# --- LoRA+ in every trainer -------------------------------------------------------------------------


def _b_groups(optimizer, model, lr: float, ratio: float) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    b_ids = {id(p) for n, p in model.named_parameters() if ".lora_B." in n and p.requires_grad}
    fast = [g for g in optimizer.param_groups if g["lr"] == pytest.approx(lr * ratio)]
    assert fast and {id(p) for g in fast for p in g["params"]} == b_ids, [names[id(p)] for g in fast for p in g["params"]]
    slow = [p for g in optimizer.param_groups if g["lr"] == pytest.approx(lr) for p in g["params"]]
    assert slow and not {id(p) for p in slow} & b_ids  # A matrices (and everything else) at the recipe's rate


@pytest.mark.parametrize("stage", ["sft", "dpo", "kto", "orpo", "grpo", "rm"])
def test_lora_plus_puts_b_in_its_own_group(stage, tiny_model_dir, tmp_path):
    pref = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}] * 4)
    files = {
        "sft": write_jsonl(tmp_path / "sft.jsonl", [{"messages": m} for m in CONVERSATIONS]),
        "kto": write_jsonl(
            tmp_path / "kto.jsonl", [{"prompt": "Hi?", "completion": "Hello.", "label": i % 2 == 0} for i in range(4)]
        ),
    }
    raw = make_recipe(tiny_model_dir, files.get(stage, pref), tmp_path / "run", stage=stage, finetune={"lora_plus_ratio": 16})
    if stage == "grpo":
        raw["data"]["train"] = str(files["sft"])
        raw["stage"] = {"name": "grpo", "num_generations": 2, "max_completion_length": 8, "rewards": ["length"]}
    ctx = prepare(validate_recipe(raw))
    trainer = get_builder(stage, "lora")(ctx)
    _b_groups(trainer.create_optimizer(), trainer.model, 1e-2, 16)


def test_lora_plus_in_llmfts_ppo(tiny_model_dir, sft_data, tmp_path, monkeypatch):
    import llmft.builders.ppo as ppo_builder

    tokenizer = build_tokenizer()
    reward = build_model(VOCAB)
    reward.forward = lambda input_ids, attention_mask: type("Out", (), {"logits": input_ids[:, :1].float()})()
    monkeypatch.setattr(ppo_builder, "load_reward_model", lambda path, dtype: (reward, tokenizer))
    (tmp_path / "rm").mkdir()
    raw = make_recipe(tiny_model_dir, sft_data, tmp_path / "run", stage="ppo", finetune={"lora_plus_ratio": 4})
    raw["stage"].update(reward_model=str(tmp_path / "rm"), rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4)
    trainer = get_builder("ppo", "lora")(prepare(validate_recipe(raw)))
    _b_groups(trainer.optimizer, trainer.model, 1e-2, 4)


# --- freeze ----------------------------------------------------------------------------------------


def test_freeze_trains_only_what_it_names_and_saves_full_weights(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    finetune = {"trainable_layers": 1, "trainable_modules": ["lm_head"]}
    result = train(validate_recipe(make_recipe(tiny_model_dir, sft_data, out, mode="freeze", finetune=finetune)))
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")  # the whole model, not an adapter
    assert not (out / "adapter_model.safetensors").exists() and after.keys() == before.keys()
    trained = {k for k in before if k.startswith(("model.layers.1.", "lm_head."))}
    assert len(trained) == 10  # layer 1: 7 linear weights and 2 norms; the head
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same is (name not in trained), name
    assert {n for n, p in result.model.named_parameters() if p.requires_grad} == trained


def test_freeze_layer_indices_and_patterns():
    model = apply_finetune(
        build_model(VOCAB), FreezeFinetune(mode="freeze", trainable_layers=[0], trainable_modules=["*.mlp.down_proj.*"])
    )
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trained if n.startswith("model.layers.0.")} == {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")
    }
    assert trained - {n for n in trained if n.startswith("model.layers.0.")} == {"model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(UserError, match="'attn_out' name no module"):
        apply_finetune(build_model(VOCAB), FreezeFinetune(mode="freeze", trainable_modules=["attn_out"]))
    with pytest.raises(UserError, match="out of range"):
        apply_finetune(build_model(VOCAB), FreezeFinetune(mode="freeze", trainable_layers=[5]))


def test_plan_counts_what_freeze_trains(tiny_model_dir, sft_data, tmp_path):
    from llmft.plan.from_recipe import plan_recipe

    raw = make_recipe(tiny_model_dir, sft_data, tmp_path / "run", mode="freeze", finetune={"trainable_layers": 1})
    plan = plan_recipe(validate_recipe(raw)).plan
    model = build_model(VOCAB)
    layer = sum(p.numel() for p in model.model.layers[1].parameters())
    assert plan.trainable == layer


# --- pissa / olora saved for the original base ------------------------------------------------------


@pytest.mark.parametrize(
    "finetune", [{"init": "pissa", "use_dora": True}, {"init": "olora", "use_rslora": True}], ids=["pissa+dora", "olora+rslora"]
)
def test_moved_base_adapter_is_saved_for_the_original_base(finetune, tiny_model_dir, sft_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = train(validate_recipe(make_recipe(tiny_model_dir, sft_data, out, finetune=finetune)))
    trained = logits(result.model.eval(), IDS)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["init_lora_weights"]) == (8, True)  # rank x 2, a plain LoRA adapter
    assert config["lora_alpha"] == pytest.approx(8 * (math.sqrt(2) if finetune.get("use_rslora") else 2))
    # the original base + the saved adapter computes what the trained model did
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out)).eval()
    assert torch.allclose(logits(reloaded, IDS), trained, atol=1e-5)
    # the fingerprint is the original base's, and llmft merge's check passes against it
    merged = merge_adapter(ModelConfig(path=str(tiny_model_dir)), out, tmp_path / "merged")
    assert merged.check is not None and merged.check.passed
    merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(logits(merged_model, IDS), trained, atol=1e-4)


def test_dora_adapter_merges_with_the_check(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_data, out, finetune={"use_dora": True})))
    merged = merge_adapter(ModelConfig(path=str(tiny_model_dir)), out, tmp_path / "merged")
    assert merged.check is not None and merged.check.passed


def test_pissa_checkpoint_merges_onto_the_original_base(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    raw = make_recipe(
        tiny_model_dir, sft_data, out, finetune={"init": "pissa"}, training={"save_strategy": "steps", "save_steps": 3}
    )
    result = train(validate_recipe(raw))
    checkpoint = out / "checkpoint-3"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    merged = merge_adapter(ModelConfig(path=str(tiny_model_dir)), checkpoint, tmp_path / "merged")
    assert merged.check is not None and merged.check.passed
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(logits(model, IDS), logits(result.model.eval(), IDS), atol=1e-4)


# --- continuing an adapter, and the refusals --------------------------------------------------------


def test_continued_adapter_must_agree_on_the_variant(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "first"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_data, out, finetune={"use_dora": True})))
    raw = make_recipe(tiny_model_dir, sft_data, tmp_path / "second", finetune={"adapter_path": str(out), "use_dora": False})
    with pytest.raises(UserError, match=r"finetune.use_dora=False but the adapter has True"):
        train(validate_recipe(raw))
    raw["finetune"].pop("use_dora")
    result = train(validate_recipe(raw))  # the adapter's own variant applies
    assert all(m.use_dora["default"] for m in lora_layers(result.model))


def _problems(raw) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    return info.value.problems


@pytest.mark.parametrize(
    ("mode", "finetune", "stage", "expected"),
    [
        ("qlora", {"init": "pissa"}, "sft", "finetune.init: pissa decomposes the full-precision base weights"),
        ("lora", {"init": "loftq"}, "sft", "finetune.init: loftq sets the adapter to offset the 4-bit quantization"),
        ("qlora", {"init": "loftq", "bits": 8}, "sft", "finetune.init: loftq sets the adapter"),
        ("lora", {"init": "olora", "adapter_path": "x"}, "sft", "finetune.init: a continued adapter"),
        ("lora", {"init": "pissa"}, "ppo", "finetune.init: pissa starts the adapter away from zero"),
        (
            "full",
            {"lora_plus_ratio": 16},
            "sft",
            "finetune.lora_plus_ratio: unknown key; it is a key of finetune.mode lora, qlora, not full",
        ),
        ("freeze", {}, "sft", "set trainable_modules and/or trainable_layers"),
    ],
)
def test_refusals_name_the_key_and_the_fix(mode, finetune, stage, expected, tmp_path):
    from conftest import minimal_recipe

    raw = minimal_recipe(finetune={"mode": mode, **finetune}, stage={"name": stage})
    if stage == "ppo":
        raw["stage"]["reward_model"] = "rm"
        raw["data"]["train"] = "prompts.jsonl"
    problems = _problems(raw)
    assert any(expected in p for p in problems), problems


def test_pissa_reference_in_trl_stages_is_the_starting_adapter():
    from llmft.config.stage import DpoStage, Reference

    assert DpoStage(name="dpo").reference_source(lora(init="pissa")) is Reference.STARTING_ADAPTER
    assert DpoStage(name="dpo").reference_source(lora(init="gaussian")) is Reference.ADAPTER_DISABLED


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_loftq_is_refused_without_cuda(tiny_model_dir, sft_data, tmp_path):
    from llmft.preflight import preflight

    raw = make_recipe(tiny_model_dir, sft_data, tmp_path / "run", mode="qlora", finetune={"init": "loftq"})
    with pytest.raises(UserError, match="finetune.init: loftq needs a CUDA GPU"):
        preflight(validate_recipe(raw))


def test_loftq_reads_the_local_full_precision_weights(tiny_model_dir, monkeypatch):
    """The wiring to peft's replace_lora_weights_loftq (which computes on CUDA only): it gets the
    4-bit peft model and the base's own safetensors file."""
    import peft

    from llmft.config.finetune import QLoraFinetune
    from llmft.modeling.load import load_model
    from llmft.modeling.quantize import bnb_config

    pytest.importorskip("bitsandbytes")
    seen = []
    monkeypatch.setattr(peft, "replace_lora_weights_loftq", lambda model, model_path=None: seen.append((model, model_path)))
    finetune = QLoraFinetune(mode="qlora", rank=4, alpha=8, dropout=0.0, init="loftq")
    base = load_model(ModelConfig(path=str(tiny_model_dir)), torch.float32, quantization=bnb_config(finetune, torch.float32))
    model = apply_finetune(base, finetune)
    assert seen == [(model, str(tiny_model_dir / "model.safetensors"))]
    assert finetune.saved_as_change  # its adapter is saved as the change training made, like pissa's


def test_pissa_run_resumed_from_a_checkpoint_saves_the_same_adapter(tiny_model_dir, sft_data, tmp_path, monkeypatch):
    """Resuming re-runs the decomposition on the original base (the checkpoint holds peft's own
    form) and converts at the end with the same starting A0, B0: the adapter of an uninterrupted run."""
    import os
    import signal

    from transformers import TrainerCallback

    import llmft.callbacks
    from llmft.errors import TrainingInterrupted

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    def raw(out, **training):
        settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "learning_rate": 5e-3, **training}
        return make_recipe(tiny_model_dir, sft_data, out, finetune={"init": "pissa"}, training=settings)

    train(validate_recipe(raw(tmp_path / "a")))
    original = llmft.callbacks.callbacks_for
    with monkeypatch.context() as patch:
        patch.setattr(llmft.callbacks, "callbacks_for", lambda *a, **k: [StopAt(), *original(*a, **k)])
        with pytest.raises(TrainingInterrupted):
            train(validate_recipe(raw(tmp_path / "b")))
    train(validate_recipe(raw(tmp_path / "b", resume_from_checkpoint="auto")))
    a, b = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["r"] == 8


def test_plan_counts_doras_magnitudes(tiny_model_dir, sft_data, tmp_path):
    from llmft.plan.from_recipe import plan_recipe

    def trainable(**finetune):
        raw = make_recipe(tiny_model_dir, sft_data, tmp_path / "run", finetune=finetune)
        return plan_recipe(validate_recipe(raw)).plan.trainable

    model = apply_finetune(build_model(VOCAB), lora(use_dora=True))
    assert trainable(use_dora=True) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable(use_dora=True) - trainable() == 512  # one per output row of the 14 adapted layers

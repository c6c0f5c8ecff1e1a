"""The stage x mode matrix on the tiny model: each run learns, writes the documented outputs,
and touches only the parameters its mode trains."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from conftest import make_recipe, write_jsonl
from safetensors.torch import load_file

from llmft.config import validate_recipe
from llmft.errors import UserError
from llmft.run import train


def _initial_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.log_history if "loss" in h]


@pytest.mark.parametrize("stage", ["pt", "sft"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_matrix_trains_and_saves(stage, mode, tiny_model_dir, sft_file, pt_file, tmp_path):
    data = pt_file if stage == "pt" else sft_file
    out = tmp_path / "run"
    # every step sees the whole (tiny) dataset, so losses of successive steps are comparable
    recipe = validate_recipe(make_recipe(tiny_model_dir, data, out, stage=stage, mode=mode, training={"micro_batch_size": 32}))
    result = train(recipe)

    losses = _losses(result)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], f"loss did not move down: {losses}"

    initial = _initial_weights(tiny_model_dir)
    if mode == "lora":
        base = result.model.get_base_model()
        for name, value in base.state_dict().items():
            if "lora_" in name:
                continue
            key = name.replace(".base_layer", "")
            assert torch.equal(value, initial[key]), f"frozen weight {key} changed"
        adapter = load_file(str(out / "adapter_model.safetensors"))
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B matrices did not train"
        assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    else:
        saved = load_file(str(out / "model.safetensors"))
        changed = [k for k in initial if not torch.equal(saved[k], initial[k])]
        assert len(changed) == len(initial), f"unchanged after full training: {set(initial) - set(changed)}"

    for name in ("tokenizer.json", "tokenizer_config.json", "trainer_state.json", "train_results.json", "recipe.resolved.yaml"):
        assert (out / name).is_file(), name
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h["loss"] for h in state["log_history"] if "loss" in h] == pytest.approx(losses)
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt")), "only safetensors in the output root"
    if stage == "sft":
        assert "<|im_start|>" in (out / "chat_template.jinja").read_text()


def test_eval_checkpoints_and_tensorboard(tiny_model_dir, sft_file, tmp_path, caplog):
    """Besides the checkpoints and evaluations: one TensorBoard folder (logs/, not an extra runs/),
    curves.png, weights readable by others (the usual 0o644 under umask 022), and log lines that
    say how long the run has taken and has left when stderr is not a terminal."""
    old_umask = os.umask(0o022)
    out = tmp_path / "run"
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        out,
        data={"eval": str(sft_file)},
        training={
            "max_steps": 4,
            "save_strategy": "steps",
            "save_steps": 2,
            "save_total_limit": 1,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "report_to": ["tensorboard"],
        },
    )
    try:
        with caplog.at_level(logging.INFO, logger="llmft"):
            result = train(validate_recipe(raw))
    finally:
        os.umask(old_umask)
    evals = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(evals["eval_loss"])
    assert [h for h in result.log_history if "eval_loss" in h], "no evaluation during training"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit: 1
    assert (out / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert list((out / "logs").glob("events.out.tfevents.*")), "no tensorboard events"
    assert not (out / "runs").exists()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for weights in (out / "adapter_model.safetensors", out / "checkpoint-4" / "adapter_model.safetensors"):
        assert stat.S_IMODE(weights.stat().st_mode) == 0o644, weights
    steps = [m for m in caplog.messages if m.startswith("step ")]
    assert re.fullmatch(r"step 1/4 \(\d+:\d\d elapsed, ~\d+:\d\d left\) loss=\S+ .*", steps[0]), steps[0]
    assert re.fullmatch(r"step 4/4 \(\d+:\d\d elapsed\) .*", steps[-1]), steps[-1]


def test_output_dir_holding_a_run_is_refused(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    recipe = validate_recipe(make_recipe(tiny_model_dir, sft_file, out, training={"max_steps": 1}))
    train(recipe)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="output.dir: .* already holds a run"):
        train(recipe)
    assert sorted(p.name for p in out.iterdir()) == before


def test_lora_options_reach_peft(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "run"
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        out,
        training={"max_steps": 1},
        finetune={"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"], "rank": 2, "alpha": 4},
    )
    result = train(validate_recipe(raw))
    adapted = {n.rsplit(".", 1)[-1] for n, m in result.model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4)
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("lm_head" in k for k in saved), "modules_to_save weights missing from the adapter"


def test_continue_from_adapter(tiny_model_dir, sft_file, tmp_path):
    first = tmp_path / "first"
    train(validate_recipe(make_recipe(tiny_model_dir, sft_file, first, training={"max_steps": 1})))
    before = load_file(str(first / "adapter_model.safetensors"))
    second = tmp_path / "second"
    raw = make_recipe(tiny_model_dir, sft_file, second, training={"max_steps": 2})
    raw["finetune"] = {"mode": "lora", "adapter_path": str(first)}
    train(validate_recipe(raw))
    after = load_file(str(second / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "continued adapter did not train"

    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "third", training={"max_steps": 1})
    raw["finetune"] = {"mode": "lora", "adapter_path": str(first), "rank": 32}
    with pytest.raises(UserError, match="finetune.rank=32 but the adapter has 4"):
        train(validate_recipe(raw))


def test_alpaca_data_and_eos_supervised(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "run"
    result = train(validate_recipe(make_recipe(tiny_model_dir, alpaca_file, out, training={"max_steps": 1})))
    assert math.isfinite(_losses(result)[0])


def test_data_without_supervised_tokens_is_refused(tiny_model_dir, tmp_path):
    data = write_jsonl(
        tmp_path / "long.jsonl",
        [{"messages": [{"role": "user", "content": "Hello! " * 40}, {"role": "assistant", "content": "Paris."}]}],
    )
    raw = make_recipe(tiny_model_dir, data, tmp_path / "run")
    with pytest.raises(UserError, match="no usable examples .*reply truncated away by max_length"):
        train(validate_recipe(raw))
    assert not (tmp_path / "run" / "recipe.resolved.yaml").exists()


def test_group_by_length_trains(tiny_model_dir, sft_file, tmp_path):
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "run", data={"group_by_length": True}, training={"max_steps": 2})
    result = train(validate_recipe(raw))
    assert len(_losses(result)) == 2


def test_torch_compile_compiles_the_model_it_trains(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    """`training.torch_compile` reaches torch.compile (recorded here instead of compiling: inductor
    on CPU takes minutes; the default is off for that reason, see the key's description)."""
    import torch

    compiled = []

    def fake_compile(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "c", training={"max_steps": 1, "torch_compile": True})
    train(validate_recipe(raw))
    assert compiled, "torch.compile was not called"
    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "d", training={"max_steps": 1})
    compiled.clear()
    train(validate_recipe(raw))
    assert not compiled


@pytest.mark.parametrize("eval_steps,expected", [(2, [2, 4]), (3, [3, 4])])
def test_the_final_weights_are_evaluated_once(tiny_model_dir, sft_file, tmp_path, monkeypatch, eval_steps, expected):
    """An evaluation the trainer ran at the last step is the final one (rm/dpo runs evaluated the same
    weights twice, ~30% of their wall time); otherwise the final weights get one more."""
    from transformers import Trainer

    steps = []
    original = Trainer.evaluate

    def counting(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counting)
    raw = make_recipe(
        tiny_model_dir,
        sft_file,
        tmp_path / "run",
        data={"eval": str(sft_file)},
        training={"max_steps": 4, "eval_strategy": "steps", "eval_steps": eval_steps},
    )
    result = train(validate_recipe(raw))
    assert steps == expected
    final = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert (
        final["eval_loss"] == result.metrics["eval_loss"] == [h for h in result.log_history if "eval_loss" in h][-1]["eval_loss"]
    )

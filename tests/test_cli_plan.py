"""`llmft plan`: the text report with its ZeRO table, the JSON shape, and planning without data counts."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import make_recipe

from llmft.cli import EXIT_OK, EXIT_USER, main

pytestmark = pytest.mark.usefixtures("restore_process_state")


def recipe_file(tmp_path, tiny_model_dir, train, **sections):
    raw = make_recipe(tiny_model_dir, train, tmp_path / "out", **sections)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plan_prints_memory_and_zero_table(tmp_path, tiny_model_dir, sft_file, capsys):
    path = recipe_file(tmp_path, tiny_model_dir, sft_file)
    assert main(["plan", str(path), "--gpus", "4", "--gpu-memory", "24GiB", "training.micro_batch_size=2"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "finetune   lora rank 4 on all linear layers" in out
    assert "2 micro x 1 accumulation x 4 processes = 8 per step" in out
    assert "4 training examples (tokenized now): 1 step per epoch, 3 in all" in out
    assert "budget 24.00 GiB (--gpu-memory)" in out and "fits in 24.00 GiB" in out
    table = out[out.index("ZeRO stages") :]
    for row in ("0      none", "1      none", "2      none", "3      none", "2      optimizer", "3      optimizer_and_params"):
        assert row in table
    assert "<- recipe" in table
    # the fast path as `llmft train` will take it on that machine (4 GPUs: no passes, DDP keeps the chunked loss for LoRA)
    assert "path       batches padding-free, attention llmft_sdpa_varlen, chunked cross-entropy, fused RMSNorm/SwiGLU\n" in out


def test_plan_json(tmp_path, tiny_model_dir, sft_file, capsys):
    path = recipe_file(tmp_path, tiny_model_dir, sft_file)
    assert main(["plan", str(path), "--format", "json", "--device", "cpu"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert {
        "model",
        "params",
        "trainable",
        "per_device_bytes",
        "memory",
        "cpu_offload_bytes",
        "budget_bytes",
        "fits",
        "schedule",
        "zero_stages",
        "notes",
        "knobs",
    } <= plan.keys()
    assert set(plan["memory"]) == {
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "buffers",
        "allocator",
        "framework",
        "overlap",
    }
    memory = plan["memory"]
    assert plan["per_device_bytes"] == sum(memory.values()) - 2 * memory["overlap"]
    assert plan["model"]["counted_exactly"] and plan["params"] == plan["model"]["params"]
    assert plan["schedule"]["examples"] == 4 and plan["schedule"]["steps_per_epoch"] == 2
    assert [(z["zero_stage"], z["offload"]) for z in plan["zero_stages"]][:4] == [
        (0, "none"),
        (1, "none"),
        (2, "none"),
        (3, "none"),
    ]
    assert plan["knobs"]["device"] == "cpu"
    assert plan["path"].endswith("chunked cross-entropy, fused RMSNorm/SwiGLU")  # whole micro-batches fit this machine


def test_plan_path_says_why_a_part_is_off(tmp_path, tiny_model_dir, sft_file, capsys):
    path = recipe_file(tmp_path, tiny_model_dir, sft_file, training={"fused_ops": False}, data={"padding_free": False})
    assert main(["plan", str(path), "--device", "cpu"]) == EXIT_OK
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("path "))
    assert line.endswith("(data.padding_free is false; training.fused_ops is false)")
    assert "batches padded, attention sdpa" in line


def test_plan_without_countable_data(tmp_path, tiny_model_dir, capsys):
    text = tmp_path / "t.txt"
    text.write_text("a document, not a conversation\n")
    path = recipe_file(tmp_path, tiny_model_dir, text)
    assert main(["plan", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "not counted: data.train.0" in out and "steps per epoch unknown" in out
    assert "activations for full micro-batches of data.max_length (64) tokens" in out


def test_plan_refuses_what_train_would(tmp_path, tiny_model_dir, sft_file, capsys):
    """A missing file: refused as `llmft train` refuses it (all problems listed), not planned around."""
    path = recipe_file(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl", data={"eval": str(sft_file)})
    assert main(["plan", str(path), "--gpus", "2", "--gpu-memory", "24GiB"]) == EXIT_USER
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"  - data.train.0.path: file not found: {tmp_path / 'missing.jsonl'}" in err.splitlines()


def test_plan_with_a_given_example_count(tmp_path, tiny_model_dir, sft_file, capsys):
    path = recipe_file(tmp_path, tiny_model_dir, sft_file)
    assert main(["plan", str(path), "--examples", "1000", "--format", "json"]) == EXIT_OK
    schedule = json.loads(capsys.readouterr().out)["schedule"]
    assert schedule["examples"] == 1000 and schedule["steps_per_epoch"] == 500 and schedule["total_steps"] == 3


def test_plan_bad_memory_size(tmp_path, tiny_model_dir, sft_file, capsys):
    path = recipe_file(tmp_path, tiny_model_dir, sft_file)
    assert main(["plan", str(path), "--gpu-memory", "lots"]) == EXIT_USER
    assert "--gpu-memory: cannot read 'lots' as a size" in capsys.readouterr().err


def test_no_path_line_for_stages_off_the_fast_path(tiny_model_dir):
    from conftest import minimal_recipe

    from llmft.config import validate_recipe
    from llmft.modeling.load import read_config
    from llmft.plan.from_recipe import planned_path
    from llmft.resolve import resolve

    recipe = validate_recipe(
        minimal_recipe(model={"path": str(tiny_model_dir)}, stage={"name": "ppo", "reward_model": str(tiny_model_dir)})
    )
    assert planned_path(recipe, read_config(recipe.model), resolve(recipe, "cpu")) is None
    dpo = validate_recipe(minimal_recipe(model={"path": str(tiny_model_dir)}, stage={"name": "dpo"}))
    assert planned_path(dpo, read_config(dpo.model), resolve(dpo, "cpu")).describe() == (
        "batches padding-free, attention llmft_sdpa_varlen, TRL's chunked log-prob head, padded rows scored as one row, "
        "shared prompts once, fused RMSNorm/SwiGLU"
    )
    sft = validate_recipe(minimal_recipe(model={"path": str(tiny_model_dir)}))
    path = planned_path(sft, read_config(sft.model), resolve(sft, "cuda"), budget_bytes=80 << 30)
    assert path.describe().endswith("fused RMSNorm/SwiGLU")  # no passes on an 80 GiB GPU


def test_plan_cuts_passes_when_the_planned_memory_is_too_small(tmp_path, tiny_model_dir, sft_file, capsys):
    """`training.max_tokens_per_forward: auto` follows the plan's budget: on a 0.1 GiB GPU whole micro-batches of
    4 x 512 tokens do not fit, so the path line shows passes, and the activations are one pass's."""
    path = recipe_file(tmp_path, tiny_model_dir, sft_file, training={"micro_batch_size": 4}, data={"max_length": 512})
    assert main(["plan", str(path), "--gpu-memory", "0.1GiB", "--no-count-data", "--format", "json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert "passes of <= 256 tokens (passes: whole micro-batches of 2,048 tokens would need" in plan["path"]
    assert plan["knobs"]["forward_tokens"] == 256
    assert main(["plan", str(path), "--gpu-memory", "80GiB", "--no-count-data", "--format", "json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["knobs"]["forward_tokens"] is None and "passes" not in plan["path"]

"""Machine checks fail before anything loads, naming the recipe key and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import make_recipe

from llmft.config import validate_recipe
from llmft.errors import UserError
from llmft.modeling.precision import resolve_precision
from llmft.preflight import preflight

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")


def _recipe(tiny_model_dir, sft_file, tmp_path, **sections):
    return validate_recipe(make_recipe(tiny_model_dir, sft_file, tmp_path / "out", **sections))


@no_cuda
def test_fp16_on_cpu_is_refused(tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, training={"precision": "fp16"})
    with pytest.raises(UserError, match="training.precision: fp16 needs a CUDA GPU"):
        resolve_precision(recipe.training)


def test_auto_precision_says_why(tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, training={"precision": "auto"})
    precision, why = resolve_precision(recipe.training)
    assert precision in ("bf16", "fp32") and why.startswith("auto")


@no_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_under_deepspeed_on_cpu_is_refused(precision, tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, training={"precision": precision}, distributed={"zero_stage": 2})
    with pytest.raises(UserError, match=f"training.precision: {precision} does not train under DeepSpeed on a CPU"):
        resolve_precision(recipe.training, deepspeed=recipe.distributed.uses_deepspeed)


@no_cuda
def test_auto_precision_under_deepspeed_on_cpu_is_fp32(tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, training={"precision": "auto"}, distributed={"zero_stage": 3})
    assert resolve_precision(recipe.training, deepspeed=True) == ("fp32", "auto: DeepSpeed on a CPU trains in fp32")


@no_cuda
@pytest.mark.parametrize("optimizer", ["paged_adamw_32bit", "adamw_bnb_8bit"])
def test_bitsandbytes_optimizers_need_cuda(optimizer, tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, training={"optimizer": optimizer})
    with pytest.raises(UserError, match=f"training.optimizer: {optimizer} .*needs a CUDA GPU"):
        preflight(recipe)


@no_cuda
def test_flash_attention_needs_cuda(tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, model={"attn_implementation": "flash_attention_2"})
    with pytest.raises(UserError, match="model.attn_implementation: flash_attention_2 needs a CUDA GPU"):
        preflight(recipe)


def test_missing_data_file_is_named(tiny_model_dir, sft_file, tmp_path):
    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, data={"train": ["missing.jsonl", str(sft_file)]})
    with pytest.raises(UserError, match="data.train.0.path: file not found: missing.jsonl"):
        preflight(recipe)


def test_release_memory_sets_the_allocator_only_when_asked(tmp_path, monkeypatch):
    import llmft.allocator as allocator
    from llmft.config import validate_recipe
    from llmft.run import prepare

    calls = []
    monkeypatch.setattr(allocator, "return_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("llmft.modeling.load.prepare_tokenizer", lambda recipe: None)
    monkeypatch.setattr("llmft.preflight.preflight", lambda recipe: tmp_path)
    base = {
        "model": {"path": str(tmp_path)},
        "data": {"train": "t.jsonl"},
        "finetune": {"mode": "lora"},
        "stage": {"name": "sft"},
        "training": {"precision": "fp32"},
    }
    prepare(validate_recipe({**base, "output": {"dir": str(tmp_path / "a")}}))
    assert calls == []
    prepare(
        validate_recipe(
            {**base, "output": {"dir": str(tmp_path / "b")}, "training": {"precision": "fp32", "release_memory": True}}
        )
    )
    assert calls == [1]


# --- every problem at once, for the device a run is planned on ------------------------------------


@no_cuda
def test_machine_problems_lists_every_problem_without_raising(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    import llmft.allocator
    from llmft.preflight import machine_problems

    monkeypatch.setattr(llmft.allocator, "find_tcmalloc", lambda: None)
    recipe = _recipe(
        tiny_model_dir,
        sft_file,
        tmp_path,
        model={"attn_implementation": "flash_attention_2"},
        data={"eval": "missing.jsonl"},
        training={"optimizer": "adamw_8bit", "precision": "bf16", "allocator": "tcmalloc"},
        distributed={"zero_stage": 2},
    )
    found = machine_problems(recipe)
    assert [key for key, _ in found] == [
        "data.eval.0.path",
        "training.optimizer",
        "model.attn_implementation",
        "training.precision",
        "training.allocator",
    ]
    assert found[3] == (
        "training.precision",
        "bf16 does not train under DeepSpeed on a CPU (distributed.zero_stage / deepspeed_config); use fp32 or auto",
    )
    assert found[4][1].startswith("tcmalloc was not found on this machine")
    with pytest.raises(UserError) as info:
        preflight(recipe)
    assert str(info.value).startswith(
        "5 problems on this machine (no CUDA GPU); nothing was loaded or written:\n  - data.eval.0.path"
    )
    # planned for a GPU elsewhere: only the files this machine holds are checked
    assert machine_problems(recipe, "cuda") == found[:1]


def test_a_cpu_run_planned_on_any_machine_refuses_cuda_only_settings(tiny_model_dir, sft_file, tmp_path):
    from llmft.preflight import machine_problems

    recipe = _recipe(tiny_model_dir, sft_file, tmp_path, training={"optimizer": "paged_adamw_8bit", "precision": "fp16"})
    assert [key for key, _ in machine_problems(recipe, "cpu")] == ["training.optimizer", "training.precision"]


def test_missing_packages_are_problems_where_they_are_probed(monkeypatch):
    import importlib.util

    from llmft.config.finetune import LoraFinetune, QLoraFinetune
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import attention_problems
    from llmft.modeling.quantize import bitsandbytes_problems

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("bitsandbytes", "flash_attn") else real(name, *a)
    )
    qlora = QLoraFinetune(mode="qlora")
    assert bitsandbytes_problems(qlora, "adamw_torch", cuda=False) == [
        ("finetune.mode", "qlora needs the bitsandbytes package (pip install bitsandbytes)")
    ]
    assert [k for k, _ in bitsandbytes_problems(LoraFinetune(mode="lora"), "paged_adamw_32bit", cuda=True)] == [
        "training.optimizer"
    ]
    assert bitsandbytes_problems(qlora, "paged_adamw_32bit", cuda=True, probe=False) == []  # another machine's packages
    flash = ModelConfig(path="m", attn_implementation="flash_attention_2")
    assert attention_problems(flash, cuda=True) == [
        ("model.attn_implementation", "flash_attention_2 needs the flash-attn package (pip install 'llmft[gpu]'); or use sdpa")
    ]
    assert attention_problems(flash, cuda=True, probe=False) == []

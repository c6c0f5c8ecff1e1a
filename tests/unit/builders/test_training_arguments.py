"""Every `training:` key reaches the HF TrainingArguments it claims to set."""

from __future__ import annotations

from pathlib import Path

from conftest import make_recipe, settings_for

from llmft.builders.trainer import training_arguments
from llmft.config import validate_recipe


def _args(tmp_path: Path, precision: str = "fp32", with_eval: bool = False, **training):
    sections = {"training": training}
    if with_eval:
        sections["data"] = {"eval": "eval.jsonl"}
    recipe = validate_recipe(make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out", **sections))
    return training_arguments(recipe, settings_for(recipe, precision), tmp_path / "out")


def test_every_training_key_maps(tmp_path):
    args = _args(
        tmp_path,
        epochs=2.5,
        max_steps=None,
        micro_batch_size=3,
        gradient_accumulation_steps=5,
        learning_rate=3e-4,
        weight_decay=0.1,
        scheduler="constant_with_warmup",
        warmup_steps=7,
        max_grad_norm=0.3,
        optimizer="adafactor",
        seed=123,
        gradient_checkpointing=True,
        logging_steps=4,
        save_strategy="steps",
        save_steps=9,
        save_total_limit=2,
    )
    assert args.num_train_epochs == 2.5 and args.max_steps == -1
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (3, 5)
    assert args.learning_rate == 3e-4 and args.weight_decay == 0.1
    assert str(args.lr_scheduler_type.value) == "constant_with_warmup" and args.warmup_steps == 7
    assert args.max_grad_norm == 0.3 and str(args.optim.value) == "adafactor"
    assert args.seed == 123 and args.data_seed == 123
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.logging_steps == 4 and args.save_steps == 9
    assert args.save_total_limit is None  # llmft rotates checkpoints itself, once a newer one is complete
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]


def test_max_steps_and_warmup_ratio(tmp_path):
    args = _args(tmp_path, max_steps=11, warmup_ratio=0.25)
    assert args.max_steps == 11 and args.warmup_steps == 0.25  # < 1 means a ratio in transformers


def test_precision_flags(tmp_path):
    assert _args(tmp_path, "bf16").bf16 and not _args(tmp_path, "bf16").fp16
    fp32 = _args(tmp_path, "fp32")
    assert not fp32.bf16 and not fp32.fp16


def test_eval_cadence_only_with_eval_data(tmp_path):
    assert str(_args(tmp_path).eval_strategy.value) == "no"
    args = _args(tmp_path, with_eval=True, eval_strategy="steps", eval_steps=6)
    assert str(args.eval_strategy.value) == "steps" and args.eval_steps == 6
    defaulted = _args(tmp_path, with_eval=True, eval_strategy="steps", logging_steps=3)
    assert defaulted.eval_steps == 3


def test_group_by_length_selects_the_length_grouped_sampler(tmp_path):
    recipe = validate_recipe(make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out", data={"group_by_length": True}))
    assert training_arguments(recipe, settings_for(recipe), tmp_path / "out").train_sampling_strategy == "group_by_length"
    assert _args(tmp_path).train_sampling_strategy == "random"


def test_eval_on_start(tmp_path):
    assert _args(tmp_path, with_eval=True, eval_on_start=True).eval_on_start
    assert not _args(tmp_path, with_eval=True).eval_on_start
    import pytest

    from llmft.errors import RecipeError

    with pytest.raises(RecipeError, match="training.eval_on_start: there is no eval data"):
        _args(tmp_path, eval_on_start=True)


def test_neftune_alpha_maps_to_neftune_noise_alpha(tmp_path):
    assert _args(tmp_path, neftune_alpha=5.0).neftune_noise_alpha == 5.0
    assert _args(tmp_path).neftune_noise_alpha is None

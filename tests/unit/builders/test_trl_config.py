"""TRL configs get every llmft training key through the one mapping (`training_kwargs`), and no
TRL default silently replaces a recipe value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import make_recipe, settings_for
from transformers import TrainingArguments
from trl import DPOConfig, RewardConfig

from llmft.builders.context import RunContext
from llmft.builders.trainer import training_arguments, training_kwargs, trl_config
from llmft.config import validate_recipe


def _ctx(tmp_path: Path) -> RunContext:
    recipe = validate_recipe(
        make_recipe(
            Path("m"),
            Path("t.jsonl"),
            tmp_path / "out",
            stage="dpo",
            training={"learning_rate": 3e-4, "logging_steps": 7, "gradient_checkpointing": False, "micro_batch_size": 3},
        )
    )
    return RunContext(recipe=recipe, tokenizer=None, settings=settings_for(recipe), output_dir=tmp_path / "out")


@pytest.mark.parametrize("config_cls", [RewardConfig, DPOConfig])
def test_trl_config_carries_every_training_key(config_cls, tmp_path):
    ctx = _ctx(tmp_path)
    hf = training_arguments(ctx.recipe, ctx.settings, ctx.output_dir)
    trl = trl_config(config_cls, ctx, beta=0.3) if config_cls is DPOConfig else trl_config(config_cls, ctx)
    for key in training_kwargs(ctx.recipe, ctx.settings, ctx.output_dir):
        assert getattr(trl, key) == getattr(hf, key), key
    assert (trl.learning_rate, trl.logging_steps, trl.gradient_checkpointing, trl.bf16) == (3e-4, 7, False, False)


@pytest.mark.parametrize("config_cls", [RewardConfig, DPOConfig])
def test_every_default_trl_changes_is_set_from_the_recipe(config_cls, tmp_path):
    """If a TRL release changes another TrainingArguments default, this names it."""
    ctx = _ctx(tmp_path)
    ours = training_kwargs(ctx.recipe, ctx.settings, tmp_path / "out")
    base = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    changed = [
        f.name for f in dataclasses.fields(config_cls) if f.name in base and f.init and _default(f) != _default(base[f.name])
    ]
    assert changed and not [name for name in changed if name not in ours]


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def test_stage_kwargs_may_not_override_training_keys(tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        trl_config(DPOConfig, _ctx(tmp_path), learning_rate=1.0)

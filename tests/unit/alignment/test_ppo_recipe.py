"""ppo recipes validate in both modes; a missing reward model is refused before anything loads, naming the key."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe

from llmft.config import validate_recipe
from llmft.errors import UserError
from llmft.preflight import check_stage_inputs


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ppo_recipe_validates(mode):
    recipe = validate_recipe(minimal_recipe(stage={"name": "ppo", "reward_model": "outputs/rm"}, finetune={"mode": mode}))
    assert (recipe.stage.name, recipe.finetune.mode, recipe.stage.reward_model) == ("ppo", mode, "outputs/rm")


def _ppo(path) -> dict:
    return {"name": "ppo", "reward_model": str(path)}


def _grpo(path) -> dict:
    return {"name": "grpo", "num_generations": 2, "rewards": ["length", {"type": "reward_model", "path": str(path)}]}


@pytest.mark.parametrize("stage,key", [(_ppo, "stage.reward_model"), (_grpo, "stage.rewards.1.path")])
def test_missing_reward_model_dir_names_the_key(stage, key, tmp_path):
    def recipe(reward_model):
        return validate_recipe(minimal_recipe(stage=stage(reward_model), training={"micro_batch_size": 2}))

    with pytest.raises(UserError, match=rf"^{key}: directory not found: .*nope"):
        check_stage_inputs(recipe(tmp_path / "nope"))
    check_stage_inputs(recipe(tmp_path))

"""ppo recipes validate in both modes; the builder's own checks name the recipe key."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe

from llmft.builders.ppo import check_reward_model_path
from llmft.config import validate_recipe
from llmft.errors import UserError


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ppo_recipe_validates(mode):
    recipe = validate_recipe(minimal_recipe(stage={"name": "ppo", "reward_model": "outputs/rm"}, finetune={"mode": mode}))
    assert (recipe.stage.name, recipe.finetune.mode, recipe.stage.reward_model) == ("ppo", mode, "outputs/rm")


def test_missing_reward_model_dir_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"^stage.reward_model: directory not found: .*nope"):
        check_reward_model_path(str(tmp_path / "nope"))
    check_reward_model_path(str(tmp_path))

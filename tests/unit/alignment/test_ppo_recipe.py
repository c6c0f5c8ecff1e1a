"""ppo recipes validate in both modes, with a reward model or with rule rewards (exactly one of
them); a missing reward model is refused before anything loads, naming the key; a python rule
reward needs the opt-in, as in grpo."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe

from llmft.config import validate_recipe
from llmft.errors import RecipeError, UserError
from llmft.preflight import check_stage_inputs


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ppo_recipe_validates(mode):
    recipe = validate_recipe(minimal_recipe(stage={"name": "ppo", "reward_model": "outputs/rm"}, finetune={"mode": mode}))
    assert (recipe.stage.name, recipe.finetune.mode, recipe.stage.reward_model) == ("ppo", mode, "outputs/rm")
    assert recipe.stage.rewards == []


def test_ppo_takes_rule_rewards_instead_of_a_reward_model():
    stage = {"name": "ppo", "rewards": [{"type": "accuracy", "match": "numeric", "weight": 2.0}, "ends_cleanly"]}
    recipe = validate_recipe(minimal_recipe(stage=stage))
    assert recipe.stage.reward_model is None
    assert [(e.type, e.weight) for e in recipe.stage.rewards] == [("accuracy", 2.0), ("ends_cleanly", 1.0)]
    assert recipe.stage.record_columns() == [("stage.rewards.0.column", "answer")]


@pytest.mark.parametrize(
    "stage,problem",
    [
        ({"name": "ppo"}, "give either reward_model .* one of them"),
        ({"name": "ppo", "reward_model": "outputs/rm", "rewards": ["ends_cleanly"]}, "give either reward_model .* not both"),
    ],
)
def test_ppo_needs_exactly_one_scorer(stage, problem):
    with pytest.raises(RecipeError, match=rf"stage: .*{problem}"):
        validate_recipe(minimal_recipe(stage=stage))


def test_ppo_python_reward_needs_the_opt_in():
    stage = {"name": "ppo", "rewards": [{"type": "python", "function": "mine:score"}]}
    with pytest.raises(RecipeError, match=r"stage.allow_python_rewards: stage.rewards.0 is a python reward"):
        validate_recipe(minimal_recipe(stage=stage))


def _ppo(path) -> dict:
    return {"name": "ppo", "reward_model": str(path)}


def _ppo_rule(path) -> dict:
    return {"name": "ppo", "rewards": ["ends_cleanly", {"type": "reward_model", "path": str(path)}]}


def _grpo(path) -> dict:
    return {"name": "grpo", "num_generations": 2, "rewards": ["length", {"type": "reward_model", "path": str(path)}]}


@pytest.mark.parametrize(
    "stage,key", [(_ppo, "stage.reward_model"), (_ppo_rule, "stage.rewards.1.path"), (_grpo, "stage.rewards.1.path")]
)
def test_missing_reward_model_dir_names_the_key(stage, key, tmp_path):
    def recipe(reward_model):
        return validate_recipe(minimal_recipe(stage=stage(reward_model), training={"micro_batch_size": 2}))

    with pytest.raises(UserError, match=rf"^{key}: directory not found: .*nope"):
        check_stage_inputs(recipe(tmp_path / "nope"))
    check_stage_inputs(recipe(tmp_path))

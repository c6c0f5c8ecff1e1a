"""`python` rewards: imported only when the recipe allows it, called with the completions and the
columns it asks for, and held to one number in [0, 1] (or None) per completion."""

from __future__ import annotations

import math

import pytest
from conftest import minimal_recipe

from llmft.config import validate_recipe
from llmft.config.rewards import PythonReward
from llmft.errors import RecipeError, UserError
from llmft.rewards import Sample, load_rewards, score
from llmft.rewards.custom import checked, import_function

HERE = "test_python_rewards"  # pytest puts this directory on sys.path: this module imports by name


def passes_tests(completions: list[str], tests: list[str], **_) -> list[float | None]:
    """1 when every comma-separated word of the record's `tests` column is in the completion."""
    return [float(all(word in text for word in wanted.split(","))) for text, wanted in zip(completions, tests)]


def skips_empty(completions: list[str]) -> list[float | None]:
    return [None if not text else 0.25 for text in completions]


def too_big(completions: list[str]) -> list[float]:
    return [1.5 for _ in completions]


def one_short(completions: list[str]) -> list[float]:
    return [1.0 for _ in completions[1:]]


def not_a_number(completions: list[str]) -> list[float]:
    return [math.nan for _ in completions]


NOT_CALLABLE = 3


def _stage(allow: bool | None, function: str = f"{HERE}:passes_tests") -> dict:
    stage = {"name": "grpo", "rewards": [{"type": "python", "function": function, "columns": ["tests"]}]}
    return stage if allow is None else {**stage, "allow_python_rewards": allow}


@pytest.mark.parametrize("allow", [None, False])
def test_refused_unless_the_recipe_allows_it(allow):
    with pytest.raises(RecipeError) as info:
        validate_recipe(minimal_recipe(stage=_stage(allow), training={"micro_batch_size": 4}))
    assert info.value.problems == [
        f"stage.allow_python_rewards: stage.rewards.0 is a python reward ({HERE}:passes_tests), which imports and "
        "runs your own code; set stage.allow_python_rewards: true to allow it"
    ]


def test_runs_when_allowed_with_the_columns_it_asks_for():
    recipe = validate_recipe(minimal_recipe(stage=_stage(True), training={"micro_batch_size": 4}))
    (reward,) = load_rewards(recipe.stage.rewards, allow_python=recipe.stage.allow_python_rewards)
    samples = [Sample("def f(): return 1", {"tests": "def,return"}), Sample("print(1)", {"tests": "def"})]
    assert reward.name == "python" and reward(samples) == [1.0, 0.0]


def test_loading_it_needs_the_permission_too():
    entry = PythonReward(type="python", function=f"{HERE}:passes_tests")
    with pytest.raises(UserError, match=r"^stage.rewards.0: a python reward runs your own code .*allow_python_rewards"):
        load_rewards([entry])
    with pytest.raises(UserError, match="allow_python_rewards"):
        score(entry, "x", {})


def test_none_means_no_reward():
    entry = PythonReward(type="python", function=f"{HERE}:skips_empty")
    assert score(entry, "", {}, allow_python=True) is None
    assert score(entry, "text", {}, allow_python=True) == 0.25


@pytest.mark.parametrize(
    "function, problem",
    [
        ("no_such_module_xyz:f", r"^stage.rewards.0.function: cannot import module 'no_such_module_xyz' .*PYTHONPATH"),
        (f"{HERE}:missing", rf"^stage.rewards.0.function: module '{HERE}' has no 'missing'"),
        (f"{HERE}:NOT_CALLABLE", rf"^stage.rewards.0.function: {HERE}:NOT_CALLABLE is a int, not a function"),
    ],
)
def test_import_problems_name_the_key(function, problem):
    with pytest.raises(UserError, match=problem):
        import_function(function, "stage.rewards.0.function")


@pytest.mark.parametrize(
    "function, problem",
    [
        ("too_big", r"returned 1.5 for completion 0; a reward is a number in \[0, 1\], or None"),
        ("one_short", "returned 1 rewards for 2 completions; it should return one per completion"),
        ("not_a_number", "returned nan for completion 0"),
    ],
)
def test_what_it_returns_is_checked(function, problem):
    entry = PythonReward(type="python", function=f"{HERE}:{function}")
    (reward,) = load_rewards([entry], allow_python=True)
    with pytest.raises(UserError, match=rf"^stage.rewards.0.function \({HERE}:{function}\) {problem}"):
        reward([Sample("a"), Sample("b")])


def test_checked():
    assert checked([0, 1, None, 0.5, True], 5, "f") == [0.0, 1.0, None, 0.5, 1.0]
    with pytest.raises(UserError, match="f returned a str; it should return a list of 1 rewards"):
        checked("1", 1, "f")
    with pytest.raises(UserError, match="f returned '1' for completion 0"):
        checked(["1"], 1, "f")

"""(stage, mode) -> builder registry: the supported table read off the stages' traits, the registry
checked against it, and registration mistakes (in sandboxed registries of their own)."""

from __future__ import annotations

import typing

import pytest
from conftest import minimal_recipe

from llmft.builders import get_builder
from llmft.config import validate_recipe
from llmft.config.finetune import FINETUNE_VARIANTS, MODES
from llmft.config.matrix import SUPPORTED, is_supported
from llmft.config.recipe import Recipe
from llmft.config.stage import STAGE_VARIANTS, STAGES, TRAITS
from llmft.errors import RecipeError
from llmft.registry import REGISTRY, Registry, RegistryError

PINNED = [
    ("pt", "full"),
    ("pt", "freeze"),
    ("pt", "lora"),
    ("pt", "qlora"),
    ("sft", "full"),
    ("sft", "freeze"),
    ("sft", "lora"),
    ("sft", "qlora"),
    ("rm", "full"),
    ("rm", "freeze"),
    ("rm", "lora"),
    ("dpo", "full"),
    ("dpo", "freeze"),
    ("dpo", "lora"),
    ("dpo", "qlora"),
    ("kto", "full"),
    ("kto", "freeze"),
    ("kto", "lora"),
    ("kto", "qlora"),
    ("orpo", "full"),
    ("orpo", "freeze"),
    ("orpo", "lora"),
    ("orpo", "qlora"),
    ("grpo", "full"),
    ("grpo", "freeze"),
    ("grpo", "lora"),
    ("grpo", "qlora"),
    ("ppo", "full"),
    ("ppo", "freeze"),
    ("ppo", "lora"),
    ("ppo", "qlora"),
]
PAIRS = ", ".join(f"{s}/{m}" for s, m in PINNED)


def builder(ctx):  # a stand-in; never called
    raise AssertionError("not called")


def other_builder(ctx):
    raise AssertionError("not called")


def test_supported_matrix_is_pinned():
    assert list(SUPPORTED) == PINNED
    assert REGISTRY.available() == PINNED  # every pair of the table has its builder


def test_stages_and_modes_are_the_schema_unions():
    """STAGES/MODES are read off the Recipe's own tagged unions, so they cannot drift from them."""
    stage_union = typing.get_args(Recipe.model_fields["stage"].annotation)
    mode_union = typing.get_args(Recipe.model_fields["finetune"].annotation)
    assert stage_union == STAGE_VARIANTS and mode_union == FINETUNE_VARIANTS
    assert tuple(typing.get_args(v.model_fields["name"].annotation)[0] for v in stage_union) == STAGES
    assert tuple(typing.get_args(v.model_fields["mode"].annotation)[0] for v in mode_union) == MODES
    assert set(TRAITS) == set(STAGES)


def test_every_stage_has_a_builder_module_named_for_it():
    for stage in STAGES:
        fn = get_builder(stage, TRAITS[stage].modes[0])
        assert fn.__module__ == f"llmft.builders.{stage}", stage


@pytest.mark.parametrize("stage,mode", [("rm", "qlora"), ("nope", "lora")])
def test_get_builder_unknown_pair(stage, mode):
    with pytest.raises(RegistryError) as info:
        get_builder(stage, mode)
    assert str(info.value) == (
        f"stage {stage!r} with finetune mode {mode!r} is not available; available stage/mode pairs: {PAIRS}"
    )


def test_a_new_stage_is_a_table_row_and_one_builder():
    """A sandboxed registry for a table with a dummy stage: registering its builder completes it."""
    sandbox = Registry([("toy", "lora"), ("toy", "full")])
    with pytest.raises(RegistryError, match=r"no builder registered for toy/lora, toy/full"):
        sandbox.check_complete()
    returned = sandbox.register("toy", modes=("lora", "full"))(builder)
    assert returned is builder
    sandbox.check_complete()
    assert sandbox.get("toy", "full") is builder and sandbox.available() == [("toy", "lora"), ("toy", "full")]


def test_register_outside_the_table_is_refused():
    sandbox = Registry([("toy", "lora")])
    with pytest.raises(RegistryError) as info:
        sandbox.register("toy", modes=("lora", "qlora"))(builder)  # all or nothing
    assert "(toy, qlora) is not in the supported table; add the mode to the stage's traits" in str(info.value)
    assert sandbox.available() == []
    with pytest.raises(RegistryError, match="not in the supported table"):
        sandbox.register("simpo", modes=("lora",))(builder)


def test_register_twice_raises():
    sandbox = Registry([("toy", "lora"), ("toy", "full")])
    sandbox.register("toy", modes=("lora",))(builder)
    with pytest.raises(RegistryError) as info:
        sandbox.register("toy", modes=("full", "lora"))(other_builder)
    message = str(info.value)
    assert "(toy, lora) registered twice" in message
    assert f"{__name__}.builder" in message and f"{__name__}.other_builder" in message
    assert sandbox.available() == [("toy", "lora")]  # the failed registration registered nothing


def test_register_over_builtin_raises():
    with pytest.raises(RegistryError, match=r"\(sft, lora\) registered twice.*build_sft"):
        REGISTRY.register("sft", modes=("lora",))(builder)
    assert REGISTRY.available() == PINNED


def test_recipe_validation_reads_the_table_without_the_builders():
    qlora = {"mode": "qlora"}
    with pytest.raises(RecipeError) as info:
        validate_recipe(minimal_recipe(stage={"name": "rm"}, finetune=qlora))
    assert (
        info.value.problems[0]
        == f"stage.name: stage 'rm' with finetune mode 'qlora' is not available; available stage/mode pairs: {PAIRS}"
    )
    assert not is_supported("rm", "qlora")
    # commands that only read the data accept it
    assert validate_recipe(minimal_recipe(stage={"name": "rm"}, finetune=qlora), require_builder=False).stage.name == "rm"


def test_validating_a_recipe_imports_no_builder():
    import subprocess
    import sys

    code = (
        "import sys; from llmft.config import validate_recipe; import conftest; "
        "validate_recipe(conftest.minimal_recipe()); "
        "print(sorted(m for m in sys.modules if m.startswith(('llmft.builders', 'llmft.registry', 'trl', 'peft'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=__import__("pathlib").Path(__file__).parents[1],
    ).stdout
    assert out.strip() == "[]"

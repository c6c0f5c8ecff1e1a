"""(stage, mode) -> builder registry: the supported matrix, and registration mistakes."""

from __future__ import annotations


import pytest
from conftest import minimal_recipe

from llmft import registry
from llmft.config import validate_recipe
from llmft.errors import RecipeError
from llmft.registry import MODES, STAGES, RegistryError, available, get_builder, is_available, register_builder

SUPPORTED = [
    ("pt", "full"), ("pt", "lora"), ("pt", "qlora"), ("sft", "full"), ("sft", "lora"), ("sft", "qlora"),
    ("rm", "full"), ("rm", "lora"),
    ("dpo", "full"), ("dpo", "lora"), ("dpo", "qlora"),
    ("kto", "full"), ("kto", "lora"), ("kto", "qlora"),
    ("orpo", "full"), ("orpo", "lora"), ("orpo", "qlora"),
    ("grpo", "full"), ("grpo", "lora"), ("grpo", "qlora"),
    ("ppo", "full"), ("ppo", "lora"), ("ppo", "qlora"),
]
PAIRS = ", ".join(f"{s}/{m}" for s, m in SUPPORTED)


@pytest.fixture
def clean_registry():
    """Registrations made in a test are removed afterwards (built-ins loaded first)."""
    registry.available()  # import the built-in builders before taking the snapshot
    saved = dict(registry._BUILDERS)
    yield
    registry._BUILDERS.clear()
    registry._BUILDERS.update(saved)


def builder(ctx):  # a stand-in; never called
    raise AssertionError("not called")


def other_builder(ctx):
    raise AssertionError("not called")


def test_supported_matrix_is_pinned():
    assert available() == SUPPORTED


def test_is_available_matches_matrix():
    for stage in STAGES:
        for mode in MODES:
            assert is_available(stage, mode) is ((stage, mode) in SUPPORTED), (stage, mode)


def test_schema_knows_every_stage_and_mode():
    assert STAGES == ("pt", "sft", "rm", "dpo", "kto", "orpo", "grpo", "ppo")
    assert MODES == ("full", "lora", "qlora")


def test_builtin_builders():
    from llmft.builders.pt import build_pt
    from llmft.builders.sft import build_sft

    assert get_builder("pt", "full") is get_builder("pt", "lora") is build_pt
    assert get_builder("sft", "full") is get_builder("sft", "lora") is build_sft
    from llmft.builders.dpo import build_dpo
    from llmft.builders.rm import build_rm

    assert get_builder("rm", "full") is get_builder("rm", "lora") is build_rm
    assert get_builder("dpo", "full") is get_builder("dpo", "lora") is build_dpo
    from llmft.builders.grpo import build_grpo
    from llmft.builders.kto import build_kto
    from llmft.builders.orpo import build_orpo

    assert get_builder("kto", "full") is get_builder("kto", "lora") is build_kto
    assert get_builder("orpo", "full") is get_builder("orpo", "lora") is build_orpo
    assert get_builder("grpo", "full") is get_builder("grpo", "lora") is build_grpo
    from llmft.builders.ppo import build_ppo

    assert get_builder("ppo", "full") is get_builder("ppo", "lora") is build_ppo


@pytest.mark.parametrize("stage,mode", [("rm", "qlora"), ("nope", "lora")])
def test_get_builder_unknown_pair(stage, mode):
    with pytest.raises(RegistryError) as info:
        get_builder(stage, mode)
    message = str(info.value)
    assert message == (
        f"stage {stage!r} with finetune mode {mode!r} is not available; available stage/mode pairs: {PAIRS}"
    )


def in_schema_order(pairs):
    return sorted(pairs, key=lambda p: (STAGES.index(p[0]), MODES.index(p[1])))


def test_register_and_get(clean_registry):
    returned = register_builder("rm", modes=("qlora",))(builder)
    assert returned is builder
    assert get_builder("rm", "qlora") is builder
    assert available() == in_schema_order(SUPPORTED + [("rm", "qlora")])


def test_available_in_schema_order(clean_registry):
    register_builder("rm", modes=("qlora",))(other_builder)
    pairs = available()
    assert pairs == in_schema_order(SUPPORTED + [("rm", "qlora")])
    assert pairs.index(("rm", "qlora")) == pairs.index(("rm", "lora")) + 1 and pairs[-1] == ("ppo", "qlora")


def test_register_twice_raises(clean_registry):
    register_builder("rm", modes=("qlora",))(builder)
    with pytest.raises(RegistryError) as info:
        register_builder("rm", modes=("qlora",))(other_builder)
    message = str(info.value)
    assert "(rm, qlora) registered twice" in message
    assert f"{__name__}.builder" in message and f"{__name__}.other_builder" in message
    assert get_builder("rm", "qlora") is builder


def test_register_over_builtin_raises(clean_registry):
    with pytest.raises(RegistryError, match=r"\(sft, lora\) registered twice.*build_sft"):
        register_builder("sft", modes=("lora",))(builder)


def test_failed_registration_registers_nothing(clean_registry):
    # qlora is free, lora is taken: the whole registration fails, qlora stays unregistered
    with pytest.raises(RegistryError, match="registered twice"):
        register_builder("rm", modes=("qlora", "lora"))(builder)
    assert not is_available("rm", "qlora")
    with pytest.raises(RegistryError, match="unknown mode 'bogus'"):
        register_builder("rm", modes=("qlora", "bogus"))(builder)
    assert not is_available("rm", "qlora")
    assert available() == SUPPORTED


def test_register_unknown_stage(clean_registry):
    with pytest.raises(RegistryError) as info:
        register_builder("simpo", modes=("lora",))(builder)
    assert "unknown stage 'simpo'" in str(info.value)
    assert all(s in str(info.value) for s in STAGES)
    assert available() == SUPPORTED


def test_register_unknown_mode(clean_registry):
    with pytest.raises(RegistryError) as info:
        register_builder("dpo", modes=("dora",))(builder)
    assert "unknown mode 'dora'" in str(info.value)
    assert all(m in str(info.value) for m in MODES)
    assert available() == SUPPORTED


def test_recipe_validation_consults_registry(clean_registry):
    qlora = {"mode": "qlora"}
    two = {"micro_batch_size": 2}  # kto's minimum
    with pytest.raises(RecipeError) as info:
        validate_recipe(minimal_recipe(stage={"name": "rm"}, finetune=qlora, training=two))
    assert info.value.problems[0].startswith("stage.name: stage 'rm' with finetune mode 'qlora' is not available")
    register_builder("rm", modes=("qlora",))(builder)
    assert validate_recipe(minimal_recipe(stage={"name": "rm"}, finetune=qlora, training=two)).stage.name == "rm"
    pairs = ", ".join(f"{s}/{m}" for s, m in in_schema_order(SUPPORTED + [("rm", "qlora")]))
    assert pairs.count("rm/qlora") == 1  # listed among the available pairs once registered
    assert available() == in_schema_order(SUPPORTED + [("rm", "qlora")])


def test_fixture_left_registry_clean():
    # runs after the tests above in file order: nothing they registered is left behind
    assert available() == SUPPORTED

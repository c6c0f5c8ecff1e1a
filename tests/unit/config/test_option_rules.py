"""Recipe rules for model.rope_scaling, training.neftune_alpha, training.shift_attn, training.resume_from_checkpoint
and the pt/sft fast-path keys."""

from __future__ import annotations

import pytest
from conftest import minimal_recipe as recipe

from llmft.config import validate_recipe
from llmft.errors import RecipeError


def only_problem(raw: dict) -> str:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_rope_scaling_accepted(kind):
    scaling = validate_recipe(recipe(model={"rope_scaling": {"type": kind, "factor": 4}})).model.rope_scaling
    assert (scaling.type, scaling.factor, scaling.original_max_position_embeddings) == (kind, 4.0, None)


def test_rope_scaling_factor_above_one():
    assert only_problem(recipe(model={"rope_scaling": {"type": "linear", "factor": 1.0}})) == (
        "model.rope_scaling.factor: Input should be greater than 1 (got 1.0)"
    )
    assert "model.rope_scaling.factor" in only_problem(recipe(model={"rope_scaling": {"type": "linear", "factor": 0.5}}))


def test_rope_scaling_type_is_a_choice():
    assert "model.rope_scaling.type" in only_problem(recipe(model={"rope_scaling": {"type": "ntk", "factor": 2}}))


def test_original_length_only_for_yarn():
    ok = {"type": "yarn", "factor": 4, "original_max_position_embeddings": 4096}
    assert validate_recipe(recipe(model={"rope_scaling": ok})).model.rope_scaling.original_max_position_embeddings == 4096
    bad = {"type": "linear", "factor": 4, "original_max_position_embeddings": 4096}
    assert "only applies to type: yarn" in only_problem(recipe(model={"rope_scaling": bad}))


def test_neftune_alpha_positive():
    assert validate_recipe(recipe(training={"neftune_alpha": 5})).training.neftune_alpha == 5.0
    assert "training.neftune_alpha" in only_problem(recipe(training={"neftune_alpha": 0}))


@pytest.mark.parametrize("stage", [{"name": "ppo", "reward_model": "rm"}, {"name": "grpo", "rewards": ["length"]}])
def test_neftune_refused_for_sampling_stages(stage):
    raw = recipe(training={"neftune_alpha": 5, "micro_batch_size": 4}, stage=stage)
    assert only_problem(raw).startswith(f"training.neftune_alpha: stage '{stage['name']}' samples replies")


def test_resume_refused_where_the_trainer_cannot_resume():
    assert validate_recipe(recipe(training={"resume_from_checkpoint": "auto"})).training.resume_from_checkpoint == "auto"
    raw = recipe(training={"resume_from_checkpoint": "auto", "micro_batch_size": 4}, stage={"name": "ppo", "reward_model": "rm"})
    assert only_problem(raw) == (
        "training.resume_from_checkpoint: stage 'ppo' cannot continue from a checkpoint yet (its checkpoints hold "
        "no optimizer state); remove it"
    )


def test_shift_attn_for_pt_and_sft_only():
    assert validate_recipe(recipe(training={"shift_attn": True})).training.shift_attn
    raw = recipe(training={"shift_attn": True}, stage={"name": "dpo"}, data={"train": "pairs.jsonl"})
    assert (
        only_problem(raw) == "training.shift_attn: S2-Attn is for the next-token stages pt and sft (got stage 'dpo'); remove it"
    )


def test_shift_attn_refuses_flash_attention():
    raw = recipe(training={"shift_attn": True}, model={"attn_implementation": "flash_attention_2"})
    assert only_problem(raw).startswith("training.shift_attn: works with model.attn_implementation sdpa or eager")


@pytest.mark.parametrize(
    "stage, section, key, value, stages",
    [
        ("dpo", "training", "chunked_loss", False, "pt and sft"),
        ("ppo", "training", "max_tokens_per_forward", None, "pt, sft, rm, dpo and orpo"),
        ("ppo", "data", "padding_free", False, "pt, sft, rm, dpo, kto, orpo and grpo"),
    ],
)
def test_fast_path_keys_set_for_other_stages_are_refused_not_ignored(stage, section, key, value, stages, tmp_path):
    extra = {"reward_model": str(tmp_path)} if stage == "ppo" else {}
    raw = recipe(stage={"name": stage, **extra}, **{section: {key: value}})
    assert only_problem(raw) == f"{section}.{key}: applies to stages {stages} and has no effect on stage {stage!r}; remove it"


def test_fast_path_keys_accepted_where_they_apply_and_defaults_quiet_elsewhere(tmp_path):
    validate_recipe(recipe(training={"chunked_loss": False, "fused_ops": False}, data={"padding_free": False}))
    validate_recipe(recipe(stage={"name": "dpo"}, training={"fused_ops": False}, data={"padding_free": False}))
    validate_recipe(recipe(stage={"name": "dpo"}))
    validate_recipe(recipe(stage={"name": "rm"}, training={"fused_ops": False}, data={"padding_free": False}))
    validate_recipe(recipe(stage={"name": "ppo", "reward_model": str(tmp_path)}, training={"fused_ops": False}))  # its rollouts
    for stage in ("dpo", "rm", "orpo"):
        validate_recipe(recipe(stage={"name": stage}, training={"max_tokens_per_forward": 1024}))


def test_dpo_passes_refused_for_losses_that_couple_pairs():
    raw = recipe(stage={"name": "dpo", "loss_type": "aot"}, training={"max_tokens_per_forward": 1024})
    assert only_problem(raw) == (
        "training.max_tokens_per_forward: stage.loss_type 'aot' couples the micro-batch's pairs, so they cannot "
        "run in separate passes; remove it or set it to null"
    )


@pytest.mark.parametrize("value", [0, -5])
def test_pass_size_must_be_positive(value):
    assert only_problem(recipe(training={"max_tokens_per_forward": value})).startswith("training.max_tokens_per_forward:")


def test_explicit_pass_size_that_cannot_run_is_refused_before_launch():
    """Known from the recipe alone, so refused at validation (exit 2 before anything launches or loads)."""
    assert only_problem(recipe(training={"max_tokens_per_forward": 256, "chunked_loss": False})) == (
        "training.max_tokens_per_forward: the passes are part of the chunked loss, which training.chunked_loss: false "
        "turns off; remove one of them"
    )
    assert only_problem(recipe(training={"max_tokens_per_forward": 256}, distributed={"zero_stage": 2})) == (
        "training.max_tokens_per_forward: several processes or DeepSpeed count each backward as a micro-batch; "
        "remove it or set it to null"
    )
    validate_recipe(recipe(distributed={"zero_stage": 2}))  # `auto` just runs whole micro-batches there


def test_torch_compile_refused_for_ppo():
    problem = only_problem(recipe(stage={"name": "ppo", "reward_model": "rm"}, training={"torch_compile": True}))
    assert (
        problem == "training.torch_compile: stage 'ppo' trains with llmft's own loop, which does not compile the model; remove it"
    )


def test_output_eval_needs_eval_data_and_a_comparable_base():
    assert only_problem(recipe(output={"dir": "o", "eval": {}})) == (
        "output.eval: measures the eval data, and there is none; add data.eval or data.eval_split"
    )
    ok = validate_recipe(recipe(data={"train": "t.jsonl", "eval_split": 0.1}, output={"dir": "o", "eval": {"max_samples": 8}}))
    assert ok.output.eval.max_samples == 8 and ok.output.eval.compare_base is None
    rm = recipe(
        stage={"name": "rm"}, data={"train": "t.jsonl", "eval_split": 0.1}, output={"dir": "o", "eval": {"compare_base": True}}
    )
    assert only_problem(rm).startswith("output.eval.compare_base: the starting model of stage 'rm' has no reward head")


def test_output_eval_win_rate_needs_a_judge_and_an_adapter_base():
    data = {"train": "t.jsonl", "eval_split": 0.1}
    no_judge = recipe(data=data, output={"dir": "o", "eval": {"metrics": ["win_rate"], "compare_base": False}})
    assert only_problem(no_judge).startswith("output.eval.metrics: win_rate needs output.eval.reward_model")
    both = recipe(data=data, output={"dir": "o", "eval": {"metrics": ["win_rate"], "reward_model": "rm"}})
    assert only_problem(both).startswith("output.eval.compare_base: win_rate already plays the model against its base")
    full = recipe(
        data=data,
        finetune={"mode": "full"},
        output={"dir": "o", "eval": {"metrics": ["win_rate"], "reward_model": "rm", "compare_base": False}},
    )
    assert only_problem(full).startswith("output.eval.metrics: win_rate plays the model against its base")
    ok = {"metrics": ["win_rate"], "reward_model": "rm", "compare_base": False}
    assert validate_recipe(recipe(data=data, output={"dir": "o", "eval": ok})).output.eval.reward_model == "rm"

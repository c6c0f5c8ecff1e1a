"""`llmft.rewards`: each `stage.rewards` entry scores one completion through `score` (what an
evaluation will call) exactly as GRPO's batches do; names, weights and inputs are settled before
training."""

from __future__ import annotations

import json

import pytest
from conftest import minimal_recipe

from llmft.config import validate_recipe
from llmft.config.rewards import (
    AccuracyReward,
    AnswerLineReward,
    EndsCleanlyReward,
    FormatReward,
    JsonReward,
    LengthReward,
    NoRepeatReward,
    RewardModelReward,
)
from llmft.errors import UserError
from llmft.preflight import check_stage_inputs
from llmft.rewards import Sample, check_inputs, load_reward, load_rewards, reward_names, score

QA = {"question": "What is 6 x 12?", "answer": "#### 72"}


def grpo(rewards: list, **stage) -> object:
    return validate_recipe(minimal_recipe(stage={"name": "grpo", "rewards": rewards, **stage}, training={"micro_batch_size": 4}))


@pytest.mark.parametrize(
    "entry, completion, expected",
    [
        (AccuracyReward(type="accuracy", match="numeric"), "6 x 12 = 72.\nAnswer: 72", 1.0),
        (AccuracyReward(type="accuracy", match="numeric"), "Answer: 71", 0.0),
        (AccuracyReward(type="accuracy", match="math"), r"\boxed{72}", 1.0),
        (AccuracyReward(type="accuracy", column="question", match="exact"), "What is 6 x 12?", 1.0),
        (FormatReward(type="format"), "<think>6 x 12</think><answer>72</answer>", 1.0),
        (FormatReward(type="format", pattern=r"\d+"), "72 apples", 0.0),
        (AnswerLineReward(type="answer_line"), "So.\nAnswer: 72", 1.0),
        (JsonReward(type="json"), '{"answer": 72}', 1.0),
        (LengthReward(type="length", target_chars=4), "72", 0.5),
        (NoRepeatReward(type="no_repeat"), "go go go go go", 1 / 3),
    ],
)
def test_score_one_completion(entry, completion, expected):
    assert score(entry, completion, QA) == pytest.approx(expected)


def test_score_length_against_the_datas_own_reply():
    entry = LengthReward(type="length")
    assert score(entry, "1234", QA, reference="12345678") == 0.5
    assert score(entry, "1234", QA) is None  # no target: no reward


def test_score_ends_cleanly_reads_the_token_ids():
    entry = EndsCleanlyReward(type="ends_cleanly")
    assert score(entry, "72", QA, completion_ids=[5, 2], end_ids=[2]) == 1.0
    assert score(entry, "72", QA, completion_ids=[5, 6], end_ids=[2]) == 0.0
    with pytest.raises(ValueError, match="needs the completion's token ids"):
        score(entry, "72", QA, end_ids=[2])


def test_score_refuses_to_load_a_reward_model_per_completion():
    with pytest.raises(ValueError, match="load_reward"):
        score(RewardModelReward(type="reward_model", path="rm"), "72", QA)


def test_a_loaded_reward_scores_like_score():
    entry = AccuracyReward(type="accuracy", match="numeric")
    reward = load_reward(entry)
    assert score(reward, "Answer: 72", QA) == 1.0
    assert reward([Sample("Answer: 72", QA), Sample("Answer: 7", QA)]) == [1.0, 0.0]


def test_a_record_without_the_column_names_it_and_the_record():
    entry = AccuracyReward(type="accuracy", column="solution")
    (reward,) = load_rewards([entry])
    with pytest.raises(UserError) as info:
        reward([Sample("Answer: 72", QA, where="qa.jsonl:3")])
    assert str(info.value) == (
        "qa.jsonl:3: the record has no column 'solution', which stage.rewards.0.column reads (its columns: answer, "
        "question); add it, rename yours with data.*.columns ({solution: your_column}), or point "
        "stage.rewards.0.column at another column"
    )


def test_names_are_the_types_numbered_when_they_repeat():
    recipe = grpo([{"type": "accuracy", "match": "math"}, "format", {"type": "format", "pattern": "x"}, "ends_cleanly"])
    assert reward_names(recipe.stage.rewards) == ["accuracy", "format_1", "format_2", "ends_cleanly"]
    loaded = load_rewards(recipe.stage.rewards, end_ids=[2])
    assert [(r.name, r.key, r.weight) for r in loaded] == [
        ("accuracy", "stage.rewards.0", 1.0),
        ("format_1", "stage.rewards.1", 1.0),
        ("format_2", "stage.rewards.2", 1.0),
        ("ends_cleanly", "stage.rewards.3", 1.0),
    ]


def test_the_rows_carry_the_columns_the_rewards_read():
    recipe = grpo([{"type": "accuracy", "column": "solution"}, "length"])
    assert recipe.stage.record_columns() == [("stage.rewards.0.column", "solution")]


# --- JSON Schema files and reward model directories, before anything loads -----------------------


def test_schema_files_are_checked_before_training(tmp_path):
    good, broken, invalid = tmp_path / "good.json", tmp_path / "broken.json", tmp_path / "invalid.json"
    good.write_text(json.dumps({"type": "object", "required": ["answer"]}))
    broken.write_text("{not json")
    invalid.write_text(json.dumps({"type": "objekt"}))
    entries = [JsonReward(type="json", schema=str(p)) for p in (good, broken, invalid, tmp_path / "nope.json")]
    with pytest.raises(UserError) as info:
        check_inputs([(f"stage.rewards.{i}", e) for i, e in enumerate(entries)])
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"stage.rewards.1.schema: {broken} is not valid JSON: Expecting property name")
    assert lines[1].startswith(f"stage.rewards.2.schema: {invalid} is not a valid JSON Schema: 'objekt' is not valid")
    assert lines[-1] == f"stage.rewards.3.schema: file not found: {tmp_path / 'nope.json'}"
    check_inputs([("stage.rewards.0", entries[0])])
    assert score(entries[0], '{"answer": 72}', QA) == 1.0 and score(entries[0], '{"other": 1}', QA) == 0.0


def test_preflight_checks_the_rewards_inputs(tmp_path):
    recipe = grpo(["length", {"type": "json", "schema": str(tmp_path / "missing.json")}])
    with pytest.raises(UserError, match=r"^stage.rewards.1.schema: file not found: .*missing.json$"):
        check_stage_inputs(recipe)
    recipe = grpo([{"type": "reward_model", "path": str(tmp_path / "rm")}])
    assert recipe.stage.input_dirs() == [("stage.rewards.0.path", str(tmp_path / "rm"))]
    with pytest.raises(UserError, match=r"^stage.rewards.0.path: directory not found: .*rm$"):
        check_stage_inputs(recipe)

"""kto, orpo, grpo: every stage knob reaches TRL's config, the recipe's training keys win over
TRL's defaults, llmft's records become TRL's conversational rows, and nothing is left out uncounted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_recipe, settings_for
from tiny_reward import save_tiny_reward_model

from llmft.builders.context import RunContext
from llmft.builders.grpo import TrlReward, completion_text, grpo_config
from llmft.builders.kto import kto_config
from llmft.builders.orpo import orpo_config
from llmft.config import validate_recipe
from llmft.config.stage import GrpoLoss
from llmft.data.formats import Completion, Conversation, Pair
from llmft.data.trl_rows import kto_row, kto_rows, pair_row, pair_rows, prompt_rows
from llmft.errors import UserError
from llmft.rewards import load_rewards
from llmft.rewards.reward_model import RewardModelScore

GRPO = {"name": "grpo", "rewards": ["length"], "num_generations": 2, "max_completion_length": 16}


def _ctx(tmp_path: Path, tokenizer, stage: dict, **sections) -> RunContext:
    raw = make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out", stage=stage["name"], **sections)
    raw["stage"] = stage
    recipe = validate_recipe(raw)
    return RunContext(recipe, tokenizer, settings_for(recipe), tmp_path / "out")


def test_kto_knobs_reach_the_config(tmp_path, tokenizer):
    stage = {"name": "kto", "beta": 0.3, "desirable_weight": 1.5, "undesirable_weight": 0.7}
    config = kto_config(_ctx(tmp_path, tokenizer, stage, data={"max_length": 96}))
    assert (config.beta, config.desirable_weight, config.undesirable_weight) == (0.3, 1.5, 0.7)
    assert config.max_length == 96
    assert config.train_sampling_strategy == "sequential"  # TRL's KL pairs neighbouring rows
    assert config.disable_dropout is False  # llmft turns off the model's dropout, keeping LoRA's


def test_kto_defaults_are_the_schema_defaults(tmp_path, tokenizer):
    config = kto_config(_ctx(tmp_path, tokenizer, {"name": "kto"}))
    assert (config.beta, config.desirable_weight, config.undesirable_weight) == (0.1, 1.0, 1.0)


def test_orpo_beta_reaches_the_config(tmp_path, tokenizer):
    config = orpo_config(_ctx(tmp_path, tokenizer, {"name": "orpo", "beta": 0.25}, data={"max_length": 80}))
    assert config.beta == 0.25 and config.max_length == 80 and config.disable_dropout is False


def test_grpo_knobs_reach_the_config(tmp_path, tokenizer):
    stage = {**GRPO, "num_generations": 4, "max_completion_length": 17, "temperature": 0.7, "beta": 0.04}
    config = grpo_config(_ctx(tmp_path, tokenizer, stage, training={"micro_batch_size": 4, "gradient_accumulation_steps": 2}))
    assert (config.num_generations, config.max_completion_length, config.temperature, config.beta) == (4, 17, 0.7, 0.04)
    assert config.generation_batch_size == 8  # micro_batch_size x accumulation completions per round
    assert (config.loss_type, config.importance_sampling_level) == ("dapo", "token")  # TRL's default loss


def test_grpo_reward_weights_and_loss_reach_the_config(tmp_path, tokenizer):
    rewards = [{"type": "accuracy", "match": "math", "weight": 2.0}, "format", {"type": "length", "weight": 0.25}]
    config = grpo_config(_ctx(tmp_path, tokenizer, {**GRPO, "rewards": rewards, "loss_type": "dr_grpo"}))
    assert config.reward_weights == [2.0, 1.0, 0.25] and config.loss_type == "dr_grpo"
    luspo = grpo_config(_ctx(tmp_path, tokenizer, {**GRPO, "loss_type": "luspo"}))
    assert (luspo.loss_type, luspo.importance_sampling_level) == ("luspo", "sequence")  # the paper's setup


def test_grpo_losses_are_trls():
    """The schema's loss_type choices are the ones TRL's GRPOConfig documents."""
    import re

    from trl import GRPOConfig

    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    listed = re.search(r"Supported values are (.*?)\. ", help_text).group(1)
    assert set(GrpoLoss.__args__) == set(re.findall(r"'(\w+)'", listed))


@pytest.mark.parametrize(
    "config_for,stage", [(kto_config, {"name": "kto"}), (orpo_config, {"name": "orpo"}), (grpo_config, GRPO)]
)
def test_recipe_training_keys_win_over_trl_defaults(config_for, stage, tmp_path, tokenizer):
    """TRL's configs default to gradient checkpointing, bf16, logging every 10 steps and lr 1e-6."""
    config = config_for(
        _ctx(tmp_path, tokenizer, stage, training={"learning_rate": 3e-3, "logging_steps": 2, "micro_batch_size": 2})
    )
    assert config.learning_rate == 3e-3 and config.logging_steps == 2
    assert config.gradient_checkpointing is False and config.bf16 is False and config.fp16 is False
    assert config.per_device_train_batch_size == 2 and config.output_dir == str(tmp_path / "out")
    assert config.report_to == [] or config.report_to in ("none", ["none"])


def test_kto_needs_two_rows_per_micro_batch(tmp_path, tokenizer):
    with pytest.raises(UserError, match="training.micro_batch_size: KTO needs at least 2"):
        kto_config(_ctx(tmp_path, tokenizer, {"name": "kto"}, training={"micro_batch_size": 1}))


def test_grpo_round_holds_whole_groups(tmp_path, tokenizer):
    with pytest.raises(
        UserError, match=r"= 6 completions per generation round must be a multiple of stage.num_generations \(4\)"
    ):
        grpo_config(
            _ctx(
                tmp_path,
                tokenizer,
                {**GRPO, "num_generations": 4},
                training={"micro_batch_size": 3, "gradient_accumulation_steps": 2},
            )
        )


# --- records -> TRL rows -------------------------------------------------------------------------

U = {"role": "user", "content": "Who are you?"}
A = {"role": "assistant", "content": "I am a helpful assistant.", "loss": True}


def test_rows_are_trl_conversational_formats():
    assert kto_row(Completion((U,), (A,), False, "f:1")) == {
        "prompt": [U],
        "completion": [{"role": "assistant", "content": "I am a helpful assistant."}],
        "label": False,
        "where": "f:1",
        "tools": None,
    }
    row = pair_row(Pair((U,), (A,), ({"role": "assistant", "content": "No."},), "f:2"))
    assert row["prompt"] == [U] and row["chosen"][0]["content"] == A["content"] and row["rejected"][0]["content"] == "No."
    assert all(set(m) == {"role", "content"} for m in row["chosen"])  # per-message loss flags dropped


def test_prompt_rows_ask_without_the_final_reply(tokenizer):
    messages = (
        {"role": "system", "content": "Be brief."},
        U,
        A,
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": "Done."},
    )
    (row, open_question), _ = prompt_rows(
        [Conversation(messages, "f:3"), Conversation((U, A, {"role": "user", "content": "?"}), "f:4")], tokenizer, (1000, "x")
    )
    assert [m["content"] for m in row["prompt"]] == ["Be brief.", "Who are you?", "I am a helpful assistant.", "And?"]
    assert row["reference"] == "Done." and row["record"] == "{}"
    assert open_question["reference"] is None and open_question["prompt"][-1]["content"] == "?"


def test_prompt_rows_carry_the_columns_the_rewards_read(tokenizer):
    record = {"question": "6 x 12?", "answer": 72, "tags": ["math"]}
    item = Conversation(({"role": "user", "content": "6 x 12?"}, {"role": "assistant", "content": "72"}), "q:1", record=record)
    rows, _ = prompt_rows(
        [item], tokenizer, (1000, "x"), [("stage.rewards.0.column", "answer"), ("stage.rewards.2.columns", "tags")]
    )
    assert json.loads(rows[0]["record"]) == {"answer": 72, "tags": ["math"]}  # one JSON string: any value types


def test_prompt_rows_refuse_records_without_a_column_the_rewards_read(tokenizer):
    def qa(where, **record):
        return Conversation(({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}), where, record=record)

    items = [qa("q:1", answer="1"), qa("q:2", solution="2"), qa("q:3", answer=None)]
    with pytest.raises(UserError) as info:
        prompt_rows(items, tokenizer, (1000, "x"), [("stage.rewards.0.column", "answer")])
    assert str(info.value) == (
        "2 record(s) lack a column the rewards read:\n"
        "  - q:2: no column 'answer' (stage.rewards.0.column reads it)\n"
        "  - q:3: no column 'answer' (stage.rewards.0.column reads it)\n"
        "Add it to every record, rename yours to it with data.*.columns ({answer: your_column}), "
        "or point the reward's key at the column that holds it."
    )


def test_prompt_rows_count_what_they_leave_out(tokenizer):
    short = Conversation((U, A), "f:1")
    long = Conversation(({"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 8}, A), "f:2")
    no_user = Conversation(({"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}), "f:3")
    limit = len(tokenizer.apply_chat_template([U], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    rows, report = prompt_rows([short, long, no_user], tokenizer, (limit, "data.max_length - stage.max_completion_length"))
    assert [r["where"] for r in rows] == ["f:1"]
    assert (report.records, report.kept) == (3, 1)
    assert report.dropped == {
        "prompt longer than data.max_length - stage.max_completion_length": 1,
        "no user turn before the last reply": 1,
    }


def test_kto_and_pair_rows_apply_llmfts_length_rules(tokenizer):
    reply = ({"role": "assistant", "content": "The sea is wide and blue. " * 10},)
    fits, too_long = Completion((U,), (A,), True, "k:1"), Completion((U,), reply, True, "k:2")
    rows, report = kto_rows([fits, too_long], tokenizer, max_length=64, truncation="drop")
    assert [r["where"] for r in rows] == ["k:1"] and report.dropped == {"longer than max_length": 1}
    rows, report = kto_rows([fits, too_long], tokenizer, max_length=64, truncation="truncate_right")
    assert len(rows) == 2 and report.truncated == 1  # the reply keeps its start

    prompt_only_fits = ({"role": "user", "content": "Write a short poem about the sea. " * 6},)
    pairs = [Pair((U,), (A,), reply, "p:1"), Pair(prompt_only_fits, (A,), (A,), "p:2")]
    rows, report = pair_rows(pairs, tokenizer, max_length=64, truncation="truncate_right")
    assert [r["where"] for r in rows] == ["p:1"] and report.dropped == {"reply truncated away by max_length": 1}


# --- GRPO rewards in TRL's calling convention -----------------------------------------------------


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_rewards_as_trl_calls_them():
    completions = [_assistant("Paris.\nAnswer: Paris"), _assistant("go go go go")]
    ids = [[7, 8, 2], [7, 7, 7]]
    kwargs = {
        "prompts": [[U], [U]],
        "completions": completions,
        "completion_ids": ids,
        "reference": ["Paris", None],
        "record": ['{"answer": "paris"}', '{"answer": "Rome"}'],
        "where": ["a", "b"],
        "trainer_state": None,
        "log_extra": None,
        "log_metric": None,
    }
    entries = validate_recipe(
        {
            **make_recipe(Path("m"), Path("t.jsonl"), Path("o"), stage="grpo"),
            "stage": {
                **GRPO,
                "rewards": ["answer_line", "ends_cleanly", "no_repeat", "length", {"type": "accuracy", "match": "normalized"}],
            },
        }
    ).stage.rewards
    funcs = [TrlReward(r) for r in load_rewards(entries, end_ids=[2])]
    assert [f.__name__ for f in funcs] == [
        "answer_line",
        "ends_cleanly",
        "no_repeat",
        "length",
        "accuracy",
    ]  # rewards/<name>/mean
    answer_line, ends_cleanly, no_repeat, length, accuracy = funcs
    assert answer_line(**kwargs) == [1.0, 0.0]
    assert ends_cleanly(**kwargs) == [1.0, 0.0]
    assert no_repeat(**kwargs) == [1.0, 0.5]
    # the replies are 20 and 11 characters long
    assert length(**kwargs) == [0.0, None]
    assert length(**{**kwargs, "reference": ["x" * 20, "x" * 10]}) == [1.0, pytest.approx(0.9)]
    assert accuracy(**kwargs) == [1.0, 0.0]


def test_completion_text():
    assert completion_text(_assistant("hi")) == "hi"
    assert completion_text("plain") == "plain"


def test_reward_model_scores_as_rm_training_renders(tmp_path):
    """A tiny one-score LlamaForSequenceClassification saved like an rm run's full output: the
    scorer's batch equals scoring each rendered sequence on its own."""
    import torch

    from llmft.modeling.reward import load_reward_model, reward_input_ids

    model_dir = save_tiny_reward_model(tmp_path / "rm")
    model, tok = load_reward_model(str(model_dir))
    scorer = RewardModelScore(model, tok)
    prompts = [[U], [{"role": "user", "content": "What is the capital of France?"}]]
    completions = ["I am a helpful assistant.", "Paris."]
    scores, rewards = scorer.scores(prompts, completions), scorer(prompts, completions)
    for prompt, completion, score, reward in zip(prompts, completions, scores, rewards):
        ids = torch.tensor([reward_input_ids(tok, prompt, _assistant(completion))])
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-5)
        assert reward == pytest.approx(torch.sigmoid(torch.tensor(alone)).item(), abs=1e-5)  # in (0, 1)
    assert scores[0] != pytest.approx(scores[1])


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("stage", [{"name": "kto"}, {"name": "orpo"}, GRPO])
def test_registered_pairs_validate(stage, mode, tmp_path):
    raw = make_recipe(Path("m"), Path("t.jsonl"), tmp_path / "out", stage=stage["name"], mode=mode)
    raw["stage"] = stage
    recipe = validate_recipe(raw)
    assert (recipe.stage.name, recipe.finetune.mode) == (stage["name"], mode)


def test_check_kept_says_when_trl_dropped_rows(caplog):
    import logging

    from llmft.data.trl_rows import check_kept

    with caplog.at_level(logging.INFO, logger="llmft"):
        check_kept("train", 3, [1, 2, 3])
        check_kept("eval", 5, [1, 2])
    assert [r.getMessage() for r in caplog.records] == [
        "data.train: TRL kept all 3 rows",
        "WARNING: data.eval: TRL kept 2 of the 5 rows llmft gave it (3 dropped by TRL's own rules after llmft's checks)",
    ]


def test_a_rebuilt_reference_must_equal_the_policy():
    from types import SimpleNamespace

    import torch

    from llmft.builders.grpo import check_rebuilt_reference

    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2)
    accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    same = SimpleNamespace(model=policy, ref_model=torch.nn.Linear(3, 2).requires_grad_(False), accelerator=accelerator)
    same.ref_model.load_state_dict(policy.state_dict())
    check_rebuilt_reference(same, zero3=False)
    other = SimpleNamespace(model=policy, ref_model=torch.nn.Linear(3, 2), accelerator=accelerator)
    with pytest.raises(UserError, match="stage.beta: TRL rebuilt the reference model from model.path, and its weight differs"):
        check_rebuilt_reference(other, zero3=False)

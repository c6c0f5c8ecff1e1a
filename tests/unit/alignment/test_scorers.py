"""PPO's rule scorer: the weighted sum of `stage.rewards` entries per reply, hand-worked; an entry
that gives no reward counts 0 and is left out of its logged mean; each entry reads the prompt's
record (accuracy) and the reply's tokens with its stop token (ends_cleanly)."""

from __future__ import annotations

import math

import pytest

from llmft.alignment.scorers import RuleScorer
from llmft.config.rewards import AccuracyReward, EndsCleanlyReward, LengthReward
from llmft.data.prompts import Prompt
from llmft.errors import UserError
from llmft.rewards import load_rewards

STOP = 7


def prompt(answer: str | None, where: str = "qa.jsonl:1") -> Prompt:
    record = {"question": "What is 2 + 3?"} | ({"answer": answer} if answer is not None else {})
    return Prompt(({"role": "user", "content": "What is 2 + 3?"},), (1, 2, 3), where, record=record)


def scorer(*entries) -> RuleScorer:
    return RuleScorer(load_rewards(entries, end_ids=[STOP]))


def test_weighted_sum_of_each_entry():
    rules = scorer(AccuracyReward(type="accuracy", match="numeric", weight=2.0), EndsCleanlyReward(type="ends_cleanly"))
    replies = ["2 + 3 = 5", "The answer is 6", "5"]
    ids = [[11, 12, STOP], [13, STOP], [14, 15]]  # the third was cut off: no stop token
    scores = rules([prompt("5")] * 3, replies, ids)
    assert scores.tolist() == [2.0 * 1 + 1, 2.0 * 0 + 1, 2.0 * 1 + 0]
    assert rules.metrics() == {"rewards/accuracy/mean": pytest.approx(2 / 3), "rewards/ends_cleanly/mean": pytest.approx(2 / 3)}


def test_an_entry_without_a_reward_counts_zero_and_is_left_out_of_its_mean():
    # length's target is the data's own reply: none here (reference None) -> no reward
    rules = scorer(LengthReward(type="length", weight=3.0), EndsCleanlyReward(type="ends_cleanly"))
    scores = rules([prompt("5")] * 2, ["five", "5"], [[STOP], [1]])
    assert scores.tolist() == [1.0, 0.0]
    metrics = rules.metrics()
    assert math.isnan(metrics["rewards/length/mean"]) and metrics["rewards/ends_cleanly/mean"] == 0.5


def test_a_record_without_the_answer_column_is_named():
    rules = scorer(AccuracyReward(type="accuracy"))
    with pytest.raises(UserError, match=r"qa.jsonl:4: the record has no column 'answer', which stage.rewards.0.column reads"):
        rules([prompt(None, "qa.jsonl:4")], ["5"], [[STOP]])

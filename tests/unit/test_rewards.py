"""The built-in GRPO rewards, worked by hand on made-up replies."""

from __future__ import annotations

import pytest

from llmft import rewards
from llmft.config.stage import RewardFunction


def test_names_match_the_schema():
    assert RewardFunction.__args__ == rewards.NAMES


# --- length: 1 - |len - ref| / ref, floored at 0 (characters of the stripped texts) -----------


@pytest.mark.parametrize(
    "text,reference,expected",
    [
        ("abcde", "12345", 1.0),  # same length
        ("abcd", "12345", 0.8),  # 1 - 1/5
        ("abcdefg", "12345", 0.6),  # 1 - 2/5
        ("", "12345", 0.0),  # 1 - 5/5
        ("a" * 10, "12345", 0.0),  # twice the reference: 1 - 5/5
        ("a" * 30, "12345", 0.0),  # floored, never negative
        ("  abcde \n", "12345", 1.0),  # surrounding whitespace does not count
        ("Paris.", "Paris is the capital.", 1 - 15 / 21),
    ],
)
def test_length(text, reference, expected):
    assert rewards.length(text, reference) == pytest.approx(expected)


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_length_without_reference_gives_no_reward(reference):
    assert rewards.length("anything", reference) is None


# --- format: the last non-blank line is "Answer: <something>" ---------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Answer: 42",
        "2 + 2 = 4, doubled.\nAnswer: 8",
        "Work.\nFinal answer: Paris\n\n  ",  # trailing blank lines are skipped
        "answer:x",
        "FINAL ANSWER : 7",
        "**Answer:** 42",
        "**Answer**: 42",
        "  Answer: indented is fine",
    ],
)
def test_format_accepts_a_final_answer_line(text):
    assert rewards.format(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "42",
        "Answer: 42\nbut then more text",  # the answer line is not last
        "Answer:",  # nothing after the colon
        "Answer:   \n",
        "Answers: 42",
        "The answer: 42",  # must start the line
        "Answer 42",  # no colon
    ],
)
def test_format_rejects_everything_else(text):
    assert rewards.format(text) == 0.0


# --- no_repeat: distinct word 3-grams / all word 3-grams ---------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("the cat sat on the mat", 1.0),  # 4 trigrams, all distinct
        ("a b a b a b", 2 / 4),  # (a b a) (b a b) (a b a) (b a b)
        ("go go go go go", 1 / 3),  # 3 trigrams, one distinct
        (
            "The cat sat. the CAT sat!",
            3 / 4,
        ),  # case and punctuation ignored: the cat sat / cat sat the / sat the cat / the cat sat
        ("too short", 1.0),  # fewer than 3 words
        ("", 1.0),
        ("我爱你我爱你", 3 / 4),  # each CJK character is a word: 我爱你 爱你我 你我爱 我爱你
    ],
)
def test_no_repeat(text, expected):
    assert rewards.no_repeat(text) == pytest.approx(expected)


def test_words():
    assert rewards.words("Hello, World! 42 times") == ["hello", "world", "42", "times"]
    assert rewards.words("abc中文 x") == ["abc", "中", "文", "x"]


# --- ends_cleanly: last completion token is an end-of-turn id ----------------------------------


@pytest.mark.parametrize(
    "ids,expected",
    [
        ([5, 6, 2], 1.0),  # stopped at end-of-turn (id 2)
        ([5, 6, 7], 0.0),  # cut off at max_completion_length
        ([9], 1.0),  # the other end id
        ([], 0.0),
    ],
)
def test_ends_cleanly(ids, expected):
    assert rewards.ends_cleanly(ids, [2, 9]) == expected

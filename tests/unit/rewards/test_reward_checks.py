"""The shape checks (format, answer_line, json, length, no_repeat, ends_cleanly), worked by hand
on made-up completions."""

from __future__ import annotations

import json

import jsonschema
import pytest

from llmft.config.rewards import THINK_ANSWER
from llmft.rewards import checks

# --- format: the whole stripped completion matches a regex --------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "<think>6 x 7 = 42</think><answer>42</answer>",
        "  <think>\nmulti\nline\n</think>\n\n<answer>\n42\n</answer>\n",  # DOTALL, stripped
    ],
)
def test_format_default_think_then_answer(text):
    assert checks.format_match(text, THINK_ANSWER) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "<answer>42</answer>",  # no think block
        "<think>x</think>",  # no answer block
        "<answer>42</answer><think>x</think>",  # the wrong order
        "Sure! <think>x</think><answer>42</answer>",  # text before: the match is of the whole
        "<think>x</think><answer>42</answer> Anything else?",  # text after
    ],
)
def test_format_default_misses(text):
    assert checks.format_match(text, THINK_ANSWER) == 0.0


def test_format_with_a_pattern_of_ones_own():
    pattern = r"Answer: \d+"
    assert checks.format_match("Answer: 42\n", pattern) == 1.0
    assert checks.format_match("Answer: 42 apples", pattern) == 0.0
    assert checks.format_match("Answer: forty", pattern) == 0.0


# --- json: parses (the first ```json block, else the whole completion), and fits a schema ------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "age": 36}',
        "  [1, 2, 3]\n",
        '"just a string"',
        'Here it is:\n```json\n{"name": "Ada"}\n```\nAnything else?',  # the fenced block
        '```JSON\n{"a": 1}\n```',
    ],
)
def test_json_valid(text):
    assert checks.json_valid(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{name: Ada}",  # not JSON
        '{"name": "Ada",}',  # trailing comma
        'Here it is: {"name": "Ada"}',  # text around unfenced JSON
        '```json\n{"name": \n```',  # a broken fenced block
    ],
)
def test_json_invalid(text):
    assert checks.json_valid(text) == 0.0


def test_json_against_a_schema():
    validator = checks.schema_validator(SCHEMA)
    assert checks.json_valid('{"name": "Ada", "age": 36}', validator) == 1.0
    assert checks.json_valid('```json\n{"name": "Ada", "age": 36}\n```', validator) == 1.0
    assert checks.json_valid('{"name": "Ada"}', validator) == 0.0  # a required key missing
    assert checks.json_valid('{"name": "Ada", "age": -1}', validator) == 0.0  # below the minimum
    assert checks.json_valid('{"name": 7, "age": 3}', validator) == 0.0  # the wrong type
    assert checks.json_valid("not json", validator) == 0.0


def test_an_invalid_schema_is_refused():
    with pytest.raises(jsonschema.SchemaError):
        checks.schema_validator({"type": "objekt"})
    assert json.loads(checks.json_text('```json\n{"a": 1}\n```')) == {"a": 1}


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
    assert checks.length(text, reference) == pytest.approx(expected)


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_length_without_reference_gives_no_reward(reference):
    assert checks.length("anything", reference) is None


def test_length_towards_a_fixed_number_of_characters():
    assert checks.length("abcd", 4) == 1.0
    assert checks.length("ab", 4) == 0.5
    assert checks.length("a" * 12, 4) == 0.0


# --- answer_line: the last non-blank line is "Answer: <something>" ----------------------------


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
def test_answer_line_accepts_a_final_answer_line(text):
    assert checks.answer_line(text) == 1.0


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
def test_answer_line_rejects_everything_else(text):
    assert checks.answer_line(text) == 0.0


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
    assert checks.no_repeat(text) == pytest.approx(expected)


def test_words():
    assert checks.words("Hello, World! 42 times") == ["hello", "world", "42", "times"]
    assert checks.words("abc中文 x") == ["abc", "中", "文", "x"]


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
    assert checks.ends_cleanly(ids, [2, 9]) == expected

"""The accuracy reward: the completion's final answer found by the documented rules, and each
match (exact, normalized, numeric, math) worked on made-up answers."""

from __future__ import annotations

import pytest

from llmft.rewards.answers import (
    accuracy,
    boxed,
    extract_answer,
    matches,
    math_equal,
    normalize,
    numeric_equal,
    parse_number,
    reference_answer,
)

# --- finding the completion's answer ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, match, expected",
    [
        (r"First 1/4, then \boxed{3} and finally \boxed{\frac{1}{2}}.", "math", r"\frac{1}{2}"),  # the last box
        (r"\boxed{a{b}c}", "exact", "a{b}c"),  # nested braces balanced
        (r"\fbox{7}", "numeric", "7"),
        ("<think>6 x 7</think>\n<answer> 42 </answer>", "exact", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "exact", "2"),  # the last block
        (r"<answer>so \boxed{5}</answer>", "exact", "5"),  # a box wins over the block around it
        ("Working...\nAnswer: 1,234.\nHope that helps!", "numeric", "1,234."),  # the line after the label
        ("Final answer:\n\n  Paris  ", "normalized", "Paris"),  # the first non-blank line after it
        ("**Answer:** 12", "exact", "12"),
        ("The answer is 42.", "normalized", "42."),
        ("I counted 3 apples, then 7 more.", "numeric", "7"),  # numeric: the last number
        ("I counted 3 apples.\nParis", "exact", "Paris"),  # otherwise: the last non-blank line
        (r"\boxed{unclosed", "exact", r"\boxed{unclosed"),  # a box that never closes is not a box
    ],
)
def test_extract_answer(text, match, expected):
    assert extract_answer(text, match) == expected


@pytest.mark.parametrize("text, match", [("", "exact"), ("  \n ", "math"), ("no numbers at all", "numeric")])
def test_no_answer_found_scores_zero(text, match):
    assert extract_answer(text, match) is None
    assert accuracy(text, "42", match) == 0.0


def test_boxed_and_reference_answer():
    assert boxed("none here") is None
    assert reference_answer("Natalia sold 48 + 24 = 72 clips.\n#### 72") == "72"  # GSM8K
    assert reference_answer(r"so the result is $\boxed{\sqrt{8}}$") == r"\sqrt{8}"
    assert reference_answer(72) == "72" and reference_answer("  Paris ") == "Paris"


# --- exact and normalized ------------------------------------------------------------------------


def test_exact():
    assert matches(" Paris ", "Paris", "exact")
    assert not matches("paris", "Paris", "exact")
    assert not matches("Paris.", "Paris", "exact")


@pytest.mark.parametrize(
    "answer, truth",
    [("paris", "Paris"), ("Paris.", "paris"), ("  New   York ", "new york"), ("It's", "its"), ("3.5", "3.5"), ("北京。", "北京")],
)
def test_normalized_matches(answer, truth):
    assert matches(answer, truth, "normalized")


@pytest.mark.parametrize("answer, truth", [("3.5", "35"), ("Paris", "London"), ("1,000", "1000")])
def test_normalized_keeps_what_carries_meaning(answer, truth):
    assert not matches(answer, truth, "normalized")


def test_normalize():
    assert normalize(" Hello,   World! 3.5 ") == "hello world 3.5"
    assert normalize("Rock-'n'-roll, 1,000.") == "rocknroll 1,000"


# --- numeric -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234.5", (1234.5, False)),
        ("-3", (-3.0, False)),
        ("−7", (-7.0, False)),  # a Unicode minus
        ("3/4", (0.75, False)),
        ("-3/4", (-0.75, False)),
        (r"\frac{3}{4}", (0.75, False)),
        (r"$\dfrac{1}{8}$", (0.125, False)),
        ("50%", (50.0, True)),
        (r"50\%", (50.0, True)),
        ("1e-3", (0.001, False)),
        ("72.", (72.0, False)),  # a trailing period is not a decimal point
        ("about 3 or 4 apples", (4.0, False)),  # the last number
        ("x2", None),  # a digit inside a word is not a number
        ("3/0", None),
        ("none", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "answer, truth",
    [
        ("1,000", "1000"),
        ("72.", "72"),
        ("72.0", "72"),
        ("-5", "-5.0"),
        ("0.75", "3/4"),
        (r"\frac{3}{4}", "0.75"),
        ("50%", "50"),  # the percent sign is optional
        ("50%", "0.5"),  # ... or read as a fraction
        ("$1,234.50", "1234.5"),
        ("1/3", "0.3333333333"),  # within the relative tolerance (1e-6)
    ],
)
def test_numeric_equal(answer, truth):
    assert numeric_equal(answer, truth)


@pytest.mark.parametrize("answer, truth", [("-3", "3"), ("0.333", "1/3"), ("12", "1,2"), ("seven", "7"), ("7", "")])
def test_numeric_unequal(answer, truth):
    assert not numeric_equal(answer, truth)


def test_numeric_tolerance_is_relative():
    assert numeric_equal("0.333", "1/3", tolerance=0.01)
    assert not numeric_equal("1000001", "1000000", tolerance=1e-7)
    assert numeric_equal("1000001", "1000000", tolerance=1e-5)


# --- math (math-verify) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, truth",
    [
        (r"\frac{1}{2}", "0.5"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        ("x^2+1", "1+x^2"),
        (r"\frac12", "1/2"),
        ("$3$", "3"),
    ],
)
def test_math_equivalent(answer, truth):
    assert math_equal(answer, truth)


@pytest.mark.parametrize("answer, truth", [("3", "4"), (r"\sqrt{2}", "2"), ("x+1", "x-1")])
def test_math_not_equivalent(answer, truth):
    assert not math_equal(answer, truth)


def test_math_falls_back_to_numeric_when_it_cannot_parse():
    # math-verify finds no expression in "!!!" but the numeric rule reads the 12 after it
    assert math_equal("!!! 12", "12.0")
    assert not math_equal("!!!", "12")


# --- the whole reward ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, truth, match, expected",
    [
        (r"<think>half of one</think> \boxed{0.5}", r"\frac{1}{2}", "math", 1.0),
        (r"So \boxed{2\sqrt{2}}.", r"\sqrt{8}", "math", 1.0),
        (r"So \boxed{3}.", "4", "math", 0.0),
        ("48 + 24 = 72\nAnswer: 72", "Natalia sold 72 clips.\n#### 72", "numeric", 1.0),
        ("Answer: 1,234", 1234, "numeric", 1.0),  # a number in the record
        ("<answer>Paris</answer>", "paris", "normalized", 1.0),
        ("<answer>Paris</answer>", "paris", "exact", 0.0),
        ("I am not sure.", "42", "numeric", 0.0),  # no number: no answer
    ],
)
def test_accuracy(completion, truth, match, expected):
    assert accuracy(completion, truth, match) == expected

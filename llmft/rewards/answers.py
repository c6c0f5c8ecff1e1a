"""The `accuracy` reward: find a completion's final answer, and compare it with the record's.

**The completion's answer** (`extract_answer`), first rule that finds one:

1. the content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced;
2. the content of the last `<answer>...</answer>` block;
3. the first non-blank line after the last `Answer:` label (`Final answer:`, `**Answer:**`,
   `The answer is` and `The final answer is` count too; any case);
4. otherwise, for `numeric`, the last number in the completion; for the other matches, its last
   non-blank line.

None of these (an empty completion, no number for `numeric`): no answer, reward 0.

**The record's answer** (`reference_answer`): the content of its last `\\boxed{...}` if it has one,
else the text after its last `####` (GSM8K), else the whole value, stripped. A number is its text.

**Matching** (`matches`):

- `exact`: the same string.
- `normalized`: the same after case folding, deleting punctuation (as SQuAD does: `It's` is
  `its`; a `.` or `,` between two digits stays, so 3.5 is not 35) and collapsing whitespace.
- `numeric`: the last number of each (`1,234.5`, `-3`, `3/4`, `\\frac{3}{4}`, `1e-3`, `50%`) is
  equal within a relative `tolerance`; a percent may be read either way (`50%` matches `50` and
  `0.5`).
- `math`: math-verify (`parse` each, wrapped in `$...$`, then `verify`) decides equivalence
  (`\\frac{1}{2}` = `0.5`, `2\\sqrt{2}` = `\\sqrt{8}`); when either side does not parse, `numeric`.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata

from llmft.config.rewards import AnswerMatch

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_LABEL = re.compile(r"\b(?:(?:final\s+)?answer(?:\*\*)?\s*:(?:\*\*)?|the\s+(?:final\s+)?answer\s+is\b:?)", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_NUM = r"[-−]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(rf"(?<![\w.])({_NUM})(?:\s*/\s*({_NUM}))?\s*(\\?%)?")
#: Seconds math-verify may spend parsing or comparing one answer (it times out by SIGALRM, which
#: only the main thread can use: elsewhere it runs without a limit).
MATH_TIMEOUT = 5


def boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` whose braces close, else None."""
    for start in reversed([m.end() for m in _BOXED.finditer(text)]):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def extract_answer(text: str, match: AnswerMatch) -> str | None:
    """The completion's final answer by the rules in the module docstring; None when there is none."""
    found = boxed(text)
    if found is None:
        tags = [t.strip() for t in _ANSWER_TAG.findall(text)]
        found = tags[-1] if tags and tags[-1] else None
    if found is None:
        labels = list(_ANSWER_LABEL.finditer(text))
        if labels:
            after = [line.strip() for line in text[labels[-1].end() :].splitlines() if line.strip()]
            found = after[0] if after else None
    if found is None:
        if match == "numeric":
            number = _last_number(text)
            found = number.group(0).strip() if number else None
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            found = lines[-1] if lines else None
    if found is None or not found.strip():
        return None
    return found.strip()


def reference_answer(value: object) -> str:
    """The right answer in a record's column: a `\\boxed{}`'s content, the text after `####`, or all of it."""
    text = str(value).strip()
    found = boxed(text)
    if found is not None:
        return found
    if "####" in text:
        return text.rpartition("####")[2].strip()
    return text


def normalize(text: str) -> str:
    """Case-folded, punctuation deleted (a . or , between digits kept), whitespace collapsed."""
    kept = []
    for i, char in enumerate(text):
        if unicodedata.category(char).startswith("P"):
            between_digits = char in ".," and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
            if not between_digits:
                continue
        kept.append(char)
    return " ".join("".join(kept).casefold().split())


def _last_number(text: str) -> re.Match[str] | None:
    found = list(_NUMBER.finditer(_FRAC.sub(r"\1/\2", text.replace("$", ""))))
    return found[-1] if found else None


def _value(number: str) -> float:
    return float(number.replace(",", "").replace("−", "-"))


def parse_number(text: str) -> tuple[float, bool] | None:
    """(value, written as a percent) of the last number in `text` (`3/4` -> 0.75), or None."""
    found = _last_number(text)
    if found is None:
        return None
    value = _value(found.group(1))
    if found.group(2) is not None:
        denominator = _value(found.group(2))
        if denominator == 0:
            return None
        value /= denominator
    return value, found.group(3) is not None


def numeric_equal(answer: str, truth: str, tolerance: float = 1e-6) -> bool:
    """The last numbers of both are equal within a relative tolerance (a percent read either way)."""
    got, want = parse_number(answer), parse_number(truth)
    if got is None or want is None:
        return False
    (a, a_percent), (b, b_percent) = got, want
    candidates = [(a, b)] + ([(a / 100, b)] if a_percent else []) + ([(a, b / 100)] if b_percent else [])
    return any(math.isclose(x, y, rel_tol=tolerance, abs_tol=0.0) for x, y in candidates)


def _math_parse(text: str) -> list:
    from math_verify import parse

    limit = MATH_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    return parse(f"${text}$", parsing_timeout=limit) or parse(text, parsing_timeout=limit)


def math_equal(answer: str, truth: str, tolerance: float = 1e-6) -> bool:
    """Mathematically equivalent by math-verify; `numeric_equal` when either side does not parse."""
    from math_verify import verify

    gold, target = _math_parse(truth), _math_parse(answer)
    if not gold or not target:
        return numeric_equal(answer, truth, tolerance)
    limit = MATH_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    return bool(verify(gold, target, timeout_seconds=limit))


def matches(answer: str, truth: str, match: AnswerMatch, tolerance: float = 1e-6) -> bool:
    if match == "exact":
        return answer.strip() == truth.strip()
    if match == "normalized":
        return normalize(answer) == normalize(truth)
    if match == "numeric":
        return numeric_equal(answer, truth, tolerance)
    return math_equal(answer, truth, tolerance)


def accuracy(completion: str, truth: object, match: AnswerMatch, tolerance: float = 1e-6) -> float:
    """1.0 when the completion's final answer matches the record's `truth`, else 0.0 (no answer: 0.0)."""
    answer = extract_answer(completion, match)
    if answer is None:
        return 0.0
    return 1.0 if matches(answer, reference_answer(truth), match, tolerance) else 0.0

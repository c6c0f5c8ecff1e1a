"""The rewards that check a completion's shape: pure functions of one completion, each in [0, 1].

- `format_match`: 1 if the whole stripped completion matches a regex (`re.fullmatch`, `.` matching
  newlines), else 0.
- `answer_line`: 1 if the last non-blank line is an answer line — it starts with `Answer:` or
  `Final answer:` (any case, optionally in `**bold**`) followed by some text — else 0.
- `json_valid`: 1 if the completion (or the content of its first ```json fenced block) parses as
  JSON and, given a schema, validates against it; else 0.
- `length`: closeness of the completion's length to a target, in characters: 1 at the target,
  falling linearly to 0 at zero or twice the target. No target: no reward (None), which GRPO
  leaves out of that completion's sum.
- `no_repeat`: the share of distinct word 3-grams among all word 3-grams (1 = nothing repeated).
  Words are lowercased runs of letters/digits; each CJK character counts as a word. Completions of
  fewer than 3 words score 1.
- `ends_cleanly`: 1 if generation stopped at an end-of-turn token, 0 if it was cut off at
  the length limit (`max_completion_length`, ppo's `max_new_tokens`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_ANSWER_LINE = re.compile(r"(?:\*\*)?(?:final\s+)?answer(?:\*\*)?\s*:(?:\*\*)?\s*\S", re.IGNORECASE)
_JSON_FENCE = re.compile(r"```json[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def format_match(text: str, pattern: str) -> float:
    """1.0 when the stripped text matches `pattern` as a whole (DOTALL), else 0.0."""
    return 1.0 if re.fullmatch(pattern, text.strip(), re.DOTALL) else 0.0


def answer_line(text: str) -> float:
    """1.0 when the last non-blank line is an `Answer: ...` line, else 0.0."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return 1.0 if lines and _ANSWER_LINE.match(lines[-1]) else 0.0


def json_text(text: str) -> str:
    """The content of the first ```json fenced block, else the whole stripped text."""
    fenced = _JSON_FENCE.search(text)
    return (fenced.group(1) if fenced else text).strip()


def json_valid(text: str, validator: Any = None) -> float:
    """1.0 when the completion's JSON parses (and `validator`, a jsonschema validator, accepts it)."""
    try:
        value = json.loads(json_text(text))
    except ValueError:  # JSONDecodeError, and numbers too large to convert
        return 0.0
    if validator is not None and not validator.is_valid(value):
        return 0.0
    return 1.0


def schema_validator(schema: Mapping[str, Any]) -> Any:
    """A jsonschema validator for `schema` (its `$schema` picks the draft; the latest by default).
    Raises jsonschema's SchemaError when the schema itself is invalid."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def length(text: str, target: str | int | None) -> float | None:
    """1 - |len(text) - target| / target, floored at 0. `target` is a length in characters, or a
    text whose stripped length it is (the data's own reply); None or empty: no reward."""
    if isinstance(target, str):
        target = len(target.strip())
    if not target:
        return None
    return max(0.0, 1.0 - abs(len(text.strip()) - target) / target)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def no_repeat(text: str, n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams; 1.0 for fewer than n words."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def ends_cleanly(completion_ids: Sequence[int], end_ids: Iterable[int]) -> float:
    """1.0 when the completion's last token is an end-of-turn token, 0.0 when it was cut off."""
    return 1.0 if completion_ids and completion_ids[-1] in set(end_ids) else 0.0

"""Built-in GRPO rewards (`stage.reward_functions`): pure functions of one sampled completion.

A recipe names rewards from this fixed set; no code from a recipe is ever run. Each reward is
in [0, 1], higher is better:

- `length`: closeness of the reply's length to the data's own reply for that prompt (the
  `reference`), in characters: 1 at the same length, falling linearly to 0 at zero or twice the
  reference length. No reference (the conversation ended with the user): no reward (None), which
  GRPO leaves out of that completion's sum.
- `format`: 1 if the reply's last non-blank line is an answer line — it starts with `Answer:` or
  `Final answer:` (any case, optionally in `**bold**`) followed by some text — else 0.
- `no_repeat`: the share of distinct word 3-grams among all word 3-grams (1 = nothing repeated).
  Words are lowercased runs of letters/digits; each CJK character counts as a word. Replies of
  fewer than 3 words score 1.
- `ends_cleanly`: 1 if generation stopped at an end-of-turn token, 0 if it was cut off at
  `max_completion_length`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: The built-in reward names, as `stage.reward_functions` accepts them.
NAMES = ("length", "format", "no_repeat", "ends_cleanly")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_ANSWER_LINE = re.compile(r"(?:\*\*)?(?:final\s+)?answer(?:\*\*)?\s*:(?:\*\*)?\s*\S", re.IGNORECASE)


def length(text: str, reference: str | None) -> float | None:
    """1 - |len(text) - len(reference)| / len(reference), floored at 0 (lengths of the stripped texts)."""
    if reference is None or not reference.strip():
        return None
    target = len(reference.strip())
    return max(0.0, 1.0 - abs(len(text.strip()) - target) / target)


def format(text: str) -> float:  # noqa: A001 - the recipe's name for it
    """1.0 when the last non-blank line is an `Answer: ...` line, else 0.0."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return 1.0 if lines and _ANSWER_LINE.match(lines[-1]) else 0.0


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

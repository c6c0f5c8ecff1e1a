"""`stage.rewards` entries: what GRPO and PPO reward a completion for. A tagged union on `type`; a bare
name (`ends_cleanly`) stands for `{type: ends_cleanly}`. Each entry has a `weight` (TRL's
`reward_weights`: the completion's reward is the weighted sum). The scoring code is `llmft.rewards`.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator

from llmft.config.base import Section

#: How `accuracy` compares the completion's final answer with the record's column.
AnswerMatch = Literal["exact", "normalized", "numeric", "math"]
#: `format`'s default: a `<think>...</think>` block, then an `<answer>...</answer>` block, nothing else.
THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"
#: `package.module:callable` (dotted module path, a colon, a dotted attribute path).
_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class RewardEntry(Section):
    weight: float = Field(
        default=1.0,
        allow_inf_nan=False,
        description="Weight of this reward in the completion's total (TRL's `reward_weights`); 0 logs it without training on it.",
    )


class AccuracyReward(RewardEntry):
    type: Literal["accuracy"] = Field(
        description="1 if the completion's final answer equals the record's `column`, else 0 (no answer found: 0)."
    )
    column: str = Field(
        default="answer",
        min_length=1,
        description="The record's column holding the right answer (a `qa` record's `answer`; GSM8K's "
        "`... #### 72` counts as `72`, a `\\boxed{}` as its content).",
    )
    match: AnswerMatch = Field(
        default="normalized",
        description="`exact` (same text, surrounding space aside); `normalized` (case, whitespace and "
        "punctuation ignored); `numeric` (the numbers are equal: commas, fractions like 3/4 and % "
        "understood); `math` (mathematically equivalent, by math-verify; numeric when it cannot parse).",
    )
    tolerance: float = Field(
        default=1e-6,
        ge=0,
        lt=1,
        description="Relative tolerance of `numeric` (and `math`'s numeric fallback).",
    )


class FormatReward(RewardEntry):
    type: Literal["format"] = Field(description="1 if the whole completion (stripped) matches `pattern`, else 0.")
    pattern: str | None = Field(
        default=None,
        description="A Python regex the whole stripped completion must match (`.` matches newlines); "
        f"default: `{THINK_ANSWER}` (a think block, then an answer block).",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.DOTALL)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {exc}") from None
        return value

    @property
    def regex(self) -> str:
        return THINK_ANSWER if self.pattern is None else self.pattern


class AnswerLineReward(RewardEntry):
    type: Literal["answer_line"] = Field(
        description="1 if the last non-blank line is `Answer: ...` or `Final answer: ...` (any case, "
        "optionally **bold**) with some text after the colon, else 0."
    )


with warnings.catch_warnings():  # `schema` is the recipe's word; BaseModel.schema is deprecated API it may shadow
    warnings.filterwarnings("ignore", message='Field name "schema"')

    class JsonReward(RewardEntry):
        type: Literal["json"] = Field(
            description="1 if the completion (or its first ```json fenced block) parses as JSON and, with "
            "`schema`, validates against it; else 0."
        )
        schema: str | None = Field(  # type: ignore[assignment]
            default=None,
            min_length=1,
            description="A JSON Schema file (checked to exist and to be a valid schema before training).",
        )


class LengthReward(RewardEntry):
    type: Literal["length"] = Field(
        description="1 - |length - target| / target in characters, floored at 0: 1 at the target, 0 at "
        "zero or twice it. No target (a record with no reply, no `target_chars`): no reward."
    )
    target_chars: int | None = Field(
        default=None, gt=0, description="Target length in characters; default: the data's own reply for that prompt."
    )


class NoRepeatReward(RewardEntry):
    type: Literal["no_repeat"] = Field(
        description="Distinct word 3-grams / all word 3-grams (1 = nothing repeated; each CJK character is a word)."
    )


class EndsCleanlyReward(RewardEntry):
    type: Literal["ends_cleanly"] = Field(
        description="1 if generation stopped at an end-of-turn token, 0 if the length limit cut it off (grpo: `max_completion_length`; ppo: `max_new_tokens`)."
    )


class RewardModelReward(RewardEntry):
    type: Literal["reward_model"] = Field(
        description="An `rm` run's score of prompt + completion, through a sigmoid (so in (0, 1) like the others)."
    )
    path: str = Field(min_length=1, description="Directory of an `rm` stage output (adapter or full).")


class PythonReward(RewardEntry):
    type: Literal["python"] = Field(
        description="Your own function, called as `function(completions=[str, ...], **columns)` with "
        "each listed column as a list (one value per completion); it returns one float in [0, 1] or "
        "None per completion. Runs your code: needs `stage.allow_python_rewards: true`."
    )
    function: str = Field(description="`package.module:callable`, importable where llmft runs (installed, or on PYTHONPATH).")
    columns: list[str] = Field(default_factory=list, description="The record's columns passed to it, each as a keyword argument.")

    @field_validator("function")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not _FUNCTION.fullmatch(value):
            raise ValueError("should look like package.module:callable")
        return value


REWARD_ENTRIES = (
    AccuracyReward,
    FormatReward,
    AnswerLineReward,
    JsonReward,
    LengthReward,
    NoRepeatReward,
    EndsCleanlyReward,
    RewardModelReward,
    PythonReward,
)
RewardSpec = Annotated[Union[REWARD_ENTRIES], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007


def bare_names(value: Any) -> Any:
    """A bare reward name stands for `{type: name}`; one entry alone for a list of it."""
    if isinstance(value, (str, dict)):
        value = [value]
    if isinstance(value, list):
        return [{"type": v} if isinstance(v, str) else v for v in value]
    return value

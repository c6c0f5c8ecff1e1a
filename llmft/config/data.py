"""`data:` — where the training text comes from and how it becomes token ids and labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmft.config.base import Section

DataFormat = Literal["auto", "alpaca", "messages", "text"]


class DatasetSpec(Section):
    path: str = Field(description="A .json (array), .jsonl or .txt file.")
    format: DataFormat = Field(
        default="auto",
        description="Record layout: `alpaca` (instruction/input/output), `messages` "
        "(OpenAI role/content), `text` (pre-training). `auto` detects it from the first "
        "record and reports what it found.",
    )


def _as_list(value: object) -> object:
    """Accept a single path or spec where a list is expected."""
    if isinstance(value, (str, dict)):
        value = [value]
    if isinstance(value, list):
        return [{"path": v} if isinstance(v, str) else v for v in value]
    return value


class DataConfig(Section):
    train: list[DatasetSpec] = Field(
        min_length=1,
        description="Training datasets: a path, or a list of paths or `{path, format}` entries.",
    )
    eval: list[DatasetSpec] = Field(
        default_factory=list,
        description="Evaluation datasets, in the same form as `train`.",
    )
    max_length: int = Field(
        default=1024,
        gt=1,
        description="Longest sequence in tokens. SFT records beyond it are truncated on the "
        "right (reported); PT text is cut into blocks of this length.",
    )
    mask_prompt: bool = Field(
        default=True,
        description="SFT: train only on assistant tokens (with each turn's end-of-turn token). "
        "False trains on every token of the rendered conversation.",
    )
    template: Literal["chatml", "llama3", "alpaca"] | None = Field(
        default=None,
        description="Chat template to render SFT conversations with. Empty: the tokenizer's "
        "own `chat_template`. The template used is saved with the output.",
    )

    _coerce_train = field_validator("train", "eval", mode="before")(_as_list)

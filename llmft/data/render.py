"""Render conversations with the chat template and locate what is supervised in the text.

The conversation is rendered once; each supervised assistant turn's character span is found by
rendering the conversation up to that turn with and without the generation prompt. So the ids
are exactly `apply_chat_template(messages)` and the spans cover the replies with their end-of-turn
token, never the whitespace after it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmft.errors import UserError

Span = tuple[int, int]


class TemplateMismatch(UserError):
    """The template renders a prefix of a conversation differently from the conversation."""


def render(tokenizer: Any, messages: Sequence[dict], tools: list | None = None, generation_prompt: bool = False) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(list(messages), **kwargs)


def parse_tools(tools: str | None) -> list | None:
    return json.loads(tools) if tools else None


def supervised_turns(messages: Sequence[dict], supervision: str) -> list[int]:
    """Indices of the assistant messages whose replies are trained on."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("loss", True) is not False]
    if supervision == "last_turn":
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        return [i for i in turns if i == last]
    return turns


def reply_spans(
    tokenizer: Any, messages: Sequence[dict], turns: Sequence[int], tools: list | None = None
) -> tuple[str, list[Span]]:
    """The rendered text and the character span of each listed assistant turn."""
    messages = list(messages)
    text = render(tokenizer, messages, tools)
    spans = []
    for i in turns:
        before = render(tokenizer, messages[:i], tools, generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1], tools)
        if not (text.startswith(through) and through.startswith(before)):
            raise TemplateMismatch(
                "the chat template renders a conversation differently depending on what follows, so "
                "the assistant tokens cannot be located exactly; set data.template to a named template"
            )
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def all_but_unsupervised(tokenizer: Any, messages: Sequence[dict], tools: list | None = None) -> tuple[str, list[Span]]:
    """For `train_on: all`: the whole text, minus the replies marked `"loss": false`."""
    text = render(tokenizer, messages, tools)
    muted = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("loss", True) is False]
    if not muted:
        return text, [(0, len(text))]
    _, holes = reply_spans(tokenizer, messages, muted, tools)
    spans, start = [], 0
    for hole_start, hole_end in holes:
        spans.append((start, hole_start))
        start = hole_end
    spans.append((start, len(text)))
    return text, spans

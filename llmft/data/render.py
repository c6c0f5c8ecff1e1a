"""Render conversations with the chat template and locate what is supervised in the text.

The conversation is rendered once; each supervised assistant turn's character span is found by
rendering the conversation up to that turn with and without the generation prompt. So the ids
are exactly `apply_chat_template(messages)` and the spans cover the replies with their end-of-turn
token, never the whitespace after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from llmft.data.templates import TEMPLATES
from llmft.errors import UserError

log = logging.getLogger("llmft")

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


#: where a reasoning block ends, in the templates that write one (Qwen3, DeepSeek-R1, ...)
THINK_END = "</think>"


def rewrites_history(tokenizer: Any) -> bool:
    """Whether the template may render earlier assistant turns differently once the conversation goes
    on (reasoning templates strip the reasoning of earlier turns, as Qwen3's and DeepSeek-R1's do)."""
    return THINK_END in (getattr(tokenizer, "chat_template", None) or "")


def _turn(tokenizer: Any, messages: list[dict], i: int, tools: list | None) -> tuple[str, str]:
    """(the prompt before turn i, with the generation prompt; the conversation through turn i)."""
    before = render(tokenizer, messages[:i], tools, generation_prompt=True) if i else ""
    through = render(tokenizer, messages[: i + 1], tools)
    if not through.startswith(before):
        raise TemplateMismatch(
            f"the chat template's generation prompt is not how it renders assistant turn {i} (message {i}), so the "
            "reply cannot be located; with data.enable_thinking: false a turn with reasoning gets this (the prompt "
            "ends with an empty reasoning block): drop the reasoning or turn thinking on"
        )
    return before, through


def reply_segments(
    tokenizer: Any, messages: Sequence[dict], turns: Sequence[int], tools: list | None = None
) -> list[tuple[str, list[Span]]]:
    """The rendered texts to train on and, in each, the character span of the listed assistant turns.

    Usually one text, the whole conversation. A reasoning template (`rewrites_history`) renders an
    earlier turn differently once the conversation goes on (its reasoning stripped, as at inference
    when the next question is asked); such a turn is trained in its own text, the conversation
    through that turn as the template renders it then: the prefix the model saw when it wrote it."""
    messages = list(messages)
    text = render(tokenizer, messages, tools)
    spans: list[Span] = []
    own: list[tuple[str, list[Span]]] = []
    for i in turns:
        before, through = _turn(tokenizer, messages, i, tools)
        span = (len(before), len(through.rstrip()))
        if text.startswith(through):
            spans.append(span)
        elif rewrites_history(tokenizer):
            own.append((through, [span]))
        else:
            raise TemplateMismatch(
                "the chat template renders a conversation differently depending on what follows, so "
                "the assistant tokens cannot be located exactly; set data.template to a named template"
            )
    return ([(text, spans)] if spans or not own else []) + own


def reply_spans(
    tokenizer: Any, messages: Sequence[dict], turns: Sequence[int], tools: list | None = None
) -> tuple[str, list[Span]]:
    """The rendered text and the character span of each listed assistant turn, in one sequence
    (a preference pair's side, the holes of `train_on: all`). A turn a reasoning template renders
    differently once the conversation goes on (`rewrites_history`) is taken as the whole
    conversation shows it: from its generation prompt to its end-of-turn token."""
    messages = list(messages)
    text = render(tokenizer, messages, tools)
    spans = []
    for i in turns:
        before, through = _turn(tokenizer, messages, i, tools)
        if text.startswith(through):
            spans.append((len(before), len(through.rstrip())))
            continue
        end = _end_of_turn_in(tokenizer, text, before, through) if rewrites_history(tokenizer) else -1
        if end < 0:
            raise TemplateMismatch(
                "the chat template renders a conversation differently depending on what follows, so "
                "the assistant tokens cannot be located exactly; set data.template to a named template"
            )
        spans.append((len(before), end))
    return text, spans


def _end_of_turn_in(tokenizer: Any, text: str, before: str, through: str) -> int:
    """Where the turn that starts after `before` ends in `text`: after the first end-of-turn token
    (the last token of `through`, the turn rendered as the last message); -1 when not found."""
    if not text.startswith(before):
        return -1
    ids = tokenizer(through.rstrip(), add_special_tokens=False)["input_ids"]
    marker = tokenizer.decode(ids[-1:]) if ids else ""
    found = text.find(marker, len(before)) if marker else -1
    return found + len(marker) if found >= 0 else -1


def without_reasoning(text: str, spans: Sequence[Span]) -> list[Span]:
    """`data.train_on_reasoning: false`: each span less its reasoning block, i.e. everything up to
    the block's end (`</think>` and the whitespace after it); spans without one are kept whole."""
    out = []
    for start, end in spans:
        close = text.find(THINK_END, start, end)
        if close >= 0:
            start = close + len(THINK_END)
            while start < end and text[start].isspace():
                start += 1
        if start < end:
            out.append((start, end))
    return out


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


def warn_unrendered_tools(items: Sequence[Any], tokenizer: Any, template: str | None) -> str | None:
    """Tool definitions (a record's `tools`: conversations, preference pairs, KTO completions) that the
    template never renders would be silently lost: say so (and return the warning), with the fix that
    fits the template in use (`template`: data.template; None is the tokenizer's own). The one rule
    for every stage: render them where the template can, warn where it cannot."""
    with_tools = sum(1 for item in items if getattr(item, "tools", None))
    if not with_tools or "tools" in (getattr(tokenizer, "chat_template", None) or ""):
        return None
    if template is None:
        fix = (
            "The template in use is the tokenizer's own (data.template is empty); put the tool definitions in "
            "the system message, or train a model whose chat template renders `tools`."
        )
    else:
        able = ", ".join(name for name, row in TEMPLATES.items() if row.tool_definitions is not None)
        fix = (
            f"The named template {template!r} renders no tool definitions; choose one that does ({able}), or "
            "leave data.template empty to use the tokenizer's own template, if it renders `tools`."
        )
    message = (
        f"WARNING: {with_tools} records carry tool definitions, but the chat template does not render "
        f"`tools`: the model will not see them. {fix}"
    )
    log.warning(message)
    return message

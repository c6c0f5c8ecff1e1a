"""Prompts for the stages that sample their own replies (`StageTraits.examples == "prompt"`: grpo,
ppo), one rule for both and for `llmft data`: a conversation ending with an assistant reply is
asked without that reply (the data's own answer, kept as `reference`); one ending with the user or a
tool result is asked as it is. The prompt must end with a user or tool message, and fit the tokens
`data.max_length` leaves before the generated reply. Every record left out is counted with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmft.data.formats import Conversation
from llmft.data.render import parse_tools, render
from llmft.data.tokenize import DataReport


@dataclass(frozen=True)
class Prompt:
    """A conversation to answer, rendered with the generation prompt and tokenized for the policy."""

    messages: tuple[dict, ...]  # role and content only
    ids: tuple[int, ...]
    where: str
    tools: str | None = None
    reference: str | None = None  # the data's own reply, when the conversation had one
    record: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


class PromptReport(DataReport):
    """DataReport's counting (nothing dropped uncounted), worded for prompts. The length limit is
    the prompt's budget (`budget`: data.max_length less the reply the stage generates)."""

    budget: str = "data.max_length"  # where the limit comes from

    def limit_phrase(self, tokens: int) -> str:
        return f"{self.budget} = {tokens}"

    def summary(self, name: str) -> str:
        line = f"{name}: {self.records} conversations -> {self.kept} prompts, {self.tokens} prompt tokens"
        if self.dropped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.dropped.items())
            line += f"; dropped {sum(self.dropped.values())}: {reasons}; e.g. {'; '.join(self.first_dropped)}"
        advice = self.length_advice()
        return line + (f"; {advice}" if advice else "")


def prompt_messages(messages: Sequence[dict]) -> list[dict] | None:
    """The messages to answer: all but a final assistant reply; None when that leaves nothing, or ends
    with something other than a user or tool message."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
    if prompt and prompt[-1]["role"] == "assistant":
        prompt.pop()
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        return None
    return prompt


def build_prompts(
    tokenizer: Any, conversations: Sequence[Conversation], max_prompt_tokens: int, budget: str = "data.max_length"
) -> tuple[list[Prompt], PromptReport]:
    """The prompts of `conversations` that fit `max_prompt_tokens` (`budget` names where that limit
    comes from, for the drop reason)."""
    report = PromptReport(records=len(conversations), limit=max_prompt_tokens)
    report.budget = budget
    prompts = []
    for conversation in conversations:
        messages = prompt_messages(conversation.messages)
        if messages is None:
            report.drop("no user turn before the last reply", conversation.where)
            continue
        text = render(tokenizer, messages, parse_tools(conversation.tools), generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        report.lengths.append(len(ids))
        if len(ids) > max_prompt_tokens:
            report.drop(f"prompt longer than {budget}", conversation.where)
            continue
        last = conversation.messages[-1]
        reference = last["content"] if last["role"] == "assistant" else None
        prompts.append(
            Prompt(tuple(messages), tuple(ids), conversation.where, conversation.tools, reference, conversation.record)
        )
        report.tokens += len(ids)
    report.kept = len(prompts)
    return prompts, report


def prompt_budget(stage: Any, max_length: int) -> tuple[int, str]:
    """(tokens a prompt may have, where that limit comes from): data.max_length less the longest reply
    the stage generates (`StageSection.generated_tokens`; at least 1 token, checked with the recipe)."""
    generated = stage.generated_tokens()
    if generated is None:
        return max_length, "data.max_length"
    key, tokens = generated
    return max_length - tokens, f"data.max_length - stage.{key}"

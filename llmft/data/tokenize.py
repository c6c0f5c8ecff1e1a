"""Token ids and label masks.

SFT: the conversation is rendered once with the tokenizer's chat template; each assistant
turn's character span is found by rendering the conversation up to that turn (with and without
the generation prompt); tokens overlapping a span are supervised. So the ids are exactly
`apply_chat_template(messages)` and the supervised tokens are the assistant replies with their
end-of-turn token, never the whitespace after it.

PT: texts are tokenized, joined with EOS and cut into blocks of `max_length`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from llmft.data.formats import Conversation, Text
from llmft.errors import UserError

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class DataReport:
    """What happened to the records: nothing is dropped without being counted here."""

    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0
    supervised_tokens: int = 0
    first_dropped: list[str] = field(default_factory=list)

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        if len(self.first_dropped) < 3:
            self.first_dropped.append(f"{where} ({reason})")

    def summary(self, name: str) -> str:
        parts = [f"{name}: {self.records} records -> {self.kept} examples, {self.tokens} tokens "
                 f"({self.supervised_tokens} supervised)"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.dropped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.dropped.items())
            parts.append(f"dropped {sum(self.dropped.values())}: {reasons}; e.g. {'; '.join(self.first_dropped)}")
        return "; ".join(parts)


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of each assistant reply (incl. end-of-turn)."""
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise UserError(
                "the chat template renders a conversation differently depending on what follows, so "
                "the assistant tokens cannot be located exactly; set data.template to a named template"
            )
        end = len(through.rstrip())
        spans.append((len(before), end))
    return text, spans


def encode_conversation(
    tokenizer: Any, messages: Sequence[dict[str, str]], mask_prompt: bool
) -> Example:
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if not mask_prompt:
        return Example(list(ids), list(ids))
    labels = [IGNORE] * len(ids)
    for t, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(start < s_end and end > s_start for s_start, s_end in spans):
            labels[t] = ids[t]
    return Example(list(ids), labels)


def supervised_count(labels: Sequence[int]) -> int:
    """Tokens that contribute to the loss: position 0 never does (labels shift by one)."""
    return sum(1 for label in labels[1:] if label != IGNORE)


def build_sft_examples(
    tokenizer: Any, conversations: Sequence[Conversation], max_length: int, mask_prompt: bool
) -> tuple[list[Example], DataReport]:
    report = DataReport(records=len(conversations))
    examples = []
    for conversation in conversations:
        example = encode_conversation(tokenizer, conversation.messages, mask_prompt)
        if supervised_count(example.labels) == 0:
            report.drop("no supervised tokens", conversation.where)
            continue
        if len(example.input_ids) > max_length:
            example = Example(example.input_ids[:max_length], example.labels[:max_length])
            if supervised_count(example.labels) == 0:
                report.drop("reply truncated away by max_length", conversation.where)
                continue
            report.truncated += 1
        examples.append(example)
        report.tokens += len(example.input_ids)
        report.supervised_tokens += supervised_count(example.labels)
    report.kept = len(examples)
    return examples, report


def build_pt_blocks(tokenizer: Any, texts: Sequence[Text], max_length: int) -> tuple[list[Example], DataReport]:
    """Join documents (each ending in EOS) and cut the stream into `max_length` blocks.

    The last, shorter block is kept (padded at collation) unless it is a single token.
    """
    report = DataReport(records=len(texts))
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for item in texts:
        ids = tokenizer(item.text, add_special_tokens=True)["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        stream.extend(ids)
    examples = [Example(stream[i : i + max_length], stream[i : i + max_length]) for i in range(0, len(stream), max_length)]
    if examples and len(examples[-1].input_ids) < 2:
        report.drop("final block of one token", texts[-1].where)
        examples.pop()
    report.kept = len(examples)
    report.tokens = sum(len(e.input_ids) for e in examples)
    report.supervised_tokens = sum(supervised_count(e.labels) for e in examples)
    return examples, report


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of every special token: the named ones (bos, eos, ...) and special added tokens such as
    Llama 3's <|eot_id|>, which `all_special_ids` leaves out unless the tokenizer names them."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn under the installed template (for stopping and checks)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    example = encode_conversation(tokenizer, probe, mask_prompt=True)
    supervised = [t for t in example.labels if t != IGNORE]
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if supervised and supervised[-1] in special_ids(tokenizer):
        ids.add(supervised[-1])
    return sorted(ids)


def turn_end_problem(tokenizer: Any) -> str | None:
    """Say so when a supervised assistant turn does not end in a special token (the model would
    never learn to stop); None when it does."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    supervised = [t for t in encode_conversation(tokenizer, probe, mask_prompt=True).labels if t != IGNORE]
    if supervised and supervised[-1] in special_ids(tokenizer):
        return None
    return (
        "the chat template closes assistant turns without a special end-of-turn token, so the model "
        "will not learn to stop; choose a template with one (data.template)"
    )

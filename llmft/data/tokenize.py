"""Token ids and label masks.

SFT: `render.py` finds the supervised character spans of the rendered conversation; the text is
tokenized with offsets and every token overlapping a span keeps its label (-100 elsewhere).

PT: texts are tokenized, joined with EOS and cut into blocks of `max_length`.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmft.data.formats import Conversation, Text
from llmft.data.render import Span, all_but_unsupervised, parse_tools, reply_segments, supervised_turns, without_reasoning

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
    #: tokens of each record that reached the length limit, before it was applied (a pair: its
    #: longer side): what `llmft data`'s percentiles and the advice on data.max_length read
    lengths: list[int] = field(default_factory=list)
    limit: int = 0  # the length limit applied (data.max_length; a prompt's budget); 0: none

    def __post_init__(self) -> None:
        self.dropped = Counter(self.dropped)  # a plain dict when read back from the cache

    def to_dict(self) -> dict:
        """JSON-ready (dataclasses.asdict would rebuild the Counter from item pairs)."""
        return {**vars(self), "dropped": dict(self.dropped), "first_dropped": list(self.first_dropped)}

    def merge(self, other: DataReport) -> DataReport:
        return DataReport(
            self.records + other.records,
            self.kept + other.kept,
            self.truncated + other.truncated,
            self.dropped + other.dropped,
            self.tokens + other.tokens,
            self.supervised_tokens + other.supervised_tokens,
            (self.first_dropped + other.first_dropped)[:3],
            self.lengths + other.lengths,
            max(self.limit, other.limit),
        )

    @property
    def cut_by_limit(self) -> int:
        """Records dropped because of the length limit (too long, or their reply cut away)."""
        return sum(n for reason, n in self.dropped.items() if "max_length" in reason)

    def length_advice(self) -> str | None:
        """Which limit would keep most records, from the lengths before cutting, e.g.
        `data.max_length 1536 would keep 95% (2048: 99%)`: the lengths that keep 95%, 99% and all
        records, rounded up, above the limit applied, the first two of them. None when no record was
        dropped for its length."""
        if not self.cut_by_limit or not self.lengths:
            return None
        ordered = sorted(self.lengths)
        options: list[int] = []
        for share in (0.95, 0.99, 1.0):
            limit = round_up(ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)])
            if limit > self.limit and limit not in options:
                options.append(limit)
        if not options:
            return None
        kept = [_percent(bisect.bisect_right(ordered, limit) / len(ordered)) for limit in options[:2]]
        text = f"{self.limit_phrase(options[0])} would keep {kept[0]}"
        return text + (f" ({options[1]}: {kept[1]})" if len(kept) > 1 else "")

    def limit_phrase(self, tokens: int) -> str:
        return f"data.max_length {tokens}"

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        if len(self.first_dropped) < 3:
            self.first_dropped.append(f"{where} ({reason})")

    def summary(self, name: str) -> str:
        parts = [
            f"{name}: {self.records} records -> {self.kept} examples, {self.tokens} tokens ({self.supervised_tokens} supervised)"
        ]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.dropped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.dropped.items())
            parts.append(f"dropped {sum(self.dropped.values())}: {reasons}; e.g. {'; '.join(self.first_dropped)}")
        advice = self.length_advice()
        if advice:
            parts.append(advice)
        return "; ".join(parts)


def round_up(tokens: int) -> int:
    """A length limit at or above `tokens`, rounded as people set them: to 16 tokens up to 256, to
    64 up to 1024, to 128 above (1490 -> 1536, 2000 -> 2048)."""
    step = 16 if tokens <= 256 else 64 if tokens <= 1024 else 128
    return -(-tokens // step) * step


def _percent(share: float) -> str:
    """100% only when every record fits: a share is rounded down."""
    return f"{math.floor(share * 1000) / 10:g}%"


def conversation_segments(
    tokenizer: Any, messages: Sequence[dict], supervision: str, tools: str | None = None, train_on_reasoning: bool = True
) -> list[tuple[str, list[Span]]]:
    """Rendered texts and their supervised character spans, for `supervision` = all_turns | last_turn
    | all: one text, or more when a reasoning template renders earlier turns differently later
    (`render.reply_segments`). `train_on_reasoning` false takes each reply's reasoning block out."""
    parsed = parse_tools(tools)
    if supervision == "all":
        segments = [all_but_unsupervised(tokenizer, messages, parsed)]
    else:
        segments = reply_segments(tokenizer, messages, supervised_turns(messages, supervision), parsed)
    if not train_on_reasoning:
        segments = [(text, without_reasoning(text, spans)) for text, spans in segments]
    return segments


def conversation_spans(
    tokenizer: Any, messages: Sequence[dict], supervision: str, tools: str | None = None, train_on_reasoning: bool = True
) -> tuple[str, list[Span]]:
    """The first (usually the only) segment of `conversation_segments`: the whole conversation."""
    return conversation_segments(tokenizer, messages, supervision, tools, train_on_reasoning)[0]


def label_tokens(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[int]:
    """Keep the label of every token overlapping a supervised span; -100 elsewhere."""
    labels = [IGNORE] * len(ids)
    for t, (start, end) in enumerate(offsets):
        if end > start and any(start < s_end and end > s_start for s_start, s_end in spans):
            labels[t] = ids[t]
    return labels


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[dict],
    supervision: str = "all_turns",
    tools: str | None = None,
    train_on_reasoning: bool = True,
) -> Example:
    """The conversation's ids and labels (its first segment: see `conversation_segments`)."""
    text, spans = conversation_spans(tokenizer, messages, supervision, tools, train_on_reasoning)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return Example(list(encoded["input_ids"]), label_tokens(encoded["input_ids"], encoded["offset_mapping"], spans))


def supervised_count(labels: Sequence[int]) -> int:
    """Tokens that contribute to the loss: position 0 never does (labels shift by one)."""
    return sum(1 for label in labels[1:] if label != IGNORE)


def fit_length(example: Example, max_length: int, truncation: str) -> Example | None:
    """Apply `data.truncation` to an over-long example; None means drop it."""
    if len(example.input_ids) <= max_length:
        return example
    if truncation == "drop":
        return None
    cut = slice(-max_length, None) if truncation == "truncate_left" else slice(0, max_length)
    return Example(example.input_ids[cut], example.labels[cut])


def build_sft_examples(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    max_length: int,
    supervision: str = "all_turns",
    truncation: str = "truncate_right",
    train_on_reasoning: bool = True,
) -> tuple[list[Example], DataReport]:
    """Tokenize conversations (rendering per record, tokenizing in one batch) and apply limits. A
    conversation whose earlier turns a reasoning template renders differently later gives one
    example per such turn (`conversation_segments`)."""
    report = DataReport(records=len(conversations), limit=max_length)
    rendered = [
        (conversation, segment)
        for conversation in conversations
        for segment in conversation_segments(
            tokenizer, conversation.messages, supervision, conversation.tools, train_on_reasoning
        )
    ]
    encoded = tokenizer([text for _, (text, _) in rendered], add_special_tokens=False, return_offsets_mapping=True)
    examples = []
    for (conversation, (_, spans)), ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"]):
        example = Example(list(ids), label_tokens(ids, offsets, spans))
        if supervised_count(example.labels) == 0:
            report.drop("no supervised tokens", conversation.where)
            continue
        report.lengths.append(len(example.input_ids))
        fitted = fit_length(example, max_length, truncation)
        if fitted is None:
            report.drop("longer than max_length", conversation.where)
            continue
        if fitted is not example:
            if supervised_count(fitted.labels) == 0:
                report.drop("reply truncated away by max_length", conversation.where)
                continue
            report.truncated += 1
        examples.append(fitted)
        report.tokens += len(fitted.input_ids)
        report.supervised_tokens += supervised_count(fitted.labels)
    report.kept = len(examples)
    return examples, report


def build_pt_blocks(tokenizer: Any, texts: Sequence[Text], max_length: int) -> tuple[list[Example], DataReport]:
    """Join documents (each ending in EOS) and cut the stream into `max_length` blocks.

    The last, shorter block is kept (padded at collation) unless it is a single token.
    """
    report = DataReport(records=len(texts))
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for ids in tokenizer([item.text for item in texts], add_special_tokens=True)["input_ids"]:
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
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


def turn_end_id(tokenizer: Any) -> int | None:
    """The token that closes an assistant turn under the installed template (e.g. <|im_end|>): the
    last supervised token when it is a special one, else EOS (None when there is neither)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    supervised = [t for t in encode_conversation(tokenizer, probe).labels if t != IGNORE]
    if supervised and supervised[-1] in special_ids(tokenizer):
        return supervised[-1]
    return tokenizer.eos_token_id


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn under the installed template (for stopping and checks)."""
    ids = {tokenizer.eos_token_id, turn_end_id(tokenizer)} - {None}
    return sorted(ids)


def turn_end_problem(tokenizer: Any) -> str | None:
    """Say so when a supervised assistant turn does not end in a special token (the model would
    never learn to stop); None when it does."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    supervised = [t for t in encode_conversation(tokenizer, probe).labels if t != IGNORE]
    if supervised and supervised[-1] in special_ids(tokenizer):
        return None
    return (
        "the chat template closes assistant turns without a special end-of-turn token, so the model "
        "will not learn to stop; choose a template with one (data.template)"
    )

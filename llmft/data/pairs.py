"""Token ids and label masks for preference pairs (rm, dpo) and KTO completions.

Each side is the prompt followed by its reply, rendered with the chat template; only the reply
(with its end-of-turn token) is supervised, exactly as in SFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmft.data.formats import Completion, Pair
from llmft.data.render import parse_tools, reply_spans, without_reasoning
from llmft.data.tokenize import DataReport, Example, fit_length, label_tokens, supervised_count


@dataclass
class PairExample:
    chosen: Example
    rejected: Example


@dataclass
class KtoExample:
    example: Example
    desirable: bool


def encode_reply(
    tokenizer: Any, prompt: Sequence[dict], reply: Sequence[dict], tools: str | None = None, train_on_reasoning: bool = True
) -> Example:
    """Prompt + reply rendered (with the record's tool definitions, as SFT renders them); the
    reply's assistant turns supervised (less their reasoning blocks unless `train_on_reasoning`)."""
    messages = [*prompt, *reply]
    turns = [i for i in range(len(prompt), len(messages)) if messages[i]["role"] == "assistant"]
    text, spans = reply_spans(tokenizer, messages, turns, parse_tools(tools))
    spans = spans if train_on_reasoning else without_reasoning(text, spans)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return Example(list(encoded["input_ids"]), label_tokens(encoded["input_ids"], encoded["offset_mapping"], spans))


def _fit(report: DataReport, where: str, examples: list[Example], max_length: int, truncation: str) -> list[Example] | None:
    """Fit every side of one record, or count why the record is dropped."""
    report.lengths.append(max(len(e.input_ids) for e in examples))
    fitted = [fit_length(e, max_length, truncation) for e in examples]
    if any(f is None for f in fitted):
        report.drop("longer than max_length", where)
        return None
    if any(supervised_count(f.labels) == 0 for f in fitted):
        report.drop("reply truncated away by max_length", where)
        return None
    if any(f is not e for f, e in zip(fitted, examples)):
        report.truncated += 1
    report.tokens += sum(len(f.input_ids) for f in fitted)
    report.supervised_tokens += sum(supervised_count(f.labels) for f in fitted)
    return fitted  # type: ignore[return-value]


def build_pair_examples(
    tokenizer: Any, pairs: Sequence[Pair], max_length: int, truncation: str = "truncate_right", train_on_reasoning: bool = True
) -> tuple[list[PairExample], DataReport]:
    report = DataReport(records=len(pairs), limit=max_length)
    out = []
    for pair in pairs:
        sides = [
            encode_reply(tokenizer, pair.prompt, side, pair.tools, train_on_reasoning) for side in (pair.chosen, pair.rejected)
        ]
        fitted = _fit(report, pair.where, sides, max_length, truncation)
        if fitted is not None:
            out.append(PairExample(*fitted))
    report.kept = len(out)
    return out, report


def build_kto_examples(
    tokenizer: Any,
    items: Sequence[Completion],
    max_length: int,
    truncation: str = "truncate_right",
    train_on_reasoning: bool = True,
) -> tuple[list[KtoExample], DataReport]:
    report = DataReport(records=len(items), limit=max_length)
    out = []
    for item in items:
        fitted = _fit(
            report,
            item.where,
            [encode_reply(tokenizer, item.prompt, item.completion, item.tools, train_on_reasoning)],
            max_length,
            truncation,
        )
        if fitted is not None:
            out.append(KtoExample(fitted[0], item.label))
    report.kept = len(out)
    return out, report

"""`llmft data`: what the model will be trained on — counts, lengths, and one example with the
supervised tokens marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmft.data.dataset import PreparedData
from llmft.data.pairs import KtoExample, PairExample
from llmft.data.prompts import PromptReport
from llmft.data.tokenize import IGNORE, Example, supervised_count

GREEN, RESET = "\033[32m", "\033[0m"


def percentiles(values: Sequence[int], points: Sequence[int] = (50, 90, 99, 100)) -> dict[int, int]:
    ordered = sorted(values)
    if not ordered:
        return dict.fromkeys(points, 0)
    return {p: ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))] for p in points}


def length_line(report: Any, examples: Sequence[Any], prompts: bool) -> str:
    """Token length percentiles, before the length limit cut or dropped anything where the report
    kept the lengths (a pair: its longer side); else of the examples as trained (pt's blocks)."""
    pairs = bool(examples) and isinstance(examples[0], PairExample)
    unit = "prompt" if prompts else "pair (longer side)" if pairs else "example"
    if report.lengths:
        lengths, when = percentiles(report.lengths), ", before the length limit"
    else:
        lengths, when = percentiles([len(e.input_ids) for e in _sequences(examples)]), ""
    shown = ", ".join(f"p{p} {v}" for p, v in lengths.items() if p < 100)
    return f"tokens per {unit}{when}: {shown}, max {lengths[100]}"


def mark_supervised(tokenizer: Any, example: Example, color: bool) -> str:
    """The example's text with each supervised run wrapped (green, or in [[ ]] without color)."""
    out, run, supervised = [], [], False
    open_, close = (GREEN, RESET) if color else ("[[", "]]")

    def flush() -> None:
        if run:
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{open_}{text}{close}" if supervised else text)
            run.clear()

    for token, label in zip(example.input_ids, example.labels):
        is_supervised = label != IGNORE
        if is_supervised != supervised:
            flush()
            supervised = is_supervised
        run.append(token)
    flush()
    return "".join(out)


def _sequences(examples: Sequence[Any]) -> list[Example]:
    """Every tokenized sequence: both sides of a pair, the reply of a KTO example."""
    out: list[Example] = []
    for e in examples:
        out.extend([e.chosen, e.rejected] if isinstance(e, PairExample) else [e.example] if isinstance(e, KtoExample) else [e])
    return out


def _show(tokenizer: Any, item: Any, color: bool) -> list[str]:
    if isinstance(item, PairExample):
        return [
            "chosen:",
            mark_supervised(tokenizer, item.chosen, color),
            "rejected:",
            mark_supervised(tokenizer, item.rejected, color),
        ]
    if isinstance(item, KtoExample):
        return [f"desirable: {item.desirable}", mark_supervised(tokenizer, item.example, color)]
    return [mark_supervised(tokenizer, item, color)]


def describe(
    prepared: PreparedData, tokenizer: Any, color: bool = False, example_index: int = 0, packed_rows: int | None = None
) -> str:
    lines = ["sources:"]
    lines += [f"  {s.line()}" for s in prepared.sources]
    origin = f"from cache {prepared.key[:12]}" if prepared.from_cache else "tokenized now"
    lines.append(f"prepared in {prepared.seconds:.2f} s ({origin})")
    for name, examples in (("train", prepared.train), ("eval", prepared.eval)):
        if examples is None:
            continue
        report = prepared.reports[name]
        prompts = isinstance(report, PromptReport)  # grpo, ppo: the replies are sampled in training
        lines.append(f"{name}:")
        if prompts:
            lines.append(f"  {report.records} records -> {report.kept} prompts (the replies are sampled in training)")
        else:
            lines.append(f"  {report.records} records -> {report.kept} examples; {report.truncated} truncated")
        for reason, count in report.dropped.items():
            lines.append(f"  dropped {count}: {reason}")
        if report.first_dropped:
            lines.append(f"  e.g. {'; '.join(report.first_dropped)}")
        if examples and isinstance(examples[0], KtoExample):
            desirable = sum(e.desirable for e in examples)
            lines.append(f"  desirable {desirable}, undesirable {len(examples) - desirable}")
        advice = report.length_advice()
        if advice:
            lines.append(f"  {advice}")
        lines.append("  " + length_line(report, examples, prompts))
        if prompts:
            lines.append(f"  prompt tokens {report.tokens}")
        else:
            share = report.supervised_tokens / max(report.tokens, 1)
            lines.append(f"  tokens {report.tokens}, supervised {report.supervised_tokens} ({share:.1%})")
    if packed_rows is not None:
        lines.append(f"packing: {len(prepared.train)} examples -> {packed_rows} rows")
    index = min(example_index, len(prepared.train) - 1)
    item = prepared.train[index]
    sequences = _sequences([item])
    tokens = sum(len(e.input_ids) for e in sequences)
    supervised = sum(supervised_count(e.labels) for e in sequences)
    marker = "green" if color else "[[...]]"
    if isinstance(prepared.reports["train"], PromptReport):
        lines.append(f"prompt {index} ({tokens} tokens; the policy writes the reply after it):")
    else:
        lines.append(f"example {index} ({tokens} tokens, {supervised} supervised; trained-on text in {marker}):")
    lines.extend(_show(tokenizer, item, color))
    return "\n".join(lines)

"""Normalised records -> rows in TRL's conversational dataset formats, after llmft's length rules.

TRL applies the chat template itself (the one llmft installed on the tokenizer). Before a record
reaches TRL it passes the same length rules llmft applies to the data it tokenizes itself, and every
record left out is counted with its reason (a `DataReport`), so TRL gets only records it keeps:
`check_kept` then confirms TRL dropped nothing more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from llmft.data.formats import MAX_REPORTED, Completion, Conversation, Message, Pair
from llmft.data.pairs import build_kto_examples, build_pair_examples
from llmft.data.prompts import build_prompts
from llmft.data.tokenize import DataReport
from llmft.errors import UserError

log = logging.getLogger("llmft")


def plain(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Without per-message `loss` flags, which mean nothing to TRL's trainers."""
    return [{k: v for k, v in m.items() if k != "loss"} for m in messages]


def kto_row(item: Completion) -> dict[str, Any]:
    """TRL's conversational unpaired-preference format; `tools` (a JSON array string or None) is
    rendered by TRL's KTO trainer, as llmft renders it."""
    return {
        "prompt": plain(item.prompt),
        "completion": plain(item.completion),
        "label": item.label,
        "where": item.where,
        "tools": item.tools,
    }


def pair_row(item: Pair) -> dict[str, Any]:
    """TRL's conversational preference format with an explicit prompt."""
    return {"prompt": plain(item.prompt), "chosen": plain(item.chosen), "rejected": plain(item.rejected), "where": item.where}


def check_columns(items: Sequence[Conversation], columns: Sequence[tuple[str, str]]) -> None:
    """Every record has every (key, column) the rewards read: one error listing the first few that lack one."""
    missing = [(item.where, key, column) for item in items for key, column in columns if item.record.get(column) is None]
    if not missing:
        return
    shown = "\n".join(f"  - {where}: no column {column!r} ({key} reads it)" for where, key, column in missing[:MAX_REPORTED])
    more = f"\n  ... and {len(missing) - MAX_REPORTED} more" if len(missing) > MAX_REPORTED else ""
    records = len({where for where, _, _ in missing})
    column = missing[0][2]
    raise UserError(
        f"{records} record(s) lack a column the rewards read:\n{shown}{more}\n"
        f"Add it to every record, rename yours to it with data.*.columns ({{{column}: your_column}}), "
        "or point the reward's key at the column that holds it."
    )


def _per_item(items: Sequence[Any], build: Callable[[list[Any]], tuple[list[Any], DataReport]]) -> tuple[list[Any], DataReport]:
    """Apply a whole-list example builder record by record, to learn which records it keeps."""
    kept: list[Any] = []
    report = DataReport()
    for item in items:
        examples, one = build([item])
        report = report.merge(one)
        if examples:
            kept.append(item)
    return kept, report


def kto_rows(items: Sequence[Completion], tokenizer: Any, max_length: int, truncation: str) -> tuple[list[dict], DataReport]:
    """Rows for KTO; records whose reply `max_length` would cut away entirely are left out and counted.
    `truncation` is one TRL's trainer honours (validation refuses truncate_left, `StageTraits.truncation`)."""
    kept, report = _per_item(items, lambda one: build_kto_examples(tokenizer, one, max_length, truncation))
    return [kto_row(i) for i in kept], report


def pair_rows(items: Sequence[Pair], tokenizer: Any, max_length: int, truncation: str) -> tuple[list[dict], DataReport]:
    """Rows for pairwise trainers; pairs where `max_length` would cut away a whole reply are left out and
    counted. `truncation` is one TRL's trainer honours (validation refuses truncate_left)."""
    kept, report = _per_item(items, lambda one: build_pair_examples(tokenizer, one, max_length, truncation))
    with_tools = sum(1 for item in kept if item.tools)
    if with_tools:
        log.warning(
            "WARNING: %d pairs carry tool definitions; TRL's ORPO trainer renders no per-record tools, so the model "
            "will not see them (rm and dpo render them)",
            with_tools,
        )
    return [pair_row(i) for i in kept], report


def prompt_rows(
    items: Sequence[Conversation], tokenizer: Any, budget: tuple[int, str], columns: Sequence[tuple[str, str]] = ()
) -> tuple[list[dict], DataReport]:
    """Rows for GRPO in TRL's conversational prompt-only format: each prompt (`llmft.data.prompts`, the
    rule ppo and `llmft data` share) that fits `budget` ((tokens, where the limit comes from)), its
    `reference` (the data's own reply, for rewards that compare against it) and `record`: the record's
    `columns` ((key, column) pairs) the rewards read, as one JSON object string (TRL hands every extra
    column to the rewards, and one string column keeps records of any value types in one Arrow
    schema). A record without a column a reward reads is an error, before training."""
    check_columns(items, columns)
    names = list(dict.fromkeys(column for _, column in columns))
    prompts, report = build_prompts(tokenizer, items, *budget)
    rows = [
        {
            "prompt": list(p.messages),
            "reference": p.reference,
            "record": json.dumps({c: p.record.get(c) for c in names}, ensure_ascii=False, default=str),
            "where": p.where,
        }
        for p in prompts
    ]
    with_tools = sum(1 for item in items if item.tools)
    if with_tools:
        log.warning(
            "WARNING: %d prompts carry tool definitions; GRPO renders no per-prompt tools, so the model will not see them",
            with_tools,
        )
    return rows, report


def check_kept(split: str, given: int, trl_dataset: Any) -> None:
    """TRL's dataset after its own preparation should hold every row llmft gave it: say loudly if not."""
    if trl_dataset is None:
        return
    kept = len(trl_dataset)
    if kept == given:
        log.info("data.%s: TRL kept all %d rows", split, given)
    else:
        log.warning(
            "WARNING: data.%s: TRL kept %d of the %d rows llmft gave it (%d dropped by TRL's own rules after llmft's checks)",
            split,
            kept,
            given,
            given - kept,
        )

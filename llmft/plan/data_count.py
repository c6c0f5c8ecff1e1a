"""How much training data a recipe has, for the schedule and the activation estimate: from the
tokenized-data cache, or by tokenizing data that is small; otherwise unknown, with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.config.recipe import Recipe
from llmft.data import cache
from llmft.data.dataset import prepare_for
from llmft.data.packing import pack
from llmft.data.streaming import TURNED_OFF
from llmft.data.tokenize import IGNORE
from llmft.errors import UserError
from llmft.modeling.load import prepare_tokenizer

#: Data files up to this size are tokenized to count them when the cache does not have them yet.
COUNT_LIMIT_BYTES = 32 << 20


@dataclass
class DataCount:
    examples: int | None = None
    tokens_per_example: float | None = None
    supervised_per_example: float | None = None
    longest_micro_batch: int | None = None  # tokens of the longest micro-batch (padded as it will be)
    how: str = ""


def _data_bytes(recipe: Recipe) -> int:
    total = 0
    for spec in recipe.data.train:
        path = Path(spec.path).expanduser()
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        total += sum(f.stat().st_size for f in files)
    return total


def count_training_data(recipe: Recipe, force: bool = False) -> DataCount:
    """Training examples and token counts: from the tokenized-data cache, or by tokenizing data that
    is small (or when `force`); otherwise unknown, with the reason."""
    stage = recipe.stage.name
    if recipe.data.streaming:
        return DataCount(how=f"not counted: {TURNED_OFF}")
    size = _data_bytes(recipe)
    try:
        tokenizer = prepare_tokenizer(recipe)
        key = cache.fingerprint(stage, recipe.data, tokenizer, recipe.training.seed)
        cached = recipe.data.cache and cache.load(cache.cache_root(recipe.data), key) is not None
        if not (cached or force or size <= COUNT_LIMIT_BYTES):
            return DataCount(
                how=f"not counted: {size / 2**20:,.0f} MiB of data is not in the cache yet "
                "(run `llmft preprocess` first, or pass --count-data)"
            )
        prepared = prepare_for(recipe, tokenizer)
    except UserError as exc:
        return DataCount(how=f"not counted: {exc}")
    return _count_prepared(recipe, prepared)


def _lengths(example: Any) -> tuple[int, int]:
    """(tokens, supervised tokens) the model sees for one prepared example (pairs: both replies)."""
    parts = [example.chosen, example.rejected] if hasattr(example, "chosen") else [getattr(example, "example", example)]
    return sum(len(p.input_ids) for p in parts), sum(sum(1 for l in p.labels if l != IGNORE) for p in parts)


def _count_prepared(recipe: Recipe, prepared: Any) -> DataCount:
    data, micro = recipe.data, recipe.training.micro_batch_size
    examples = list(prepared.train)
    origin = "cache" if prepared.from_cache else "tokenized now"
    if data.packing:  # only the fast-path stages pack (validated)
        examples = pack(examples, data.max_length)
        origin += f", packed into {len(examples)} rows"
    lengths = [_lengths(e) for e in examples]
    tokens = sorted((n for n, _ in lengths), reverse=True)
    per_sequence = recipe.stage.traits.sequences_per_example
    if data.padding_free and recipe.stage.traits.fast_forward and not data.packing:
        longest = sum(tokens[:micro])  # one row of the micro-batch's examples
    else:
        widest = tokens[0] // per_sequence
        longest = micro * per_sequence * (-(-widest // 8) * 8)  # padded to the longest, a multiple of 8
    n = len(examples)
    return DataCount(
        examples=n,
        tokens_per_example=sum(tokens) / n,
        supervised_per_example=sum(s for _, s in lengths) / n,
        longest_micro_batch=longest,
        how=f"{n} training {'rows' if data.packing else 'prompts' if recipe.stage.traits.samples else 'examples'} ({origin})",
    )

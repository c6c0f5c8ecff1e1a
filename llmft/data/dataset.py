"""`data:` -> tokenized train/eval examples for a stage: read every source, normalise, resample,
split, tokenize (or reuse the cache), and report what happened to every record."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch

from llmft.config.data import DataConfig, DatasetSpec
from llmft.config.stage import TRAITS
from llmft.data import cache
from llmft.data.formats import check_supervised, detect_records_format, normalise
from llmft.data.mix import interleave_lists
from llmft.data.pairs import KtoExample, PairExample, build_kto_examples, build_pair_examples
from llmft.data.prompts import build_prompts, prompt_budget
from llmft.data.render import warn_unrendered_tools
from llmft.data.sources import RawRecord, read_source
from llmft.data.tokenize import IGNORE, DataReport, Example, build_pt_blocks, build_sft_examples
from llmft.errors import UserError

log = logging.getLogger("llmft")


@dataclass
class SourceReport:
    key: str
    path: str
    format: str
    detected: bool
    records: int
    skipped: int  # bad records skipped under on_bad_record: skip
    used: int  # after samples / weight
    skipped_examples: list[str] = field(default_factory=list)
    mixed: int | None = None  # records `data.mix: interleave` drew from this source

    def line(self) -> str:
        how = "detected" if self.detected else "given"
        parts = [f"{self.key}: {self.path} ({self.format}, {how}): {self.records} records"]
        if self.skipped:
            parts.append(f"{self.skipped} bad skipped (e.g. {'; '.join(self.skipped_examples[:2])})")
        if self.used != self.records - self.skipped:
            parts.append(f"{self.used} used after samples/weight")
        if self.mixed is not None:
            parts.append(f"{self.mixed} drawn by mix: interleave")
        return ", ".join(parts)


@dataclass
class PreparedData:
    train: list[Any]  # Example (pt, sft), PairExample (rm, dpo) or KtoExample (kto)
    eval: list[Any] | None
    reports: dict[str, DataReport]
    sources: list[SourceReport]
    key: str
    from_cache: bool
    seconds: float


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return vars(self.examples[index])


def stage_check(stage: str, data: DataConfig) -> Callable[[Any], None] | None:
    """The record rules `stage` adds to the formats' own (`formats.check_supervised` for a stage that
    trains on a conversation's replies); None when it adds none. A record breaking them is a bad
    record like any other: `data.on_bad_record` decides, and a skipped one is counted."""
    if TRAITS[stage].supervision:
        return partial(check_supervised, supervision=data.supervision)
    return None


def read_split(
    stage: str, specs: Sequence[DatasetSpec], split: str, data: DataConfig, seed: int
) -> tuple[list[Any], list[SourceReport]]:
    parts: list[list[Any]] = []
    reports = []
    check = stage_check(stage, data)
    for i, spec in enumerate(specs):
        key = f"data.{split}.{i}"
        records = read_source(spec, key)
        fmt, detected = source_format(stage, spec, records, key)
        good, bad = normalise(records, fmt, data.on_bad_record, check)
        used = resample(good, spec, random.Random(f"{seed}:{key}"))
        reports.append(SourceReport(key, spec.path, fmt, detected, len(records), bad.count, len(used), list(bad.examples)))
        parts.append(used)
    if split == "train" and data.mix == "interleave":
        items, counts = interleave_lists(parts, data.probabilities, data.mix_stop, seed)
        for report, count in zip(reports, counts):
            report.mixed = count
        return items, reports
    return [item for part in parts for item in part], reports


def source_format(stage: str, spec: DatasetSpec, records: Sequence[RawRecord], key: str) -> tuple[str, bool]:
    """(format, detected) of one entry: given, or detected from the first record that read cleanly;
    refused when the stage does not train on it."""
    fmt, detected = spec.format, spec.format == "auto"
    if detected:
        fmt = detect_records_format(list(records), f"{key}: {spec.path}")
    if fmt not in TRAITS[stage].formats:
        expected = " or ".join(TRAITS[stage].formats)
        raise UserError(f"{key}: {spec.path} is {fmt} data, but stage {stage!r} trains on {expected} data")
    return fmt, detected


def resample(items: list[Any], spec: DatasetSpec, rng: random.Random) -> list[Any]:
    """`samples` / `weight`: whole repeats plus a seeded subset (kept in source order)."""
    if not items or (spec.samples is None and spec.weight is None):
        return items
    target = spec.samples if spec.samples is not None else round(len(items) * spec.weight)
    whole, rest = divmod(target, len(items))
    chosen = sorted(rng.sample(range(len(items)), rest))
    return items * whole + [items[i] for i in chosen]


def split_off(items: list[Any], eval_split: float | int, seed: int) -> tuple[list[Any], list[Any]]:
    count = eval_split if isinstance(eval_split, int) else round(len(items) * eval_split)
    if not 0 < count < len(items):
        raise UserError(
            f"data.eval_split: {eval_split} leaves {len(items) - count} training and {count} eval records; both must be > 0"
        )
    held = set(random.Random(seed).sample(range(len(items)), count))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def tokenize(
    stage: str, items: Sequence[Any], data: DataConfig, tokenizer: Any, prompt_budget: tuple[int, str] | None = None
) -> tuple[list[Any], DataReport]:
    """Token ids and labels for what the stage's records become (`StageTraits.examples`). Prompts
    (grpo, ppo) are the prompt's ids with nothing supervised: the replies are sampled in training;
    `prompt_budget` is (tokens a prompt may have, where the limit comes from)."""
    examples = TRAITS[stage].examples
    warn_unrendered_tools(items, tokenizer, data.template)
    if examples == "prompt":
        prompts, report = build_prompts(tokenizer, items, *(prompt_budget or (data.max_length, "data.max_length")))
        return [Example(list(p.ids), [IGNORE] * len(p.ids)) for p in prompts], report
    if examples == "pair":
        return build_pair_examples(tokenizer, items, data.max_length, data.truncation, data.train_on_reasoning)
    if examples == "labelled":
        return build_kto_examples(tokenizer, items, data.max_length, data.truncation, data.train_on_reasoning)
    if examples == "text":  # one batched call; the fast tokenizer spreads it over threads itself
        return build_pt_blocks(tokenizer, items, data.max_length)
    # conversations
    if data.num_proc == 1 or len(items) < 2 * data.num_proc:
        return _sft_chunk(tokenizer, items, data)
    # rendering chat templates is Python-bound: split the records into contiguous chunks
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    size = -(-len(items) // data.num_proc)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(max_workers=data.num_proc) as pool:
        results = list(pool.map(partial(_sft_chunk, tokenizer, data=data), chunks))
    examples = [e for chunk_examples, _ in results for e in chunk_examples]
    report = results[0][1]
    for _, other in results[1:]:
        report = report.merge(other)
    return examples, report


def _sft_chunk(tokenizer: Any, items: Sequence[Any], data: DataConfig) -> tuple[list[Example], DataReport]:
    return build_sft_examples(tokenizer, items, data.max_length, data.supervision, data.truncation, data.train_on_reasoning)


@dataclass
class ItemSplits:
    """Normalised records (Conversation, Text, Pair or Completion) per split, before tokenizing:
    for trainers that tokenize themselves (TRL's)."""

    train: list[Any]
    eval: list[Any] | None
    sources: list[SourceReport]


def load_items(stage: str, data: DataConfig, seed: int) -> ItemSplits:
    """Read, normalise, resample, split and cap the records of `data:` for `stage`."""
    train_items, sources = read_split(stage, data.train, "train", data, seed)
    eval_items = None
    if data.eval:
        eval_items, eval_sources = read_split(stage, data.eval, "eval", data, seed)
        sources += eval_sources
    elif data.eval_split is not None:
        train_items, eval_items = split_off(train_items, data.eval_split, seed)
    train_items = train_items[: data.max_train_samples] if data.max_train_samples else train_items
    if eval_items is not None and data.max_eval_samples:
        eval_items = eval_items[: data.max_eval_samples]
    return ItemSplits(train_items, eval_items, sources)


def prepare_for(recipe: Any, tokenizer: Any) -> PreparedData:
    """`prepare_data` with everything the recipe decides: its stage, data, seed, and (grpo, ppo) the
    tokens its prompts may have before the generated reply."""
    budget = prompt_budget(recipe.stage, recipe.data.max_length)
    return prepare_data(recipe.stage.name, recipe.data, tokenizer, recipe.training.seed, budget)


def prepare_data(
    stage: str, data: DataConfig, tokenizer: Any, seed: int, prompt_budget: tuple[int, str] | None = None
) -> PreparedData:
    """Tokenized examples for the train and eval splits, from the cache when it is current (prompts,
    cheap to build, are not cached)."""
    started = time.perf_counter()
    key = cache.fingerprint(stage, data, tokenizer, seed)
    root = cache.cache_root(data)
    use_cache = data.cache and TRAITS[stage].examples != "prompt"
    if use_cache and (hit := cache.load(root, key)) is not None:
        arrays, meta = hit
        splits = {name: _unflatten(name, arrays, meta) for name in meta["reports"]}
        reports = {name: DataReport(**r) for name, r in meta["reports"].items()}
        sources = [SourceReport(**s) for s in meta["sources"]]
        return PreparedData(splits["train"], splits.get("eval"), reports, sources, key, True, time.perf_counter() - started)

    loaded = load_items(stage, data, seed)
    sources = loaded.sources
    splits: dict[str, list[Example]] = {}
    reports: dict[str, DataReport] = {}
    for name, records in (("train", loaded.train), ("eval", loaded.eval)):
        if records is None:
            continue
        splits[name], reports[name] = tokenize(stage, records, data, tokenizer, prompt_budget)
        if not splits[name]:
            raise UserError(f"data.{name}: no usable examples remain. {reports[name].summary('data.' + name)}")
    if use_cache:
        arrays: dict[str, list[Example]] = {}
        flags: dict[str, list[bool]] = {}
        for name, examples in splits.items():
            arrays.update(_flatten(name, examples, flags))
        meta = {"reports": {n: r.to_dict() for n, r in reports.items()}, "sources": [asdict(s) for s in sources], "flags": flags}
        cache.save(root, key, arrays, meta)
    return PreparedData(splits["train"], splits.get("eval"), reports, sources, key, False, time.perf_counter() - started)


def _flatten(name: str, examples: list[Any], flags: dict[str, list[bool]]) -> dict[str, list[Example]]:
    """Pairs and KTO examples as plain example lists (plus KTO's labels), for the cache."""
    if examples and isinstance(examples[0], PairExample):
        return {f"{name}.chosen": [e.chosen for e in examples], f"{name}.rejected": [e.rejected for e in examples]}
    if examples and isinstance(examples[0], KtoExample):
        flags[name] = [e.desirable for e in examples]
        return {name: [e.example for e in examples]}
    return {name: examples}


def _unflatten(name: str, arrays: dict[str, list[Example]], meta: dict[str, Any]) -> list[Any]:
    if f"{name}.chosen" in arrays:
        return [PairExample(c, r) for c, r in zip(arrays[f"{name}.chosen"], arrays[f"{name}.rejected"])]
    if name in meta.get("flags", {}):
        return [KtoExample(e, flag) for e, flag in zip(arrays[name], meta["flags"][name])]
    return arrays[name]


def log_prepared(prepared: PreparedData) -> None:
    for source in prepared.sources:
        log.info(source.line())
    for name, report in prepared.reports.items():
        log.info(report.summary(f"data.{name}"))
    origin = f"cache {prepared.key[:12]}" if prepared.from_cache else "tokenized"
    log.info("data: %s in %.2f s", origin, prepared.seconds)

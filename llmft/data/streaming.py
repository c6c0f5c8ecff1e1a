"""`data.streaming: true` (pt, sft): training records read lazily and tokenized as the trainer asks for
them, so memory stays flat in the corpus size.

Each train entry is opened with `sources.iter_source` (a record at a time), its format detected from
its first clean record (before the model loads, so a wrong format stops the run at once), each record
normalised under the same rules and `data.on_bad_record` as in memory, then mixed (`data.mix`: in
order, or interleaved with the same seeded sampler) and tokenized in chunks: pt text is joined and cut
into `max_length` blocks as `build_pt_blocks` does, sft conversations become examples as
`build_sft_examples` makes them. When the stream ends before `training.max_steps`, the trainer starts
it again.

What streaming turns off, because it needs the whole dataset first: the tokenized-data cache, packing
(first-fit over every example), length grouping, `eval_split`, `samples` / `weight` and
`max_train_samples` (refused in `config/data.py`); `llmft plan` does not count the data. Eval entries
are small and read whole.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from llmft.config.data import DataConfig, DatasetSpec
from llmft.config.stage import TRAITS
from llmft.data.dataset import read_split, source_format, stage_check, tokenize
from llmft.data.formats import normalise
from llmft.data.mix import interleave
from llmft.data.sources import iter_source
from llmft.data.tokenize import build_sft_examples, supervised_count
from llmft.errors import UserError

log = logging.getLogger("llmft")
#: Records tokenized per tokenizer call (the fast tokenizer spreads a batch over threads).
CHUNK = 256
#: Records read to find the first clean one when a source's format is detected.
DETECT_WITHIN = 1000
#: What the run log and `llmft plan` say streaming turns off.
TURNED_OFF = (
    "data.streaming: records read lazily and tokenized during training; no tokenized-data cache, packing, "
    "length grouping or data count (they need the whole dataset); training.max_steps sets the length"
)


@dataclass
class SourceCount:
    """What one train entry gave so far (all passes)."""

    key: str
    path: str
    format: str
    detected: bool
    read: int = 0
    skipped: int = 0
    drawn: int = 0  # records the mix took from it
    skipped_examples: list[str] = field(default_factory=list)

    def line(self, mixed: bool) -> str:
        how = "detected" if self.detected else "given"
        parts = [f"{self.key}: {self.path} ({self.format}, {how}): {self.read} records read (streamed)"]
        if self.skipped:
            parts.append(f"{self.skipped} bad skipped (e.g. {'; '.join(self.skipped_examples[:2])})")
        if mixed:
            parts.append(f"{self.drawn} drawn by mix: interleave")
        return ", ".join(parts)


@dataclass
class StreamTotals:
    passes: int = 0
    examples: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)


class StreamedTrain(torch.utils.data.IterableDataset):
    """The training examples of `data.train`, produced as they are iterated."""

    def __init__(self, stage: str, data: DataConfig, tokenizer: Any, seed: int):
        self.stage, self.data, self.tokenizer, self.seed = stage, data, tokenizer, seed
        self.check = stage_check(stage, data)
        self.sources = [self._open(spec, f"data.train.{i}") for i, spec in enumerate(data.train)]
        self.totals = StreamTotals()

    def _open(self, spec: DatasetSpec, key: str) -> SourceCount:
        head = list(itertools.islice(iter_source(spec, key), DETECT_WITHIN))
        if not head:
            raise UserError(f"{key}.path: {spec.path} holds no records")
        fmt, detected = source_format(self.stage, spec, head, key)
        return SourceCount(key, spec.path, fmt, detected)

    def _items(self, index: int) -> Iterator[Any]:
        count, spec = self.sources[index], self.data.train[index]
        for record in iter_source(spec, count.key):
            count.read += 1
            good, bad = normalise([record], count.format, self.data.on_bad_record, self.check)
            if bad.count:
                count.skipped += 1
                if len(count.skipped_examples) < 2:
                    count.skipped_examples.extend(bad.examples)
            for item in good:
                count.drawn += 1
                yield item

    def items(self) -> Iterator[Any]:
        """Normalised records of every train entry, mixed by `data.mix`."""
        opens = [lambda i=i: self._items(i) for i in range(len(self.sources))]
        if self.data.mix == "interleave":
            rng = random.Random(f"{self.seed}:mix:{self.totals.passes}")
            return (item for _, item in interleave(opens, self.data.probabilities, self.data.mix_stop, rng))
        return itertools.chain.from_iterable(open_() for open_ in opens)

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        self.totals.passes += 1
        chunks = _batched(self.items(), CHUNK)
        examples = self._blocks(chunks) if TRAITS[self.stage].examples == "text" else self._conversations(chunks)
        for example in examples:
            self.totals.examples += 1
            self.totals.tokens += len(example["input_ids"])
            yield example
        log.info("data.train: streamed pass %d ended; %s", self.totals.passes, "; ".join(self.lines()))

    def _blocks(self, chunks: Iterable[list[Any]]) -> Iterator[dict[str, list[int]]]:
        """Documents (each ending in EOS) joined and cut into `max_length` blocks, as `build_pt_blocks`."""
        size, eos = self.data.max_length, self.tokenizer.eos_token_id
        buffer: list[int] = []
        for chunk in chunks:
            for ids in self.tokenizer([item.text for item in chunk], add_special_tokens=True)["input_ids"]:
                buffer.extend(ids if eos is None or (ids and ids[-1] == eos) else [*ids, eos])
            whole = len(buffer) // size * size
            for start in range(0, whole, size):
                block = buffer[start : start + size]
                self.totals.supervised_tokens += supervised_count(block)
                yield {"input_ids": block, "labels": list(block)}
            del buffer[:whole]
        if len(buffer) >= 2:  # the last, shorter block; a single token is dropped
            self.totals.supervised_tokens += supervised_count(buffer)
            yield {"input_ids": buffer, "labels": list(buffer)}

    def _conversations(self, chunks: Iterable[list[Any]]) -> Iterator[dict[str, list[int]]]:
        d = self.data
        for chunk in chunks:
            examples, report = build_sft_examples(
                self.tokenizer, chunk, d.max_length, d.supervision, d.truncation, d.train_on_reasoning
            )
            self.totals.truncated += report.truncated
            self.totals.dropped.update(report.dropped)
            for example in examples:
                self.totals.supervised_tokens += supervised_count(example.labels)
                yield vars(example)

    def lines(self) -> list[str]:
        """Per source and in total, what the stream gave so far: for the run log."""
        mixed = self.data.mix == "interleave"
        t = self.totals
        dropped = ", ".join(f"{n} {why}" for why, n in t.dropped.items())
        total = f"{t.examples} examples, {t.tokens} tokens ({t.supervised_tokens} supervised) over {t.passes} pass(es)"
        extra = (f", {t.truncated} truncated" if t.truncated else "") + (f", dropped: {dropped}" if dropped else "")
        return [s.line(mixed) for s in self.sources] + [f"data.train: {total}{extra}"]


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def streamed_data(recipe: Any, tokenizer: Any) -> tuple[StreamedTrain, list[Any] | None]:
    """The streamed train examples and (read whole) the tokenized eval examples of `recipe`."""
    stage, data, seed = recipe.stage.name, recipe.data, recipe.training.seed
    train = StreamedTrain(stage, data, tokenizer, seed)
    for source in train.sources:
        how = "detected" if source.detected else "given"
        log.info("%s: %s (%s, %s): streamed", source.key, source.path, source.format, how)
    log.info(TURNED_OFF)
    if not data.eval:
        return train, None
    items, sources = read_split(stage, data.eval, "eval", data, seed)
    for source in sources:
        log.info(source.line())
    items = items[: data.max_eval_samples] if data.max_eval_samples else items
    examples, report = tokenize(stage, items, data, tokenizer)
    log.info(report.summary("data.eval"))
    if not examples:
        raise UserError(f"data.eval: no usable examples remain. {report.summary('data.eval')}")
    return train, examples


def stream_log_callback(train: StreamedTrain) -> Any:
    """A TrainerCallback that puts the stream's counts in the run log when training ends."""
    from transformers import TrainerCallback

    class StreamCounts(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            for line in train.lines():
                log.info(line)

    return StreamCounts()

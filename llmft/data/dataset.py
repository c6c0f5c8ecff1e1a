"""Turn `data:` into tokenized train/eval datasets for one stage."""

from __future__ import annotations

import logging
from typing import Any

import torch

from llmft.config.data import DataConfig, DatasetSpec
from llmft.config.recipe import STAGE_FORMATS
from llmft.data.formats import detect_format, normalise
from llmft.data.sources import read_records
from llmft.data.tokenize import DataReport, Example, build_pt_blocks, build_sft_examples
from llmft.errors import UserError

log = logging.getLogger(__name__)


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


def load_split(stage: str, data: DataConfig, split: str, tokenizer: Any) -> tuple[ExampleDataset, DataReport] | None:
    specs: list[DatasetSpec] = getattr(data, split)
    if not specs:
        return None
    items: list[Any] = []
    for i, spec in enumerate(specs):
        key = f"data.{split}.{i}"
        records = read_records(spec.path, f"{key}.path")
        fmt = spec.format
        if fmt == "auto":
            fmt = detect_format(records[0])
            log.info("%s: %s detected as %s format", key, spec.path, fmt)
        if fmt not in STAGE_FORMATS[stage]:
            expected = " or ".join(STAGE_FORMATS[stage])
            raise UserError(f"{key}: {spec.path} is {fmt} data, but stage {stage!r} trains on {expected} data")
        items.extend(normalise(records, fmt))
    if stage == "pt":
        examples, report = build_pt_blocks(tokenizer, items, data.max_length)
    else:
        examples, report = build_sft_examples(tokenizer, items, data.max_length, data.mask_prompt)
    log.info(report.summary(f"data.{split}"))
    if not examples:
        raise UserError(f"data.{split}: no usable examples remain. {report.summary('data.' + split)}")
    return ExampleDataset(examples), report

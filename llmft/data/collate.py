"""Batch examples: pad on the right; padding is never attended to and never supervised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from llmft.data.tokenize import IGNORE


@dataclass(frozen=True)
class PadCollator:
    pad_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in batch)
        multiple = self.pad_to_multiple_of
        width = -(-longest // multiple) * multiple if multiple > 1 else longest
        n = len(batch)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for row, item in enumerate(batch):
            length = len(item["input_ids"])
            input_ids[row, :length] = torch.tensor(item["input_ids"])
            labels[row, :length] = torch.tensor(item["labels"])
            attention[row, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}

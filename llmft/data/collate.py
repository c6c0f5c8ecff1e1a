"""Batch examples: pad on the right; padding is never attended to by real tokens and never supervised."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmft.data.tokenize import IGNORE


def _width(batch: Sequence[dict[str, Any]], multiple: int) -> int:
    longest = max(len(item["input_ids"]) for item in batch)
    return -(-longest // multiple) * multiple if multiple > 1 else longest


def _stack(batch: Sequence[dict[str, Any]], key: str, width: int, fill: int) -> torch.Tensor:
    out = torch.full((len(batch), width), fill, dtype=torch.long)
    for row, item in enumerate(batch):
        out[row, : len(item[key])] = torch.tensor(item[key], dtype=torch.long)
    return out


@dataclass(frozen=True)
class PadCollator:
    pad_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = _width(batch, self.pad_to_multiple_of)
        lengths = torch.tensor([len(item["input_ids"]) for item in batch])
        return {
            "input_ids": _stack(batch, "input_ids", width, self.pad_id),
            "labels": _stack(batch, "labels", width, IGNORE),
            "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long(),
        }


@dataclass(frozen=True)
class PackedCollator:
    """Batches of packed rows: no attention mask, so transformers derives per-example attention
    from `position_ids`; the right padding forms its own block (positions from 0, label -100)."""

    pad_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = _width(batch, self.pad_to_multiple_of)
        positions = _stack(batch, "position_ids", width, 0)
        for row, item in enumerate(batch):
            length = len(item["input_ids"])
            positions[row, length:] = torch.arange(width - length)
        return {
            "input_ids": _stack(batch, "input_ids", width, self.pad_id),
            "labels": _stack(batch, "labels", width, IGNORE),
            "position_ids": positions,
        }


@dataclass(frozen=True)
class FlatCollator:
    """Padding-free batches: the micro-batch's examples concatenated into one row, `position_ids`
    restarting per example and each example's first label masked (see `llmft.data.packing`), so no
    pad token is computed and, with per-example attention, no example sees another."""

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from llmft.data.packing import concatenate
        from llmft.data.tokenize import Example

        row = concatenate([Example(item["input_ids"], item["labels"]) for item in batch])
        return {
            "input_ids": torch.tensor([row.input_ids], dtype=torch.long),
            "labels": torch.tensor([row.labels], dtype=torch.long),
            "position_ids": torch.tensor([row.position_ids], dtype=torch.long),
        }

"""Packing: several examples per `max_length` sequence, none attending to another.

Each packed row carries `position_ids` that restart at 0 for every example. Given position ids
and no attention mask, transformers builds a block-diagonal causal mask (sdpa, eager) or uses
variable-length kernels (flash-attention), so every example sees only itself, exactly as when
unpacked. The first label of every example after the first is masked: it would otherwise be
predicted from the previous example's last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmft.data.tokenize import IGNORE, Example


@dataclass
class PackedExample(Example):
    position_ids: list[int]


def pack(examples: Sequence[Example], max_length: int) -> list[PackedExample]:
    """First-fit decreasing bin packing of whole examples into rows of at most `max_length`."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids), reverse=True)
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = len(examples[index].input_ids)
        for b, free in enumerate(room):
            if length <= free:
                bins[b].append(index)
                room[b] -= length
                break
        else:
            bins.append([index])
            room.append(max_length - length)
    return [concatenate([examples[i] for i in sorted(b)]) for b in bins]


def concatenate(parts: Sequence[Example]) -> PackedExample:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for part in parts:
        ids.extend(part.input_ids)
        labels.append(IGNORE)  # never predicted across an example boundary
        labels.extend(part.labels[1:])
        positions.extend(range(len(part.input_ids)))
    return PackedExample(ids, labels, positions)

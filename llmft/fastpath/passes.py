"""Cut a collated micro-batch into pieces of at most N tokens, at example (or pair) boundaries.

`training.max_tokens_per_forward`: a micro-batch runs as several forward/backward passes whose
gradients add up to the micro-batch's own (each piece's summed loss is divided by the same
supervised-token count), so the step is unchanged while only one piece's activations are alive
at a time. An example longer than N stays whole: examples are never cut.
"""

from __future__ import annotations

from typing import Any

import torch


def _greedy(lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """[first, last) index ranges of consecutive items whose lengths sum to <= max_tokens (an item
    longer than that gets a range of its own)."""
    ranges, first, used = [], 0, 0
    for i, length in enumerate(lengths):
        if i > first and used + length > max_tokens:
            ranges.append((first, i))
            first, used = i, 0
        used += length
    ranges.append((first, len(lengths)))
    return ranges


def split_batch(batch: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    """Pieces of `batch` (padding-free: one row of concatenated examples with `position_ids`; or
    rows of a padded/packed batch) with at most `max_tokens` tokens each, in order."""
    ids = batch["input_ids"]
    rows, width = ids.shape
    if rows == 1 and batch.get("position_ids") is not None:
        from llmft.fastpath.varlen_attention import segments

        spans = segments(batch["position_ids"], 0, width)
        pieces = _greedy([end - start for start, end in spans], max_tokens)
        cuts = [(spans[a][0], spans[b - 1][1]) for a, b in pieces]
        return [
            {k: (v[:, s:e] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == width else v) for k, v in batch.items()}
            for s, e in cuts
        ]
    pieces = _greedy([width] * rows, max_tokens)
    return [
        {k: (v[a:b] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == rows else v) for k, v in batch.items()}
        for a, b in pieces
    ]


def split_pairs(batch: dict[str, Any], max_tokens: int) -> list[tuple[dict[str, Any], float]]:
    """Pieces of a pair batch (the chosen rows, then the rejected rows, as TRL's DPO loss reads them;
    per-pair tensors such as precomputed reference log-probs alongside) with at most `max_tokens`
    real tokens each, whole pairs in order, each with its share of the micro-batch's pairs: a
    per-pair mean loss times that share adds up to the whole micro-batch's loss."""
    mask = batch["attention_mask"]
    pairs = mask.shape[0] // 2
    tokens = (mask[:pairs].sum(1) + mask[pairs:].sum(1)).tolist()
    ranges = _greedy(tokens, max_tokens)
    if len(ranges) == 1:
        return [(batch, 1.0)]
    pieces = []
    for a, b in ranges:
        rows = torch.cat([torch.arange(a, b), torch.arange(pairs + a, pairs + b)])
        width = int(mask[rows].any(0).nonzero().max()) + 1  # right-padded: drop the columns only padding fills
        piece = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.dim() == 2 and value.shape[0] == 2 * pairs:
                piece[key] = value[rows, :width]
            elif torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == pairs:
                piece[key] = value[a:b]
            else:
                piece[key] = value
        pieces.append((piece, (b - a) / pairs))
    return pieces


def split_sided_pairs(batch: dict[str, Any], max_tokens: int) -> list[tuple[dict[str, Any], float]]:
    """`split_pairs` for a pair batch that keeps each side under its own keys (TRL's ORPO collator:
    `chosen_*` and `rejected_*` right-padded, `prompt_*` left-padded; per-pair lists alongside):
    whole pairs in order, each piece's sides cut to their longest real row, each with its share."""
    chosen, rejected = batch["chosen_attention_mask"], batch["rejected_attention_mask"]
    pairs = chosen.shape[0]
    ranges = _greedy((chosen.sum(1) + rejected.sum(1)).tolist(), max_tokens)
    if len(ranges) == 1:
        return [(batch, 1.0)]
    pieces = []
    for a, b in ranges:
        piece = {
            k: (
                v[a:b]
                if (torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == pairs) or (isinstance(v, list) and len(v) == pairs)
                else v
            )
            for k, v in batch.items()
        }
        for side in ("chosen", "rejected"):
            mask = piece[f"{side}_attention_mask"]
            width = int(mask.any(0).nonzero().max()) + 1
            for key, value in piece.items():
                if key.startswith(f"{side}_") and torch.is_tensor(value) and value.dim() == 2 and value.shape[1] == mask.shape[1]:
                    piece[key] = value[:, :width]
        pieces.append((piece, (b - a) / pairs))
    return pieces

"""Forward passes the metrics share: summed log-probabilities of the supervised tokens of examples
(batched, right-padded), and reward-model scores of sequences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llmft.data.tokenize import IGNORE, Example
from llmft.progress import progress


def _batches(items: Sequence[Any], max_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of at most `max_tokens` padded tokens (longest first, so padding is small)."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        n = len(items[i])
        if current and max(width, n) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, width = [], 0
        current.append(i)
        width = max(width, n)
    return batches + ([current] if current else [])


def _padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def supervised_logps(
    model: Any, examples: Sequence[Example], pad_id: int, max_tokens: int = 4096, desc: str = "log-probs"
) -> list[tuple[float, int]]:
    """(sum of log p over the example's supervised tokens, their count) per example, in order."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    device = next(model.parameters()).device
    batches = _batches([e.input_ids for e in examples], max_tokens)
    for batch in progress(batches, len(batches), desc):
        ids, mask = _padded([examples[i].input_ids for i in batch], pad_id)
        labels, _ = _padded([examples[i].labels for i in batch], IGNORE)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        keep = targets != IGNORE
        token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
        for row, i in enumerate(batch):
            out[i] = (token[row].sum().item(), int(keep[row].sum().item()))
    return out


def reward_scores(
    model: Any, sequences: Sequence[Sequence[int]], pad_id: int, max_tokens: int = 4096, desc: str = "reward model"
) -> list[float]:
    """A reward model's score per token sequence (right-padded; the head reads the last non-pad token)."""
    out = [0.0] * len(sequences)
    device = next(model.parameters()).device
    batches = _batches(sequences, max_tokens)
    for batch in progress(batches, len(batches), desc):
        ids, mask = _padded([sequences[i] for i in batch], pad_id)
        with torch.no_grad():
            scores = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()
        for row, i in enumerate(batch):
            out[i] = scores[row].item()
    return out

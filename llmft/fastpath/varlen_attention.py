"""Attention over concatenated examples: torch's SDPA run once per example, causal, no mask.

Padding-free batches (`data.padding_free`) put a micro-batch's examples one after another in a
row, with `position_ids` restarting at 0 for each (a sequence restarting at s > 0 is a branch that
shares the first s tokens of the sequence before it: `tree_spans`, used by dpo's shared prompts). transformers' own SDPA path turns that into a
dense block-diagonal [row, row] mask, and the SDPA kernel then computes every block, masked or not.
Here each example's span gets its own `is_causal` SDPA call: no mask is built, and the kernel skips
the upper triangle (bf16 training on CPU uses `llmft.fastpath.causal_spans`, the same kernel forward
with a faster backward that does not grow memory per sequence length). Whenever a real mask is needed (left/right padding with an attention mask, a
KV cache during generation) the call falls through to transformers' SDPA unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from llmft.fastpath import prompt_cache

NAME = "llmft_sdpa_varlen"


def segments(position_ids: torch.Tensor | None, row: int, length: int) -> list[tuple[int, int]]:
    """[start, end) spans of the examples in one row: a new example starts where positions restart at 0."""
    if position_ids is None:
        return [(0, length)]
    starts = torch.nonzero(position_ids[min(row, position_ids.shape[0] - 1)] == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], length]))


def tree_spans(position_ids: torch.Tensor | None, row: int, length: int) -> list[tuple[int, int, int, int]]:
    """(start, end, root, shared) of each sequence in one row. A sequence starts where positions
    restart; one whose positions restart at s > 0 is a branch (a shared prefix,
    `llmft.fastpath.unpadded_scoring`): it continues the first `shared` = s tokens of the latest
    sequence that started at 0 (`root`), which it attends to before itself. shared = 0: a sequence
    on its own. A jump that cannot be a branch (s longer than that sequence) continues the sequence."""
    if position_ids is None:
        return [(0, length, 0, 0)]
    pos = position_ids[min(row, position_ids.shape[0] - 1)]
    starts = [0, *(torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1).tolist()]
    firsts = pos[starts].tolist()
    spans: list[list[int]] = []
    root = 0
    for start, first in zip(starts, firsts):
        if first == 0:
            root = start
        elif spans and first > start - root:
            continue  # not a branch: the previous sequence goes on
        spans.append([start, length, root, first])
        if len(spans) > 1:
            spans[-2][1] = start
    return [tuple(span) for span in spans]  # type: ignore[misc]


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [batch, heads, seq, dim]; key/value [batch, kv_heads, seq, dim]; returns [batch, seq, heads, dim]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kept = prompt_cache.active()
    if isinstance(kept, prompt_cache.Capture):
        kept.record(module, key, value, dropout)
    elif isinstance(kept, prompt_cache.Extension):
        return _after_kept_prompts(module, query, key, value, kept, dropout, scaling), None
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None or q_len != kv_len or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    from llmft.fastpath import causal_spans

    spans = [tree_spans(position_ids, row, q_len) for row in range(query.shape[0])]
    if causal_spans.applies(query, dropout):  # bf16 training on CPU: see llmft.fastpath.causal_spans
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        outs = [
            causal_spans.CausalSpans.apply(query[row : row + 1], key[row : row + 1], value[row : row + 1], row_spans, scale)
            for row, row_spans in enumerate(spans)
        ]
        return (torch.cat(outs) if len(outs) > 1 else outs[0]), None
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for row, row_spans in enumerate(spans):
        q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
        rows.append(torch.cat([_span(q, k, v, span, dropout, scaling, gqa) for span in row_spans], dim=2))
    out = torch.cat(rows) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def _span(q, k, v, span: tuple[int, int, int, int], dropout: float, scaling: float | None, gqa: bool) -> torch.Tensor:
    """Attention of one sequence: causal within itself, after the `shared` prefix of its root if a branch."""
    start, end, root, shared = span
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if not shared:
        return sdpa(
            q[:, :, start:end],
            k[:, :, start:end],
            v[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
    prefix = (k[:, :, root : root + shared], v[:, :, root : root + shared])
    return _after_prefix(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], *prefix, dropout, scaling, gqa)


def _after_prefix(q, k, v, prefix_k, prefix_v, dropout: float, scaling: float | None, gqa: bool) -> torch.Tensor:
    """Attention of a sequence that continues a prefix: each query sees the whole prefix, then its
    own sequence causally."""
    n, shared = q.shape[2], prefix_k.shape[2]
    keys, values = torch.cat([prefix_k, k], dim=2), torch.cat([prefix_v, v], dim=2)
    mask = torch.ones(n, shared + n, dtype=torch.bool, device=q.device).tril_(shared)  # query i sees keys <= shared + i
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return sdpa(q, keys, values, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa)


def _after_kept_prompts(module, query, key, value, kept: prompt_cache.Extension, dropout: float, scaling: float | None):
    """A flat row of sequences that each continue a prompt an earlier call kept (`prompt_cache`)."""
    capture = kept.capture
    prefix_k, prefix_v = capture.keys[module.layer_idx], capture.values[module.layer_idx]
    gqa = query.shape[1] != key.shape[1]
    outs = []
    for (start, end), at, (_, _, n) in zip(kept.spans, capture.starts, capture.wanted):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        outs.append(_after_prefix(q, k, v, prefix_k[:, :, at : at + n], prefix_v[:, :, at : at + n], dropout, scaling, gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask when nothing is padded (spans come from position_ids); transformers' SDPA mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or bool(attention_mask.all()):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make NAME a valid `attn_implementation` (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, varlen_mask)
    return NAME

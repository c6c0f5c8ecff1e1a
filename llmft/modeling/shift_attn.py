"""`training.shift_attn`: shifted sparse attention (S2-Attn, from LongLoRA) during training.

In training, the sequence is cut into groups of a quarter of its length and every token attends
(causally) only within its group. Half of the heads use groups shifted by half a group, so
information still flows across group borders from layer to layer. Evaluation and generation run
the model's normal attention, so a model trained this way is used with full attention.

It is an attention function registered with transformers' attention interface, wrapping the
implementation the model already uses (sdpa, eager, or llmft's per-example SDPA): outside
training it simply calls that implementation. Differences from LongLoRA's reference code, on
purpose: the shifted groups do not wrap around the end of the sequence (the reference rolls the
sequence, so its last shifted group lets the first tokens see the last ones); a sequence whose
length is not a multiple of the group count gets a last, shorter group (padding inside the
kernel's blocks is masked); and the batch's own mask (padding, packed or padding-free examples,
sliding windows) is kept inside every group.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from llmft.errors import UserError

#: Groups per sequence: LongLoRA's group size of 1/4 of the sequence length.
GROUPS = 4
PREFIX = "llmft_shift_attn"
#: Model families whose attention modules hand standard [batch, heads, seq, head_dim] query, key and
#: value tensors to the registered attention function (and add nothing the function must know of,
#: such as logit soft-capping or attention sinks).
SUPPORTED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "olmo2", "granite"}
)
#: Base implementations the wrapper can stand in for.
BASES = ("sdpa", "eager", "llmft_sdpa_varlen")


def group_size(length: int) -> int:
    """A quarter of the sequence, rounded up to an even number (the shift is half a group)."""
    return max(2, 2 * -(-length // (2 * GROUPS)))


def _base_function(name: str, module: torch.nn.Module) -> Callable:
    if name == "eager":  # each model file defines its own eager attention
        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers import AttentionInterface

    return AttentionInterface._global_mapping[name]


def _allowed(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, length: int
) -> torch.Tensor | None:
    """[batch, seq, seq] bool (True = may attend) from the batch's own mask, or from positions that
    restart per example (padding-free / packed batches without a mask); None means plain causal."""
    if attention_mask is not None:
        mask = attention_mask[:, 0, -length:, -length:]
        mask = mask if mask.dtype == torch.bool else mask == 0  # eager masks are additive: 0 or -inf
        return mask.expand(batch, length, length)
    if position_ids is not None and position_ids.shape[-1] == length and bool((position_ids[..., 1:] == 0).any()):
        example = torch.cumsum(position_ids.expand(batch, length) == 0, dim=-1)
        return example[:, :, None] == example[:, None, :]
    return None


def _grouped_attention(q, k, v, allowed, lead: int, size: int, dropout: float, scaling: float | None) -> torch.Tensor:
    """Causal attention within groups of `size` tokens, the first group `size - lead` long.
    q, k, v: [batch, heads, seq, dim]; returns [batch, heads, seq, dim]."""
    batch, heads, length, dim = q.shape
    total = -(-(lead + length) // size) * size
    groups = total // size
    pad = (0, 0, lead, total - lead - length)

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [batch, heads, seq, dim] -> [batch*groups, heads, size, dim]
        x = torch.nn.functional.pad(x, pad)
        return x.view(batch, heads, groups, size, dim).transpose(1, 2).reshape(batch * groups, heads, size, dim)

    device = q.device
    real = torch.zeros(total, dtype=torch.bool, device=device)
    real[lead : lead + length] = True
    real = real.view(groups, 1, size)
    causal = torch.ones(size, size, dtype=torch.bool, device=device).tril()
    mask = causal & real  # [groups, size, size]: causal, never a padded key
    if allowed is not None:
        padded = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
        padded[:, lead : lead + length, lead : lead + length] = allowed
        diagonal = padded.view(batch, groups, size, groups, size).diagonal(dim1=1, dim2=3)  # [b, size, size, groups]
        mask = mask & diagonal.permute(0, 3, 1, 2)
    # a row with no key at all (a padded query) attends to itself, so no row is all -inf (NaN)
    mask = (mask | torch.eye(size, dtype=torch.bool, device=device)).expand(batch, groups, size, size)
    out = torch.nn.functional.scaled_dot_product_attention(
        blocks(q),
        blocks(k),
        blocks(v),
        attn_mask=mask.reshape(batch * groups, 1, size, size),
        dropout_p=dropout,
        scale=scaling,
    )
    out = out.view(batch, groups, heads, size, dim).transpose(1, 2).reshape(batch, heads, total, dim)
    return out[:, :, lead : lead + length]


def shifted_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """S2-Attn. query [batch, heads, seq, dim], key/value [batch, kv_heads, seq, dim] (grouped-query
    heads are repeated); returns [batch, seq, heads, dim] like transformers' attention functions."""
    batch, heads, length, _ = query.shape
    if heads % key.shape[1]:
        raise ValueError(f"{heads} query heads do not divide into {key.shape[1]} key/value heads")
    repeat = heads // key.shape[1]
    key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    allowed = _allowed(attention_mask, position_ids, batch, length)
    size = group_size(length)
    half = heads // 2
    parts = [
        _grouped_attention(query[:, :half], key[:, :half], value[:, :half], allowed, 0, size, dropout, scaling),
        _grouped_attention(query[:, half:], key[:, half:], value[:, half:], allowed, size // 2, size, dropout, scaling),
    ]
    return torch.cat(parts, dim=1).transpose(1, 2).contiguous()


def _make_forward(base: str) -> Callable:
    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs) -> tuple[torch.Tensor, None]:
        # training only, and only for a whole sequence (never a KV-cache step)
        if not module.training or query.shape[2] != key.shape[2] or query.shape[2] < 2:
            return _base_function(base, module)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if not getattr(module, "is_causal", True):
            raise UserError(
                "training.shift_attn: this model has non-causal attention layers; S2-Attn is for causal language models"
            )
        out = shifted_sparse_attention(query, key, value, attention_mask, kwargs.get("position_ids"), dropout, scaling)
        return out, None

    return forward


def register(base: str) -> str:
    """Register the shifted-sparse wrapper around `base` (idempotent); returns its implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = f"{PREFIX}_{base}"
    AttentionInterface.register(name, _make_forward(base))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])  # the base's own masks
    return name


def _causal_lm(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_model(model: Any) -> str:
    """The attention implementation to wrap; a UserError naming training.shift_attn if it cannot be."""
    causal_lm = _causal_lm(model)
    config = causal_lm.config
    model_type = getattr(config, "model_type", type(causal_lm).__name__)
    if model_type not in SUPPORTED_MODEL_TYPES or not getattr(causal_lm, "_supports_attention_backend", False):
        raise UserError(
            f"training.shift_attn: not available for model type {model_type!r} (S2-Attn needs a model whose "
            f"attention comes from transformers' attention interface with plain query/key/value heads: "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}); remove training.shift_attn"
        )
    base = config._attn_implementation
    if base.startswith(PREFIX + "_"):
        base = base[len(PREFIX) + 1 :]
    if base not in BASES:
        raise UserError(
            f"training.shift_attn: works with model.attn_implementation sdpa or eager, not {base}; "
            "set model.attn_implementation: sdpa"
        )
    return base


def enable(model: Any) -> str:
    """Switch the model's attention to S2-Attn in training (full attention otherwise). Returns a log line."""
    base = check_model(model)
    _causal_lm(model).set_attn_implementation(register(base))
    return f"shift_attn: S2-Attn in training (groups of 1/{GROUPS} of each sequence, half the heads shifted), {base} otherwise"

"""Causal attention over the examples of a padding-free row, for bf16 training on CPU.

Forward: torch's CPU flash-attention kernel, one call per example, written straight into the
[batch, tokens, heads, dim] layout the output projection reads (so one copy of the output is kept for
backward, not three), with each row's log-sum-exp.

Backward: recomputes each example's attention probabilities from that log-sum-exp and takes the
gradients with batched matmuls, a block of query rows at a time (keys only up to the block's last
row, so the masked upper triangle is barely computed). Two reasons, both measured with torch 2.13 on
a 2-core CPU (`benchmarks/attention_backward.py`):

- speed: for sequences up to ~1,000 tokens it takes 0.4-0.8x the time of the flash kernel's backward;
- memory: the flash backward in bf16 builds and keeps a JIT-compiled kernel for every sequence length
  it meets (~5 MB each, never freed), so a run over examples of varying length grows by hundreds of MB.

Gradients agree with the flash kernel's to bf16 rounding (tests/unit/modeling/test_causal_spans.py).
"""

from __future__ import annotations

import torch

#: fp32 score elements per block of query rows (~32 MB): bounds the transient memory of backward.
BLOCK_ELEMENTS = 1 << 23


def applies(query: torch.Tensor, dropout: float) -> bool:
    """The kernel is for CPU bf16 training; fp32, GPUs, dropout and inference use SDPA."""
    return (
        query.device.type == "cpu"
        and query.dtype == torch.bfloat16
        and dropout == 0.0
        and torch.is_grad_enabled()
        and query.requires_grad
    )


class CausalSpans(torch.autograd.Function):
    """query [1, heads, T, dim], key/value [1, kv_heads, T, dim], spans [(start, end), ...] covering T
    -> output [1, T, heads, dim]; each span attends causally within itself only."""

    @staticmethod
    def forward(ctx, query, key, value, spans, scale):
        _, heads, tokens, dim = query.shape
        out = query.new_empty(1, tokens, heads, dim)
        lse = torch.empty(heads, tokens, dtype=torch.float32, device=query.device)
        for start, end in spans:
            o, span_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], 0.0, True, scale=scale
            )
            out[:, start:end] = o.transpose(1, 2)
            lse[:, start:end] = span_lse[0]
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.spans, ctx.scale = spans, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        _, heads, tokens, dim = query.shape
        kv_heads = key.shape[1]
        grad_q = query.new_empty(1, tokens, heads, dim)
        grad_k = key.new_empty(1, tokens, kv_heads, dim)
        grad_v = value.new_empty(1, tokens, kv_heads, dim)
        for start, end in ctx.spans:
            dq, dk, dv = _span_backward(
                query[0, :, start:end],
                key[0, :, start:end],
                value[0, :, start:end],
                out[0, start:end],
                grad_out[0, start:end],
                lse[:, start:end],
                ctx.scale,
            )
            grad_q[0, start:end], grad_k[0, start:end], grad_v[0, start:end] = dq, dk, dv
        return grad_q.transpose(1, 2), grad_k.transpose(1, 2), grad_v.transpose(1, 2), None, None


def _span_backward(q, k, v, out, grad_out, lse, scale):
    """One example: q [H, L, d], k/v [KV, L, d], out/grad_out [L, H, d], lse [H, L]
    -> dq [L, H, d], dk/dv [L, KV, d]. Heads h = kv * group + g share kv head kv (transformers' GQA)."""
    heads, length, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    dtype = q.dtype
    delta = (grad_out.float() * out.float()).sum(-1).t()  # [H, L]: rowsum(dO * O)
    dq = torch.empty(length, heads, dim, dtype=dtype, device=q.device)
    dk = torch.zeros(kv_heads, length, dim, dtype=torch.float32, device=q.device)
    dv = torch.zeros_like(dk)
    rows = max(16, min(256, BLOCK_ELEMENTS // (heads * length)))
    for b0 in range(0, length, rows):
        b1 = min(length, b0 + rows)
        n = b1 - b0
        qb = q[:, b0:b1].reshape(kv_heads, group * n, dim)
        gb = grad_out[b0:b1].transpose(0, 1).reshape(kv_heads, group * n, dim)
        kb, vb = k[:, :b1], v[:, :b1]
        scores = (qb @ kb.transpose(1, 2)).float().mul_(scale).view(kv_heads, group, n, b1)
        scores[..., b0:].masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
        probs = scores.sub_(lse[:, b0:b1].reshape(kv_heads, group, n, 1)).exp_().view(kv_heads, group * n, b1)
        dv[:, :b1] += (probs.to(dtype).transpose(1, 2) @ gb).float()
        dp = (gb @ vb.transpose(1, 2)).float().view(kv_heads, group, n, b1)
        ds = dp.sub_(delta[:, b0:b1].reshape(kv_heads, group, n, 1)).view(kv_heads, group * n, b1)
        ds = ds.mul_(probs).mul_(scale).to(dtype)
        dq[b0:b1] = (ds @ kb).view(heads, n, dim).transpose(0, 1)
        dk[:, :b1] += (ds.transpose(1, 2) @ qb).float()
    return dq, dk.transpose(0, 1).to(dtype), dv.transpose(0, 1).to(dtype)

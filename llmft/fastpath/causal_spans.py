"""Causal attention over the sequences of a padding-free row, for bf16 training on CPU.

Forward: torch's CPU flash-attention kernel, one call per sequence, written straight into the
[batch, tokens, heads, dim] layout the output projection reads (so one copy of the output is kept for
backward, not three), with each row's log-sum-exp. A branch (a sequence continuing the first tokens
of an earlier one: a pair's shared prompt, `llmft.fastpath.varlen_attention.tree_spans`) attends to
that prefix, then to itself causally; its keys and values are put together for the forward call
only, so backward keeps nothing but the row's own queries, keys, values, output and log-sum-exp.

Backward: recomputes each sequence's attention probabilities from that log-sum-exp and takes the
gradients with batched matmuls, a block of query rows at a time (keys only up to the block's last
row, so the masked upper triangle is barely computed; a branch's prefix keys in a product of their
own, their gradients added to the prefix's positions). Two reasons, both measured with torch 2.13 on
a 2-core CPU (`benchmarks/attention_backward.py`):

- speed: for sequences up to ~1,000 tokens it takes 0.4-0.8x the time of the flash kernel's backward;
- memory: the flash backward in bf16 builds and keeps a JIT-compiled kernel for every sequence length
  it meets (~5 MB each, never freed), so a run over examples of varying length grows by hundreds of MB.

Gradients agree with the flash kernel's to bf16 rounding (tests/unit/fastpath/test_causal_spans.py).
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
    """query [1, heads, T, dim], key/value [1, kv_heads, T, dim], spans [(start, end, root, shared), ...]
    covering T (`tree_spans`) -> output [1, T, heads, dim]; each span attends causally within itself,
    after the first `shared` tokens of the span starting at `root` when shared > 0."""

    @staticmethod
    def forward(ctx, query, key, value, spans, scale):
        _, heads, tokens, dim = query.shape
        out = query.new_empty(1, tokens, heads, dim)
        lse = torch.empty(heads, tokens, dtype=torch.float32, device=query.device)
        for start, end, root, shared in spans:
            q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
            if shared:
                prefix = slice(root, root + shared)
                k, v = torch.cat([key[:, :, prefix], k], dim=2), torch.cat([value[:, :, prefix], v], dim=2)
                n = end - start
                hidden = torch.ones(n, shared + n, dtype=torch.bool, device=query.device).triu_(shared + 1)
                mask = torch.zeros(n, shared + n, dtype=query.dtype, device=query.device).masked_fill_(hidden, float("-inf"))
                o, span_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, 0.0, False, attn_mask=mask, scale=scale
                )
            else:
                o, span_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
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
        grad_k = torch.zeros(tokens, kv_heads, dim, dtype=torch.float32, device=key.device)  # branches add to their prefix's
        grad_v = torch.zeros_like(grad_k)
        for start, end, root, shared in ctx.spans:
            prefix = slice(root, root + shared)
            dq, dk, dv, dpk, dpv = _span_backward(
                query[0, :, start:end],
                key[0, :, start:end],
                value[0, :, start:end],
                out[0, start:end],
                grad_out[0, start:end],
                lse[:, start:end],
                ctx.scale,
                (key[0, :, prefix], value[0, :, prefix]) if shared else None,
            )
            grad_q[0, start:end] = dq
            grad_k[start:end] += dk
            grad_v[start:end] += dv
            if shared:
                grad_k[prefix] += dpk
                grad_v[prefix] += dpv
        grad_k, grad_v = (g.to(key.dtype)[None].transpose(1, 2) for g in (grad_k, grad_v))
        return grad_q.transpose(1, 2), grad_k, grad_v, None, None


def _span_backward(q, k, v, out, grad_out, lse, scale, prefix=None):
    """One sequence: q [H, L, d], k/v [KV, L, d], out/grad_out [L, H, d], lse [H, L], and for a branch
    the prefix's keys/values [KV, P, d] every query sees -> dq [L, H, d] (q's dtype), dk/dv [L, KV, d]
    and the prefix's dk/dv [P, KV, d] (None without a prefix), in fp32. Heads h = kv * group + g share
    kv head kv (transformers' GQA)."""
    heads, length, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    dtype = q.dtype
    shared = 0 if prefix is None else prefix[0].shape[1]
    delta = (grad_out.float() * out.float()).sum(-1).t()  # [H, L]: rowsum(dO * O)
    dq = torch.empty(length, heads, dim, dtype=dtype, device=q.device)
    dk = torch.zeros(kv_heads, length, dim, dtype=torch.float32, device=q.device)
    dv = torch.zeros_like(dk)
    dpk = dpv = None
    if prefix is not None:
        dpk = torch.zeros(kv_heads, shared, dim, dtype=torch.float32, device=q.device)
        dpv = torch.zeros_like(dpk)
    rows = max(16, min(256, BLOCK_ELEMENTS // (heads * (shared + length))))

    def scores_to_grads(qb, gb, keys, values, b0, b1, causal):
        """probs and dS of one block against `keys`, with dV added in; returns dS in q's dtype."""
        n = b1 - b0
        width = keys.shape[1]
        scores = (qb @ keys.transpose(1, 2)).float().mul_(scale).view(kv_heads, group, n, width)
        if causal:
            scores[..., b0:].masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
        probs = scores.sub_(lse[:, b0:b1].reshape(kv_heads, group, n, 1)).exp_().view(kv_heads, group * n, width)
        dp = (gb @ values.transpose(1, 2)).float().view(kv_heads, group, n, width)
        ds = dp.sub_(delta[:, b0:b1].reshape(kv_heads, group, n, 1)).view(kv_heads, group * n, width)
        return probs, ds.mul_(probs).mul_(scale).to(dtype)

    for b0 in range(0, length, rows):
        b1 = min(length, b0 + rows)
        n = b1 - b0
        qb = q[:, b0:b1].reshape(kv_heads, group * n, dim)
        gb = grad_out[b0:b1].transpose(0, 1).reshape(kv_heads, group * n, dim)
        kb, vb = k[:, :b1], v[:, :b1]
        probs, ds = scores_to_grads(qb, gb, kb, vb, b0, b1, causal=True)
        dv[:, :b1] += (probs.to(dtype).transpose(1, 2) @ gb).float()
        grad_qb = ds @ kb
        dk[:, :b1] += (ds.transpose(1, 2) @ qb).float()
        if prefix is not None:
            pk, pv = prefix
            probs, ds = scores_to_grads(qb, gb, pk, pv, b0, b1, causal=False)
            dpv += (probs.to(dtype).transpose(1, 2) @ gb).float()
            grad_qb = grad_qb.float().add_((ds @ pk).float())  # the two parts' sum rounded once
            dpk += (ds.transpose(1, 2) @ qb).float()
        dq[b0:b1] = grad_qb.view(heads, n, dim).transpose(0, 1)
    transposed = (t.transpose(0, 1) if t is not None else None for t in (dk, dv, dpk, dpv))
    return (dq, *transposed)

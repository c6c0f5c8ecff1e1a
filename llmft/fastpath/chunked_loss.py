"""Next-token cross-entropy that never holds the [tokens, vocabulary] logits at once.

The usual path projects every position onto the vocabulary, keeps those logits (and an fp32 copy,
and the log-softmax) for the backward pass: for 4 x 512 tokens and a 49,152-word vocabulary that is
~1.2 GB, most of it for positions that carry no label. Here only the supervised positions are
projected, a chunk at a time; each chunk's gradient with respect to the hidden states (and the
output weight, if it trains) is computed right away, so only that gradient — [tokens, hidden] — is
kept for backward. The loss is the same sum of per-token cross-entropies, in fp32.
"""

from __future__ import annotations

import torch

IGNORE = -100
#: Logit elements per chunk (~32 MB in fp32): large enough for efficient matmuls, small next to activations.
CHUNK_ELEMENTS = 1 << 23


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i); gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, dtype: torch.dtype
    ) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            h_all = hidden.to(dtype)
            w = weight.to(dtype)
            need_w = ctx.needs_input_grad[1]
            grad_hidden = torch.empty_like(h_all)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, h_all.shape[0], chunk):
                h, t = h_all[start : start + chunk], targets[start : start + chunk]
                logits = (h @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d(CE)/d(logits) = softmax - onehot
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                g = probs.to(dtype)
                grad_hidden[start : start + chunk] = g @ w
                if need_w:
                    grad_weight += (g.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if need_w else torch.empty(0))
        ctx.need_w = need_w
        ctx.weight_dtype, ctx.hidden_dtype = weight.dtype, hidden.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_out.to(grad_hidden.dtype)).to(ctx.hidden_dtype)
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.need_w else None
        return gh, gw, None, None, None


def chunk_size(vocab_size: int) -> int:
    return max(16, CHUNK_ELEMENTS // vocab_size)


def supervised_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a label (position t predicts labels[t + 1]) and those labels."""
    keep = labels[:, 1:] != IGNORE
    return hidden[:, :-1][keep], labels[:, 1:][keep]


def causal_lm_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Summed next-token cross-entropy of `labels` given the final hidden states [batch, seq, hidden]
    and the output projection `weight` [vocab, hidden]. Divide by the supervised-token count.

    `dtype`: what the projection computes in, as the plain path's output layer would — the autocast
    dtype under mixed precision, else the weight's (the default). Never the wider of the two: accelerate
    hands model outputs back in fp32 under mixed precision, and projecting those onto a bf16 weight in
    fp32 runs ~2.5x slower than the bf16 matmul the plain path does (measured on the benchmark job).
    The cross-entropy itself is always fp32."""
    h, targets = supervised_positions(hidden, labels)
    if targets.numel() == 0:
        return hidden.sum() * 0.0  # keeps the graph connected; nothing to learn from
    return _LinearCrossEntropySum.apply(h.contiguous(), weight, targets, chunk_size(weight.shape[0]), dtype or weight.dtype)


@torch.no_grad()
def per_token_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every supervised position, in order (for checks against a reference)."""
    h, targets = supervised_positions(hidden, labels)
    out = []
    for start in range(0, h.shape[0], chunk_size(weight.shape[0])):
        logits = (h[start : start + chunk_size(weight.shape[0])] @ weight.to(h.dtype).t()).float()
        t = targets[start : start + logits.shape[0]]
        out.append(torch.logsumexp(logits, -1) - logits.gather(1, t[:, None]).squeeze(1))
    return torch.cat(out) if out else torch.zeros(0)

"""Per-token log-probabilities through a frozen output head, the gradient taken in the forward pass.

TRL's fused head (`trl.kernels.ChunkedLogProbFunction`) projects each tile of positions onto the
vocabulary in forward, and again in backward to rebuild the softmax: four [positions, vocabulary]
matmuls per scored position that trains (one in forward; recompute, hidden and weight gradients in
backward), plus an online log-sum-exp pass per tile.

d log p(target) / d hidden = (onehot(target) - softmax) @ W does not depend on what comes after the
log-prob, so where the head's weight is frozen (LoRA, QLoRA, freeze: dpo and kto never train it)
that gradient is computed per chunk in forward and kept ([positions, hidden], the size of the hidden
states TRL keeps instead); backward scales it by each position's incoming gradient. Two matmuls per
position that trains, one for the reference pass (no gradient). The statistics TRL's metrics read
(entropy, mean logit, whether the target is the top token) come from the same logits, without
gradient. Values match TRL's kernel to fp32 rounding (tests/unit/fastpath/test_logprob_head.py).
"""

from __future__ import annotations

from typing import Any

import torch

#: Logit elements per chunk (~32 MB in fp32), as the chunked cross-entropy (`llmft.fastpath.chunked_loss`).
CHUNK_ELEMENTS = 1 << 23


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype, temperature: float):
        n = hidden.shape[0]
        chunk = max(16, CHUNK_ELEMENTS // weight.shape[0])
        need_grad = ctx.needs_input_grad[0]
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
            entropy, mean_logits = torch.empty_like(logp), torch.empty_like(logp)
            is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
            grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_grad else None
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                t = targets[start:end]
                logits = (hidden[start:end].to(dtype) @ w.t()).float()
                if temperature != 1.0:
                    logits.div_(temperature)
                mean_logits[start:end] = logits.mean(-1)
                shifted = logits.sub_(logits.amax(-1, keepdim=True))  # logit - max, in place
                target = shifted.gather(1, t[:, None]).squeeze(1)
                is_top1[start:end] = target >= 0
                exp = shifted.exp()
                total = exp.sum(-1)
                log_total = total.log()  # log-sum-exp - max
                logp[start:end] = target - log_total
                # -sum p log p with p = exp / total, log p = shifted - log_total
                entropy[start:end] = log_total - torch.linalg.vecdot(exp, shifted) / total
                if need_grad:
                    probs = exp.div_(total[:, None])  # softmax, in place
                    probs[torch.arange(end - start, device=t.device), t] -= 1.0  # softmax - onehot
                    grad_hidden[start:end] = probs.to(dtype).neg_() @ w / temperature  # (onehot - softmax) W / T
        ctx.mark_non_differentiable(entropy, mean_logits, is_top1)
        ctx.save_for_backward(grad_hidden if need_grad else torch.empty(0))
        ctx.hidden_dtype = hidden.dtype
        return logp, entropy, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor, *_unused):
        (grad_hidden,) = ctx.saved_tensors
        if grad_logp is None:
            return None, None, None, None, None
        return (grad_hidden * grad_logp[:, None].to(grad_hidden.dtype)).to(ctx.hidden_dtype), None, None, None, None


def frozen_plain_head(lm: Any) -> Any | None:
    """The output head of causal LM `lm` when `linear_logprobs` can score through it: a frozen,
    bias-free, unquantized projection of a family whose logits are that projection alone."""
    from llmft.modeling.families import family

    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None or getattr(head, "bias", None) is not None or type(weight).__name__ != "Parameter":
        return None
    if hasattr(head, "base_layer"):  # a LoRA layer (peft): its adapter would be bypassed
        return None
    if weight.requires_grad or weight.dim() != 2 or not family(getattr(lm.config, "model_type", None)).plain_head:
        return None
    return head


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target), entropy, mean logit, target is the top token) per position of `hidden` [N, H]
    under the frozen head `weight` [V, H] with the logits divided by `temperature`, the projection in
    `dtype` (default: the weight's), the rest in fp32. Only the log-probs carry a gradient (to `hidden`)."""
    if weight.requires_grad:
        raise ValueError("linear_logprobs takes a frozen output head; its weight requires grad")
    return _LinearLogProbs.apply(hidden, weight, targets, dtype or weight.dtype, float(temperature))

"""PPO's clipped objectives, entropy and token log-probabilities."""

from __future__ import annotations

import torch

from llmft.alignment.stats import masked_mean


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits` (..., vocab); computed in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of `logits` (..., vocab): logsumexp(z) - sum softmax(z) * z."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017), as a loss to minimise:
        ratio = exp(logp - logp_old)
        loss  = mean over masked tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    Returns (loss, clip fraction: share of tokens where the clipped term was the larger)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: the new prediction may move at most `cliprange_value` from the rollout's,
    and the worse of the clipped and unclipped squared errors counts:
        V_clip = V_old + clip(V - V_old, -c, c)
        loss   = 0.5 * mean over masked tokens of max((V - R)^2, (V_clip - R)^2)
    Returns (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac

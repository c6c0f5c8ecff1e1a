"""Generalised advantage estimation (Schulman et al. 2016) over per-token rewards and values."""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns, shape (batch, T), 0 where `mask` is 0.

    Per row, walking backwards over the unmasked steps only (so padding anywhere is skipped):
        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last unmasked step is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                           (the value target)
    """
    batch, steps = rewards.shape
    mask = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(batch)
    next_advantage = rewards.new_zeros(batch)
    for t in reversed(range(steps)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(m, a, torch.zeros_like(a))
        next_advantage = torch.where(m, a, next_advantage)
        next_value = torch.where(m, values[:, t], next_value)
    returns = (advantages + values) * mask
    return advantages, returns

"""The KL penalty that keeps the policy near its reference, and the controllers of its weight."""

from __future__ import annotations

import torch


def last_indices(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of `mask` (each row must have one)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (batch, T) and the per-token KL estimate.

    Every reply token gets `-kl_coef * (logp - ref_logp)` (the k1 estimator of KL(policy || ref),
    whose sum over a sampled reply is an unbiased estimate of the sequence KL); the reward model's
    score (batch,) is added on the reply's last token. Masked positions are 0.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_indices(mask)] += scores.to(rewards.dtype)
    return rewards, kl


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019), section 2.2: a proportional controller steering the observed KL
    towards `target`:
        e_t = clip(KL_t / target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),  with K_beta = n_steps / horizon
    where n_steps is the number of samples seen since the last update."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(kind: str, kl_coef: float, target: float, horizon: int) -> FixedKLController | AdaptiveKLController:
    if kind == "adaptive":
        return AdaptiveKLController(kl_coef, target, horizon)
    return FixedKLController(kl_coef)

"""What a PPO reply earns (`stage.reward_model` or `stage.rewards`): a scorer maps a batch of
(prompt, reply text, reply tokens) to one score per reply, and says what it measured for the log."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from llmft.data.prompts import Prompt
from llmft.rewards import Sample
from llmft.rewards.reward_model import RewardModelScore


class Scorer(Protocol):
    def __call__(self, prompts: Sequence[Prompt], replies: Sequence[str], reply_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One float score per reply."""
        ...

    def metrics(self) -> dict[str, float]:
        """Statistics of the last call, logged next to `reward`."""
        ...


class RewardScorer:
    """Scores (prompt, reply) with a reward model (`llmft.rewards.reward_model.RewardModelScore`: the
    reply rendered after the prompt with the reward model's template exactly as `rm` training renders
    pairs, the score read at its end-of-turn token), `batch_size` replies at a time; the raw score,
    not squashed."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, device: Any):
        self.score = RewardModelScore(model.to(device).eval().requires_grad_(False), tokenizer, device)
        self.batch_size = batch_size

    def __call__(
        self, prompts: Sequence[Prompt], replies: Sequence[str], reply_ids: Sequence[Sequence[int]] = ()
    ) -> torch.Tensor:
        conversations = [p.messages for p in prompts]
        scores: list[float] = []
        for start in range(0, len(conversations), self.batch_size):
            end = start + self.batch_size
            scores += self.score.scores(conversations[start:end], replies[start:end])
        return torch.tensor(scores)

    def metrics(self) -> dict[str, float]:
        return {}


class RuleScorer:
    """Scores replies with `stage.rewards` (`llmft.rewards`, the rules GRPO trains with): each entry
    reads the reply, its tokens (ends_cleanly: the stop token included) and the prompt's record
    (accuracy's answer column); the score is the weighted sum of the entries, an entry that gives
    no reward (None) counting 0, as in TRL's GRPO. Each entry's mean is logged as
    `rewards/<name>/mean`."""

    def __init__(self, rewards: Sequence[Any]):  # llmft.rewards.Reward
        self.rewards = list(rewards)
        self._last: dict[str, float] = {}

    def __call__(self, prompts: Sequence[Prompt], replies: Sequence[str], reply_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        samples = [
            Sample(reply, prompt.record, list(ids), prompt.messages, prompt.reference, prompt.where)
            for prompt, reply, ids in zip(prompts, replies, reply_ids)
        ]
        total = torch.zeros(len(samples))
        self._last = {}
        for reward in self.rewards:
            values = [math.nan if v is None else float(v) for v in reward(samples)]
            given = torch.tensor(values)
            total += reward.weight * torch.nan_to_num(given, nan=0.0)
            self._last[f"rewards/{reward.name}/mean"] = float(given.nanmean()) if (~given.isnan()).any() else math.nan
        return total

    def metrics(self) -> dict[str, float]:
        return dict(self._last)

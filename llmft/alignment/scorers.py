"""What a PPO reply earns (`stage.reward_model` or `stage.rewards`): a scorer maps a batch of
(prompt, reply text, reply tokens) to one score per reply, and says what it measured for the log."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from llmft.alignment.rollout import pad
from llmft.data.prompts import Prompt


class Scorer(Protocol):
    def __call__(self, prompts: Sequence[Prompt], replies: Sequence[str], reply_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One float score per reply."""
        ...

    def metrics(self) -> dict[str, float]:
        """Statistics of the last call, logged next to `reward`."""
        ...


class RewardScorer:
    """Scores (prompt, reply) with a reward model: the reply becomes the assistant turn after the
    prompt, rendered with the reward model's chat template exactly as `rm` training renders pairs
    and cut right after its end-of-turn token (`llmft.modeling.reward.reward_input_ids`);
    `model(input_ids, attention_mask).logits[:, 0]` is the score (raw, not squashed), read at the
    last token."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, device: Any):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else (tokenizer.eos_token_id or 0)

    def input_ids(self, prompt: Prompt, reply: str) -> list[int]:
        from llmft.modeling.reward import reward_input_ids

        return reward_input_ids(self.tokenizer, prompt.messages, [{"role": "assistant", "content": reply}])

    def __call__(
        self, prompts: Sequence[Prompt], replies: Sequence[str], reply_ids: Sequence[Sequence[int]] = ()
    ) -> torch.Tensor:
        encoded = [self.input_ids(p, r) for p, r in zip(prompts, replies)]
        scores = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                ids, mask = pad(encoded[start : start + self.batch_size], self.pad_id, "right")
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
                scores.append(out.logits[:, 0].float())
        return torch.cat(scores)

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
        from llmft.rewards import Sample

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

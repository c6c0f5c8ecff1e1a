"""`reward_model` rewards: an `rm` run's model scores prompt + completion. Each is rendered with the
reward model's own tokenizer and template exactly as rm training rendered it
(`llmft.modeling.reward.reward_input_ids`), and scored in one padded batch. The score goes through
a sigmoid, so that it lies in (0, 1) like every other reward (the rm loss only fixes differences of
scores, so 0.5 means "as good as average", not "right half the time")."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from llmft.modeling.reward import load_reward_model, reward_input_ids

log = logging.getLogger("llmft")


class RewardModelScore:
    """A loaded reward model and its tokenizer: (prompt, completion) pairs -> sigmoid(score).
    `scores` gives the raw scores (PPO's `stage.reward_model` rewards with those)."""

    def __init__(self, model: Any, tokenizer: Any, device: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device if device is not None else next(model.parameters()).device
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def scores(self, prompts: Sequence[Sequence[dict]], completions: Sequence[str]) -> list[float]:
        """The raw scores (the head's logit) of each prompt (a conversation) + completion (text), in
        one right-padded batch, read at each sequence's last token."""
        replies = [[{"role": "assistant", "content": c}] for c in completions]
        sequences = [reward_input_ids(self.tokenizer, list(p), r) for p, r in zip(prompts, replies)]
        width = max(len(s) for s in sequences)
        input_ids = torch.tensor([s + [self.pad_id] * (width - len(s)) for s in sequences], device=self.device)
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        return logits.float().tolist()

    def __call__(self, prompts: Sequence[Sequence[dict]], completions: Sequence[str]) -> list[float]:
        return torch.sigmoid(torch.tensor(self.scores(prompts, completions))).tolist()


def load_scorer(path: str, dtype: torch.dtype | None = None) -> RewardModelScore:
    """An `rm` run's directory as a scorer, on the GPU when there is one."""
    model, tokenizer = load_reward_model(path, dtype=dtype or torch.float32)
    if torch.cuda.is_available():
        model.to("cuda")
    log.info("reward model: %s", path)
    return RewardModelScore(model, tokenizer)

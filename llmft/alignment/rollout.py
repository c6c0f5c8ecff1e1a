"""Rollouts (prompts come from `llmft.data.prompts`): padding, sampling replies, log-probs/values of
replies (`llmft.alignment.scorers` scores them), and `Rollout`, one PPO iteration's samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from llmft.alignment.losses import entropy_from_logits, token_logprobs
from llmft.data.prompts import Prompt

# --- padding -------------------------------------------------------------------------------


def pad(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (batch, longest), padded on `side` ("left" or "right")."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not len(seq):
            continue
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def pad_width(x: torch.Tensor, width: int, side: str, value: float = 0) -> torch.Tensor:
    """Pad the last dimension of `x` to `width` on `side`."""
    extra = width - x.shape[-1]
    if extra <= 0:
        return x
    return torch.nn.functional.pad(x, (extra, 0) if side == "left" else (0, extra), value=value)


def reply_mask(replies: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """1 for every reply token up to and including the first stop token (all of them when none)."""
    is_stop = torch.isin(replies, torch.as_tensor(list(stop_ids), dtype=replies.dtype, device=replies.device))
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # stop tokens strictly before t
    return (stops_before == 0).long()


# --- sampling and log-probs ------------------------------------------------------------------


#: Generation settings pinned to "off", so that a model's generation_config.json (many chat models
#: ship a repetition penalty, top_k/top_p, ...) cannot change what is sampled: the log-probs PPO
#: trains on are those of the plain temperature-scaled softmax.
NEUTRAL_GENERATION = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": 0.0,
    "num_beams": 1,
}


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False


def generate(
    model: Any, prompts: Sequence[Prompt], sampling: Sampling, stop_ids: Sequence[int], pad_id: int, device: Any
) -> dict[str, torch.Tensor]:
    """Sample one reply per prompt (prompts left-padded). Returns the left-padded queries and
    right-padded replies with their masks; reply tokens after the first stop token are padding."""
    from transformers import GenerationConfig

    query, query_mask = pad([p.ids for p in prompts], pad_id, "left")
    query, query_mask = query.to(device), query_mask.to(device)
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not sampling.greedy,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        **NEUTRAL_GENERATION,
        **({} if sampling.greedy else {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}),
    )
    with torch.no_grad():
        out = model.generate(input_ids=query, attention_mask=query_mask, generation_config=config)
    reply = out[:, query.shape[1] :]
    mask = reply_mask(reply, stop_ids)
    reply = torch.where(mask.bool(), reply, torch.full_like(reply, pad_id))
    return {"query": query, "query_mask": query_mask, "reply": reply, "reply_mask": mask}


def forward_replies(
    model: Any,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    reply: torch.Tensor,
    reply_mask: torch.Tensor,
    temperature: float,
    value_head: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Entropies (no gradient), log-probs (of the temperature-scaled distribution, as sampled) and
    (with a value head) values of each reply token, shape (batch, reply length). Position ids follow
    the attention mask, so left padding does not shift positions.

    Where the output head is frozen and plain (LoRA, QLoRA, freeze) the scores come from
    `llmft.fastpath.logprob_head` over the final hidden states, a chunk of positions at a time (never
    the [replies, length, vocabulary] logits and their log-softmax); otherwise from the logits."""
    from llmft.fastpath.decide import causal_lm
    from llmft.fastpath.logprob_head import frozen_plain_head, linear_logprobs
    from llmft.fastpath.trainer import head_passthrough

    ids = torch.cat([query, reply], dim=1)
    attention = torch.cat([query_mask, reply_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    width = reply.shape[1]
    extra = {"logits_to_keep": width + 1} if _keeps_logits(model) else {}  # no logits over the prompt
    inputs = dict(
        input_ids=ids,
        attention_mask=attention,
        position_ids=positions,
        output_hidden_states=value_head is not None,
        use_cache=False,
        **extra,
    )
    # position t predicts token t + 1: reply token i is predicted at query_len - 1 + i
    head = frozen_plain_head(causal_lm(model))
    if head is not None:
        with head_passthrough(head):
            out = model(**inputs)
        hidden = out.logits[:, -(width + 1) : -1]
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
        scores = linear_logprobs(hidden.reshape(-1, hidden.shape[-1]), head.weight, reply.reshape(-1), dtype, temperature)
        logprobs, entropy = scores[0].view(reply.shape), scores[1].view(reply.shape)
    else:
        out = model(**inputs)
        logits = out.logits[:, -(width + 1) : -1] / temperature
        logprobs = token_logprobs(logits, reply)
        with torch.no_grad():
            entropy = entropy_from_logits(logits)
    values = value_head(out.hidden_states[-1][:, -(width + 1) : -1]) if value_head is not None else None
    return entropy, logprobs, values


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


# --- a PPO iteration's samples ----------------------------------------------------------


@dataclass
class Rollout:
    """One iteration's samples. query/query_mask are left-padded; every other (batch, T) tensor is
    aligned with the right-padded reply tokens and 0 where reply_mask is 0."""

    query: torch.Tensor
    query_mask: torch.Tensor
    reply: torch.Tensor
    reply_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def select(self, rows: torch.Tensor) -> Rollout:
        """The given rows, without the padding columns none of them uses."""
        query_mask, reply_mask = self.query_mask[rows], self.reply_mask[rows]
        first = int((query_mask.sum(0) > 0).nonzero().min())
        last = int((reply_mask.sum(0) > 0).nonzero().max()) + 1
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)[rows]
            if f.name.startswith("query"):
                value = value[:, first:]
            elif value.dim() == 2:
                value = value[:, :last]
            out[f.name] = value
        return Rollout(**out)


def cat_padded(parts: Sequence[torch.Tensor], side: str, value: float = 0) -> torch.Tensor:
    """The parts, each padded on `side` to the widest, stacked."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([pad_width(p, width, side, value) for p in parts])

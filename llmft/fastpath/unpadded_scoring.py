"""Padding-free scoring for TRL's trainers: a padded batch scored as one row of its real tokens, a
prefix that rows share computed once. `unpad_scoring` for the trainers that score tokens (dpo, kto,
grpo), `unpad_reward_scoring` for TRL's RewardTrainer (rm: a score per sequence).

TRL's dpo, kto and grpo trainers score sequences through TRL's fused log-prob head
(`model(..., labels=..., fused_lm_head=True)`, `trl.trainer.utils.add_fused_lm_head`): per-token
log-probs, entropies and the rest, shaped like the padded batch. A DPO micro-batch pads its chosen
and rejected rows to the longest of them, and every pad position runs through the whole model.

`unpad_scoring(model)` wraps that fused forward: the rows' real tokens are concatenated into one
row, positions restarting per row, so attention stays within each sequence (the padding-free
attention of `llmft.fastpath.varlen_attention`), and the per-token outputs are scattered back into
the padded shape TRL reads. TRL's losses and metrics are unchanged; pad positions stop costing
compute and memory. Each sequence's first token is never a label here (in the single row it would be
predicted from the sequence before); in a padded batch it is never predicted either.

With `share_prefixes` (dpo: a pair's chosen and rejected sides share their prompt), a row whose
tokens and labels begin like an earlier row's for L >= `MIN_SHARED` + 1 tokens is a branch of it:
only its tokens from L - 1 on are in the flat row, with positions continuing from L - 1, and the
attention lets them see the first L - 1 tokens of the row they branch from (`tree_spans`). The
shared tokens run through the model once for both sides (and their gradient adds up from both), as
in the padded batch where they ran twice with the same values. Token L - 1 is computed again in the
branch so that every label of the branch is scored from its own context. Needs the branch-aware
attention (`llmft_sdpa_varlen`); other kernels would see a branch as a sequence of its own.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch

from llmft.fastpath import prompt_cache

#: The per-token fields of TRL's FusedCausalLMOutput, shaped [rows, tokens - 1].
PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")
#: Fewest shared tokens worth a branch (each branch costs an attention call with a mask).
MIN_SHARED = 8


def contiguous_rows(attention_mask: torch.Tensor) -> bool:
    """True when every row's real tokens are one run (left or right padding, or none)."""
    mask = attention_mask.bool()
    rises = (mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0].long()
    return bool((rises <= 1).all()) and bool(mask.any(1).all())


@dataclass
class FlatRow:
    input_ids: torch.Tensor  # [1, N]
    position_ids: torch.Tensor  # [1, N]
    labels: torch.Tensor  # [1, N]
    index: torch.Tensor  # [rows, tokens]: each padded position's flat index (its shared copy for a branch), -1 for pads
    shared_tokens: int  # tokens a branch took from its root instead of computing them again

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "labels": self.labels}


def _common_prefix(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Leading tokens two (ids, labels) sequences have in common, ids and labels alike."""
    n = min(a[0].shape[0], b[0].shape[0])
    differ = torch.nonzero((a[0][:n] != b[0][:n]) | (a[1][:n] != b[1][:n]))
    return int(differ[0]) if differ.numel() else n


def flatten(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, share_prefixes: bool = False) -> FlatRow:
    """One padding-free row of the real tokens, each sequence's first token unlabelled; with
    `share_prefixes`, rows that begin like an earlier row are branches of it (module docstring)."""
    mask = attention_mask.bool()
    rows, width = mask.shape
    offsets = mask.long().argmax(1).tolist()
    lengths = mask.sum(1).tolist()
    real = [(input_ids[b, o : o + n], labels[b, o : o + n]) for b, (o, n) in enumerate(zip(offsets, lengths))]
    shared = [0] * rows
    root_of = list(range(rows))
    roots: list[int] = []
    for b in range(rows):
        best, best_root = 0, b
        if share_prefixes:
            for r in roots:
                common = _common_prefix(real[r], real[b])
                if common > best:
                    best, best_root = common, r
        if best - 1 >= MIN_SHARED:
            shared[b], root_of[b] = best - 1, best_root
        else:
            roots.append(b)
    order = [b for r in roots for b in [r, *[x for x in range(rows) if root_of[x] == r and x != r]]]
    index = torch.full((rows, width), -1, dtype=torch.long, device=input_ids.device)
    ids, pos, labs, start, next_position = [], [], [], 0, None
    for b in order:
        o, n, s = offsets[b], lengths[b], shared[b]
        if s and s == next_position:  # would read as the previous branch going on (`tree_spans`): share one less
            s = shared[b] = s - 1
        next_position = n
        tokens, row_labels = real[b]
        ids.append(tokens[s:])
        pos.append(torch.arange(s, n, device=input_ids.device))
        flat_labels = row_labels[s:].clone()
        flat_labels[0] = -100
        labs.append(flat_labels)
        if s:
            r = root_of[b]
            index[b, o : o + s] = index[r, offsets[r] : offsets[r] + s]
        index[b, o + s : o + n] = torch.arange(start, start + n - s, device=input_ids.device)
        start += n - s
    return FlatRow(torch.cat(ids)[None], torch.cat(pos)[None], torch.cat(labs)[None], index, sum(shared))


def scatter_back(value: torch.Tensor, flat: FlatRow, attention_mask: torch.Tensor) -> torch.Tensor:
    """A per-token output of the flat row ([1, N - 1]: flat position j scores flat token j + 1) in the
    padded batch's shape [rows, tokens - 1], where position t scores token t + 1; zero elsewhere."""
    mask = attention_mask.bool()
    scored = mask[:, :-1] & mask[:, 1:]
    out = value.new_zeros(scored.shape)
    return out.masked_scatter(scored, value[0, flat.index[:, :-1][scored]])


def unpad_scoring(model: Any, share_prefixes: bool = False, own_head: bool = False, temperature: float = 1.0) -> None:
    """Wrap the fused forward TRL installed on `model` (the causal LM, not a peft wrapper) so padded
    batches are scored padding-free. Anything else (generation, the model's own loss, inputs without
    an attention mask, masks that are not one run per row) goes to TRL's forward unchanged.

    `own_head` (a plain, bias-free output head, no router logits; `temperature`: the one TRL's head
    was installed with): while the head's weight is frozen, the scores come from
    `llmft.fastpath.logprob_head` (the gradient taken in forward) instead of TRL's kernel, in TRL's
    output layout."""
    fused = model.forward

    @functools.wraps(type(model).forward)  # generate() checks its kwargs against this signature
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        mask, ids, labels = kwargs.get("attention_mask"), kwargs.get("input_ids"), kwargs.get("labels")
        held = prompt_cache.take_held(self, ids, mask, labels)
        if held is not None:  # run ahead of this call (`llmft.fastpath.kl_replies`)
            return held
        plain = (
            args
            or not kwargs.get("fused_lm_head")
            or mask is None
            or ids is None
            or labels is None
            or kwargs.get("position_ids") is not None
            or kwargs.get("shift_labels") is not None
            or kwargs.get("inputs_embeds") is not None
            or not contiguous_rows(mask)
        )
        if plain:
            if own_head and _flat_call(args, kwargs):  # a row llmft flattened itself (kto's KL replies)
                rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "position_ids", "labels")}
                head = self.get_output_embeddings()
                if not head.weight.requires_grad and not rest.get("output_router_logits"):
                    flat = FlatRow(ids, kwargs["position_ids"], labels, index=torch.empty(0), shared_tokens=0)
                    return _score_with_own_head(self, flat, head, rest, temperature)
            return fused(*args, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in ("attention_mask", "input_ids", "labels")}
        flat = flatten(ids, mask, labels, share_prefixes)
        kept = prompt_cache.active()
        if isinstance(kept, prompt_cache.Capture):
            kept.note_flat(flat)
        head = self.get_output_embeddings()
        if own_head and not head.weight.requires_grad and not rest.get("output_router_logits"):
            out = _score_with_own_head(self, flat, head, rest, temperature)
        else:
            out = fused(**flat.inputs(), **rest)
        for name in PER_TOKEN_FIELDS:
            value = getattr(out, name, None)
            if value is not None:
                out[name] = scatter_back(value, flat, mask)
        if flat.shared_tokens and getattr(out, "loss", None) is not None:  # shared labels count once per row, as padded
            count = rest.get("num_items_in_batch") or (labels[:, 1:] != -100).sum().clamp(min=1)
            out["loss"] = -out.log_probs.sum() / count
        return out

    model.forward = types.MethodType(forward, model)


def _flat_call(args: tuple, kwargs: dict[str, Any]) -> bool:
    """A fused-head call on one padding-free row with its own positions and labels, nothing else."""
    ids, positions, labels = kwargs.get("input_ids"), kwargs.get("position_ids"), kwargs.get("labels")
    return (
        not args
        and bool(kwargs.get("fused_lm_head"))
        and kwargs.get("attention_mask") is None
        and ids is not None
        and ids.shape[0] == 1
        and positions is not None
        and labels is not None
        and positions.shape == ids.shape == labels.shape
        and kwargs.get("shift_labels") is None
        and kwargs.get("inputs_embeds") is None
    )


def _score_with_own_head(model: Any, flat: FlatRow, head: Any, rest: dict[str, Any], temperature: float) -> Any:
    """TRL's FusedCausalLMOutput for the flat row, scored by `linear_logprobs`."""
    from trl.trainer.utils import FusedCausalLMOutput

    from llmft.fastpath.logprob_head import linear_logprobs

    passed = {k: v for k, v in rest.items() if k not in ("fused_lm_head", "use_cache", "num_items_in_batch")}
    hidden = model.base_model(
        input_ids=flat.input_ids, position_ids=flat.position_ids, use_cache=False, **passed
    ).last_hidden_state
    labels = flat.labels[:, 1:]
    keep = labels != -100
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
    scores = linear_logprobs(hidden[:, :-1][keep], head.weight, labels[keep], dtype, temperature)
    log_probs, entropy, mean_logits, is_top1 = (x.new_zeros(keep.shape).masked_scatter(keep, x) for x in scores)
    count = rest.get("num_items_in_batch") or keep.sum().clamp(min=1)
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / count,
        log_probs=log_probs,
        entropy=entropy,
        mean_logits=mean_logits,
        is_top1=is_top1,
        label_mask=keep,
    )


def unpad_reward_scoring(model: Any, share_prefixes: bool = False) -> None:
    """Wrap a sequence-classification model's forward (the reward model TRL's RewardTrainer calls with
    a padded batch of chosen and rejected rows) so the rows run as one padding-free row, a prefix
    they share once, and each row's score is the score head at its last non-pad token, as
    transformers pools it (`GenericForSequenceClassification`). Calls with labels, embeddings, a KV
    cache or masks that are not one run per row go to the model's own forward."""
    own = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
        plain = (
            args
            or mask is None
            or ids is None
            or any(kwargs.get(k) is not None for k in ("labels", "position_ids", "inputs_embeds", "past_key_values"))
            or not contiguous_rows(mask)
        )
        if plain:
            return own(*args, **kwargs)
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        rest = {k: v for k, v in kwargs.items() if k not in ("attention_mask", "input_ids", "use_cache")}
        flat = flatten(ids, mask, mask.new_full(mask.shape, -100), share_prefixes)
        hidden = getattr(self, self.base_model_prefix)(
            input_ids=flat.input_ids, position_ids=flat.position_ids, use_cache=False, **rest
        ).last_hidden_state
        pad = self.config.get_text_config().pad_token_id
        real = mask.bool() & (ids != pad) if pad is not None else mask.bool()
        last = (torch.arange(ids.shape[1], device=ids.device) * real).argmax(-1)  # transformers' pooling rule
        rows = torch.arange(ids.shape[0], device=ids.device)
        scores = self.score(hidden[0, flat.index[rows, last]])
        return SequenceClassifierOutputWithPast(logits=scores)

    model.forward = types.MethodType(forward, model)

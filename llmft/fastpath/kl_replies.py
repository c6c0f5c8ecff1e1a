"""kto's KL replies scored after their prompt's kept keys and values, not with the prompt again.

TRL's KTOTrainer estimates its KL term from mismatched replies: row i's prompt x_i with another
row's completion y'_i. Per step it scores, under the policy and again under the reference, the KL
replies x_i + y'_i (`_compute_kl_logps`) and then the replies x_i + y_i: four passes, and the two KL
passes run every prompt a second time (prompts are ~40% of the tokens of the kto benchmark's replies).

`KLAfterReplies._compute_kl_logps` turns that order round where the padding-free path scores
(`llmft.fastpath.unpadded_scoring`, attention `llmft_sdpa_varlen`): the reply pass TRL runs next
runs first, under the same gradient mode and adapters, keeping each layer's keys and values
(`llmft.fastpath.prompt_cache`); its output is held and handed to TRL's own call of it. The KL
replies then run only from each prompt's last token on, positions going on from the prompt, each
attending to its prompt's kept keys and values: log-probs of the whole sequence (the same weights,
the same prompt tokens), as TRL sums them. Batches it cannot do so (no KL term, other model
inputs than text, a prompt that differs between a reply and its KL reply, dropout in effect) go to
TRL's method; so does one whose capture came out incomplete (a model whose attention layers lack
`layer_idx`), after which TRL's reply call computes the reply again.
"""

from __future__ import annotations

from typing import Any

import torch

from llmft.fastpath import prompt_cache
from llmft.fastpath.unpadded_scoring import contiguous_rows

#: The keys of a text-only KTO batch (TRL's collator); any other (images, token types) goes to TRL.
TEXT_KEYS = frozenset(
    {"input_ids", "attention_mask", "completion_mask", "KL_input_ids", "KL_attention_mask", "KL_completion_mask", "label"}
)


class KLAfterReplies:
    """Mixed into TRL's KTOTrainer (first base); `llmft_kl_after_replies` switches it on."""

    llmft_kl_after_replies = False

    def _compute_kl_logps(self, model: Any, batch: dict[str, Any]) -> Any:
        if self.llmft_kl_after_replies and self.calculate_KL and not self.aux_loss_enabled:
            from llmft.fastpath.decide import causal_lm

            logps = kl_logps(model, causal_lm(self.accelerator.unwrap_model(model)), batch)
            if logps is not None:
                return logps
        return super()._compute_kl_logps(model, batch)


def prompt_lengths(mask: torch.Tensor, completion_mask: torch.Tensor) -> list[int] | None:
    """Each row's prompt tokens (real tokens before its completion), when every row is one run of
    real tokens whose completion runs from the prompt to the end; else None."""
    if not contiguous_rows(mask):
        return None
    real = mask.bool()
    prompts = (real & ~completion_mask.bool()).sum(1)
    offsets = real.long().argmax(1)
    width = mask.shape[1]
    at = torch.arange(width, device=mask.device)
    expected = real & (at[None] >= (offsets + prompts)[:, None])
    if not torch.equal(expected, completion_mask.bool() & real) or bool((prompts < 1).any()):
        return None
    return prompts.tolist()


def _dropout_in_effect(lm: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.training and m.p > 0 for m in lm.modules()) or bool(
        lm.training and getattr(lm.config, "attention_dropout", 0.0)
    )


def kl_logps(model: Any, lm: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
    """The summed log-probs of each row's KL completion, as `KTOTrainer._compute_kl_logps` returns
    them, with the reply pass run first and held for TRL (module docstring); None where it cannot."""
    if not set(batch) <= TEXT_KEYS | {"ref_logps", "ref_KL_logps"} or _dropout_in_effect(lm):
        return None
    ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    kl_ids, kl_mask, kl_completion = batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]
    prompts, kl_prompts = prompt_lengths(mask, completion), prompt_lengths(kl_mask, kl_completion)
    if prompts is None or prompts != kl_prompts:
        return None
    offsets, kl_offsets = mask.long().argmax(1).tolist(), kl_mask.long().argmax(1).tolist()
    for b, p in enumerate(prompts):
        if not torch.equal(ids[b, offsets[b] : offsets[b] + p], kl_ids[b, kl_offsets[b] : kl_offsets[b] + p]):
            return None
    labels = ids.masked_fill(completion == 0, -100)
    wanted = [(b, offsets[b], p - 1) for b, p in enumerate(prompts)]  # each prompt but its last token
    with prompt_cache.capturing(wanted) as capture:  # the call TRL makes next, made now
        reply = model(input_ids=ids, attention_mask=mask, use_cache=False, labels=labels, fused_lm_head=True)
    if not capture.complete(lm.config.get_text_config().num_hidden_layers):
        return None
    kl_labels = kl_ids.masked_fill(kl_completion == 0, -100)
    lengths = kl_mask.sum(1).tolist()
    tokens, positions, targets, spans, owners, start = [], [], [], [], [], 0
    for b, p in enumerate(prompts):
        o, n = kl_offsets[b], lengths[b]
        tokens.append(kl_ids[b, o + p - 1 : o + n])
        positions.append(torch.arange(p - 1, n, device=ids.device))
        targets.append(kl_labels[b, o + p - 1 : o + n])  # starts at a prompt token: never a target
        spans.append((start, start + n - p + 1))
        owners.append(torch.full((n - p + 1,), b, device=ids.device))
        start += n - p + 1
    flat_targets = torch.cat(targets)[None]
    with torch.no_grad(), prompt_cache.extending(capture, spans):
        out = model(
            input_ids=torch.cat(tokens)[None],
            position_ids=torch.cat(positions)[None],
            labels=flat_targets,
            use_cache=False,
            fused_lm_head=True,
        )
    scored = flat_targets[0, 1:] != -100
    owner = torch.cat(owners)[1:][scored]
    sums = out.log_probs[0, : scored.shape[0]][scored].float()
    result = torch.zeros(len(prompts), dtype=out.log_probs.dtype, device=ids.device)
    result.index_add_(0, owner, sums.to(result.dtype))
    prompt_cache.hold(lm, ids, mask, labels, reply)
    return result

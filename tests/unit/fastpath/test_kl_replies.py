"""kto's KL replies after their prompt's kept keys and values (`llmft.fastpath.kl_replies`,
`llmft.fastpath.prompt_cache`): on the tiny Llama in fp32, the KL log-probs equal TRL's own pass
over the whole KL sequences, the reply pass run ahead is handed to the next identical call (values
and gradients as TRL's padded call), only the KL completions run the second time, and batches it
cannot do go back to TRL's method with nothing held."""

from __future__ import annotations

import pytest
import torch
from tiny import build_model
from trl.trainer.utils import add_fused_lm_head

from llmft.fastpath import prompt_cache
from llmft.fastpath.kl_replies import kl_logps, prompt_lengths
from llmft.fastpath.unpadded_scoring import unpad_scoring
from llmft.fastpath.varlen_attention import register

VOCAB = 97
FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")


def _pad(rows: list[tuple[torch.Tensor, torch.Tensor]], left: bool):
    """(prompt, completion) rows padded into input_ids, attention_mask, completion_mask."""
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        at = width - n if left else 0
        ids[i, at : at + n], mask[i, at : at + n] = torch.cat([p, c]), 1
        completion[i, at + len(p) : at + n] = 1
    return ids, mask, completion


def _batch(left: bool, rows: int = 4) -> dict[str, torch.Tensor]:
    """KTO's batch as TRL's collator makes it: each row's KL reply is its prompt with the previous
    row's completion (two rows share a prompt, as a pair's two replies can)."""
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, VOCAB, (9 + 4 * (i // 2 * 2),), generator=gen) for i in range(rows)]
    prompts[1] = prompts[0]
    completions = [torch.randint(3, VOCAB, (3 + 5 * i,), generator=gen) for i in range(rows)]
    ids, mask, completion = _pad(list(zip(prompts, completions)), left)
    kl_ids, kl_mask, kl_completion = _pad([(p, completions[i - 1]) for i, p in enumerate(prompts)], left)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "completion_mask": completion,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_mask,
        "KL_completion_mask": kl_completion,
        "label": [True, False] * (rows // 2),
    }


def _model(fast: bool, own_head: bool = True):
    model = build_model(VOCAB, seed=5).float()
    model.lm_head.weight.requires_grad_(not own_head)
    add_fused_lm_head(model, outputs=FIELDS)
    if fast:
        model.set_attn_implementation(register())
        unpad_scoring(model, share_prefixes=True, own_head=own_head)
    return model


def _trl_kl_logps(model, batch) -> torch.Tensor:
    """What `KTOTrainer._compute_kl_logps` computes."""
    labels = batch["KL_input_ids"].masked_fill(batch["KL_completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(
            input_ids=batch["KL_input_ids"],
            attention_mask=batch["KL_attention_mask"],
            labels=labels,
            use_cache=False,
            fused_lm_head=True,
        )
    return out.log_probs[:, -(labels.shape[1] - 1) :].sum(-1)


def _reply(model, batch):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, labels=labels, fused_lm_head=True
    )


def test_prompt_lengths_worked_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    completion = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    assert prompt_lengths(mask, completion) == [2, 2]
    assert prompt_lengths(mask, torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])) is None  # completion stops early
    assert prompt_lengths(mask, torch.tensor([[1, 1, 1, 1, 0], [0, 0, 0, 1, 1]])) is None  # no prompt


@pytest.mark.parametrize("own_head", [True, False], ids=["own-head", "trl-head"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_kl_logps_and_the_held_reply_equal_trls(left, own_head, monkeypatch):
    from llmft.fastpath import logprob_head

    batch = _batch(left)
    reference, fast = _model(False, own_head), _model(True, own_head)
    seen, heads = [], []
    fast.model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].shape[1]), with_kwargs=True)
    original = logprob_head.linear_logprobs
    monkeypatch.setattr(logprob_head, "linear_logprobs", lambda *a, **k: heads.append(a[0].shape[0]) or original(*a, **k))

    got = kl_logps(fast, fast, batch)
    torch.testing.assert_close(got, _trl_kl_logps(reference, batch), atol=1e-5, rtol=1e-5)
    assert len(heads) == (2 if own_head else 0)  # the reply pass and the KL pass, through llmft's head
    prompts = prompt_lengths(batch["KL_attention_mask"], batch["KL_completion_mask"])
    kl_tokens = int(batch["KL_attention_mask"].sum()) - sum(prompts) + len(prompts)
    assert seen[1] == kl_tokens  # the second pass: each KL completion and the prompt token before it

    held = _reply(fast, batch)  # TRL's next call: the reply pass already run
    assert len(seen) == 2
    want = _reply(reference, batch)
    for name in FIELDS:
        torch.testing.assert_close(held[name].float(), want[name].float(), atol=1e-5, rtol=1e-5, msg=name)
    held.log_probs.sum().backward()
    want.log_probs.sum().backward()
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    _reply(fast, batch)
    assert len(seen) == 3, "a held reply is handed over once"


def test_a_different_call_is_not_handed_the_held_reply():
    batch = _batch(False)
    fast = _model(True)
    kl_logps(fast, fast, batch)
    with torch.no_grad():  # another gradient mode: computed afresh
        out = _reply(fast, batch)
    assert not out.log_probs.requires_grad
    kl_logps(fast, fast, batch)
    assert prompt_cache.take_held(fast, batch["input_ids"].clone(), batch["attention_mask"], None) is None


def test_what_it_leaves_to_trl():
    fast = _model(True)
    batch = _batch(False)
    differ = dict(batch, KL_input_ids=batch["KL_input_ids"].clone())
    differ["KL_input_ids"][0, 0] += 1  # a KL reply whose prompt is not its reply's
    assert kl_logps(fast, fast, differ) is None
    assert kl_logps(fast, fast, dict(batch, token_type_ids=torch.zeros_like(batch["input_ids"]))) is None
    plain = _model(False)  # padded scoring: no flat row to keep
    assert kl_logps(plain, plain, batch) is None
    assert prompt_cache.take_held(fast, batch["input_ids"], batch["attention_mask"], None) is None

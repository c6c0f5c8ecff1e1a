"""Padding-free scoring of TRL's fused log-prob head (`llmft.fastpath.unpadded_scoring`) and the
branch-aware attention it needs for shared prefixes (`varlen_attention.tree_spans`): per-token
outputs equal TRL's padded computation on the tiny Llama for right- and left-padded batches, with
and without shared prefixes, values and gradients; a hand-worked layout; spans read from positions."""

from __future__ import annotations

import pytest
import torch
from tiny import build_model
from trl.trainer.utils import add_fused_lm_head

from llmft.fastpath.unpadded_scoring import MIN_SHARED, flatten, unpad_scoring
from llmft.fastpath.varlen_attention import register, tree_spans, varlen_sdpa_forward

VOCAB = 97
FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")


def test_tree_spans_from_positions():
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 2, 3, 4, 0, 1]])
    # a sequence, a second one, a branch sharing its first 2 tokens, a third sequence
    assert tree_spans(positions, 0, 12) == [(0, 4, 0, 0), (4, 7, 4, 0), (7, 10, 4, 2), (10, 12, 10, 0)]
    assert tree_spans(torch.tensor([[0, 1, 2, 5, 6]]), 0, 5) == [(0, 5, 0, 0)]  # not a branch: too long a share
    assert tree_spans(None, 0, 5) == [(0, 5, 0, 0)]


def test_branch_attention_equals_the_whole_sequence():
    """A branch that shares 5 tokens with the sequence before it attends as the whole sequence would."""
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    a = [torch.randn(1, h, 10, dim) for h in (heads, kv_heads, kv_heads)]
    tail = [torch.randn(1, h, 6, dim) for h in (heads, kv_heads, kv_heads)]
    whole = [torch.cat([x[:, :, :5], t], dim=2) for x, t in zip(a, tail)]  # B = A[:5] + its own 6 tokens
    flat = [torch.cat([x, t], dim=2) for x, t in zip(a, tail)]
    positions = torch.cat([torch.arange(10), torch.arange(5, 11)])[None]
    module = torch.nn.Module()
    out, _ = varlen_sdpa_forward(module, *flat, None, position_ids=positions)
    want = torch.nn.functional.scaled_dot_product_attention(*whole, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out[:, 10:], want[:, 5:])
    want_a = torch.nn.functional.scaled_dot_product_attention(*a, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out[:, :10], want_a)


def test_flat_layout_worked_by_hand():
    """Rows: A (right-padded), B sharing A's first 10 tokens and labels, C on its own (left-padded)."""
    a = list(range(1, 13))  # 12 tokens
    b = a[:10] + [50, 51, 52]  # 13 tokens, shares 10
    c = [60, 61, 62]
    width = 13
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    ids[0, :12], mask[0, :12] = torch.tensor(a), 1
    ids[1, :13], mask[1, :13] = torch.tensor(b), 1
    ids[2, 10:], mask[2, 10:] = torch.tensor(c), 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # a prompt of 4 tokens
    flat = flatten(ids, mask, labels, share_prefixes=True)
    assert MIN_SHARED <= 9
    # B keeps its tokens from 9 on (the 10th shared token computed again), positions going on from 9
    assert flat.input_ids[0].tolist() == a + [10, 50, 51, 52] + c
    assert flat.position_ids[0].tolist() == list(range(12)) + [9, 10, 11, 12] + [0, 1, 2]
    assert flat.labels[0].tolist() == [-100] * 4 + a[4:] + [-100, 50, 51, 52] + [-100, 61, 62]
    assert flat.index[1].tolist() == list(range(9)) + [12, 13, 14, 15]
    assert flat.index[2].tolist() == [-1] * 10 + [16, 17, 18]
    assert flat.shared_tokens == 9
    unshared = flatten(ids, mask, labels)
    assert unshared.input_ids.shape[1] == 28 and unshared.shared_tokens == 0


def _batch(left: bool):
    """Six rows: three prompts, two replies each (sharing the prompt, and two of them a reply start),
    of different lengths, padded left or right; labels on the replies only."""
    gen = torch.Generator().manual_seed(1)
    rows, prompts = [], []
    for p in range(3):
        prompt = torch.randint(3, VOCAB, (12 + 5 * p,), generator=gen)
        common = torch.randint(3, VOCAB, (3,), generator=gen)
        for r in range(2):
            reply = torch.randint(3, VOCAB, (4 + 7 * r + p,), generator=gen)
            rows.append(torch.cat([prompt, common, reply]) if p == 1 else torch.cat([prompt, reply]))
            prompts.append(len(prompt))
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, n) in enumerate(zip(rows, prompts)):
        at = width - len(row) if left else 0
        ids[i, at : at + len(row)], mask[i, at : at + len(row)] = row, 1
        labels[i, at + n : at + len(row)] = row[n:]
    return ids, mask, labels


def _model(share: bool | None, own_head: bool = False):
    """The tiny Llama with TRL's fused head; `share` None: TRL's padded forward as it is. With
    `own_head` the head's weight is frozen (as under LoRA), so llmft's head kernel scores."""
    model = build_model(VOCAB, seed=3).float()
    model.lm_head.weight.requires_grad_(not own_head)
    add_fused_lm_head(model, outputs=FIELDS)
    if share is not None:
        model.set_attn_implementation(register())
        unpad_scoring(model, share_prefixes=share, own_head=own_head)
    return model


@pytest.mark.parametrize("own_head", [False, True], ids=["trl-head", "own-head"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
@pytest.mark.parametrize("share", [False, True], ids=["padding-free", "shared-prefixes"])
def test_outputs_and_gradients_equal_trl_padded(left, share, own_head, monkeypatch):
    from llmft.fastpath import logprob_head

    calls = []
    real_kernel = logprob_head.linear_logprobs
    monkeypatch.setattr(logprob_head, "linear_logprobs", lambda *a: calls.append(1) or real_kernel(*a))
    ids, mask, labels = _batch(left)
    reference, fast = _model(None, own_head), _model(share, own_head)
    seen = []
    fast.model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"].shape[1]), with_kwargs=True)
    outs = []
    for model in (reference, fast):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
        out.log_probs.sum().backward()
        outs.append(out)
    for name in FIELDS:
        torch.testing.assert_close(outs[1][name].float(), outs[0][name].float(), atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(outs[1].loss, outs[0].loss)
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert bool(calls) == own_head
    real = int(mask.sum())
    flat = flatten(ids, mask, labels, share)
    assert seen == [real - flat.shared_tokens]
    assert (flat.shared_tokens > 3 * 12) == share  # each prompt shared once (and a reply start)


def test_generation_passes_through():
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    a = _model(None).generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    b = _model(True).generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b)


def test_consecutive_branches_stay_apart():
    """B shares A's first 10 tokens and ends at position 14; C shares 16: starting C's branch at
    position 15 would read as B going on, so C shares one token less, and scores stay TRL's."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(3, VOCAB, (24,), generator=gen)
    b = torch.cat([a[:11], torch.randint(3, VOCAB, (4,), generator=gen)])  # 15 tokens, shares 11 -> branch at 10
    c = torch.cat([a[:17], torch.randint(3, VOCAB, (5,), generator=gen)])  # shares 17 -> branch at 16, not 15
    rows = [a, b, c]
    width = max(len(r) for r in rows)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    flat = flatten(ids, mask, labels, share_prefixes=True)
    spans = tree_spans(flat.position_ids, 0, flat.input_ids.shape[1])
    assert [shared for *_, shared in spans] == [0, 10, 16]
    c[16] = ids[2, 16] = labels[2, 16] = (a[16] + 1) % VOCAB  # now C shares 16 tokens: its branch would start at 15
    labels[2, 16] = ids[2, 16]
    flat = flatten(ids, mask, labels, share_prefixes=True)
    spans = tree_spans(flat.position_ids, 0, flat.input_ids.shape[1])
    assert [shared for *_, shared in spans] == [0, 10, 14]
    outs = [
        m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
        for m in (_model(None), _model(True))
    ]
    torch.testing.assert_close(outs[1].log_probs, outs[0].log_probs, atol=1e-5, rtol=1e-5)


def test_own_head_at_the_sampling_temperature():
    """grpo's head scores at its sampling temperature: llmft's kernel takes the one TRL's head was given."""
    ids, mask, labels = _batch(left=True)
    models = []
    for own in (False, True):
        model = build_model(VOCAB, seed=3).float()
        model.lm_head.weight.requires_grad_(False)
        add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
        if own:
            model.set_attn_implementation(register())
            unpad_scoring(model, share_prefixes=True, own_head=True, temperature=0.7)
        models.append(model)
    outs = [m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False) for m in models]
    for name in ("log_probs", "entropy"):
        torch.testing.assert_close(outs[1][name], outs[0][name], atol=1e-5, rtol=1e-5, msg=name)

"""The CPU bf16 attention for padding-free rows: outputs and gradients against a float64 reference
(each span attended causally on its own, a branch after its prefix), as close as torch's own bf16
flash kernel gets, and the model path uses it only where it applies."""

from __future__ import annotations

import pytest
import torch

from llmft.fastpath import causal_spans
from llmft.fastpath.causal_spans import CausalSpans

SPANS = [(0, 5, 0, 0), (5, 70, 0, 0), (70, 71, 0, 0), (71, 400, 0, 0)]  # one token, and spans longer than a query block
# (start, end, root, shared): a pair's rejected side (70-130) after the first 40 tokens of its chosen
# side (5-70), a one-token branch, and a long branch after a whole sequence
BRANCHES = [(0, 5, 0, 0), (5, 70, 5, 0), (70, 130, 5, 40), (130, 131, 5, 64), (131, 200, 0, 0), (200, 400, 131, 69)]


def reference(q, k, v, spans, scale):
    """float64, per span (a branch: its prefix's keys and values first, each query seeing all of them),
    GQA by repeating kv heads: [1, T, H, d]."""
    group = q.shape[1] // k.shape[1]
    outs = []
    for s, e, root, shared in spans:
        keys = torch.cat([k[:, :, root : root + shared], k[:, :, s:e]], dim=2).repeat_interleave(group, 1)
        values = torch.cat([v[:, :, root : root + shared], v[:, :, s:e]], dim=2).repeat_interleave(group, 1)
        mask = torch.ones(e - s, shared + e - s, dtype=torch.bool).tril_(shared)
        outs.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, s:e], keys, values, attn_mask=mask, scale=scale))
    return torch.cat(outs, dim=2).transpose(1, 2)


def inputs(heads=6, kv_heads=2, tokens=400, dim=16):
    torch.manual_seed(0)
    q = torch.randn(1, tokens, heads, dim).transpose(1, 2)  # transformers' layout: a transposed view
    k, v = torch.randn(1, kv_heads, tokens, dim), torch.randn(1, kv_heads, tokens, dim)
    grad = torch.randn(1, tokens, heads, dim)
    return q, k, v, grad


def grads(fn, q, k, v, grad, dtype):
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, grad.to(dtype)))


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("spans", [SPANS, BRANCHES], ids=["sequences", "branches"])
def test_matches_a_float64_reference_as_well_as_torchs_bf16_kernel(spans):
    q, k, v, grad = inputs()
    scale = 0.25
    truth = grads(lambda *t: reference(*t, spans, scale), q, k, v, grad, torch.float64)
    ours = grads(lambda *t: CausalSpans.apply(*t, spans, scale), q, k, v, grad, torch.bfloat16)
    torchs = grads(lambda *t: reference(*t, spans, scale), q, k, v, grad, torch.bfloat16)
    assert ours[0].shape == (1, 400, 6, 16) and ours[0].is_contiguous()
    for mine, bf16_kernel, exact in zip(ours, torchs, truth):
        assert rel_err(mine, exact) < max(2 * rel_err(bf16_kernel, exact), 1e-2)


def test_each_span_is_on_its_own():
    q, k, v, _ = inputs()
    out = CausalSpans.apply(q.bfloat16(), k.bfloat16(), v.bfloat16(), SPANS, 0.25)
    k2 = k.clone()
    k2[:, :, 5:70] += 1.0  # change only the second span's keys
    out2 = CausalSpans.apply(q.bfloat16(), k2.bfloat16(), v.bfloat16(), SPANS, 0.25)
    changed = (out2 - out).abs().amax(dim=(0, 2, 3)) > 0
    assert not changed[:5].any() and changed[5:70].any() and not changed[70:].any()


def test_a_branch_sees_its_prefix_and_itself_only():
    q, k, v, _ = inputs()
    out = CausalSpans.apply(q.bfloat16(), k.bfloat16(), v.bfloat16(), BRANCHES, 0.25)
    for changed_values, changed_rows in (
        (slice(5, 45), [range(5, 70), range(70, 131)]),  # the chosen side's first 40: itself and both branches
        (slice(45, 70), [range(45, 70), range(130, 131)]),  # its last 25: itself and the branch sharing 64 tokens
        (slice(70, 130), [range(70, 130)]),  # the rejected side: only itself
    ):
        v2 = v.clone()
        v2[:, :, changed_values] += 1.0
        changed = (CausalSpans.apply(q.bfloat16(), k.bfloat16(), v2.bfloat16(), BRANCHES, 0.25) - out).abs().amax(
            dim=(0, 2, 3)
        ) > 0
        expected = torch.zeros(400, dtype=torch.bool)
        for rows in changed_rows:
            expected[list(rows)] = True
        assert torch.equal(changed, expected)


def test_small_query_blocks_give_the_same_gradients(monkeypatch):
    q, k, v, grad = inputs(tokens=300)
    spans = [(0, 300, 0, 0)]
    whole = grads(lambda *t: CausalSpans.apply(*t, spans, 0.25), q, k, v, grad, torch.bfloat16)
    monkeypatch.setattr(causal_spans, "BLOCK_ELEMENTS", 6 * 300 * 16)  # 16-row query blocks
    blocked = grads(lambda *t: CausalSpans.apply(*t, spans, 0.25), q, k, v, grad, torch.bfloat16)
    for a, b in zip(whole[1:], blocked[1:]):
        assert rel_err(a, b) < 1e-2


@pytest.mark.parametrize(
    "dtype, grad_on, dropout, expected",
    [
        (torch.bfloat16, True, 0.0, True),
        (torch.float32, True, 0.0, False),
        (torch.bfloat16, False, 0.0, False),
        (torch.bfloat16, True, 0.1, False),
    ],
)
def test_applies_to_cpu_bf16_training_only(dtype, grad_on, dropout, expected):
    q = torch.zeros(1, 2, 4, 8, dtype=dtype, requires_grad=grad_on)
    assert causal_spans.applies(q, dropout) is expected


@pytest.mark.parametrize(
    "second, spans",
    [
        (list(range(15)), [(0, 25, 0, 0), (25, 40, 25, 0)]),
        (list(range(10, 25)), [(0, 25, 0, 0), (25, 40, 0, 10)]),  # a branch after the first 10 tokens
    ],
    ids=["sequences", "branch"],
)
def test_bf16_training_through_the_model_uses_it_with_the_same_loss_and_gradients(monkeypatch, second, spans):
    """A padding-free row through a bf16 model in training: llmft_sdpa_varlen routes to CausalSpans;
    the loss equals the per-span SDPA path's (same forward kernel), gradients agree to bf16 rounding."""
    from tiny import build_model

    from llmft.fastpath.varlen_attention import register

    torch.manual_seed(0)
    model = build_model(64).to(torch.bfloat16).train()
    model.set_attn_implementation(register())
    ids = torch.randint(0, 64, (1, 40))
    positions = torch.tensor([list(range(25)) + second])

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
        loss.backward()
        return loss.item(), [p.grad.float().clone() for p in model.parameters() if p.grad is not None]

    calls = []
    original = CausalSpans.apply
    monkeypatch.setattr(CausalSpans, "apply", lambda *a: calls.append(a[3]) or original(*a))
    ours = loss_and_grads()
    assert calls and calls[0] == spans
    monkeypatch.setattr(causal_spans, "applies", lambda *a: False)
    sdpa = loss_and_grads()
    assert ours[0] == sdpa[0]
    assert len(ours[1]) == len(sdpa[1])
    for a, b in zip(ours[1], sdpa[1]):
        assert rel_err(a, b) < 3e-2

"""The fast path's kernels compute what transformers computes: values and gradients, against the
model's own modules and torch's cross-entropy (fp32, tight), and close in bf16."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import build_model

from llmft.fastpath.chunked_loss import causal_lm_loss_sum, per_token_losses
from llmft.fastpath.fused_ops import apply_fused_ops
from llmft.fastpath.varlen_attention import register, segments


def reference_ce_sum(hidden, weight, labels):
    logits = (hidden @ weight.t()).float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, weight.shape[0]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )


@pytest.mark.parametrize("train_weight", [False, True])
def test_chunked_loss_matches_cross_entropy_value_and_gradients(train_weight, monkeypatch):
    import llmft.fastpath.chunked_loss as chunked

    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 300)  # several chunks, the last one partial
    torch.manual_seed(0)
    hidden = torch.randn(2, 40, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=train_weight)
    labels = torch.randint(0, 300, (2, 40))
    labels[:, :9] = -100
    labels[1, 25:] = -100
    ours = causal_lm_loss_sum(hidden, weight, labels)
    (ours * 0.37).backward()
    grads = hidden.grad.clone(), weight.grad.clone() if train_weight else None
    hidden.grad = None
    weight.grad = None
    ref = reference_ce_sum(hidden, weight, labels)
    (ref * 0.37).backward()
    assert torch.allclose(ours, ref, rtol=1e-6)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-6)
    if train_weight:
        assert torch.allclose(grads[1], weight.grad, atol=1e-5)
    per_token = per_token_losses(hidden, weight, labels)
    assert per_token.shape[0] == int((labels[:, 1:] != -100).sum()) and torch.allclose(per_token.sum(), ref, rtol=1e-6)


def test_chunked_loss_projects_in_the_weights_dtype_not_the_wider_hidden_dtype():
    """Under mixed precision accelerate hands the final hidden states back in fp32 while the output
    weight is bf16: the projection must run in bf16, as the plain path's output layer does (upcasting
    the weight to fp32 instead ran ~2.5x slower on the benchmark), with the cross-entropy in fp32 and
    the gradient returned in the hidden states' dtype."""
    torch.manual_seed(0)
    hidden = (torch.randn(1, 30, 32) * 3).requires_grad_()
    weight = torch.randn(500, 32).to(torch.bfloat16)
    labels = torch.randint(0, 500, (1, 30))
    labels[:, :5] = -100
    ours = causal_lm_loss_sum(hidden, weight, labels)
    ours.backward()
    assert hidden.grad.dtype == torch.float32
    plain = reference_ce_sum(hidden.detach().to(torch.bfloat16), weight, labels)  # bf16 logits, fp32 loss
    upcast = reference_ce_sum(hidden.detach(), weight.float(), labels)
    assert torch.allclose(ours, plain, rtol=1e-6)
    assert not torch.allclose(ours, upcast, rtol=1e-4)  # the fp32 projection would show
    h16 = hidden.detach().to(torch.bfloat16).float().requires_grad_()
    reference_ce_sum(h16.to(torch.bfloat16), weight, labels).backward()
    assert torch.allclose(hidden.grad, h16.grad, rtol=2e-2, atol=1e-2)


def test_chunked_loss_dtype_argument_sets_the_projection_dtype():
    """The trainer passes autocast's dtype: fp32 master weights project in bf16 under bf16 mixed precision."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(1, 12, 16) * 3, torch.randn(300, 16, requires_grad=True)
    labels = torch.randint(0, 300, (1, 12))
    ours = causal_lm_loss_sum(hidden, weight, labels, torch.bfloat16)
    ours.backward()
    assert weight.grad.dtype == torch.float32
    assert torch.allclose(
        ours, reference_ce_sum(hidden.to(torch.bfloat16), weight.detach().to(torch.bfloat16), labels), rtol=1e-6
    )
    assert not torch.allclose(ours, reference_ce_sum(hidden, weight.detach(), labels), rtol=1e-4)


def test_chunked_loss_without_supervised_tokens_is_zero_and_connected():
    hidden = torch.randn(1, 5, 8, requires_grad=True)
    loss = causal_lm_loss_sum(hidden, torch.randn(20, 8), torch.full((1, 5), -100))
    loss.backward()
    assert loss.item() == 0 and hidden.grad is not None and not hidden.grad.any()


def test_segments_split_where_positions_restart():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert segments(positions, 0, 9) == [(0, 3), (3, 5), (5, 9)]
    assert segments(None, 0, 4) == [(0, 4)]


def _packed_vs_separate(attention: str):
    """Two examples concatenated in one row give each example's own logits."""
    model = build_model(64).eval()
    model.set_attn_implementation(attention)
    a, b = torch.randint(0, 64, (1, 7)), torch.randint(0, 64, (1, 5))
    row = torch.cat([a, b], dim=1)
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=positions).logits
        separate = torch.cat([model(input_ids=a).logits, model(input_ids=b).logits], dim=1)
    return packed, separate


def test_varlen_attention_keeps_examples_apart():
    packed, separate = _packed_vs_separate(register())
    assert torch.allclose(packed, separate, atol=1e-5)


def test_varlen_attention_equals_sdpa_with_padding_mask_and_cache():
    """Padded batches and generation fall through to transformers' SDPA: same logits, same tokens."""
    torch.manual_seed(0)
    ours, sdpa = build_model(64).eval(), build_model(64).eval()
    ours.set_attn_implementation(register())
    ids = torch.randint(0, 64, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    with torch.no_grad():
        assert torch.allclose(
            ours(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            sdpa(input_ids=ids, attention_mask=mask).logits[mask.bool()],
            atol=1e-5,
        )
        kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(ids, **kwargs), sdpa.generate(ids, **kwargs))


def test_leaky_row_would_differ():
    """Guard the guard: without restarting positions the two examples do see each other."""
    model = build_model(64).eval()
    model.set_attn_implementation(register())
    a, b = torch.randint(0, 64, (1, 7)), torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        joined = model(input_ids=torch.cat([a, b], dim=1)).logits[:, 7:]
        alone = model(input_ids=b).logits
    assert (joined - alone).abs().max() > 1e-3


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_fused_ops_match_the_models_modules(dtype, atol):
    torch.manual_seed(0)
    plain = build_model(64).to(dtype).train()
    fused = copy.deepcopy(plain)
    assert apply_fused_ops(fused) == {
        "rms_norm": 5,
        "swiglu": 2,
        "lora": 0,
        "rebuilt": 1,
    }  # 2 layers x 2 norms + final; 2 MLPs; no adapters
    ids = torch.randint(0, 64, (2, 9))
    outputs = []
    for model in (plain, fused):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        outputs.append((loss.detach(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = outputs
    assert abs(loss_a.item() - loss_b.item()) < atol
    for name in grads_a:
        scale = grads_a[name].abs().max().clamp(min=1e-3)
        assert (grads_a[name] - grads_b[name]).abs().max() / scale < (1e-4 if dtype == torch.float32 else 5e-2), name


def test_fused_forwards_survive_deepcopy():
    """A copied model (e.g. a frozen reference) runs its own weights, not the original's."""
    model = build_model(64)
    apply_fused_ops(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        ids = torch.randint(0, 64, (1, 5))
        assert not torch.allclose(model(input_ids=ids).logits, twin(input_ids=ids).logits)
    assert twin.model.norm.forward.__self__ is twin.model.norm


def test_fused_forwards_survive_train_and_eval(tiny_model_dir):
    """transformers re-kernelizes a loaded model (with the `kernels` package) on each train()/eval(),
    putting back the class forward of its hub-kernel layers; the fused norms must stay."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert apply_fused_ops(model)["rms_norm"] == 5
    for mode in (True, False, True):
        model.train(mode)
    norm = model.model.layers[0].input_layernorm
    assert norm.forward.__func__.__name__ == "_norm_forward" and model.model.norm.forward.__self__ is model.model.norm
